"""Process limits between tenants on one node, measured with real sandbox servers (as root).

RLIMIT_NPROC counts every process of a uid on the node. Two tenants' sandboxes under one uid
share that budget: one can hold it and the other cannot fork. Under a uid each, they do not
(the operator renders a per-tenant uid). A pod PID limit, which the kubelet enforces with the
`pids` cgroup controller, bounds one pod and leaves the rest of the node alone.

Each "tenant" is a sandbox server started as root with setuid to a uid that has no
/etc/passwd entry, as a per-tenant uid in a pod would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.runtime_services import (
    SandboxHome,
    Service,
    free_uids,
    make_sandbox_home,
    sandbox_env,
    sandbox_request,
    start_service,
)

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: each sandbox server must be started with setuid to a uid of its own",
)

PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")

# Forks until refused (at most 200 times, should no limit bind), keeps every child alive until
# the test writes `release` to the evidence directory, and reports how many it held.
HOLD = """
import os, pathlib, time
evidence = pathlib.Path({evidence!r})
def wait_for_release():
    deadline = time.monotonic() + 60
    while not (evidence / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
held, refusal = [], "never refused"
for _ in range(200):
    try:
        pid = os.fork()
    except OSError as exc:
        refusal = str(exc)
        break
    if pid == 0:
        wait_for_release()
        os._exit(0)
    held.append(pid)
(evidence / "pids").write_text(" ".join(map(str, held)))
(evidence / "held").write_text(refusal)
wait_for_release()
print("held", len(held), "then:", refusal)
"""

# Starts `count` processes and reports whether it could.
FORK = """
import os, subprocess
open(os.path.join(os.environ["HOME"], "probe"), "w").write("home is writable")
try:
    children = [subprocess.Popen(["sleep", "5"]) for _ in range({count})]
except OSError as exc:
    print("cannot fork:", exc)
else:
    for child in children:
        child.kill()
        child.wait()
    print("forked", len(children))
"""


class Tenant:
    """A sandbox server under `uid`, with its own workspace and an evidence directory."""

    def __init__(self, uid: int, logs: Path, **env: str) -> None:
        self.uid = uid
        self.home: SandboxHome = make_sandbox_home(uid)
        self.evidence = self.home.root / "evidence"
        self.evidence.mkdir()
        os.chown(self.evidence, uid, uid)
        full_env = sandbox_env(self.home, TENANTRY_SANDBOX_TIMEOUT_SECONDS="60", **env)
        self.server: Service = start_service(
            "sandbox", full_env, logs, as_sandbox_user=True, uid=uid, cwd=self.home.root
        )

    def run(self, code: str) -> dict[str, Any]:
        body = {"language": "python", "code": code}
        status, answer = sandbox_request(self.server, "POST", "/v1/execute", body)
        assert status == 200, (answer, self.server.logs())
        assert isinstance(answer, dict)
        return answer

    def hold_in_background(self) -> Callable[[], dict[str, Any]]:
        """Starts HOLD in a run; returns once it holds, with a function that releases it."""
        outcome: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda: outcome.update(self.run(HOLD.format(evidence=str(self.evidence))))
        )
        thread.start()
        deadline = time.monotonic() + 60
        while not (self.evidence / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def release() -> dict[str, Any]:
            (self.evidence / "release").touch()
            thread.join()
            return outcome

        if not (self.evidence / "held").exists():
            release()
            pytest.fail(f"the holding run did not start: {self.server.logs()}")
        return release

    def held_pids(self) -> list[int]:
        return [int(pid) for pid in (self.evidence / "pids").read_text().split()]

    def stop(self) -> None:
        (self.evidence / "release").touch()
        self.server.stop()
        shutil.rmtree(self.home.root, ignore_errors=True)


@pytest.fixture
def tenants(tmp_path: Path) -> Iterator[Callable[..., Tenant]]:
    started: list[Tenant] = []

    def start(uid: int, **env: str) -> Tenant:
        tenant = Tenant(uid, tmp_path / f"tenant-{len(started)}", **env)
        started.append(tenant)
        return tenant

    yield start
    for tenant in started:
        tenant.stop()


@pytest.mark.parametrize("same_uid", [True, False], ids=["one uid for both", "a uid each"])
def test_one_tenant_holding_its_process_budget_starves_another_only_under_the_same_uid(
    tenants: Callable[..., Tenant], same_uid: bool
) -> None:
    uid_a, uid_b = free_uids(2)
    if same_uid:
        uid_b = uid_a
    limits = {"TENANTRY_SANDBOX_MAX_PROCESSES": "12"}
    a, b = tenants(uid_a, **limits), tenants(uid_b, **limits)

    release_a = a.hold_in_background()
    try:
        b_forked = b.run(FORK.format(count=3))["output"].strip()
        a_still_holds = all(Path(f"/proc/{pid}").exists() for pid in a.held_pids())
    finally:
        a_outcome = release_a()
    print(  # the measurement, for `pytest -s`
        f"uids {uid_a}/{uid_b}: A ({a_outcome['output'].strip()}); B: {b_forked}"
    )
    assert "Resource temporarily unavailable" in a_outcome["output"]  # RLIMIT_NPROC bound A
    # B's server cleaned up after B's run and touched none of A's processes, same uid or not.
    assert a_still_holds
    if same_uid:
        assert b_forked == "cannot fork: [Errno 11] Resource temporarily unavailable"
    else:
        assert b_forked == "forked 3"
    # Both servers work under a uid without an /etc/passwd entry (HOME is the workspace).
    assert b.run(FORK.format(count=0))["output"].strip() == "forked 0"


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A cgroup v1 `pids` group of its own, as the kubelet makes one per pod; removed after."""
    if not (PIDS_CGROUP_ROOT / "cgroup.procs").exists():
        pytest.skip(f"no cgroup v1 pids controller mounted at {PIDS_CGROUP_ROOT}")
    group = PIDS_CGROUP_ROOT / f"tenantry-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        yield group
    finally:
        # Whatever is still in it (the server is stopped by then) is killed, then it goes.
        deadline = time.monotonic() + 30
        while (procs := (group / "cgroup.procs").read_text().split()) and (
            time.monotonic() < deadline
        ):
            for pid in procs:
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)
        group.rmdir()


