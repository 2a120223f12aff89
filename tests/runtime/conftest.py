"""Fixtures for the tenant runtime's tests (helpers live in runtime_helpers.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port
from runtime_helpers import (
    SANDBOX_TOKEN,
    SANDBOX_UID,
    TENANT,
    SandboxHome,
    Service,
    StartSandbox,
    base_env,
    start_service,
)
from scripted_model import model  # noqa: F401 - a fixture shared by the end-to-end tests


@pytest.fixture
def sandbox_home() -> Iterator[SandboxHome]:
    # Not pytest's tmp_path: its parents are private to root, and the sandbox user must
    # reach its workspace.
    root = Path(tempfile.mkdtemp(prefix="tenantry-sandbox-"))
    workspace = root / "workspace"
    workspace.mkdir()
    token_file = root / "token"
    token_file.write_text(SANDBOX_TOKEN + "\n")
    if os.geteuid() == 0:
        for path in (root, workspace, token_file):
            os.chown(path, SANDBOX_UID, SANDBOX_UID)
    token_file.chmod(0o400)
    yield SandboxHome(root, workspace, token_file)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def start_sandbox(sandbox_home: SandboxHome, tmp_path: Path) -> Iterator[StartSandbox]:
    """Starts sandbox servers for this test (stopped after it); keyword args become env."""
    started: list[Service] = []

    def start(**env: str) -> Service:
        full_env = base_env(
            TENANTRY_TENANT=TENANT,
            TENANTRY_SANDBOX_TOKEN_FILE=str(sandbox_home.token_file),
            TENANTRY_SANDBOX_WORKDIR=str(sandbox_home.workspace),
            TENANTRY_HOST="127.0.0.1",
            TENANTRY_PORT=str(free_port()),
            **env,
        )
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
