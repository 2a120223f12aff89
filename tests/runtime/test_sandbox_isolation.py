"""What one run of the sandbox can leave to later runs: processes, code, files (real processes).

A run's processes must all be gone when it returns, whatever they did to get away (a new
session, a chain of them, parents that stay alive); its code must never be in a command line,
where any process on the node can read it; its files must not reach another task.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock
from tenantry_runtime.executor import SandboxCodeExecutor
from tenantry_runtime.workspace import Workspaces

from tests.support.runtime_services import (
    SANDBOX_TOKEN,
    SANDBOX_UID,
    SandboxHome,
    Service,
    StartSandbox,
    base_env,
    free_uids,
    http_get,
    make_sandbox_home,
    sandbox_env,
    sandbox_python,
    sandbox_request,
    start_service,
)

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


# A process whose main thread has ended while another of its threads runs on: /proc shows it
# as a zombie (state Z), and waitpid cannot reap it while that thread lives. The thread looks,
# every 0.2 s, for a later run's code (through /proc/<pid>/fd, the memfd the run reads) and
# for its files (anywhere in the workspace).
ZOMBIE_LEADER = """
import ctypes, glob, os, pathlib, platform, threading, time
evidence = pathlib.Path({evidence!r})
workspace = pathlib.Path.cwd().parent
marker = b"SECRET-OF-" + b"A-LATER-RUN"
SYS_EXIT = {{"x86_64": 60, "aarch64": 93}}[platform.machine()]  # exit(2): this thread only

def spy():
    stop, reported = time.monotonic() + 60, set()  # a deadline of its own, should it get away
    while time.monotonic() < stop:
        seen = []
        for fd in glob.glob("/proc/[0-9]*/fd/*"):
            try:
                if "tenantry-code" in os.readlink(fd):
                    with open(fd, "rb") as code:
                        if marker in code.read():
                            seen.append(f"a later run's code through {{fd}}")
            except OSError:
                pass
        for path in workspace.rglob("*"):
            try:
                if path.is_file() and marker in path.read_bytes():
                    seen.append(f"a later run's file {{path}}")
            except OSError:
                pass
        seen = [what for what in seen if what not in reported]
        reported.update(seen)
        if seen:
            with open(evidence / "spied", "a") as spied:
                spied.write("\\n".join(seen) + "\\n")
        time.sleep(0.2)

pid = os.fork()
if pid == 0:
    os.setsid()
    threading.Thread(target=spy).start()
    ctypes.CDLL(None).syscall(SYS_EXIT, 0)
with open(evidence / "pids", "a") as pids:
    pids.write(f"{{pid}}\\n")
state, deadline = "?", time.monotonic() + 10
while state != "Z" and time.monotonic() < deadline:
    with open(f"/proc/{{pid}}/stat") as stat:
        state = stat.read().rsplit(")", 1)[1].split()[0]
    time.sleep(0.05)
print("stray in state", state)
"""


def test_a_process_whose_main_thread_exited_does_not_outlive_its_run(
    start_sandbox: StartSandbox, evidence: Path
) -> None:
    sandbox = start_sandbox(**LIMITS)
    started = time.monotonic()
    first = run(sandbox, ZOMBIE_LEADER.format(evidence=str(evidence)), task="t")
    answered_after = time.monotonic() - started
    left_after_the_run = processes_left(pids_in(evidence))
    # A later run, of another task, whose code and file a survivor could read.
    later = (
        "secret = 'SECRET-OF-A-LATER-RUN'\n"
        "open('later.txt', 'w').write(secret)\n"
        "import time\ntime.sleep(1.5)\nprint('later ran')"
    )
    assert run(sandbox, later, task="later")["output"].strip() == "later ran"
    spied = (evidence / "spied").read_text() if (evidence / "spied").exists() else ""
    report = f"answered after {answered_after:.1f} s; left: {left_after_the_run}; spied:\n{spied}"
    assert first["output"].strip() == "stray in state Z", first
    assert (left_after_the_run, spied) == ([], ""), report
    # The sweep kills it at once: it no longer waits out its give-up time, twice.
    assert answered_after < 8, report


# Started as `-c BOOTSTRAP sandbox`: the real server, except that it cannot signal a process
# named "immortal", as if that process were another user's (or stuck in the kernel). Only the
# test can kill it.
IMMORTAL_BOOTSTRAP = """
import sys
import tenantry_runtime.runner as runner
real_signal = runner._signal

