"""The audit log: one JSON object per line, every record naming the tenant.

Records are written synchronously, each handed to the kernel whole before the call returns:
the runtime is one event loop, a line is a few hundred bytes, and an audit trail that loses
its last lines on a crash would miss exactly the lines an investigation needs. If a write
fails the error propagates, so a message is never delivered without its record (fail closed).

A process crash loses nothing written: a record is in the kernel (the file, or the pipe of
the pod's stdout) once its call returns; only what the node itself loses when it fails (the
file system's unsynced pages) is beyond this, as it is for every log line of the pod.

One kind of record may wait: the record of a message the guard admitted (`message(...,
until_delivery=True)`). It is held in this process until the first of: the delivery of any
message (`GuardedAgentRuntime` calls `write_held` before it delivers one), any other record,
`HELD_RECORDS` records held, `close`, or the end of the event loop's turn. So a burst of
messages costs one write, not one each, and still no message is delivered before its record
is in the kernel; what a crash can lose is the records of messages admitted and not yet
delivered in the turn of the loop the crash ends (docs/security.md). A refusal is never held.

The message record, one per message the guard judges, is most of the guard's cost, so it is
built directly as text (bench/runtime.py, docs/benchmarks.md): its keys are fixed, and every
string in it goes through the JSON encoder's own escaping (`encode_basestring_ascii`, the
function `json` uses for every string with `ensure_ascii`), so the line is byte for byte what
`json` writes for the same record (tests/runtime/test_audit_log.py checks it with
hypothesis). Files and stdout opened by `AuditLog.open` are written with `os.write`, held
records and the record that follows them in one call, with no other buffer in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any, Literal, TextIO

Decision = Literal["delivered", "dropped"]

# One encoder for every line: json.dumps(..., separators=...) builds a new JSONEncoder per
# call, which was an eighth of the audit's cost per message (bench/runtime.py measures it).
_encode = json.JSONEncoder(separators=(",", ":")).encode

# The JSON of a string (quoted, escaped, ASCII only), as the encoder above writes it.
_quote: Callable[[str], str] = encode_basestring_ascii


def _quote_or_null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def code_digest(code: str) -> str:
    """What a code run's record holds of the code: its SHA-256, never the code itself. The
    runtime and the sandbox each record a run; the same digest ties the two records together."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


_CLOSED = -1  # the descriptor of a log `close` closed: writing to it fails

HELD_RECORDS = 64
"""At most this many admitted messages' records wait for a delivery (about 20 KiB): a burst
longer than this is written in several writes, and an agent that queues a million messages
in one turn of the loop does not hold a million lines here."""

_MESSAGE_BODIES = 256
"""At most this many admitted messages' record texts are kept for reuse (their topics and
agents are the tenant's own, their task ids at most 128 characters); past it they are all
dropped and built again."""

_MESSAGE_BODY_CHARS = 1024
"""A record text longer than this is built each time, never kept."""

_log = logging.getLogger(__name__)


