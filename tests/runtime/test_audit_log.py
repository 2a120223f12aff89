"""The audit log's records: what `json` would write, and written before what they record.

The message record is built as text (audit.py); these tests hold it to the JSON encoder's
output for any strings, and hold a real `serve` process to the guarantee that no message is
delivered before its record is in the audit stream: with the stream blocked, nothing is.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from tenantry_runtime.audit import HELD_RECORDS, AuditLog, timestamp_of

from e2e.model_server import completion
from tests.support.audit_streams import FailingStream, small_stdout_pipe
from tests.support.ports import served
from tests.support.runtime_services import (
    MODEL_API_KEY,
    TENANT,
    call,
    serve_home,
    start_service,
)

# Any text, lone surrogates and control characters included: a message's strings are the
# tenant's (and an attacker's) to choose.
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=40)
MAYBE_TEXT = st.none() | ANY_TEXT


def encoded(line: str) -> str:
    """The line `json` writes for the record `line` holds, keys in its order."""
    return json.dumps(json.loads(line), separators=(",", ":")) + "\n"


@given(
    tenant=ANY_TEXT,
    kind=st.sampled_from(["publish", "send"]),
    topic=MAYBE_TEXT,
    sender=MAYBE_TEXT,
    recipient=MAYBE_TEXT,
    message_type=ANY_TEXT,
    decision=st.sampled_from(["delivered", "dropped"]),
    task_id=MAYBE_TEXT,
    reason=MAYBE_TEXT,
)
def test_a_message_record_is_what_json_writes(
    tenant: str,
    kind: Any,
    topic: str | None,
    sender: str | None,
    recipient: str | None,
    message_type: str,
    decision: Any,
    task_id: str | None,
    reason: str | None,
) -> None:
    stream = io.StringIO()
    AuditLog(tenant, stream).message(
        kind=kind,
        topic=topic,
        sender=sender,
        recipient=recipient,
        message_type=message_type,
        decision=decision,
        task_id=task_id,
        reason=reason,
    )
    line = stream.getvalue()
    assert line == encoded(line)
    assert line.isascii() and line.count("\n") == 1
    record = json.loads(line)
    expected = {
        "tenant": tenant,
        "event": "message",
        "kind": kind,
        "topic": topic,
        "sender": sender,
        "recipient": recipient,
        "messageType": message_type,
        "decision": decision,
        **({} if task_id is None else {"taskId": task_id}),
        **({} if reason is None else {"reason": reason}),
    }
    assert list(record) == ["ts", *expected]
    assert {k: v for k, v in record.items() if k != "ts"} == expected
    assert isinstance(record["ts"], float)


def test_a_file_gets_every_record_whole_and_in_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("an earlier line\n")  # appended to, never truncated
    log = AuditLog.open(TENANT, str(path))
    for n in range(3):
        log.message(
            kind="send",
            topic=None,
            sender=None,
            recipient=f"agent/{n}",
            message_type="Ping",
            decision="dropped",
            reason="x" * 70_000,  # longer than a pipe's buffer: still one whole line
        )
        # In the file as soon as the call returns: nothing waits in a buffer of ours.
        assert path.read_text().count("\n") == n + 2
    log.code_execution(
        actor="coder", language="python", sha256="0", exit_code=0, duration_seconds=0.5,
        timed_out=False,
    )  # fmt: skip
    log.close()
    with pytest.raises(OSError, match="Bad file descriptor"):  # closed: fails, goes nowhere
        log.message(
            kind="send", topic=None, sender=None, recipient="late/acme", message_type="Ping",
            decision="delivered",
        )  # fmt: skip
    lines = path.read_text().splitlines()
    assert lines[0] == "an earlier line"
    records = [json.loads(line) for line in lines[1:]]
    assert [r.get("recipient") for r in records] == ["agent/0", "agent/1", "agent/2", None]
    assert records[-1]["event"] == "code_execution"
    assert all(line + "\n" == encoded(line) for line in lines[1:])


@given(st.integers(min_value=10**18, max_value=2**32 * 10**9 - 1))  # 2001 to 2106
def test_a_time_stamp_is_the_microsecond_as_json_writes_it(time_ns: int) -> None:
    text = timestamp_of(time_ns)
    assert abs(Decimal(text) - Decimal(time_ns) / 10**9) <= Decimal("0.0000005")  # the nearest µs
    assert Decimal(text) * 10**6 % 1 == 0
    assert json.dumps(json.loads(text)) == text  # the float's own shortest form
    assert text == repr(round(float(text), 6))  # what the record held before: round(time, 6)


# --- held records: an admitted message's record waits, at most until its delivery ------------


def admitted(log: AuditLog, n: int, *, decision: Any = "delivered") -> None:
    """The record of message `n`, as the guard of a GuardedAgentRuntime writes it."""
    log.message(
        kind="publish", topic="default/acme", sender=None, recipient=None, message_type="Ping",
        decision=decision, task_id=str(n), until_delivery=True,
    )  # fmt: skip


def task_ids(stream: io.StringIO) -> list[str | None]:
    return [json.loads(line).get("taskId") for line in stream.getvalue().splitlines()]


async def test_held_records_go_first_and_in_order_with_the_next_record() -> None:
    stream = io.StringIO()
    log = AuditLog(TENANT, stream)
    for n in range(3):
        admitted(log, n)
    assert stream.getvalue() == ""
    log.tool_call(
        actor="assistant", tool="search", arguments_sha256="0", duration_seconds=0.1, outcome="ok"
    )
    assert task_ids(stream) == ["0", "1", "2", None]
    assert all(line + "\n" == encoded(line) for line in stream.getvalue().splitlines())


async def test_a_refusal_is_never_held() -> None:
    stream = io.StringIO()
    log = AuditLog(TENANT, stream)
    admitted(log, 0)
    admitted(log, 1, decision="dropped")
    assert task_ids(stream) == ["0", "1"]  # the held record first, then the refusal, at once


async def test_held_records_are_written_by_the_end_of_the_loops_turn() -> None:
    stream = io.StringIO()
    log = AuditLog(TENANT, stream)
    admitted(log, 0)
    admitted(log, 1)
    assert stream.getvalue() == ""
    await asyncio.sleep(0)  # nothing delivered them: the loop's next turn writes them
    assert task_ids(stream) == ["0", "1"]


async def test_no_more_than_HELD_RECORDS_records_wait() -> None:
    stream = io.StringIO()
    log = AuditLog(TENANT, stream)
    for n in range(HELD_RECORDS - 1):
        admitted(log, n)
    assert stream.getvalue() == ""
    admitted(log, HELD_RECORDS - 1)
    assert task_ids(stream) == [str(n) for n in range(HELD_RECORDS)]


def test_a_record_held_on_a_loop_that_stopped_first_is_written_on_the_next_loops_turn() -> None:
    """Review: a record held on a loop that stopped before its turn's end (its write left
    pending, the loop not closed) kept the records held later, on another loop, from being
    written by that loop's turn: only a closed loop was taken for one that would not write."""
    stream = io.StringIO()
    log = AuditLog(TENANT, stream)
    first = asyncio.new_event_loop()
    try:
        first.call_soon(admitted, log, 0)
        first.call_soon(first.stop)  # stops after this turn: the write it asked for never runs
        first.run_forever()
        assert stream.getvalue() == ""

        async def hold_another() -> None:
            admitted(log, 1)
            await asyncio.sleep(0)

        asyncio.run(hold_another())
        assert task_ids(stream) == ["0", "1"]
    finally:
        first.close()


