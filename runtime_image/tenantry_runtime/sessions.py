"""Sessions: a tenant's conversations that continue, kept in the tenant's own volume.

A session is a history of exchanges (the user's task, the agent's final answer), one file per
session in `sessions.dir` (the tenant's PersistentVolumeClaim, docs/runtime-contract.md). The
history is kept with AutoGen's own state API: a `ChatCompletionContext`'s `save_state`.

Why a file per session and not a model context on the agent: the agent is one instance per
tenant, so a context kept on it is shared by every session of the tenant, and one session's
words reach another's model calls (microsoft/autogen#6088). Here a history exists only in its
file and, while a task of its session runs, in that task's own conversation.

Why the session is in the message and not the topic source: the source is the tenant, always
(the guard drops anything else), and an agent is created per source and never freed.

Files are written whole and atomically (a temporary file in the same directory, fsync, rename,
fsync of the directory): a runtime killed mid-write leaves the old history or the new one,
never a torn one. Retention is the runtime's: each history is trimmed to `maxSessionBytes`
(oldest exchanges first), sessions idle for `maxIdleDays` are forgotten, and beyond
`maxSessions` the least recently used ones go. Each forgetting is audited.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Final, Literal

from autogen_core.model_context import UnboundedChatCompletionContext
from autogen_core.models import LLMMessage
from pydantic import ValidationError

from .audit import AuditLog
from .runtime_json import SessionsConfig

SESSION_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""An opaque session id, as a caller picks it: one safe file name (no '.', no '/')."""

_SUFFIX = ".json"
_FORMAT = 1

ForgetReason = Literal["deleted", "idle", "limit"]


class SessionError(RuntimeError):
    """A session's history cannot be read or written; the message says which and why."""


class SessionStore:
    """The sessions of one tenant, in one directory that is the tenant's alone."""

    def __init__(self, config: SessionsConfig, audit: AuditLog) -> None:
        self.config = config
        self._audit = audit

    def _path(self, session_id: str) -> Path:
        # Checked here too, not only by the HTTP API: a path is built from it.
        if not SESSION_ID_RE.fullmatch(session_id):
            raise SessionError(f"{session_id[:80]!r} is not a session id")
        return self.config.directory / f"{session_id}{_SUFFIX}"

    async def load(self, session_id: str) -> list[LLMMessage]:
        """The session's history, oldest first; empty for a session not seen before."""
        path = self._path(session_id)
        try:
            raw = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SessionError(f"session {session_id}: its history cannot be read: {exc}") from exc
        context = UnboundedChatCompletionContext()
        try:
            document = json.loads(raw)
            if not isinstance(document, dict) or document.get("format") != _FORMAT:
                raise ValueError(f"not a history of format {_FORMAT}")
            await context.load_state(document["state"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            raise SessionError(
                f"session {session_id}: its stored history is unreadable ({type(exc).__name__}); "
                f"DELETE /v1/sessions/{session_id} to start it over"
            ) from None
        return await context.get_messages()

    async def save(self, session_id: str, messages: list[LLMMessage]) -> None:
        """Store the session's whole history (trimmed to the byte cap), then apply retention."""
        path = self._path(session_id)
        kept = list(messages)
        data = await self._document(kept)
        # The oldest exchanges go first, a user message and the answer to it together.
        while len(data) > self.config.max_session_bytes and kept:
            kept = kept[2:]
            data = await self._document(kept)
        try:
            await asyncio.to_thread(_write_atomically, path, data)
        except OSError as exc:
            raise SessionError(f"session {session_id}: its history cannot be saved: {exc}") from exc
        await asyncio.to_thread(self._retain, session_id)

    async def _document(self, messages: list[LLMMessage]) -> bytes:
        state = await UnboundedChatCompletionContext(messages).save_state()
        return json.dumps({"format": _FORMAT, "state": state}, separators=(",", ":")).encode()

    async def forget(self, session_id: str) -> bool:
        """Delete a session's history; False when there was none."""
        path = self._path(session_id)
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        self._audit.session_forgotten(session_id=session_id, reason="deleted")
        return True

    def sweep(self) -> None:
        """At start: forget idle sessions and those beyond the limit, and remove what writes
        cut short by a killed runtime left (only one runtime writes here: the Deployment
        replaces its pod with strategy Recreate)."""
        for entry in os.scandir(self.config.directory):
            if entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
        self._retain(None)

    def _retain(self, keep: str | None) -> None:
        deadline = time.time() - self.config.max_idle_days * 86400
        live: list[tuple[float, str, Path]] = []
        for entry in os.scandir(self.config.directory):
            name = entry.name
            if not name.endswith(_SUFFIX) or not SESSION_ID_RE.fullmatch(name[: -len(_SUFFIX)]):
                continue  # a temporary file of a write in progress, or not ours
            try:
                modified = entry.stat().st_mtime
            except FileNotFoundError:
                continue
            session_id = name[: -len(_SUFFIX)]
            if modified < deadline and session_id != keep:
                self._drop(session_id, Path(entry.path), "idle")
            else:
                live.append((modified, session_id, Path(entry.path)))
        excess = len(live) - self.config.max_sessions
        if excess > 0:
            live.sort()  # least recently used first
            for _modified, session_id, path in [s for s in live if s[1] != keep][:excess]:
                self._drop(session_id, path, "limit")

    def _drop(self, session_id: str, path: Path, reason: ForgetReason) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            return
        self._audit.session_forgotten(session_id=session_id, reason=reason)


def _write_atomically(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, whatever moment the process dies at."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
