"""The sandbox server as a real process: auth, limits, timeouts, containment, and the executor."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock
from tenantry_runtime.executor import SandboxCodeExecutor, SandboxError
from tenantry_runtime.runner import poll_exit

from tests.support.ports import free_port
from tests.support.runtime_services import (
    SANDBOX_TOKEN,
    Service,
    StartSandbox,
    http_get,
    sandbox_request,
    wait_group_gone,
)

LIMITS = {
    "TENANTRY_SANDBOX_TIMEOUT_SECONDS": "2",
    "TENANTRY_SANDBOX_MEMORY_MB": "256",
    "TENANTRY_SANDBOX_MAX_PROCESSES": "32",
    "TENANTRY_SANDBOX_MAX_OUTPUT_BYTES": "4096",
    "TENANTRY_SANDBOX_CONCURRENCY": "1",
}
AUTH = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}


TASK = "task-1"
"""The task every run here belongs to, so its files stay in workspace_of(sandbox) between runs."""


def workspace_of(sandbox: Service) -> Path:
    workspace: Path = sandbox.extra["workspace"]
    return workspace / TASK


def execute(
    sandbox: Service, code: str, language: str = "python", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    port = int(sandbox.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST",
            "/v1/execute",
            body=json.dumps({"language": language, "code": code, "taskId": TASK}),
            headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def assert_still_serving(sandbox: Service) -> None:
    port = int(sandbox.url.rsplit(":", 1)[1])
    assert http_get(port, "/healthz")[0] == 200
    status, body = execute(sandbox, "print('still here')")
    assert (status, body["exitCode"], body["output"].strip()) == (200, 0, "still here")


def group_of(workspace: Path) -> int:
    """The process group the code under test wrote to `pgid` in the workspace."""
    return int((workspace / "pgid").read_text())


WRITE_PGID = "import os\nopen('pgid', 'w').write(str(os.getpgid(0)))\n"


@pytest.fixture
def sandbox(start_sandbox: StartSandbox) -> Service:
    return start_sandbox(TENANTRY_CANARY="server-env-must-not-leak", **LIMITS)


def test_only_the_tenants_bearer_token_is_accepted(sandbox: Service) -> None:
    refused = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {SANDBOX_TOKEN[:-1]}"},
        {"Authorization": f"Bearer {SANDBOX_TOKEN}x"},
        {"Authorization": f"Basic {SANDBOX_TOKEN}"},
        {"Authorization": SANDBOX_TOKEN},
        {"Authorization": "Bearer ünïcode"},
    ]
    for headers in refused:
        status, body = execute(sandbox, "print('ran')", headers=headers)
        assert status == 401, headers
        assert "token" in body["error"]
    assert execute(sandbox, "print('ran')")[0] == 200


def test_code_runs_in_the_workspace_with_a_clean_env(sandbox: Service) -> None:
    code = "import json, os\nprint(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))"
    status, body = execute(sandbox, code)
    assert (status, body["exitCode"], body["timedOut"]) == (200, 0, False)
    seen = json.loads(body["output"])
    assert Path(seen["cwd"]).resolve() == workspace_of(sandbox).resolve()
    assert set(seen["env"]) == {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONUNBUFFERED"}
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == seen["cwd"]
    assert "server-env-must-not-leak" not in body["output"]
    assert SANDBOX_TOKEN not in body["output"]


def test_shell_code_and_exit_codes(sandbox: Service) -> None:
    status, body = execute(sandbox, "echo from sh; exit 3", language="sh")
    assert (status, body["exitCode"], body["output"].strip()) == (200, 3, "from sh")
    status, body = execute(sandbox, "echo ${BASH_VERSION:+bash}", language="bash")
    assert (status, body["output"].strip()) == (200, "bash")
    status, body = execute(sandbox, "print(1)", language="ruby")
    assert status == 400
    assert "not supported" in body["error"]


def test_a_task_id_that_could_name_a_path_is_refused_in_words(sandbox: Service) -> None:
    words = "is not a task id: 1 to 64 letters, digits, '-' and '_'"
    body = {"language": "python", "code": "print(1)", "taskId": "../up"}
    status, answer = sandbox_request(sandbox, "POST", "/v1/execute", body)
    assert (status, answer) == (400, {"error": f"taskId='../up' {words}"})
    status, answer = sandbox_request(sandbox, "DELETE", "/v1/workspaces/a.b")
    assert (status, answer) == (400, {"error": f"taskId='a.b' {words}"})


def test_endless_loop_is_killed_with_its_whole_process_group(sandbox: Service) -> None:
    # A background grandchild in the same group must die too, not only the direct child.
    code = WRITE_PGID + "import subprocess\nsubprocess.Popen(['sleep', '300'])\nwhile True: pass\n"
    started = time.monotonic()
    status, body = execute(sandbox, code)
    elapsed = time.monotonic() - started
    assert status == 200
    assert body["timedOut"] is True
    assert body["exitCode"] == 124
    assert "killed after the 2 s time limit" in body["output"]
    assert 2 <= elapsed < 10
    assert wait_group_gone(group_of(workspace_of(sandbox))) == []
    assert_still_serving(sandbox)


def test_background_processes_do_not_outlive_a_normal_run(sandbox: Service) -> None:
    code = WRITE_PGID + "import subprocess\nsubprocess.Popen(['sleep', '300'])\nprint('done')\n"
    status, body = execute(sandbox, code)
    assert (status, body["exitCode"], body["timedOut"]) == (200, 0, False)
    assert wait_group_gone(group_of(workspace_of(sandbox))) == []


def test_a_process_that_leaves_its_group_is_still_killed(sandbox: Service) -> None:
    # A new session escapes the process-group kill; the sandbox adopts it as a subreaper
    # once its parent (the run) is gone, and kills it as a process no active run owns.
    code = (
        "import subprocess\n"
        "escaped = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "open('escaped', 'w').write(str(escaped.pid))\n"
    )
    status, body = execute(sandbox, code)
    assert (status, body["exitCode"]) == (200, 0)
    escaped = int((workspace_of(sandbox) / "escaped").read_text())
    assert wait_group_gone(escaped) == []  # it leads its own group


def test_fork_bomb_is_contained(sandbox: Service) -> None:
    code = WRITE_PGID + (
        "refused = False\n"
        "while True:\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        if not refused:\n"
        "            refused = True\n"
        "            print('fork refused', flush=True)\n"
    )
    status, body = execute(sandbox, code)
    assert status == 200
    assert body["timedOut"] is True
    assert "fork refused" in body["output"]  # RLIMIT_NPROC bound it, not only the timeout
    # Killed and reaped: not even zombies are left to count against the process limit.
    assert wait_group_gone(group_of(workspace_of(sandbox))) == []
    assert_still_serving(sandbox)


def test_memory_hog_is_contained(sandbox: Service) -> None:
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))\n"
    status, body = execute(sandbox, code)
    assert status == 200
    assert body["exitCode"] != 0
    assert body["timedOut"] is False
    assert "MemoryError" in body["output"]
    assert_still_serving(sandbox)


def test_output_is_truncated(sandbox: Service) -> None:
    status, body = execute(sandbox, "print('x' * 100_000)")
    assert (status, body["exitCode"], body["truncated"]) == (200, 0, True)
    assert len(body["output"]) < 4096 + 200
    assert "output truncated at 4096 bytes" in body["output"]


def test_runs_beyond_the_concurrency_limit_get_429(sandbox: Service) -> None:
    workspace = workspace_of(sandbox)
    first: dict[str, Any] = {}
    slow = "import time\nopen('started', 'w').close()\ntime.sleep(1.5)\nprint('slow done')"
    thread = threading.Thread(target=lambda: first.update(result=execute(sandbox, slow)))
    thread.start()
    deadline = time.monotonic() + 20
    while not (workspace / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    status, body = execute(sandbox, "print('second')")
    thread.join()
    assert status == 429
    assert "already running 1 run" in body["error"]
    assert first["result"][0] == 200
    assert first["result"][1]["output"].strip() == "slow done"


async def test_executor_runs_blocks_in_order_and_stops_at_the_first_failure(
    sandbox: Service,
) -> None:
    blocks = [
        CodeBlock(code="print('one')", language="python"),
        CodeBlock(code="echo two; exit 5", language="sh"),
        CodeBlock(code="print('never')", language="python"),
    ]
    async with SandboxCodeExecutor(sandbox.url, SANDBOX_TOKEN, timeout_seconds=2) as executor:
        assert await executor.ping()
        result = await executor.execute_code_blocks(blocks, CancellationToken())
    assert result.exit_code == 5
    assert "one" in result.output
    assert "two" in result.output
    assert "never" not in result.output
    assert [run.language for run in result.runs] == ["python", "sh"]
    assert [run.exit_code for run in result.runs] == [0, 5]
    assert result.runs[0].sha256 == hashlib.sha256(b"print('one')").hexdigest()
    # The sandbox audits each run too, with the same digest, naming its tenant.
    records = [json.loads(line) for line in sandbox.stdout.read_text().splitlines()]
    assert {(r["tenant"], r["sha256"]) for r in records} >= {("acme", result.runs[0].sha256)}


async def test_executor_with_a_wrong_token_or_no_sandbox_fails_clearly(sandbox: Service) -> None:
    block = [CodeBlock(code="print('x')", language="python")]
    async with SandboxCodeExecutor(sandbox.url, "not-the-token", timeout_seconds=2) as executor:
        with pytest.raises(SandboxError, match="401"):
            await executor.execute_code_blocks(block, CancellationToken())
    nowhere = f"http://127.0.0.1:{free_port()}"
    async with SandboxCodeExecutor(nowhere, SANDBOX_TOKEN, timeout_seconds=2) as executor:
        assert not await executor.ping()
        with pytest.raises(SandboxError, match="could not be reached"):
            await executor.execute_code_blocks(block, CancellationToken())


def test_exit_polling_sees_an_exit_without_reaping_the_child() -> None:
    # The fallback for kernels without pidfd_open: the run must still be the one to reap.
    child = subprocess.Popen(["sleep", "0.2"])
    asyncio.run(asyncio.wait_for(poll_exit(child.pid), timeout=10))
    state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state == "Z"
    assert child.wait(timeout=1) == 0