def test_without_an_event_loop_no_record_is_held() -> None:
    stream = io.StringIO()
    admitted(AuditLog(TENANT, stream), 0)  # no loop's turn would ever end to write it
    assert task_ids(stream) == ["0"]


async def test_closing_the_log_writes_its_held_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog.open(TENANT, str(path))
    admitted(log, 0)
    admitted(log, 1)
    assert path.read_text() == ""
    log.close()
    assert [json.loads(line)["taskId"] for line in path.read_text().splitlines()] == ["0", "1"]


async def test_a_failed_write_keeps_the_held_records_and_raises() -> None:
    stream = FailingStream()
    stream.failing = True
    log = AuditLog(TENANT, stream)
    admitted(log, 0)
    with pytest.raises(OSError, match="No space left"):
        log.write_held()  # as a delivery does: it fails, and nothing is delivered
    await asyncio.sleep(0)  # the end of the turn's write fails too, and is only logged
    stream.failing = False
    admitted(log, 1)
    await asyncio.sleep(0)  # a failed end of turn does not keep the next from being asked for
    assert task_ids(stream) == ["0", "1"]  # nothing lost, nothing twice


async def test_a_write_cut_short_is_completed_never_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review: a write that failed part way (a pipe that filled) kept every held record, and
    the next write repeated the part already written, after a line cut in two."""
    with small_stdout_pipe(monkeypatch) as pipe:
        log = AuditLog.open(TENANT, "-")  # the pod's stdout, as serve writes it
        for n in range(40):  # about 8 KiB: more than the pipe holds
            admitted(log, n)
        with pytest.raises(BlockingIOError):
            log.write_held()
        text = pipe.drained()
        assert 0 < len(text) < 8000
        log.write_held()  # what was not written, from where the failed write stopped
        text += pipe.drained()
    assert [json.loads(line)["taskId"] for line in text.splitlines()] == [str(n) for n in range(40)]


# --- the real process: no delivery before the record is in the stream -----------------------


class BlockedAuditStream:
    """A FIFO as the runtime's audit log, filled so that its next write blocks until `drain`."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(self.read_fd, fcntl.F_SETPIPE_SZ, 4096)  # the smallest a pipe can be
        self.text = ""

    def fill(self) -> None:
        """Fill the pipe with lines of our own until one more byte would not fit."""
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            with contextlib.suppress(BlockingIOError):
                while True:
                    os.write(fd, b"#\n")
        finally:
            os.close(fd)

    def drain(self) -> str:
        """Whatever the pipe holds now, added to `text` (never blocks)."""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.read_fd, 65536):
                self.text += chunk.decode()
        return self.text

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.drain().splitlines() if line.startswith("{")]


