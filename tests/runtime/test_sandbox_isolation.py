"""What one run of the sandbox can leave to later runs: processes, code, files (real processes).

A run's processes must all be gone when it returns, whatever they did to get away (a new
session, a chain of them, parents that stay alive); its code must never be in a command line,
where any process on the node can read it; its files must not reach another task.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock
from runtime_helpers import (
    SANDBOX_TOKEN,
    SANDBOX_UID,
    SandboxHome,
    Service,
    StartSandbox,
    sandbox_python,
    sandbox_request,
)
from tenantry_runtime.executor import SandboxCodeExecutor

LIMITS = {"TENANTRY_SANDBOX_TIMEOUT_SECONDS": "20", "TENANTRY_SANDBOX_CONCURRENCY": "2"}


def run(sandbox: Service, code: str, task: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"language": "python", "code": code}
    if task is not None:
        body["taskId"] = task
    status, answer = sandbox_request(sandbox, "POST", "/v1/execute", body)
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


@pytest.fixture
def evidence(sandbox_home: SandboxHome) -> Iterator[Path]:
    """A directory outside the workspace where code under test leaves what it saw.

    At the end, anything whose pid the code wrote to `pids` there is killed, so a test that
    fails (a process got away) does not leave it running on the machine.
    """
    path = sandbox_home.root / "evidence"
    path.mkdir()
    if os.geteuid() == 0:
        os.chown(path, SANDBOX_UID, SANDBOX_UID)
    yield path
    for pid in pids_in(path):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def pids_in(evidence: Path) -> list[int]:
    pids = evidence / "pids"
    return [int(pid) for pid in pids.read_text().split()] if pids.exists() else []


def processes_left(pids: list[int]) -> list[int]:
    """Those of `pids` that still exist, zombies included (a zombie still holds its pid)."""
    return [pid for pid in pids if Path(f"/proc/{pid}").exists()]


# Started by a run in a new session, it starts the next link the same way and stays alive, so
# every link but the first has a live parent: none is an orphan for the sandbox to adopt. Each
# link looks through every command line on the machine for a later run's code.
CHAIN_LINK = """
import os, subprocess, sys, time
evidence, links = sys.argv[1], int(sys.argv[2])
with open(os.path.join(evidence, "pids"), "a") as pids:
    pids.write(f"{os.getpid()}\\n")
if links > 1:
    subprocess.Popen([sys.executable, __file__, evidence, str(links - 1)], start_new_session=True)
marker, seen = b"SECRET-OF-" + b"A-LATER-RUN", set()
stop = time.monotonic() + 60  # a deadline of its own, should it get away
while time.monotonic() < stop:
    for pid in set(os.listdir("/proc")) - seen:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                found = cmdline.read()
        except OSError:
            continue
        if marker in found:
            seen.add(pid)
            with open(os.path.join(evidence, "spied"), "a") as spied:
                spied.write(f"link {os.getpid()} read in {pid}'s command line: {found[-120:]}\\n")
    time.sleep(0.02)
"""


def test_no_process_of_a_run_outlives_it(start_sandbox: StartSandbox, evidence: Path) -> None:
    sandbox = start_sandbox(**LIMITS)
    links = 8
    plant = f"""
import pathlib, subprocess, sys, time
evidence = pathlib.Path({str(evidence)!r})
(evidence / "link.py").write_text({CHAIN_LINK!r})
subprocess.Popen([sys.executable, str(evidence / "link.py"), str(evidence), "{links}"],
                 start_new_session=True)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    pids = evidence / "pids"
    if pids.exists() and len(pids.read_text().split()) == {links}:
        break
    time.sleep(0.05)
print("chain of", len((evidence / "pids").read_text().split()))
"""
    assert run(sandbox, plant, task="t")["output"].strip() == f"chain of {links}"
    chain = pids_in(evidence)
    left_after_the_run = processes_left(chain)

    # A later run whose code a surviving link could read in its command line.
    later = "secret = 'SECRET-OF-A-LATER-RUN'\nimport time\ntime.sleep(1)\nprint('later ran')"
    assert run(sandbox, later, task="t")["output"].strip() == "later ran"
    spied = (evidence / "spied").read_text() if (evidence / "spied").exists() else ""

    assert (left_after_the_run, spied) == ([], "")
    assert processes_left(chain) == []


def detach_and_wait(evidence: Path, name: str, wait: bool) -> str:
    """Code that starts two background processes, writes their pids to `name` and, if
    `wait`, runs on until `release` appears: one in a session of its own whose parent (the
    run) stays alive; one orphaned in the run's session (a shell's `&`), adopted by the
    server while the run goes on."""
    return f"""
import pathlib, subprocess, time
evidence = pathlib.Path({str(evidence)!r})
child = subprocess.Popen(["sleep", "300"], start_new_session=True)
orphan = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
                        capture_output=True, text=True, check=True).stdout.strip()
with open(evidence / "pids", "a") as pids:
    pids.write(f"{{child.pid}}\\n{{orphan}}\\n")
