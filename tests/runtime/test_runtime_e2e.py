"""End to end: a scripted model server, a sandbox process and a runtime process on loopback.

POST /v1/tasks → TaskRequest → assistant asks the model → the model replies with a python
block → CodeRequest → coder runs it in the sandbox → CodeOutput → assistant asks the model
again, now with the output → final answer → TaskResult → the HTTP response.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import aiohttp
import pytest

from tests.support.runtime_services import (
    MODEL_API_KEY,
    TENANT,
    SandboxHome,
    Service,
    StartRuntime,
    StartSandbox,
    call,
    json_lines,
)
from tests.support.scripted_model import (
    CODE,
    FAILING_FIRST,
    HUGE_REPLY,
    MANY_BLOCKS,
    SECOND_REPLY_RAN,
    ScriptedModel,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ASSISTANT_ONLY = [{"name": "assistant", "kind": "assistant", "topicType": "default"}]


def sandbox_config(sandbox: Service, home: SandboxHome) -> dict[str, Any]:
    return {"url": sandbox.url, "tokenFile": str(home.token_file), "timeoutSeconds": 10}


async def test_a_task_runs_code_in_the_sandbox_and_answers_with_its_output(
    model: ScriptedModel,
    start_sandbox: StartSandbox,
    sandbox_home: SandboxHome,
    start_runtime: StartRuntime,
) -> None:
    sandbox = start_sandbox()
    runtime = start_runtime(
        model={"baseUrl": f"{model.url}/v1"}, sandbox=sandbox_config(sandbox, sandbox_home)
    )
    assert (await call("GET", f"{runtime.url}/readyz"))[0] == 200

    task = {"topicType": "default", "content": "What is 7 times the sum of 1 to 100?"}
    status, body = await call("POST", f"{runtime.url}/v1/tasks", task)

    assert status == 200, (body, runtime.logs())
    assert "sum: 35350" in body["result"]  # computed by the sandbox, not by the script
    assert f"cwd: {sandbox_home.workspace}" in body["result"]
    task_id = body["taskId"]

    # The model was called twice, with the key from the key file, the second time with the
    # output of the code.
    assert [r["authorization"] for r in model.requests] == [f"Bearer {MODEL_API_KEY}"] * 2
    first, second = (r["messages"] for r in model.requests)
    assert first[0]["role"] == "system"
    assert first[0]["content"].startswith("You are a test assistant.")
    assert first[1]["content"] == task["content"]
    assert second[-1]["content"].startswith("Output of the code (exit code 0):\n")
    assert "sum: 35350" in second[-1]["content"]

    # Every step is in the runtime's audit log, with the tenant, and nothing was dropped.
    audit = json_lines(runtime.extra["audit"])
    assert {record["tenant"] for record in audit} == {TENANT}
    steps = [
        (r["event"], r.get("messageType"), r.get("topic"), r.get("sender") or r.get("actor"))
        for r in audit
        if r.get("taskId") == task_id
    ]
    assert steps == [
        ("message", "TaskRequest", "default/acme", None),
        ("message", "CodeRequest", "code/acme", "assistant/acme"),
        ("code_execution", None, None, "coder/acme"),
        ("message", "CodeOutput", "default/acme", "coder/acme"),
        ("message", "TaskResult", "tenantry.results/acme", "assistant/acme"),
    ]
    assert all(r["decision"] == "delivered" for r in audit if r["event"] == "message")
    (execution,) = (r for r in audit if r["event"] == "code_execution")
    digest = hashlib.sha256(CODE.encode()).hexdigest()
    assert (execution["sha256"], execution["exitCode"], execution["language"]) == (
        digest,
        0,
        "python",
    )
    assert execution["durationSeconds"] >= 0
    # The sandbox logged the same run under the same tenant.
    sandbox_runs = [r for r in json_lines(sandbox.stdout) if r["event"] == "code_execution"]
    assert [(r["tenant"], r["sha256"]) for r in sandbox_runs] == [(TENANT, digest)]
    # The task is over: the file its code wrote went with its workspace.
    assert list(sandbox_home.workspace.iterdir()) == []

    status, health = await call("GET", f"{runtime.url}/healthz")
    assert (status, health["tenant"], health["messages"]) == (
        200,
        TENANT,
        {"delivered": 4, "dropped": 0},
    )


async def code_task(
    model: ScriptedModel,
    start_sandbox: StartSandbox,
    sandbox_home: SandboxHome,
    start_runtime: StartRuntime,
    content: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A task answered (200) by a runtime with a sandbox: its answer and its code runs' records."""
    sandbox = start_sandbox()
    runtime = start_runtime(
        model={"baseUrl": f"{model.url}/v1"}, sandbox=sandbox_config(sandbox, sandbox_home)
    )
    task = {"topicType": "default", "content": content}
    status, body = await call("POST", f"{runtime.url}/v1/tasks", task)
    assert status == 200, (body, runtime.logs())
    runs = [r for r in json_lines(runtime.extra["audit"]) if r["event"] == "code_execution"]
    return body, runs