@contextlib.asynccontextmanager
async def model_that_reads_the_audit(
    stream: BlockedAuditStream, seen: list[list[dict[str, Any]]]
) -> AsyncIterator[str]:
    """A model that, when called, notes every record the audit stream holds at that moment:
    its call is what the delivered TaskRequest makes the assistant do."""

    async def complete(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(stream.records())
        return web.json_response(completion(body["model"], "The answer is 42."))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", complete)
    async with served(app) as url:
        yield f"{url}/v1"


@pytest.mark.asyncio(loop_scope="session")
async def test_no_message_is_delivered_before_its_record_is_in_the_audit_stream(
    tmp_path: Path,
) -> None:
    stream = BlockedAuditStream(tmp_path / "audit.fifo")
    seen: list[list[dict[str, Any]]] = []
    (tmp_path / "api-key").write_text(MODEL_API_KEY + "\n")
    async with model_that_reads_the_audit(stream, seen) as model_url:
        config = {
            "tenant": TENANT,
            "topicTypes": ["default"],
            "agents": [{"name": "assistant", "kind": "assistant", "topicType": "default"}],
            "model": {
                "model": "scripted",
                "baseUrl": model_url,
                "apiKeyFile": str(tmp_path / "api-key"),
            },
            "sandbox": None,
        }
        env = serve_home(config, tmp_path / "home")
        env["TENANTRY_AUDIT_LOG"] = str(stream.path)
        runtime = await asyncio.to_thread(start_service, "serve", env, tmp_path / "home")
        try:
            stream.drain()
            stream.fill()
            task = asyncio.create_task(
                call(
                    "POST",
                    f"{runtime.url}/v1/tasks",
                    {"topicType": "default", "content": "What is the answer?"},
                )
            )
            # The audit stream takes nothing: the TaskRequest's record cannot be written, so
            # the TaskRequest is not delivered and the model is never asked.
            await asyncio.sleep(3)
            assert not seen, "a message was delivered while its record could not be written"
            assert not task.done()
            assert runtime.proc.poll() is None
            # The stream flows again: the task goes through, and when the model was asked,
            # the delivered TaskRequest's record was already in the stream.
            while not task.done():
                stream.drain()
                await asyncio.sleep(0.01)
            status, body = task.result()
            assert status == 200, (body, runtime.logs())
        finally:
            await asyncio.to_thread(runtime.stop)
            os.close(stream.read_fd)
    assert len(seen) == 1
    [request] = [
        r
        for r in seen[0]
        if r["messageType"] == "TaskRequest" and r.get("taskId") == body["taskId"]
    ]
    assert request["decision"] == "delivered" and request["tenant"] == TENANT
