"""The audit log: one JSON object per line, every record naming the tenant.

Records are written synchronously and flushed at once: the runtime is one event loop, a
line is a few hundred bytes, and an audit trail that loses its last lines on a crash would
miss exactly the lines an investigation needs. If a write fails the error propagates, so a
message is never delivered without its record (fail closed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any, Literal, TextIO

Decision = Literal["delivered", "dropped"]

# One encoder for every line: json.dumps(..., separators=...) builds a new JSONEncoder per
# call, which was an eighth of the audit's cost per message (bench/runtime.py measures it).
_encode = json.JSONEncoder(separators=(",", ":")).encode


def code_digest(code: str) -> str:
    """What a code run's record holds of the code: its SHA-256, never the code itself. The
    runtime and the sandbox each record a run; the same digest ties the two records together."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


class AuditLog:
    def __init__(self, tenant: str, stream: TextIO, *, owns_stream: bool = False) -> None:
        self.tenant = tenant
        self._stream = stream
        self._owns_stream = owns_stream

    @classmethod
    def open(cls, tenant: str, target: str) -> AuditLog:
        """`target` is a file path (appended to) or "-" for stdout, per TENANTRY_AUDIT_LOG."""
        if target == "-":
            return cls(tenant, sys.stdout)
        return cls(tenant, open(target, "a", encoding="utf-8"), owns_stream=True)

    def close(self) -> None:
        if self._owns_stream:
            self._stream.close()

    def _write(self, event: str, fields: dict[str, Any]) -> None:
        record = {"ts": round(time.time(), 6), "tenant": self.tenant, "event": event, **fields}
        self._stream.write(_encode(record) + "\n")
        self._stream.flush()

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
        """
        fields: dict[str, Any] = {
            "kind": kind,
            "topic": topic,
            "sender": sender,
            "recipient": recipient,
            "messageType": message_type,
            "decision": decision,
        }
        if task_id is not None:
            fields["taskId"] = task_id
        if reason is not None:
            fields["reason"] = reason
        self._write("message", fields)

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