def _signal(pid, signum, *, group=False):
    try:
        with open(f"/proc/{pid}/comm") as comm:
            if comm.read().strip() == "immortal":
                return
    except OSError:
        pass
    real_signal(pid, signum, group=group)

runner._signal = _signal
from tenantry_runtime.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

LEAVE_AN_IMMORTAL = """
import os, pathlib, subprocess, sys, time
evidence = pathlib.Path({evidence!r})
name = "import ctypes, time; ctypes.CDLL(None).prctl(15, b'immortal', 0, 0, 0); time.sleep(120)"
child = subprocess.Popen([sys.executable, "-c", name], start_new_session=True)
with open(evidence / "pids", "a") as pids:
    pids.write(f"{{child.pid}}\\n")
deadline = time.monotonic() + 10
while open(f"/proc/{{child.pid}}/comm").read().strip() != "immortal":
    assert time.monotonic() < deadline
    time.sleep(0.02)
print("left one")
"""


def test_a_process_that_cannot_be_killed_stops_the_sandbox_until_it_is_gone(
    sandbox_home: SandboxHome, evidence: Path, tmp_path: Path
) -> None:
    env = sandbox_env(sandbox_home, **LIMITS)
    sandbox = start_service(
        "sandbox",
        env,
        tmp_path,
        as_sandbox_user=True,
        cwd=sandbox_home.root,
        bootstrap=IMMORTAL_BOOTSTRAP,
    )
    port = int(sandbox.url.rsplit(":", 1)[1])
    body = {"language": "python", "code": LEAVE_AN_IMMORTAL.format(evidence=str(evidence))}
    try:
        left = sandbox_request(sandbox, "POST", "/v1/execute", body)
        health_while_left = http_get(port, "/healthz")[0]
        refused = sandbox_request(sandbox, "POST", "/v1/execute", {"language": "sh", "code": "id"})
    finally:
        for pid in pids_in(evidence):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    # Once it is gone (the server's periodic sweep reaps it), the sandbox runs code again.
    deadline = time.monotonic() + 20
    while http_get(port, "/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = sandbox_request(sandbox, "POST", "/v1/execute", {"language": "sh", "code": "echo ok"})
    sandbox.stop()
    assert (left[0], health_while_left, refused[0]) == (500, 503, 503), (left, refused)
    assert "could not be killed" in left[1]["error"]
    assert after[0] == 200 and after[1]["output"].strip() == "ok", after
    assert "could not be killed" in sandbox.logs()


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


# Code that looks for the sandbox's token wherever a process of the sandbox's user could read
# it: the environment of every process (the server's names the token, or the file holding it),
# and any file such a variable names. With the token it asks its own server, on loopback, for a
# run of its own (no taskId): that run would be the server's, not this run's, so it would be
# neither killed with it nor bounded by its time limit, and could ask for the next in turn.
ASK_FOR_A_RUN_OF_ITS_OWN = """
import json, os, socket
evidence = {evidence!r}
token, seen = None, []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        environ = open(f"/proc/{{pid}}/environ", "rb").read().split(b"\\0")
    except OSError as error:
        seen.append(f"{{pid}}: {{type(error).__name__}}")
        continue
    for item in environ:
        name, _, value = item.decode(errors="replace").partition("=")
        try:
            if name == "TENANTRY_SANDBOX_TOKEN":
                token = value
            elif name == "TENANTRY_SANDBOX_TOKEN_FILE":
                token = open(value).read().strip()
        except OSError as error:
            seen.append(f"{{name}} of {{pid}}: {{type(error).__name__}}")
if token is None:
    print("no token;", ", ".join(seen))
else:
    inner = json.dumps({{"language": "sh", "code": f"sleep 3; echo outlived > {{evidence}}/outlived"}})
    client = socket.create_connection(("127.0.0.1", {port}))
    client.sendall(
        b"POST /v1/execute HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer " + token.encode()
        + b"\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(inner) + inner.encode()
    )
    print("asked")
"""


def test_a_run_finds_no_token_to_ask_its_server_for_a_run_of_its_own(
    start_sandbox: StartSandbox, evidence: Path
) -> None:
    """'Nothing of a run outlives it' holds only if code cannot ask for a run of its own: the
    token is in no file of the sandbox and in no environment a run can read (the server's
    process is not dumpable, so /proc/<pid>/environ of it is closed to its own uid)."""
    sandbox = start_sandbox(**LIMITS)
    port = int(sandbox.url.rsplit(":", 1)[1])
    code = ASK_FOR_A_RUN_OF_ITS_OWN.format(evidence=str(evidence), port=port)
    output = run(sandbox, code)["output"]
    server = f"{sandbox.proc.pid}: PermissionError"
    assert output.startswith("no token;") and server in output, output


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


# Deeper than Python's recursion limit (1000): its walk and rmtree recurse once a level.
DEEP = 3000
MAKE_A_DEEP_TREE = f"""
import os
open('note.txt', 'w').write('from task a')
# The names its removal moves directories up to, taken first.
for taken in ('.removing-0/inner', '.removing-1/inner'):
    os.makedirs(taken)
for _ in range({DEEP}):
    os.mkdir('d')
    os.chdir('d')
open('deep-note.txt', 'w').write('from task a, deep down')
print('made')
"""


def test_a_deep_directory_tree_does_not_outlive_its_task(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    """Code needs nothing but mkdir and chdir to nest a tree deeper than any recursion goes:
    its task's end still removes it, and the task's other files with it."""
    sandbox = start_sandbox(**LIMITS)
    assert run(sandbox, MAKE_A_DEEP_TREE, task="task-a")["output"].strip() == "made"
    assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
    assert list(sandbox_home.workspace.iterdir()) == []
    look = "import os\nprint(sorted(os.listdir('..')))"
    assert run(sandbox, look, task="task-b")["output"].strip() == "['task-b']"


def make_deep_tree(root: Path, depth: int, owner: int | None) -> None:
    """ROOT/d/d/…/d (DEPTH levels) with a file at the bottom, made by directory handles: its
    path is longer than any a system call takes."""
    handle = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=handle)
            if owner is not None:
                os.chown("d", owner, owner, dir_fd=handle, follow_symlinks=False)
            inner = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=handle)
            os.close(handle)
            handle = inner
        os.close(os.open("left", os.O_CREAT | os.O_WRONLY, dir_fd=handle))
    finally:
        os.close(handle)


