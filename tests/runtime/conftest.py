"""Fixtures for the tenant runtime's tests (helpers live in tests/support/runtime_services.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runtime_services import (
    MODEL_API_KEY,
    TENANT,
    SandboxHome,
    Service,
    StartRuntime,
    StartSandbox,
    make_sandbox_home,
    sandbox_env,
    start_serve,
    start_service,
)
from tests.support.scripted_model import model  # noqa: F401 - a fixture shared by the end-to-end tests


@pytest.fixture
def sandbox_home() -> Iterator[SandboxHome]:
    home = make_sandbox_home()
    yield home
    shutil.rmtree(home.root, ignore_errors=True)


@pytest.fixture
def start_sandbox(sandbox_home: SandboxHome, tmp_path: Path) -> Iterator[StartSandbox]:
    """Starts sandbox servers for this test (stopped after it); keyword args become env."""
    started: list[Service] = []

    def start(**env: str) -> Service:
        full_env = sandbox_env(sandbox_home, **env)
        logs = tmp_path / f"sandbox-{len(started)}"
        service = start_service(
            "sandbox", full_env, logs, as_sandbox_user=True, cwd=sandbox_home.root
        )
        service.extra["workspace"] = sandbox_home.workspace
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
def start_runtime(tmp_path: Path) -> Iterator[StartRuntime]:
    """Starts `serve` with a runtime.json made of the contract example and `changes`."""
    started: list[Service] = []
    key_file = tmp_path / "api-key"
    key_file.write_text(MODEL_API_KEY + "\n")

    def start(
        env: dict[str, str] | None = None, bootstrap: str | None = None, **changes: Any
    ) -> Service:
        """`env`: more variables for the process; `bootstrap`: see run_module; `changes`:
        runtime.json fields."""
        config = {
            "tenant": TENANT,
            "topicTypes": ["default"],
            "agents": [
                {
                    "name": "assistant",
                    "kind": "assistant",
                    "topicType": "default",
                    "systemMessage": "You are a test assistant.",
                },
                {"name": "coder", "kind": "coder", "topicType": "code", "systemMessage": None},
            ],
            "model": None,
            "sandbox": None,
            "taskTimeoutSeconds": 60,
            **changes,
        }
        if config["model"] is not None:
            config["model"] = {"model": "scripted", "apiKeyFile": str(key_file), **config["model"]}
        home = tmp_path / f"runtime-{len(started)}"
        service = start_serve(config, home, bootstrap, **(env or {}))
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