async def test_a_reply_of_many_code_blocks_runs_only_a_tasks_five(
    model: ScriptedModel,
    start_sandbox: StartSandbox,
    sandbox_home: SandboxHome,
    start_runtime: StartRuntime,
) -> None:
    """A task runs at most 5 code blocks, however many one reply holds: each block was run,
    and its output (up to the sandbox's 64 KiB) joined into the next request to the model, so
    one reply of 256 Ki characters held some 20,000 runs and a gigabyte of output."""
    _, runs = await code_task(model, start_sandbox, sandbox_home, start_runtime, f"{MANY_BLOCKS}40")
    assert len(runs) == 5
    output = model.requests[-1]["messages"][-1]["content"]
    assert "run 4\n" in output and "run 5\n" not in output, output
    assert output.endswith(
        "[tenantry: 35 more code block(s) of the reply were not run: at most 5 code runs per task]"
    ), output


async def test_blocks_left_unrun_after_a_failing_one_do_not_spend_a_tasks_runs(
    model: ScriptedModel,
    start_sandbox: StartSandbox,
    sandbox_home: SandboxHome,
    start_runtime: StartRuntime,
) -> None:
    """The coder stops at a reply's first failing block; the blocks after it never ran, and the
    model may still use those runs (found by review: five blocks sent spent the five)."""
    body, runs = await code_task(
        model, start_sandbox, sandbox_home, start_runtime, f"{FAILING_FIRST}4"
    )
    assert [r["exitCode"] for r in runs] == [3, 0]
    assert SECOND_REPLY_RAN in body["result"] and "```" not in body["result"], body


async def test_requests_cannot_name_a_tenant_and_readiness_follows_the_sandbox(
    model: ScriptedModel,
    start_sandbox: StartSandbox,
    sandbox_home: SandboxHome,
    start_runtime: StartRuntime,
) -> None:
    sandbox = start_sandbox()
    runtime = start_runtime(
        model={"baseUrl": f"{model.url}/v1"}, sandbox=sandbox_config(sandbox, sandbox_home)
    )
    tasks = f"{runtime.url}/v1/tasks"
    status, body = await call(
        "POST", tasks, {"topicType": "default", "content": "hi", "tenant": "globex"}
    )
    assert status == 400
    assert "unknown field(s) tenant" in body["error"]
    assert "serves tenant 'acme' and no other" in body["error"]
    status, body = await call("POST", tasks, {"topicType": "code", "content": "print(1)"})
    assert status == 400
    assert "topic type 'code' is not served here; served: default" in body["error"]
    status, body = await call("POST", tasks, ["not", "an", "object"])
    assert status == 400
    assert model.requests == []  # nothing reached the model
    assert json_lines(runtime.extra["audit"]) == []  # nor the runtime

    assert (await call("GET", f"{runtime.url}/readyz"))[0] == 200
    sandbox.stop()
    status, body = await call("GET", f"{runtime.url}/readyz")
    assert (status, body["error"]) == (503, "the sandbox does not answer")
    assert (await call("GET", f"{runtime.url}/healthz"))[0] == 200  # alive all the same