def test_a_restarted_sandbox_removes_a_deep_tree_an_earlier_server_left(
    start_sandbox: StartSandbox, sandbox_home: SandboxHome
) -> None:
    # Code can kill its server; the emptyDir outlives the restart, and the new server empties it
    # before it serves (it used to stop there, and the container restarted for ever).
    left = sandbox_home.workspace / "left-by-an-earlier-server"
    left.mkdir()
    owner = SANDBOX_UID if os.geteuid() == 0 else None
    if owner is not None:
        os.chown(left, owner, owner)
    make_deep_tree(left, DEEP, owner)
    sandbox = start_sandbox(**LIMITS)
    assert list(sandbox_home.workspace.iterdir()) == []
    assert run(sandbox, "print('served')")["output"].strip() == "served"


async def test_two_tasks_ended_at_once_leave_nothing_of_either(tmp_path: Path) -> None:
    """Found by review: two ends close together (or the runtime's end sent again while the first
    was still removing) each removed the same directories at once, and took each other's names
    for the levels they moved up; a move refused was never tried again, and files of the ended
    task stayed for the next. The workspace's removals now go one at a time."""
    for attempt in range(5):
        root = tmp_path / str(attempt)
        root.mkdir()
        workspaces = Workspaces(root, keep=False)
        for task in ("task-a", "task-b"):
            workspaces.enter(task)
            await workspaces.leave(task)
        for index in range(2000):
            nested = root / "task-a" / ".cache" / f"d{index}" / "x"
            nested.mkdir(parents=True)
            (nested / "secret").write_text("of task a")
        await asyncio.gather(workspaces.end("task-a"), workspaces.end("task-b"))
        assert list(root.iterdir()) == [], f"attempt {attempt}"


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


