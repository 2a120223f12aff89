"""The audit log: one JSON object per line, every record naming the tenant.

Records are written synchronously, each handed to the kernel whole before the call returns:
the runtime is one event loop, a line is a few hundred bytes, and an audit trail that loses
its last lines on a crash would miss exactly the lines an investigation needs. If a write
fails the error propagates, so a message is never delivered without its record (fail closed).

A process crash loses nothing written: a record is in the kernel (the file, or the pipe of
the pod's stdout) once its call returns; only what the node itself loses when it fails (the
file system's unsynced pages) is beyond this, as it is for every log line of the pod.

The message record, one per message the guard judges, is most of the guard's cost, so it is
built directly as text (bench/runtime.py, docs/benchmarks.md): its keys are fixed, and every
string in it goes through the JSON encoder's own escaping (`encode_basestring_ascii`, the
function `json` uses for every string with `ensure_ascii`), so the line is byte for byte what
`json` writes for the same record (tests/runtime/test_audit_log.py checks it with
hypothesis). Files and stdout opened by `AuditLog.open` are written with one `os.write` per
record, with no buffer in between.
"""

from __future__ import annotations

import hashlib
import json
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


def _write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`: a write may take less than it is given (a pipe, a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AuditLog:
    """Writes to `stream` (written to and flushed per record), or, opened by `open`, to a file
    descriptor (one `os.write` per record)."""

    def __init__(self, tenant: str, stream: TextIO, *, owns_stream: bool = False) -> None:
        self.tenant = tenant
        self._stream = stream
        self._owns_stream = owns_stream
        self._fd: int | None = None
        self._owns_fd = False
        # What every message record holds between its time stamp and its own fields.
        self._message_head = f',"tenant":{_quote(tenant)},"event":"message","kind":'

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
        if self._owns_fd and self._fd is not None and self._fd != _CLOSED:
            os.close(self._fd)
            # A record written after this fails (EBADF), as one to a closed file did: it never
            # goes anywhere else, nor to whatever file takes the descriptor's number next.
            self._fd = _CLOSED
        elif self._owns_stream:
            self._stream.close()

    def _emit(self, line: str) -> None:
        """One whole record, in the kernel (or the stream, flushed) when this returns."""
        if self._fd is not None:
            _write_all(self._fd, line.encode())
        else:
            self._stream.write(line)
            self._stream.flush()

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        record = {"ts": round(time.time(), 6), "tenant": self.tenant, "event": event, **fields}
        self._emit(_encode(record) + "\n")

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
    ) -> None:
        """A message offered to the runtime, and whether the tenant guard let it through.

        `sender` is whatever the publisher claimed (autogen does not authenticate it).
        The record is what `_write("message", {...})` would write, built as text (module
        docstring): every value is quoted by the JSON encoder's own function.
        """
        line = (
            f'{{"ts":{round(time.time(), 6)!r}{self._message_head}{_quote(kind)}'
            f',"topic":{_quote_or_null(topic)},"sender":{_quote_or_null(sender)}'
            f',"recipient":{_quote_or_null(recipient)},"messageType":{_quote(message_type)}'
            f',"decision":{_quote(decision)}'
        )
        if task_id is not None:
            line += f',"taskId":{_quote(task_id)}'
        if reason is not None:
            line += f',"reason":{_quote(reason)}'
        self._emit(line + "}\n")

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