async def test_a_task_without_a_result_in_time_gets_504(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime(
        agents=[{"name": "assistant", "kind": "assistant", "topicType": "default"}],
        model={"baseUrl": f"{model.url}/slow/v1"},
        taskTimeoutSeconds=1.5,
    )
    started = time.monotonic()
    status, body = await call(
        "POST", f"{runtime.url}/v1/tasks", {"topicType": "default", "content": "hi"}
    )
    assert status == 504
    assert time.monotonic() - started < 10
    assert body["error"].startswith(f"task {body['taskId']} got no result within 1.5 s")
    assert "taskTimeoutSeconds" in body["error"]
    # Giving up on the task cancelled its model call: the model sees the caller leave.
    await asyncio.wait_for(model.caller_left.wait(), timeout=5)
    assert (model.stalled, model.abandoned) == (1, 1)
    # And the runtime stops cleanly on SIGTERM, as in a pod.
    runtime.stop()
    assert runtime.proc.returncode == 0
    assert "Traceback" not in runtime.logs()


async def healthz_answers(url: str) -> bool:
    """Whether /healthz answers 200 within a generous 10 s (a stalled event loop does not)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{url}/healthz") as response,
        ):
            return response.status == 200
    except TimeoutError:
        return False


async def test_a_huge_model_reply_does_not_stall_the_runtime(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime(agents=ASSISTANT_ONLY, model={"baseUrl": f"{model.url}/v1"})
    tasks = f"{runtime.url}/v1/tasks"
    # 1 MiB of fences opened and never closed: over the reply limit, refused with a task error.
    # Under it, 200 KiB of the same is parsed (no code in it) and is the answer.
    for size, expected_status in [(2**20, 502), (200 * 2**10, 200)]:
        task = asyncio.create_task(
            call("POST", tasks, {"topicType": "default", "content": f"{HUGE_REPLY}{size}"})
        )
        probes = 0
        while not task.done():
            assert await healthz_answers(runtime.url), (
                f"/healthz went unanswered while the runtime handled a {size}-character reply"
            )
            probes += 1
            await asyncio.sleep(0.05)
        status, body = await task
        assert (status, probes > 0) == (expected_status, True), body
        if status == 502:
            assert body["error"] == (
                f"the model's reply has {size} characters, more than the runtime takes "
                "(262144); the task is refused"
            )
        else:
            assert len(body["result"]) == size


async def test_tasks_beyond_the_in_flight_limit_get_429_at_once(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime(
        env={"TENANTRY_MAX_TASKS_IN_FLIGHT": "2"},
        agents=ASSISTANT_ONLY,
        model={"baseUrl": f"{model.url}/slow/v1"},
        taskTimeoutSeconds=60,
    )
    tasks = f"{runtime.url}/v1/tasks"
    task = {"topicType": "default", "content": "hi"}
    held = [asyncio.create_task(call("POST", tasks, task)) for _ in range(2)]
    deadline = time.monotonic() + 30
    while model.stalled < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.05)
    assert model.stalled == 2, runtime.logs()

    status, body = await call("POST", tasks, task)
    assert (status, body) == (
        429,
        {
            "error": "the runtime already has 2 tasks in flight, its limit "
            "(TENANTRY_MAX_TASKS_IN_FLIGHT); retry later"
        },
    )
    # Answered while both tasks are still held: at once, not when one of them ends.
    assert not any(t.done() for t in held)
    assert model.stalled == 2  # the refused task never reached the model

    model.release.set()  # the stalled model calls fail: both tasks end with 502
    assert [status for status, _ in await asyncio.gather(*held)] == [502, 502]
    # Room again: the next task is taken (and fails at the released model, not with 429).
    status, body = await call("POST", tasks, task)
    assert status == 502, body