# State that outlives every process, outside the workspace: a file in /dev/shm (what
# shm_open and sem_open create), a directory there, System V shared memory, a message queue
# and a semaphore set, and a POSIX message queue where /dev/mqueue is mounted (it is in a
# container; on this machine perhaps not). The secret goes into each that can hold data.
PLANT_IPC = """
import ctypes, json, os, pathlib
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
IPC_CREAT, IPC_PRIVATE = 0o1000, 0
secret = b"SECRET-OF-TASK-A"

def check(result):
    if result == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result

class Message(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]

shm, me = pathlib.Path("/dev/shm"), os.getuid()
(shm / f"tenantry-test-note-{me}").write_bytes(secret)
(shm / f"tenantry-test-dir-{me}").mkdir()
(shm / f"tenantry-test-dir-{me}" / "note").write_bytes(secret)
shmid = check(libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600))
address = libc.shmat(shmid, None, 0)
ctypes.memmove(address, secret, len(secret))
check(libc.shmdt(address))
msqid = check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600))
check(libc.msgsnd(msqid, ctypes.byref(Message(1, secret)), len(secret), 0))
semid = check(libc.semget(IPC_PRIVATE, 1, IPC_CREAT | 0o600))
made = [f"/dev/shm/tenantry-test-note-{me}", f"/dev/shm/tenantry-test-dir-{me}", "shm", "msg", "sem"]
if os.path.ismount("/dev/mqueue"):
    name = f"/tenantry-test-queue-{me}".encode()
    queue = check(libc.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None))
    check(libc.mq_send(queue, secret, len(secret), 0))
    made.append(f"/dev/mqueue{name.decode()}")
print(json.dumps(made))
"""

# What a later task of the same uid finds of it: every such object its uid owns or created,
# with the secret where it can read it.
FIND_IPC = """
import ctypes, json, os, pathlib
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
SHM_RDONLY = 0o10000
me, found = os.getuid(), []
for directory in ("/dev/shm", "/dev/mqueue"):
    if os.path.isdir(directory):
        for entry in os.scandir(directory):
            if entry.stat(follow_symlinks=False).st_uid == me:
                found.append(f"{directory}/{entry.name}")
for kind in ("shm", "msg", "sem"):
    header, *rows = pathlib.Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
    names = header.split()
    for row in rows:
        fields = dict(zip(names, row.split()))
        if me in (int(fields["uid"]), int(fields["cuid"])):
            ident = int(fields[names[1]])
            seen = f"sysv {kind} {ident}"
            if kind == "shm":
                address = libc.shmat(ident, None, SHM_RDONLY)
                if address not in (None, ctypes.c_void_p(-1).value):
                    seen += f" holding {ctypes.string_at(address, 16)!r}"
            found.append(seen)
print(json.dumps(found))
"""


def ipc_of(uid: int) -> list[str]:
    """What `uid` owns (or created) in /dev/shm, /dev/mqueue and System V IPC, as root sees
    it; independent of the sandbox's own code."""
    found = []
    for directory in (Path("/dev/shm"), Path("/dev/mqueue")):  # noqa: S108 - not temp files
        if directory.is_dir():
            found += [str(e) for e in directory.iterdir() if e.lstat().st_uid == uid]
    for kind in ("shm", "msg", "sem"):
        header, *rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()
        names = header.split()
        for row in rows:
            fields = dict(zip(names, row.split(), strict=False))
            if uid in (int(fields["uid"]), int(fields["cuid"])):
                found.append(f"sysv {kind} {fields[names[1]]}")
    return sorted(found)


def remove_ipc_of(uid: int) -> None:
    """As root: remove what `uid` owns in /dev/shm, /dev/mqueue and System V IPC."""
    libc = ctypes.CDLL(None, use_errno=True)
    removers = {"shm": libc.shmctl, "msg": libc.msgctl, "sem": libc.semctl}
    for found in ipc_of(uid):
        if found.startswith("sysv "):
            _, kind, ident = found.split()
            removers[kind](int(ident), 0, None)  # IPC_RMID
        elif Path(found).is_dir() and not Path(found).is_symlink():
            shutil.rmtree(found, ignore_errors=True)
        else:
            Path(found).unlink(missing_ok=True)


def plant_as(uid: int) -> list[str]:
    """Runs PLANT_IPC as `uid`, outside any sandbox; what `uid` then owns."""
    python, extra_env = sandbox_python()
    subprocess.run(
        [python, "-c", PLANT_IPC],
        env=base_env(**extra_env),
        cwd="/",
        capture_output=True,
        check=True,
        user=uid,
        group=uid,
        extra_groups=[],
    )
    return ipc_of(uid)