(evidence / {name!r}).write_text(f"{{child.pid}} {{orphan}}")
deadline = time.monotonic() + 30
while {wait} and not (evidence / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def test_a_run_still_in_flight_keeps_its_processes(
    start_sandbox: StartSandbox, evidence: Path
) -> None:
    sandbox = start_sandbox(**LIMITS)
    first = threading.Thread(target=run, args=(sandbox, detach_and_wait(evidence, "first", True)))
    first.start()
    try:
        deadline = time.monotonic() + 30
        while not (evidence / "first").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        first_pids = [int(pid) for pid in (evidence / "first").read_text().split()]
        run(sandbox, detach_and_wait(evidence, "second", False))
        second_left = processes_left([int(p) for p in (evidence / "second").read_text().split()])
        # The second run's sweep spared the first run, which is still going.
        first_kept = processes_left(first_pids)
    finally:
        (evidence / "release").touch()
        first.join()
    assert (second_left, first_kept) == ([], first_pids)
    assert processes_left(first_pids) == []  # gone with their own run


def test_code_is_never_in_a_command_line(start_sandbox: StartSandbox, evidence: Path) -> None:
    sandbox = start_sandbox(**LIMITS)
    code = f"""
import pathlib, time
secret = "SECRET-IN-THE-CODE"
evidence = pathlib.Path({str(evidence)!r})
(evidence / "started").touch()
deadline = time.monotonic() + 30
while not (evidence / "scanned").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("done")
"""
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(run(sandbox, code, task="t")))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not (evidence / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (evidence / "started").exists(), sandbox.logs()
        # Another process of the sandbox's user, outside the sandbox, reads every command line.
        scan = (
            "import os\n"
            "marker = b'SECRET-IN-' + b'THE-CODE'\n"
            "for pid in os.listdir('/proc'):\n"
            "    try:\n"
            "        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "    except OSError:\n"
            "        continue\n"
            "    if marker in cmdline:\n"
            "        print(pid, cmdline.replace(b'\\0', b' ')[:200])\n"
        )
        user = {"user": SANDBOX_UID, "group": SANDBOX_UID} if os.geteuid() == 0 else {}
        scanner = subprocess.run(
            [sandbox_python()[0], "-c", scan],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            **user,
        )
    finally:
        (evidence / "scanned").touch()
        runner.join()
    assert outcome["output"].strip() == "done"
    assert scanner.stdout == ""


def test_files_stay_within_their_task(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    sandbox = start_sandbox(**LIMITS)
    write = "open('note.txt', 'w').write('from task a')\nprint('written')"
    # Looks for the note anywhere in the workspace (HOME is the task's directory in it), not
    # only in its own directory. os.walk skips what vanishes meanwhile.
    look = (
        "import os\n"
        "root = os.path.dirname(os.environ['HOME'])\n"
        "found = [d for d, _, files in os.walk(root) if 'note.txt' in files]\n"
        "print('found' if found else 'nothing')\n"
    )
    assert run(sandbox, write, task="task-a")["output"].strip() == "written"
    in_next_run_of_a = run(sandbox, look, task="task-a")["output"].strip()
    end_a = sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0]
    in_b = run(sandbox, look, task="task-b")["output"].strip()
    in_a_one_off_run = run(sandbox, look)["output"].strip()
    assert (in_next_run_of_a, in_b, in_a_one_off_run) == ("found", "nothing", "nothing")
    assert end_a == 204
    # A task that ended runs no more code (its caller is gone; its files would outlive it).
    body = {"language": "python", "code": "print('ran')", "taskId": "task-a"}
    assert sandbox_request(sandbox, "POST", "/v1/execute", body) == (
        409,
        {"error": "task 'task-a' has ended; its workspace is gone"},
    )
    assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-b")[0] == 204
    # Nothing of either task is left in the workspace.
    assert list(sandbox_home.workspace.iterdir()) == []


def test_with_keep_workspace_files_outlive_their_task(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    sandbox = start_sandbox(TENANTRY_SANDBOX_KEEP_WORKSPACE="true", **LIMITS)
    run(sandbox, "open('note.txt', 'w').write('kept')", task="task-a")
    assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
    found = run(sandbox, "print(open('note.txt').read())", task="task-b")["output"]
    assert found.strip() == "kept"
    assert (sandbox_home.workspace / "note.txt").read_text() == "kept"


def test_a_restarted_sandbox_starts_with_an_empty_workspace(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    # The workspace is an emptyDir: it outlives a container restart (code can kill the server).
    left = sandbox_home.workspace / "left-by-an-earlier-server"
    left.mkdir()
    (left / "file").write_text("old")
    if os.geteuid() == 0:
        for path in (left, left / "file"):
            os.chown(path, SANDBOX_UID, SANDBOX_UID)
    sandbox = start_sandbox(**LIMITS)
    assert list(sandbox_home.workspace.iterdir()) == []
    look = "import os\nprint('left-by-an-earlier-server' in os.listdir('..'))"
    assert run(sandbox, look)["output"].strip() == "False"


async def test_the_executor_gives_each_task_its_own_workspace(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    sandbox = start_sandbox(**LIMITS)
    write = [CodeBlock(code="open('note.txt', 'w').write('a')", language="python")]
    read = [CodeBlock(code="test -e note.txt && echo seen || echo unseen", language="sh")]
    token = CancellationToken()
    async with SandboxCodeExecutor(sandbox.url, SANDBOX_TOKEN, timeout_seconds=20) as executor:
        await executor.execute_code_blocks(write, token, task_id="a")
        seen_in_a = (await executor.execute_code_blocks(read, token, task_id="a")).output
        await executor.end_task("a")
        seen_in_b = (await executor.execute_code_blocks(read, token, task_id="b")).output
        await executor.end_task("b")
    assert (seen_in_a.strip(), seen_in_b.strip()) == ("seen", "unseen")
    assert list(sandbox_home.workspace.iterdir()) == []
