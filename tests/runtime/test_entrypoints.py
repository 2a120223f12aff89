"""`python -m tenantry_runtime serve | sandbox` refuse to start, clearly, when misconfigured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.runtime_services import REPO, TENANT, StartRuntime, base_env

# This checkout's package first, whatever the interpreter has installed (an editable install
# may point at another checkout).
PACKAGE_PATH = str(REPO / "runtime_image")


def run(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantry_runtime", command],
        env=base_env(PYTHONPATH=PACKAGE_PATH, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_and_sandbox_refuse_to_start_without_a_tenant() -> None:
    for command in ("serve", "sandbox"):
        result = run(command)
        assert result.returncode == 2
        assert f"tenantry_runtime {command}: refusing to start: TENANTRY_TENANT is not set" in (
            result.stderr
        )


def test_serve_refuses_an_agent_kind_outside_the_allowlist(tmp_path: Path) -> None:
    config = tmp_path / "runtime.json"
    agent = {"name": "shell", "kind": "autogen_ext.tools.code_execution", "topicType": "default"}
    config.write_text(json.dumps({"tenant": TENANT, "topicTypes": ["default"], "agents": [agent]}))
    result = run("serve", TENANTRY_TENANT=TENANT, TENANTRY_CONFIG=str(config))
    assert result.returncode == 2
    assert (
        "agent 'shell': kind 'autogen_ext.tools.code_execution' is not allowed; "
        "allowed kinds: assistant, coder, team"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_secret_it_cannot_read(tmp_path: Path) -> None:
    config = tmp_path / "runtime.json"
    missing = tmp_path / "no-such-key"
    model = {"model": "m", "baseUrl": "http://127.0.0.1:9/v1", "apiKeyFile": str(missing)}
    agent = {"name": "assistant", "kind": "assistant", "topicType": "default"}
    config.write_text(
        json.dumps({"tenant": TENANT, "topicTypes": ["default"], "agents": [agent], "model": model})
    )
    result = run("serve", TENANTRY_TENANT=TENANT, TENANTRY_CONFIG=str(config))
    assert result.returncode == 2
    assert f"model.apiKeyFile {missing}: cannot read it" in result.stderr


def test_serve_refuses_an_agent_name_in_words_not_a_pattern(tmp_path: Path) -> None:
    config = tmp_path / "runtime.json"
    agent = {"name": "ev.il", "kind": "coder", "topicType": "code"}
    sandbox = {"url": "http://127.0.0.1:9", "tokenFile": str(tmp_path / "token")}
    config.write_text(
        json.dumps(
            {"tenant": TENANT, "topicTypes": ["code"], "agents": [agent], "sandbox": sandbox}
        )
    )
    result = run("serve", TENANTRY_TENANT=TENANT, TENANTRY_CONFIG=str(config))
    assert result.returncode == 2
    assert (
        "tenantry_runtime serve: refusing to start: agent 'ev.il'.name='ev.il' is not an agent "
        "name: letters, digits, '-' and '_', starting with a letter or digit, at most 63 "
        "characters\n"
    ) in result.stderr
    assert "[A-Za-z0-9]" not in result.stderr


def loaded_modules(command: str) -> set[str]:
    """The modules `python -m tenantry_runtime <command>` has loaded once it has read its
    settings (here it refuses to start, right after: no tenant is set)."""
    script = (
        "import json, sys\n"
        "from tenantry_runtime.__main__ import main\n"
        f"assert main([{command!r}]) == 2\n"
        "print(json.dumps([sys.modules['tenantry_runtime'].__file__, sorted(sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=base_env(PYTHONPATH=PACKAGE_PATH),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    package, modules = json.loads(result.stdout)
    assert package.startswith(PACKAGE_PATH)
    return set(modules)


# The process boundary: each pod's process loads its own side of the package and the shared
# modules (protocol, audit, settings parsing), nothing of the other's.
SANDBOX_SIDE = {
    "tenantry_runtime.sandbox",
    "tenantry_runtime.runner",
    "tenantry_runtime.workspace",
    "tenantry_runtime.ipc",
    "tenantry_runtime.sandbox_settings",
}
RUNTIME_SIDE = {
    "tenantry_runtime.server",
    "tenantry_runtime.agents",
    "tenantry_runtime.guard",
    "tenantry_runtime.executor",
    "tenantry_runtime.messages",
    "tenantry_runtime.runtime_json",
    "tenantry_runtime.serve_settings",
    "autogen_core",
    "autogen_ext",
    "openai",
}


def test_serve_loads_nothing_of_the_sandbox_side() -> None:
    loaded = loaded_modules("serve")
    assert "tenantry_runtime.server" in loaded
    assert loaded & SANDBOX_SIDE == set()


def test_sandbox_loads_nothing_of_the_runtime_side() -> None:
    loaded = loaded_modules("sandbox")
    assert "tenantry_runtime.sandbox" in loaded
    assert loaded & RUNTIME_SIDE == set()


def test_a_refusal_is_also_the_containers_termination_message(tmp_path: Path) -> None:
    """The kubelet reads a container's last words from its terminationMessagePath; the operator
    shows them on the tenant (RuntimeConfigRefused), so nobody has to read the log."""
    config = tmp_path / "runtime.json"
    agent = {"name": "x", "kind": "search", "topicType": "default"}
    config.write_text(json.dumps({"tenant": TENANT, "topicTypes": ["default"], "agents": [agent]}))
    last_words = tmp_path / "termination-log"
    result = run(
        "serve",
        TENANTRY_TENANT=TENANT,
        TENANTRY_CONFIG=str(config),
        TENANTRY_TERMINATION_MESSAGE_PATH=str(last_words),
    )
    assert result.returncode == 2
    message = last_words.read_text()
    assert message.startswith("tenantry_runtime serve: refusing to start: agent 'x': kind 'search'")
    assert message in result.stderr


LOADED_MODULES = """
import json, sys
from tenantry_runtime.__main__ import main
code = main(sys.argv[1:])
with open({marker!r}, "w") as file:
    json.dump(sorted(sys.modules), file)
sys.exit(code)
"""


def test_no_runtime_imports_the_openai_package(start_runtime: StartRuntime, tmp_path: Path) -> None:
    """autogen-ext's OpenAI client and the `openai` package were a third of a runtime's memory
    (docs/benchmarks.md, idle memory): a runtime with a model talks to it through
    model_client.py on aiohttp, and one whose tenant has no model (no agent, or only kinds that
    need none) does not even load that."""
    markers = {name: tmp_path / f"modules-{name}.json" for name in ("no model", "model")}
    for name, changes in (
        ("no model", {"agents": [], "model": None}),
        (
            "model",
            {
                "agents": [{"name": "assistant", "kind": "assistant", "topicType": "default"}],
                "model": {"baseUrl": "http://127.0.0.1:9/v1"},
            },
        ),
    ):
        service = start_runtime(
            bootstrap=LOADED_MODULES.format(marker=str(markers[name])), **changes
        )
        service.stop()
    loaded = {name: set(json.loads(marker.read_text())) for name, marker in markers.items()}
    openai = {"openai", "autogen_ext.models.openai"}
    assert "tenantry_runtime.server" in loaded["no model"]
    assert "tenantry_runtime.model_client" in loaded["model"]  # the check can see a client
    assert openai & loaded["no model"] == set()
    assert openai & loaded["model"] == set()