@pytest.fixture
def ipc_uids() -> Iterator[tuple[int, int]]:
    """Two uids of this test's alone (no process, no IPC object): one for the sandbox, one
    for a bystander whose objects the sandbox must not touch. Anything left goes after."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the sandbox must run under a uid of its own")
    sandbox_uid, bystander_uid = free_uids(2, first=61000)
    yield sandbox_uid, bystander_uid
    for uid in (sandbox_uid, bystander_uid):
        remove_ipc_of(uid)


def start_sandbox_as(uid: int, logs: Path, **env: str) -> tuple[Service, SandboxHome]:
    home = make_sandbox_home(uid)
    full_env = sandbox_env(home, **{**LIMITS, **env})
    service = start_service("sandbox", full_env, logs, as_sandbox_user=True, uid=uid, cwd=home.root)
    return service, home


def find_ipc(sandbox: Service, task: str | None = None) -> list[str]:
    found = json.loads(run(sandbox, FIND_IPC, task=task)["output"])
    assert isinstance(found, list)
    return found


def test_ipc_objects_do_not_outlive_their_task(ipc_uids: tuple[int, int], tmp_path: Path) -> None:
    uid, bystander = ipc_uids
    bystanders_objects = plant_as(bystander)
    sandbox, home = start_sandbox_as(uid, tmp_path)
    try:
        made = json.loads(run(sandbox, PLANT_IPC, task="task-a")["output"])
        in_a_next_run = find_ipc(sandbox, "task-a")
        assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
        in_b = find_ipc(sandbox, "task-b")
    finally:
        sandbox.stop()
        shutil.rmtree(home.root, ignore_errors=True)
    assert len(in_a_next_run) == len(made), (made, in_a_next_run)  # a task keeps its own
    assert in_b == [], f"task b found {in_b}"
    # Another user's objects, though the sandbox could see some of them, are left alone.
    assert len(bystanders_objects) >= 5 and ipc_of(bystander) == bystanders_objects


def test_ipc_objects_wait_for_the_last_live_task(ipc_uids: tuple[int, int], tmp_path: Path) -> None:
    # Nothing tells which task made an IPC object: while another task is live, they stay.
    uid, _ = ipc_uids
    sandbox, home = start_sandbox_as(uid, tmp_path)
    try:
        run(sandbox, "print('live')", task="task-t")
        made = json.loads(run(sandbox, PLANT_IPC, task="task-a")["output"])
        assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
        while_t_lives = find_ipc(sandbox, "task-t")
        assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-t")[0] == 204
        after_t = find_ipc(sandbox, "task-b")
    finally:
        sandbox.stop()
        shutil.rmtree(home.root, ignore_errors=True)
    assert (len(while_t_lives), after_t) == (len(made), []), (made, while_t_lives, after_t)


def test_with_keep_workspace_ipc_objects_outlive_their_task(
    ipc_uids: tuple[int, int], tmp_path: Path
) -> None:
    uid, _ = ipc_uids
    sandbox, home = start_sandbox_as(uid, tmp_path, TENANTRY_SANDBOX_KEEP_WORKSPACE="true")
    try:
        made = json.loads(run(sandbox, PLANT_IPC, task="task-a")["output"])
        assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
        in_b = find_ipc(sandbox, "task-b")
    finally:
        sandbox.stop()
        shutil.rmtree(home.root, ignore_errors=True)
    assert len(in_b) == len(made), (made, in_b)


def test_a_restarted_sandbox_starts_with_no_ipc_objects(
    ipc_uids: tuple[int, int], tmp_path: Path
) -> None:
    # Left under the same uid by code of an earlier server (code can kill its server).
    uid, _ = ipc_uids
    assert len(plant_as(uid)) >= 5
    sandbox, home = start_sandbox_as(uid, tmp_path)
    try:
        found = find_ipc(sandbox)
    finally:
        sandbox.stop()
        shutil.rmtree(home.root, ignore_errors=True)
    assert found == [], f"a run of the new server found {found}"


def test_the_termination_log_carries_nothing_from_one_task_to_the_next(
    ipc_uids: tuple[int, int], tmp_path: Path
) -> None:
    """The kubelet makes a container's /dev/termination-log writable by every user: code of one
    task could leave a note there for the next. It is emptied with the task's files."""
    uid, _ = ipc_uids
    # Where the sandbox's user can reach it (pytest's tmp_path is root's alone).
    log_dir = Path(tempfile.mkdtemp(prefix="tenantry-termination-"))
    log_dir.chmod(0o755)
    log_file = log_dir / "termination-log"
    log_file.touch()
    log_file.chmod(0o666)  # as the kubelet makes it
    sandbox, home = start_sandbox_as(uid, tmp_path, TENANTRY_SANDBOX_TERMINATION_LOG=str(log_file))
    leave = f"open({str(log_file)!r}, 'w').write('SECRET-OF-TASK-A')\nprint('left')"
    read = f"print(repr(open({str(log_file)!r}).read()))"
    try:
        assert run(sandbox, leave, task="task-a")["output"].strip() == "left"
        in_a = run(sandbox, read, task="task-a")["output"].strip()
        assert sandbox_request(sandbox, "DELETE", "/v1/workspaces/task-a")[0] == 204
        in_b = run(sandbox, read, task="task-b")["output"].strip()
    finally:
        sandbox.stop()
        shutil.rmtree(home.root, ignore_errors=True)
        shutil.rmtree(log_dir, ignore_errors=True)
    assert (in_a, in_b) == ("'SECRET-OF-TASK-A'", "''")


