"""Fixtures for the tenant runtime's tests (helpers live in tests/support/runtime_services.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.runtime_services import (
    SandboxHome,
    Service,
    StartSandbox,
    make_sandbox_home,
    sandbox_env,
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
