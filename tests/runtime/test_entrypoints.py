"""`python -m tenantry_runtime serve | sandbox` refuse to start, clearly, when misconfigured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.runtime_services import TENANT, base_env


def run(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tenantry_runtime", command],
        env=base_env(**env),
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
        "allowed kinds: assistant, coder"
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
