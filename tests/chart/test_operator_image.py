"""The operator image, without a container engine: what its Dockerfile installs, and how.

No image can be built here, so the test does what the Dockerfile's build stage does — copy the
same files, run the same operator_image/install.sh — into a fresh virtualenv, and runs the
result.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.chartkit import REPO

IMAGE = REPO / "operator_image"
DOCKERFILE = (IMAGE / "Dockerfile").read_text()


def build_stage() -> str:
    stages = re.split(r"^FROM ", DOCKERFILE, flags=re.MULTILINE)
    (build,) = [stage for stage in stages if stage.split("\n", 1)[0].endswith(" AS build")]
    return build


def copied_paths() -> list[str]:
    """The sources the build stage copies, relative to the build context (the repository)."""
    paths = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", build_stage(), re.MULTILINE):
        *sources, _destination = line.split()
        paths += [source.rstrip("/") for source in sources]
    return paths


def test_the_build_stage_installs_with_install_sh_only() -> None:
    runs = re.findall(r"^RUN (.+)$", build_stage(), re.MULTILINE)
    assert runs == ["sh operator_image/install.sh /src /opt/tenantry"]
    assert "WORKDIR /src" in build_stage()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", DOCKERFILE, re.MULTILINE)
    assert re.findall(r"^USER (.+)$", DOCKERFILE, re.MULTILINE) == ["65532:65532"]


@pytest.mark.timeout(900)
def test_install_sh_installs_a_working_operator(tmp_path: Path) -> None:
    context = tmp_path / "src"
    for relative in copied_paths():
        source, target = REPO / relative, context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["sh", str(context / "operator_image" / "install.sh"), str(context), str(venv)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        # The machine's pip settings (certificates, timeouts) apply; the Dockerfile adds only
        # PIP_NO_CACHE_DIR, to keep the image small.
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tenantry = venv / "bin" / "tenantry"
    help_text = subprocess.run(
        [str(tenantry), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "{run,crd,render,audit}" in help_text
    crd = subprocess.run([str(tenantry), "crd"], capture_output=True, text=True, check=True).stdout
    assert crd == (REPO / "crds" / "agenttenants.tenantry.dev.yaml").read_text()
    # The image carries only the pinned dependencies and the package: no build tools.
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert "tenantry" in names
    assert not names & {"setuptools", "wheel"}, names


def pins(path: Path) -> dict[str, str]:
    """name -> version of a hash-pinned requirements file; every requirement must be pinned."""
    text = path.read_text().replace("\\\n", " ")
    found = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, _, hashes = line.partition(" ")
        assert "--hash=sha256:" in hashes, f"{path.name}: {requirement} has no hash"
        name, _, version = requirement.partition("==")
        assert version, f"{path.name}: {requirement} is not pinned with =="
        found[canonicalize_name(name)] = version
    return found


def test_the_pins_satisfy_pyproject() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pinned = pins(IMAGE / "requirements.txt")
    for dependency in pyproject["project"]["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pinned, (
            f"operator_image/requirements.txt lacks {name}: run `make operator-lock`"
        )
        assert requirement.specifier.contains(pinned[name]), (
            f"operator_image/requirements.txt pins {name}=={pinned[name]}, outside {requirement}: "
            "run `make operator-lock`"
        )
    build = pins(IMAGE / "build-requirements.txt")
    for requirement in pyproject["build-system"]["requires"]:
        parsed = Requirement(requirement)
        assert parsed.specifier.contains(build[canonicalize_name(parsed.name)]), requirement