def timestamp_of(time_ns: int) -> str:
    """A time as `json` writes `round(seconds, 6)`: the nearest microsecond, up to six decimals,
    trailing zeros dropped (the float's shortest repr is exactly that for times from 2001,
    written without an exponent, to 2106, while a microsecond is more than the float's
    precision). Half the cost of the float's round and repr, which were a fifth of a message
    record's cost (bench/runtime.py); the six digits padded by a number, not a format spec,
    whose parsing was half of what was left (0.57 µs against 1.03)."""
    seconds, micros = divmod((time_ns + 500) // 1000, 1_000_000)
    return f"{seconds}.{str(micros + 1_000_000)[1:]}".rstrip("0") if micros else f"{seconds}.0"


class AuditLog:
    """Writes to `stream` (written to and flushed per record), or, opened by `open`, to a file
    descriptor (one `os.write` per record)."""

    def __init__(self, tenant: str, stream: TextIO, *, owns_stream: bool = False) -> None:
        self.tenant = tenant
        self._stream = stream
        self._owns_stream = owns_stream
        self._fd: int | None = None
        self._owns_fd = False
        self._held: list[str] = []  # admitted messages' records, oldest first (module docstring)
        # What a write that failed part way left unwritten: it goes first, so nothing is written
        # twice and a line cut by the failure is completed, not repeated.
        self._unwritten = b""
        self._write_scheduled_on: asyncio.AbstractEventLoop | None = None
        # What every message record holds between its time stamp and its own fields.
        self._message_head = f',"tenant":{_quote(tenant)},"event":"message","kind":'
        # A message record less its time stamp, by its fields: a task's messages repeat the
        # same few, and quoting them was half a record's cost (bench/runtime.py).
        self._message_bodies: dict[tuple[str | None, ...], str] = {}

    @classmethod
    def open(cls, tenant: str, target: str) -> AuditLog:
        """`target` is a file path (appended to) or "-" for stdout, per TENANTRY_AUDIT_LOG."""
        log = cls(tenant, sys.stdout)
        if target == "-":
            try:
                fd = sys.stdout.fileno()
            except (AttributeError, OSError, ValueError):  # not a file: written as a stream
                return log
            sys.stdout.flush()  # whatever was printed before goes first, whole
            log._fd = fd
            return log
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        log._fd = os.open(target, flags, 0o666)  # as open(target, "a"): less the umask
        log._owns_fd = True
        return log

    def close(self) -> None:
        try:
            self.write_held()
        finally:
            if self._owns_fd and self._fd is not None and self._fd != _CLOSED:
                os.close(self._fd)
                # A record written after this fails (EBADF), as one to a closed file did: it
                # never goes anywhere else, nor to whatever file takes the descriptor's number.
                self._fd = _CLOSED
            elif self._owns_stream:
                self._stream.close()

    def _emit(self, line: str) -> None:
        """Every held record, then `line` (one whole record, or nothing), in the kernel (or the
        stream, flushed) when this returns. If the write fails nothing is lost or repeated:
        what was not written goes first with the next write, and the error propagates (a
        message whose record is not written is not delivered: fail closed)."""
        if self._held:
            line = "".join(self._held) + line
            self._held.clear()
        if self._fd is None:
            self._write_stream(line)
            return
        data = line.encode()
        if self._unwritten:
            data, self._unwritten = self._unwritten + data, b""
        try:
            written = os.write(self._fd, data)
        except BaseException:
            self._unwritten = data
            raise
        if written < len(data):  # a write may take less than it is given (a pipe, a signal)
            self._write_rest(self._fd, memoryview(data)[written:])

    def _write_rest(self, fd: int, rest: memoryview) -> None:
        try:
            while rest:
                rest = rest[os.write(fd, rest) :]
        finally:
            self._unwritten = bytes(rest)

    def _write_stream(self, line: str) -> None:
        try:
            self._stream.write(line)
        except BaseException:
            self._held.insert(0, line)  # a stream takes all of it or nothing
            raise
        self._stream.flush()

    def write_held(self) -> None:
        """Every held record into the stream now: called before a message is delivered."""
        # GuardedAgentRuntime asks this same question itself before it calls (guard.py): the
        # two change together.
        if self._held or self._unwritten:
            self._emit("")

    def _write_held_at_end_of_turn(self) -> None:
        self._write_scheduled_on = None
        try:
            self.write_held()
        except OSError:  # the next delivery tries again, and fails closed if this still fails
            _log.exception("the audit log could not be written")

    def _hold(self, line: str) -> None:
        if len(self._held) >= HELD_RECORDS - 1:  # as many as may wait: all go now, with this
            self._emit(line)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing would write it, so it is written now
            self._emit(line)
            return
        # A write is scheduled on the loop running now, or it is scheduled here: one whose write
        # is pending elsewhere may never run that write (it ended, or runs in another thread).
        # Asked of the running loop itself, not of the scheduled one (`is_closed`, a call per
        # message: bench/runtime.py counts them).
        if self._write_scheduled_on is not loop:
            loop.call_soon(self._write_held_at_end_of_turn)
            self._write_scheduled_on = loop
        self._held.append(line)

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        # The time stamp as a message record's (`timestamp_of`), so records never go back by
        # a microsecond from one line to the next whatever their kind.
        rest = _encode({"tenant": self.tenant, "event": event, **fields})
        self._emit(f'{{"ts":{timestamp_of(time.time_ns())},{rest[1:]}\n')

    def message(
        self,
        *,
        kind: Literal["publish", "send"],
        topic: str | None,
        sender: str | None,
        recipient: str | None,
        message_type: str,
        decision: Decision,
        task_id: str | None = None,
        reason: str | None = None,
        until_delivery: bool = False,
    ) -> None:
        """A message offered to the runtime, and whether the tenant guard let it through.

        `sender` is whatever the publisher claimed (autogen does not authenticate it).
        The record is what `_write("message", {...})` would write, built as text (module
        docstring): every value is quoted by the JSON encoder's own function.
        `until_delivery`: the record may be held until the message is delivered (module
        docstring); only for an admitted message, whose delivery calls `write_held`.
        """
        fields = (kind, topic, sender, recipient, message_type, decision, task_id, reason)
        body = self._message_bodies.get(fields)
        if body is None:
            body = (
                f"{self._message_head}{_quote(kind)}"
                f',"topic":{_quote_or_null(topic)},"sender":{_quote_or_null(sender)}'
                f',"recipient":{_quote_or_null(recipient)},"messageType":{_quote(message_type)}'
                f',"decision":{_quote(decision)}'
            )
            if task_id is not None:
                body += f',"taskId":{_quote(task_id)}'
            if reason is not None:
                body += f',"reason":{_quote(reason)}'
            body += "}\n"
            # A refusal's fields are whatever its sender chose, and a topic type has no bound
            # of autogen's: neither is kept.
            if reason is None and len(body) <= _MESSAGE_BODY_CHARS:
                if len(self._message_bodies) >= _MESSAGE_BODIES:
                    self._message_bodies.clear()
                self._message_bodies[fields] = body
        line = f'{{"ts":{timestamp_of(time.time_ns())}{body}'
        if until_delivery and decision == "delivered":
            self._hold(line)
        else:
            self._emit(line)

    def code_execution(
        self,
        *,
        actor: str,
        language: str,
        sha256: str,
        exit_code: int,
        duration_seconds: float,
        timed_out: bool,
        task_id: str | None = None,
    ) -> None:
        """One code run: who ran it, a digest of the code (never the code), and how it ended."""
        fields: dict[str, Any] = {
            "actor": actor,
            "language": language,
            "sha256": sha256,
            "exitCode": exit_code,
            "durationSeconds": round(duration_seconds, 3),
            "timedOut": timed_out,
        }
        if task_id is not None:
            fields["taskId"] = task_id
        self._write("code_execution", fields)

    def tool_call(
        self,
        *,
        actor: str,
        tool: str,
        arguments_sha256: str,
        duration_seconds: float,
        outcome: Literal["ok", "error", "refused"],
        task_id: str | None = None,
    ) -> None:
        """One tool call of an agent: which tool, a digest of its arguments (never the
        arguments: they may hold the tenant's data), how long it took, how it ended
        (`refused`: the runtime did not make the call the model asked for)."""
        fields: dict[str, Any] = {
            "actor": actor,
            "tool": tool,
            "argumentsSha256": arguments_sha256,
            "durationSeconds": round(duration_seconds, 3),
            "outcome": outcome,
        }
        if task_id is not None:
            fields["taskId"] = task_id
        self._write("tool_call", fields)

    def session_forgotten(
        self, *, session_id: str, reason: Literal["deleted", "idle", "limit"]
    ) -> None:
        """A session's history deleted: by its caller, or by retention (idle too long, or the
        least recently used beyond the tenant's limit)."""
        self._write("session_forgotten", {"sessionId": session_id, "reason": reason})