# Code that takes its server's port: it asks the server to stop (SIGTERM: its uid may signal
# the server, and in a pod the server's handler makes PID 1 take it), waits for the listening
# socket to close while the server still waits for the runs in flight (this one), binds the
# port itself and answers the next request: the runtime's, with the token. Kept somewhere that
# outlives the container (a kept workspace, an emptyDir, an IPC object), the token lets a
# later run ask its server for runs no run owns; meanwhile it also reads other tasks' code and
# answers them as it likes.
TAKE_THE_PORT = """
import os, signal, socket, time
evidence, port = {evidence!r}, {port}
os.kill(os.getppid(), signal.SIGTERM)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
deadline = time.monotonic() + 8
while True:
    try:
        listener.bind(("127.0.0.1", port))
        break
    except OSError:
        if time.monotonic() > deadline:
            print("the port stayed the server's")
            raise SystemExit(0)
        time.sleep(0.01)
listener.listen()
open(os.path.join(evidence, "bound"), "w").close()
listener.settimeout(8)
try:
    client, _ = listener.accept()
except socket.timeout:
    raise SystemExit(0)
client.settimeout(5)
head = client.recv(65536)
open(os.path.join(evidence, "captured"), "wb").write(head)
body = b'{{"exitCode": 0, "output": "forged", "timedOut": false, "truncated": false, "durationSeconds": 0}}'
client.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\n"
               b"Connection: close\\r\\n\\r\\n" % len(body) + body)
client.close()
print("captured")
"""


def test_a_run_cannot_take_its_servers_port_and_the_next_request_with_its_token(
    start_sandbox: StartSandbox, evidence: Path
) -> None:
    """A stopping server keeps its port until it exits: should it let go while it still waits
    for the runs in flight, a run (which may make it stop: it has the server's uid) could
    listen there and read the token off the runtime's next request."""
    sandbox = start_sandbox(**LIMITS)
    port = int(sandbox.url.rsplit(":", 1)[1])
    hostile: dict[str, Any] = {}
    code = TAKE_THE_PORT.format(evidence=str(evidence), port=port)
    thread = threading.Thread(target=lambda: hostile.update(answer=run(sandbox, code)))
    thread.start()
    deadline = time.monotonic() + 10
    while not (evidence / "bound").exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    # The runtime's next request, as it sends every one: with the token.
    with contextlib.suppress(OSError):
        sandbox_request(sandbox, "POST", "/v1/execute", {"language": "sh", "code": "echo hi"})
    thread.join(timeout=60)
    captured = (evidence / "captured").read_bytes() if (evidence / "captured").exists() else b""
    assert SANDBOX_TOKEN.encode() not in captured, captured
    assert not (evidence / "bound").exists(), hostile
    assert "the port stayed the server's" in hostile["answer"]["output"], hostile
