"""Sessions, end to end: a runtime process, the scripted model, and a sessions directory that
outlives the process (as the tenant's volume outlives its pod).

The leak these tests are written against is microsoft/autogen#6088: one model context shared by
every session of an agent, so that one user's words reach another user's model calls. Every
test that could see such a leak puts a canary in one session and looks for it in every model
request of the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import stop
from tests.support.runtime_services import (
    TENANT,
    StartRuntime,
    call,
    http_get,
    json_lines,
    refused_serve,
    run_module,
    serve_home,
    start_serve,
    wait_healthy,
)
from tests.support.scripted_model import CODE_REPLY, HUGE_REPLY, STALLING_TASK, ScriptedModel

pytestmark = pytest.mark.asyncio(loop_scope="session")

ASSISTANT = [
    {
        "name": "assistant",
        "kind": "assistant",
        "topicType": "default",
        "systemMessage": "You are a test assistant.",
    }
]


def sessions_config(directory: Path, **limits: Any) -> dict[str, Any]:
    directory.mkdir(exist_ok=True)
    return {"dir": str(directory), **limits}


def with_sessions(
    model: ScriptedModel, directory: Path, path: str = "/v1", **limits: Any
) -> dict[str, Any]:
    """runtime.json changes: one assistant on the scripted model (at PATH), sessions in DIRECTORY."""
    return {
        "agents": ASSISTANT,
        "model": {"baseUrl": f"{model.url}{path}"},
        "sessions": sessions_config(directory, **limits),
    }


def user_turns(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def histories(directory: Path) -> list[str]:
    """The session files of a sessions directory (beside them: `lock` and `tenant`)."""
    return [name for name in names_in(directory) if name.endswith(".json")]


def raw_post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A POST of `path` exactly as written: an HTTP client would resolve its dot segments."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def task(content: str) -> dict[str, str]:
    return {"topicType": "default", "content": content}


@pytest.fixture
def sessions_dir(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


async def test_two_sessions_keep_their_own_histories(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    model.requests.clear()
    status, body = await call(
        "POST", f"{runtime.url}/v1/sessions/alice/tasks", task("canary-ALICE-7f3 is my name")
    )
    assert status == 200, (body, runtime.logs())
    assert body["sessionId"] == "alice"
    assert body["result"] == CODE_REPLY  # no coder here: the model's reply is the answer
    status, body = await call("POST", f"{runtime.url}/v1/sessions/bob/tasks", task("I am Bob"))
    assert status == 200, body
    status, body = await call("POST", f"{runtime.url}/v1/sessions/alice/tasks", task("Who am I?"))
    assert status == 200, body
    status, body = await call("POST", f"{runtime.url}/v1/tasks", task("A task alone"))
    assert status == 200, body

    alice_first, bob, alice_second, alone = model.requests
    assert user_turns(alice_first) == ["canary-ALICE-7f3 is my name"]
    assert user_turns(bob) == ["I am Bob"]
    assert user_turns(alice_second) == ["canary-ALICE-7f3 is my name", "Who am I?"]
    assert [m["role"] for m in alice_second["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
    ]
    assert alice_second["messages"][2]["content"] == CODE_REPLY
    assert user_turns(alone) == ["A task alone"]
    for request in (bob, alone):
        assert "canary-ALICE" not in json.dumps(request)


async def test_concurrent_sessions_never_see_each_other(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Tasks of many sessions at once, each session's first turn a canary of its own: every
    model request carries its own session's canaries and no other's."""
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    model.requests.clear()
    names = [f"s{i}" for i in range(8)]

    async def turn(name: str, content: str) -> None:
        status, body = await call("POST", f"{runtime.url}/v1/sessions/{name}/tasks", task(content))
        assert status == 200, body

    await asyncio.gather(*(turn(name, f"canary-{name}-one") for name in names))
    await asyncio.gather(*(turn(name, f"canary-{name}-two") for name in names))

    assert len(model.requests) == 2 * len(names)
    for request in model.requests:
        turns = user_turns(request)
        owner = turns[0].split("-")[1]
        assert all(t.startswith(f"canary-{owner}-") for t in turns), turns
        assert turns in ([f"canary-{owner}-one"], [f"canary-{owner}-one", f"canary-{owner}-two"])


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
async def test_a_session_survives_a_runtime_restart(
    model: ScriptedModel,
    start_runtime: StartRuntime,
    sessions_dir: Path,
    stop_signal: signal.Signals,
) -> None:
    changes = with_sessions(model, sessions_dir)
    first = start_runtime(**changes)
    status, body = await call(
        "POST", f"{first.url}/v1/sessions/carol/tasks", task("canary-CAROL remember me")
    )
    assert status == 200, body
    os.kill(first.proc.pid, stop_signal)
    first.proc.wait(timeout=30)

    second = start_runtime(**changes)
    model.requests.clear()
    status, body = await call("POST", f"{second.url}/v1/sessions/carol/tasks", task("And now?"))
    assert status == 200, (body, second.logs())
    (request,) = model.requests
    assert user_turns(request) == ["canary-CAROL remember me", "And now?"]
    # Nothing a write in progress would leave behind, only the session's file.
    assert names_in(sessions_dir) == ["carol.json", "lock", "tenant"]