def test_a_pod_pid_limit_binds_one_sandbox_and_no_one_else(
    pids_cgroup: Path, tenants: Callable[..., Tenant]
) -> None:
    # (pids_cgroup first: its clean-up must come after the servers' stop.)
    (uid,) = free_uids(1)
    # One uid for both and an RLIMIT_NPROC that never binds: only the cgroup limits A.
    no_rlimit = {"TENANTRY_SANDBOX_MAX_PROCESSES": "100000"}
    a, b = tenants(uid, **no_rlimit), tenants(uid, **no_rlimit)
    (pids_cgroup / "pids.max").write_text("24")
    # As the kubelet does: the pod's processes are in the group before any code runs.
    (pids_cgroup / "cgroup.procs").write_text(str(a.server.proc.pid))
    assert (pids_cgroup / "cgroup.procs").read_text().split() == [str(a.server.proc.pid)]

    release_a = a.hold_in_background()
    try:
        in_a = int((pids_cgroup / "pids.current").read_text())
        b_forked = b.run(FORK.format(count=30))["output"].strip()
        host = subprocess.run(["true"], check=False).returncode
    finally:
        a_outcome = release_a()
    print(  # the measurement, for `pytest -s`
        f"pids.max 24: A ({a_outcome['output'].strip()}), pids.current {in_a}; "
        f"B, same uid, no cgroup: {b_forked}; host fork: exit {host}"
    )
    assert "Resource temporarily unavailable" in a_outcome["output"]  # the fork bomb was bound
    assert in_a == 24  # by the group: every pid it may have is in use
    assert "max" in (pids_cgroup / "pids.events").read_text()
    # Meanwhile another sandbox of the same uid, and the host, forked as they pleased.
    assert (b_forked, host) == ("forked 30", 0)
    # And once A's run is over, only A's server is left in the group.
    assert (pids_cgroup / "cgroup.procs").read_text().split() == [str(a.server.proc.pid)]
