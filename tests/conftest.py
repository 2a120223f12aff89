"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import tally

REPO = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO / "e2e" / "cluster.py"
KUBECONFIG = REPO / ".cache" / "cluster" / "kubeconfig"


def _cluster(command: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, str(CLUSTER_SCRIPT), command], check=False)


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """The kubeconfig of the local control plane, started for this session when not running.

    A cluster this session started is stopped at the end (set TENANTRY_KEEP_CLUSTER=1 to keep
    it); one that was already running (`make cluster-up`) is reused and left running.
    """
    was_running = _cluster("status").returncode == 0
    if _cluster("up").returncode != 0:
        pytest.fail("the local control plane did not start: see the [cluster] lines above")
    yield KUBECONFIG
    if not was_running and os.environ.get("TENANTRY_KEEP_CLUSTER") != "1":
        _cluster("down")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can tell whether the test failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The totals compliance teams ask for: faults survived, bad inputs tried, objects lost."""
    if tally.counts:
        terminalreporter.section("isolation evidence")
        terminalreporter.write_line(
            f"faults survived: {tally.counts['faults survived']}, "
            f"bad inputs tried: {tally.counts['bad inputs tried']}, "
            f"objects lost: {tally.counts['objects lost']}"
        )