async def test_delete_forgets_a_session(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    url = f"{runtime.url}/v1/sessions/dave"
    assert (await call("POST", f"{url}/tasks", task("canary-DAVE")))[0] == 200
    status, _ = await call("DELETE", url)
    assert status == 204
    assert histories(sessions_dir) == []
    status, body = await call("DELETE", url)
    assert status == 404, body
    assert "dave has no history" in body["error"]

    model.requests.clear()
    assert (await call("POST", f"{url}/tasks", task("Hello again")))[0] == 200
    assert user_turns(model.requests[0]) == ["Hello again"]
    forgotten = [r for r in json_lines(runtime.extra["audit"]) if r["event"] == "session_forgotten"]
    assert forgotten == [
        {"ts": forgotten[0]["ts"], "tenant": "acme", "event": "session_forgotten",
         "sessionId": "dave", "reason": "deleted"}
    ]  # fmt: skip


async def test_one_task_per_session_at_a_time(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """A second task of a session in flight is refused, and so is deleting it: either would
    race the first task for the session's history."""
    # A model that never answers until the test ends.
    runtime = start_runtime(**with_sessions(model, sessions_dir, "/slow/v1"), taskTimeoutSeconds=3)
    url = f"{runtime.url}/v1/sessions/erin"
    first = asyncio.create_task(call("POST", f"{url}/tasks", task("one")))
    while not model.stalled:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.05)
    status, body = await call("POST", f"{url}/tasks", task("two"))
    assert status == 409, body
    assert "erin already has a task in flight" in body["error"]
    assert (await call("DELETE", url))[0] == 409
    # Another session is not held up by it.
    other = asyncio.create_task(call("POST", f"{runtime.url}/v1/sessions/frank/tasks", task("x")))
    assert (await first)[0] == 504
    assert (await other)[0] == 504
    # The timed-out task saved nothing: the session has no history, and takes tasks again.
    assert histories(sessions_dir) == []
    status, _ = await call("POST", f"{url}/tasks", task("three"))
    assert status == 504  # the slow model again, but not a 409


@pytest.mark.parametrize(
    ("session_id", "status"),
    [
        ("..", 400),
        (".hidden", 400),
        ("a.json", 400),
        ("x" * 65, 400),
        ("-leading-dash", 400),
        ("%2e%2e", 400),  # decoded to "..": a segment of its own, refused as an id
        ("a%2Fb", 400),  # decoded to "a/b" inside the one segment
        ("a%00b", 400),
        ("ok_ID-1", 200),
    ],
)
async def test_session_ids_are_one_safe_name(
    model: ScriptedModel,
    start_runtime: StartRuntime,
    sessions_dir: Path,
    session_id: str,
    status: int,
) -> None:
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    got, body = await asyncio.to_thread(
        raw_post, runtime.url, f"/v1/sessions/{session_id}/tasks", task("hi")
    )
    assert got == status, body
    if status == 400:
        assert "is not a session id" in body["error"]
    assert histories(sessions_dir) == (["ok_ID-1.json"] if status == 200 else [])
    assert names_in(sessions_dir.parent) == ["api-key", "runtime-0", "sessions"]


async def test_retention_trims_histories_and_forgets_the_least_recently_used(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    # One exchange is about 310 bytes stored: two fit, a third pushes the first out.
    runtime = start_runtime(
        **with_sessions(model, sessions_dir, maxSessions=2, maxSessionBytes=800)
    )
    for content in ("turn-one", "turn-two", "turn-three"):
        status, _ = await call("POST", f"{runtime.url}/v1/sessions/gina/tasks", task(content))
        assert status == 200
    model.requests.clear()
    await call("POST", f"{runtime.url}/v1/sessions/gina/tasks", task("turn-four"))
    kept = user_turns(model.requests[0])
    assert kept[-1] == "turn-four" and "turn-one" not in kept
    assert (sessions_dir / "gina.json").stat().st_size <= 800

    for name in ("hank", "ivy"):  # gina is the least recently used of three: she goes
        assert (await call("POST", f"{runtime.url}/v1/sessions/{name}/tasks", task("x")))[0] == 200
    assert histories(sessions_dir) == ["hank.json", "ivy.json"]
    audit = json_lines(runtime.extra["audit"])
    assert [(r["sessionId"], r["reason"]) for r in audit if r["event"] == "session_forgotten"] == [
        ("gina", "limit")
    ]


async def test_idle_sessions_are_forgotten_when_the_runtime_starts(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    changes = with_sessions(model, sessions_dir, maxIdleDays=1)
    first = start_runtime(**changes)
    for name in ("old", "new"):
        assert (await call("POST", f"{first.url}/v1/sessions/{name}/tasks", task("x")))[0] == 200
    first.stop()
    two_days_ago = (sessions_dir / "old.json").stat().st_mtime - 2 * 86400
    os.utime(sessions_dir / "old.json", (two_days_ago, two_days_ago))
    (sessions_dir / ".new.abc123").write_text("what a killed write left")

    second = start_runtime(**changes)
    assert names_in(sessions_dir) == ["lock", "new.json", "tenant"]
    audit = json_lines(second.extra["audit"])
    assert [(r["sessionId"], r["reason"]) for r in audit if r["event"] == "session_forgotten"] == [
        ("old", "idle")
    ]


async def test_a_history_that_cannot_be_read_is_refused_not_replaced(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    (sessions_dir / "judy.json").write_text('{"format": 1, "state": {"messages": [{"x": 1}]}}')
    model.requests.clear()
    status, body = await call("POST", f"{runtime.url}/v1/sessions/judy/tasks", task("hi"))
    assert status == 502, body
    assert "stored history is unreadable" in body["error"]
    assert "DELETE /v1/sessions/judy" in body["error"]
    assert model.requests == []
    assert (sessions_dir / "judy.json").read_text().startswith('{"format": 1')


async def test_without_sessions_the_session_api_says_how_to_enable_it(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime(agents=ASSISTANT, model={"baseUrl": f"{model.url}/v1"})
    status, body = await call("POST", f"{runtime.url}/v1/sessions/a/tasks", task("hi"))
    assert status == 404
    assert "spec.runtime.sessions" in body["error"]
    assert (await call("DELETE", f"{runtime.url}/v1/sessions/a"))[0] == 404


# Runs the runtime with every fsync of a history being written (a temporary file, named with a
# leading dot) taking SECONDS: a write in progress that a test can act during.
SLOW_HISTORY_WRITES = """
import os, sys, time
from tenantry_runtime.__main__ import main
fsync = os.fsync
def slow_fsync(descriptor):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{{descriptor}}"))
    if name.startswith(".") and not name.startswith(".tenant."):
        time.sleep({seconds})
    fsync(descriptor)
os.fsync = slow_fsync
sys.exit(main(sys.argv[1:]))
"""


async def test_a_session_deleted_while_its_timed_out_turn_was_written_stays_deleted(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Found by review: the request's end freed the session while its turn was still being
    written, so a DELETE answered 204 (or 404) and the history came back a moment later."""
    runtime = start_runtime(
        **with_sessions(model, sessions_dir),
        taskTimeoutSeconds=1,
        bootstrap=SLOW_HISTORY_WRITES.format(seconds=2),
    )
    url = f"{runtime.url}/v1/sessions/kate"
    status, _ = await call("POST", f"{url}/tasks", task("canary-KATE"))
    assert status == 504  # the answer came, its write outlasted the request
    status, _ = await call("DELETE", url)
    assert status == 204  # it waited for the write, then deleted what was written
    await asyncio.sleep(3)  # well past the write
    assert histories(sessions_dir) == []


async def test_a_kill_during_a_write_leaves_the_history_before_it(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    changes = with_sessions(model, sessions_dir)
    first = start_runtime(**changes)
    assert (await call("POST", f"{first.url}/v1/sessions/liz/tasks", task("turn-one")))[0] == 200
    first.stop()
    slow = start_runtime(**changes, bootstrap=SLOW_HISTORY_WRITES.format(seconds=60))
    second_turn = asyncio.create_task(
        call("POST", f"{slow.url}/v1/sessions/liz/tasks", task("turn-two"))
    )
    while not [n for n in names_in(sessions_dir) if n.startswith(".liz.")]:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    os.kill(slow.proc.pid, signal.SIGKILL)  # between the write and the rename
    slow.proc.wait(timeout=30)
    with contextlib.suppress(Exception):
        await second_turn

    third = start_runtime(**changes)
    assert names_in(sessions_dir) == ["liz.json", "lock", "tenant"]  # the torn write is gone
    model.requests.clear()
    assert (await call("POST", f"{third.url}/v1/sessions/liz/tasks", task("turn-three")))[0] == 200
    assert user_turns(model.requests[0]) == ["turn-one", "turn-three"]


async def test_retention_never_forgets_a_session_a_task_is_using(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Found by review: alice, the least recently used, was forgotten while her task ran, and
    her task then saved her whole history back; bob, just used, was not spared either."""
    runtime = start_runtime(**with_sessions(model, sessions_dir, maxSessions=2))
    for name in ("alice", "bob"):
        assert (await call("POST", f"{runtime.url}/v1/sessions/{name}/tasks", task("x")))[0] == 200
    busy = asyncio.create_task(
        call("POST", f"{runtime.url}/v1/sessions/alice/tasks", task(f"{STALLING_TASK}hm"))
    )
    while not model.stalled:  # noqa: ASYNC110 - a counter
        await asyncio.sleep(0.05)
    assert (await call("POST", f"{runtime.url}/v1/sessions/carol/tasks", task("x")))[0] == 200
    assert histories(sessions_dir) == ["alice.json", "carol.json"]
    model.release.set()  # alice's model call fails: her turn saves nothing
    assert (await busy)[0] == 502
    audit = json_lines(runtime.extra["audit"])
    assert [(r["sessionId"], r["reason"]) for r in audit if r["event"] == "session_forgotten"] == [
        ("bob", "limit")
    ]


async def test_a_turn_longer_than_a_history_may_be_is_refused_not_saved_over_it(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Found by review: a turn longer than maxSessionBytes emptied the session's history (every
    earlier exchange trimmed away, then the turn too) and still answered 200."""
    runtime = start_runtime(**with_sessions(model, sessions_dir, maxSessionBytes=8192))
    url = f"{runtime.url}/v1/sessions/mia/tasks"
    assert (await call("POST", url, task("canary-MIA first")))[0] == 200
    before = (sessions_dir / "mia.json").read_bytes()

    status, body = await call("POST", url, task("y" * 5000))  # over half the cap
    assert status == 413, body
    assert "at most 4096 bytes" in body["error"]
    status, body = await call("POST", url, task(f"{HUGE_REPLY}9000"))  # an answer over the cap
    assert status == 502, body
    assert "is longer than the session may keep (maxSessionBytes 8192)" in body["error"]
    assert (sessions_dir / "mia.json").read_bytes() == before


JSON = "application/json"


async def test_a_lone_surrogate_or_a_deeply_nested_body_is_answered_never_a_500(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Found by review: a session task's content with a lone surrogate (valid JSON, "\\ud800")
    failed its size check's encoding, and a body nested deeper than Python's recursion limit
    failed its parse: both a 500 with a traceback."""
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    lone = "a lone \ud800 surrogate"
    status, body = await call("POST", f"{runtime.url}/v1/sessions/sue/tasks", task(lone))
    assert status == 200, (body, runtime.logs())
    status, body = await call("POST", f"{runtime.url}/v1/sessions/sue/tasks", task("again"))
    assert status == 200, (body, runtime.logs())
    assert user_turns(model.requests[-1]) == [lone, "again"]

    for path in ("/v1/tasks", "/v1/sessions/sue/tasks"):
        deep = b"[" * 100_000
        status, body = await call("POST", runtime.url + path, raw=deep, content_type=JSON)
        assert (status, body["error"].split(" {")[0]) == (400, "the body must be a JSON object")
        # The body is read as UTF-8 whatever charset the request names (the review's next
        # finding: an unknown one was a 500; "punycode" decoded in quadratic time on the loop).
        sent = json.dumps(task("a charset of its own")).encode()
        odd = f"{JSON}; charset=nope"
        status, body = await call("POST", runtime.url + path, raw=sent, content_type=odd)
        assert status == 200, body
    assert "Traceback" not in runtime.logs()


async def test_only_regular_files_are_read_as_histories(
    model: ScriptedModel, start_runtime: StartRuntime, sessions_dir: Path
) -> None:
    """Found by review: a FIFO named like a history blocked its reader for good."""
    runtime = start_runtime(**with_sessions(model, sessions_dir))
    os.mkfifo(sessions_dir / "nora.json")
    (sessions_dir / "target").write_text("not a history")
    os.symlink(sessions_dir / "target", sessions_dir / "olga.json")
    for name in ("nora", "olga"):
        status, body = await call("POST", f"{runtime.url}/v1/sessions/{name}/tasks", task("x"))
        assert status == 502, body
        assert "cannot be read" in body["error"] or "not a regular file" in body["error"]


def refusal_of(config: dict[str, Any], home: Path) -> str:
    """The last line of a `serve` that refuses to start (exit 2, no traceback)."""
    return refused_serve(config, home).strip().splitlines()[-1]


def plain_config(model: ScriptedModel, sessions_dir: Path) -> dict[str, Any]:
    return {
        "tenant": TENANT,
        "topicTypes": ["default"],
        **with_sessions(model, sessions_dir),
        "model": None,
        "agents": [],
        "sandbox": None,
    }


async def test_a_volume_of_another_tenant_is_refused(
    model: ScriptedModel, sessions_dir: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(volume_of_another_tenant, model, sessions_dir, tmp_path)


def volume_of_another_tenant(model: ScriptedModel, sessions_dir: Path, tmp_path: Path) -> None:
    """Found by review: a Retained volume, bound again to another tenant's claim, would give
    that tenant the first one's histories under the same session ids."""
    config = plain_config(model, sessions_dir)
    (sessions_dir / "tenant").write_text("globex\n")
    (sessions_dir / "s1.json").write_text("{}")
    line = refusal_of(config, tmp_path / "one")
    assert "sessions.dir holds the sessions of tenant 'globex', not 'acme'" in line
    (sessions_dir / "tenant").unlink()
    line = refusal_of(config, tmp_path / "two")
    assert "holds sessions but does not say whose" in line
    (sessions_dir / "s1.json").unlink()  # wiped: it is acme's from now on
    refusal_of({**config, "tenant": "acme-"}, tmp_path / "three")  # a bad config
    assert (sessions_dir / "tenant").exists() is False  # nothing claimed by a refused start


async def test_one_volume_serves_one_runtime_at_a_time(
    model: ScriptedModel, sessions_dir: Path, tmp_path: Path
) -> None:
    await asyncio.to_thread(one_volume_one_runtime, model, sessions_dir, tmp_path)


def one_volume_one_runtime(model: ScriptedModel, sessions_dir: Path, tmp_path: Path) -> None:
    """Found by review: a pod replaced outside a rollout drains while its successor starts, and
    the successor's start-up swept away the first one's write in progress."""
    config = plain_config(model, sessions_dir)
    first = start_serve(config, tmp_path / "first")
    home = tmp_path / "second"
    # The second waits for the first (as a new pod for one that still drains), not refused.
    env = serve_home(config, home)
    second = run_module("serve", env, home)
    try:
        time.sleep(2)
        port = int(env["TENANTRY_PORT"])
        with contextlib.suppress(OSError):
            assert http_get(port, "/healthz")[0] != 200, "two runtimes on one volume"
        assert second.poll() is None  # waiting, not refused
        first.stop()
        wait_healthy(second, port, home / "serve.err")
    finally:
        first.stop()
        stop(second, timeout=10)
