"""The image's install, done here the way runtime_image/Dockerfile does it, then run.

No image can be built in this environment, so the test reads the Dockerfile's build stage,
copies exactly the files it COPYs into a fresh source tree, runs its one RUN step
(runtime_image/install.sh) against a fresh virtualenv, and starts both entrypoints from
that virtualenv. A file the build needs but the Dockerfile does not copy, a dependency the
runtime imports but the `runtime` extra lacks, or an unpinned package all fail here.
pip's cache is kept (the image disables it), so later runs only reinstall.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.ports import free_port
from tests.support.runtime_image import DOCKERFILE, install_runtime_image
from tests.support.runtime_services import REPO, TENANT, base_env, start_service

CONSTRAINTS = REPO / "runtime_image" / "constraints.txt"


def pinned() -> set[str]:
    lines = (line.strip() for line in CONSTRAINTS.read_text().splitlines())
    return {line.lower() for line in lines if line and not line.startswith("#")}


def test_the_image_install_has_pinned_packages_and_working_entrypoints(tmp_path: Path) -> None:
    source, venv = tmp_path / "src", tmp_path / "venv"
    install = install_runtime_image(venv, source)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    python = str(venv / "bin" / "python")

    # Everything installed is pinned (pip freeze leaves out pip itself and the project).
    freeze = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude", "tenantry"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {line.lower() for line in freeze.stdout.splitlines()}
    assert installed - pinned() == set()
    assert "autogen-core==0.7.5" in installed
    # The model client is the runtime's own: none of autogen-ext's `openai` extra is installed.
    names = {line.split("==")[0] for line in installed}
    assert names & {"openai", "tiktoken", "requests"} == set()
    # The package comes from the venv, not from this checkout.
    where = subprocess.run(
        [python, "-c", "import tenantry_runtime; print(tenantry_runtime.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert where.stdout.startswith(str(venv))

    # `serve` refuses to start without its tenant, and says which variable is missing.
    refused = subprocess.run(
        [python, "-m", "tenantry_runtime", "serve"],
        env=base_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "TENANTRY_TENANT is not set" in refused.stderr

    # `serve` with a minimal config imports all it needs and answers its health check.
    config = tmp_path / "runtime.json"
    config.write_text(
        json.dumps({"tenant": TENANT, "topicTypes": ["default"], "agents": [], "model": None})
    )
    serve_env = base_env(
        TENANTRY_TENANT=TENANT,
        TENANTRY_CONFIG=str(config),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
    )
    start_service("serve", serve_env, tmp_path / "serve", python=python).stop()

    # `sandbox` answers its health check.
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    sandbox_env = base_env(
        TENANTRY_TENANT=TENANT,
        TENANTRY_SANDBOX_TOKEN="t0ken",
        TENANTRY_SANDBOX_WORKDIR=str(workspace),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
    )
    sandbox = start_service("sandbox", sandbox_env, tmp_path / "sandbox", python=python)
    sandbox.stop()
    assert sandbox.proc.returncode == 0, sandbox.logs()


def test_the_image_runs_as_a_numeric_non_root_user_on_the_pinned_base() -> None:
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text.splitlines()
    runtime_stage = text.rsplit("\nFROM ", 1)[1].splitlines()
    users = [line for line in runtime_stage if line.startswith("USER ")]
    assert users == ["USER 65532:65532"]
    assert 'ENTRYPOINT ["python", "-m", "tenantry_runtime"]' in runtime_stage
