"""Sessions: a tenant's conversations that continue, kept in the tenant's own volume.

A session is a history of exchanges (the user's task, the agent's final answer), one file per
session in `sessions.dir` (the tenant's PersistentVolumeClaim, docs/runtime-contract.md). The
history is kept with AutoGen's own state model, a `ChatCompletionContext`'s saved state.

Why a file per session and not a model context on the agent: the agent is one instance per
tenant, so a context kept on it is shared by every session of the tenant, and one session's
words reach another's model calls (microsoft/autogen#6088). Here a history exists only in its
file and, while a task of its session runs, in that task's own conversation.

Why the session is in the message and not the topic source: the source is the tenant, always
(the guard drops anything else), and an agent is created per source and never freed.

What keeps a history whole (each found by review, each with a test):
- one runtime per volume: the store holds an exclusive lock on the directory's `lock` file for
  its life (a pod replaced outside a rollout drains while its successor starts);
- one volume per tenant: the `tenant` file names the tenant the volume was first used by, and
  a volume of another tenant's (a Retained volume bound again) is refused;
- loads, saves and deletes of one session take its lock in turn, and a save of a task nobody
  waits for any more (timed out, cancelled) is not written: a DELETE answered 204 stays done;
- retention never forgets a session a task is using, and runs one at a time;
- files are written whole (a temporary file in the same directory, fsync, rename, fsync of the
  directory) and deleted with the directory fsynced; only regular files are read.

Retention: a history longer than `maxSessionBytes` loses its oldest exchanges (a turn that alone
is longer is refused, never saved over the history); sessions idle for `maxIdleDays` are
forgotten (at start, then hourly); beyond `maxSessions` the least recently used ones go. Each
forgetting is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import heapq
import json
import os
import re
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from autogen_core.model_context import ChatCompletionContextState
from autogen_core.models import LLMMessage
from pydantic import ValidationError

from .audit import AuditLog
from .refusals import ConfigError
from .runtime_json import SessionsConfig

SESSION_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""An opaque session id, as a caller picks it: one safe file name (no '.', no '/')."""

_SUFFIX = ".json"
_FORMAT = 1
_LOCK_FILE = "lock"
_TENANT_FILE = "tenant"
_LOCK_WAIT_SECONDS = 60.0
"""How long a starting runtime waits for the one before it to let go of the volume."""
_IDLE_SWEEP_SECONDS = 3600.0
_STRIPES = 64
"""Locks per store: a session's is picked by its id's hash; a bounded set, whatever the ids."""

ForgetReason = Literal["deleted", "idle", "limit"]


class SessionError(RuntimeError):
    """A session's history cannot be read or written; the message says which and why."""


class TurnTooLarge(SessionError):
    """One exchange alone is longer than maxSessionBytes: saving it would leave no history."""


def _session_file(name: str) -> str | None:
    """The session id a directory entry is the history of, or None."""
    if not name.endswith(_SUFFIX):
        return None
    session_id = name[: -len(_SUFFIX)]
    return session_id if SESSION_ID_RE.fullmatch(session_id) else None


class SessionStore:
    """The sessions of one tenant, in one directory that is the tenant's alone."""

    def __init__(self, config: SessionsConfig, audit: AuditLog, lock_fd: int) -> None:
        self.config = config
        self._audit = audit
        self._lock_fd = lock_fd  # held until the process ends
        self._stripes = [asyncio.Lock() for _ in range(_STRIPES)]
        self._retention = asyncio.Lock()
        self._in_use: Counter[str] = Counter()
        self._index: dict[str, float] = {}  # session id -> last used (mtime), for retention
        self._last_idle_sweep = 0.0

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, config: SessionsConfig, tenant: str, audit: AuditLog) -> SessionStore:
        """Take the volume for TENANT (waiting for a runtime that still holds it), refuse one
        that is another tenant's, and clean what a killed runtime left. Blocking: called once,
        before the server starts."""
        directory = config.directory
        try:
            lock_fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise ConfigError(f"sessions.dir={str(directory)!r} is not writable: {exc}") from None
        deadline = time.monotonic() + _LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(lock_fd)
                    raise ConfigError(
                        f"sessions.dir={str(directory)!r} is held by another runtime for more "
                        f"than {_LOCK_WAIT_SECONDS:g} s: one volume serves one runtime"
                    ) from None
                time.sleep(0.2)
        try:
            _claim_for(directory, tenant)
        except ConfigError:
            os.close(lock_fd)
            raise
        store = cls(config, audit, lock_fd)
        store._start()
        return store

    def _start(self) -> None:
        for entry in os.scandir(self.config.directory):
            if entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)  # a write cut short by a kill
            elif (session_id := _session_file(entry.name)) is not None:
                with contextlib.suppress(OSError):
                    self._index[session_id] = entry.stat(follow_symlinks=False).st_mtime
        self._forget_idle()
        self._forget_beyond_limit()

    # --- one session ----------------------------------------------------------------------

    def _path(self, session_id: str) -> Path:
        # Checked here too, not only by the HTTP API: a path is built from it.
        if not SESSION_ID_RE.fullmatch(session_id):
            raise SessionError(f"{session_id[:80]!r} is not a session id")
        return self.config.directory / f"{session_id}{_SUFFIX}"

    def _lock(self, session_id: str) -> asyncio.Lock:
        return self._stripes[hash(session_id) % _STRIPES]

    async def load(self, session_id: str) -> list[LLMMessage]:
        """The session's history, oldest first (empty for a new session). The session counts
        as in use (retention spares it) until `release`."""
        path = self._path(session_id)
        self._in_use[session_id] += 1
        try:
            async with self._lock(session_id):
                raw = await asyncio.to_thread(_read_regular_file, path)
            if raw is None:
                return []
            return await asyncio.to_thread(_decoded, raw, session_id)
        except BaseException:
            self.release(session_id)
            raise

    def release(self, session_id: str) -> None:
        """A task that loaded the session is over (saved or not)."""
        self._in_use[session_id] -= 1
        if self._in_use[session_id] <= 0:
            del self._in_use[session_id]

    async def save(
        self, session_id: str, messages: list[LLMMessage], abandoned: Callable[[], bool]
    ) -> bool:
        """Store the session's whole history, its oldest exchanges trimmed to the byte cap;
        False (nothing written) when `abandoned()` says nobody waits for this turn any more."""
        path = self._path(session_id)
        data = await asyncio.to_thread(_encoded_within, messages, self.config.max_session_bytes)
        async with self._lock(session_id):
            if abandoned():
                return False
            try:
                await asyncio.to_thread(_write_atomically, path, data)
            except OSError as exc:
                raise SessionError(
                    f"session {session_id}: its history cannot be saved: {exc.strerror or exc}"
                ) from exc
            self._index[session_id] = time.time()
        await self._retain()
        return True

    async def forget(self, session_id: str) -> bool:
        """Delete a session's history; False when there was none."""
        path = self._path(session_id)
        async with self._lock(session_id):
            try:
                await asyncio.to_thread(_unlink_durably, path)
            except FileNotFoundError:
                return False
            self._index.pop(session_id, None)
        self._audit.session_forgotten(session_id=session_id, reason="deleted")
        return True

    # --- retention ------------------------------------------------------------------------

    async def _retain(self) -> None:
        async with self._retention:
            if time.monotonic() - self._last_idle_sweep > _IDLE_SWEEP_SECONDS:
                for session_id in self._idle():
                    await self._drop(session_id, "idle")
            for session_id in self._least_recently_used():
                await self._drop(session_id, "limit")

    def _idle(self) -> list[str]:
        self._last_idle_sweep = time.monotonic()
        deadline = time.time() - self.config.max_idle_days * 86400
        return [s for s, used in self._index.items() if used < deadline and s not in self._in_use]

    def _least_recently_used(self) -> list[str]:
        excess = len(self._index) - self.config.max_sessions
        if excess <= 0:
            return []
        spared = ((used, s) for s, used in self._index.items() if s not in self._in_use)
        return [s for _used, s in heapq.nsmallest(excess, spared)]

    async def _drop(self, session_id: str, reason: ForgetReason) -> None:
        async with self._lock(session_id):
            if session_id in self._in_use:  # a task took it up meanwhile
                return
            self._index.pop(session_id, None)
            try:
                await asyncio.to_thread(_unlink_durably, self._path(session_id))
            except FileNotFoundError:
                return
        self._audit.session_forgotten(session_id=session_id, reason=reason)

    def _forget_idle(self) -> None:
        for session_id in self._idle():
            self._drop_now(session_id, "idle")

    def _forget_beyond_limit(self) -> None:
        for session_id in self._least_recently_used():
            self._drop_now(session_id, "limit")

    def _drop_now(self, session_id: str, reason: ForgetReason) -> None:
        """At start, before any task: no lock to take."""
        self._index.pop(session_id, None)
        with contextlib.suppress(FileNotFoundError):
            _unlink_durably(self._path(session_id))
            self._audit.session_forgotten(session_id=session_id, reason=reason)


# --- files (run in threads) -------------------------------------------------------------------


def _claim_for(directory: Path, tenant: str) -> None:
    """The volume is TENANT's: marked so on first use, refused when marked for another tenant
    (a volume kept by its Retain policy and bound again) or holding histories without a mark."""
    mark = directory / _TENANT_FILE
    try:
        raw = _read_regular_file(mark)
    except SessionError as exc:
        raise ConfigError(str(exc)) from None
    if raw is not None:
        owner = raw.decode(errors="replace").strip()
        if owner != tenant:
            raise ConfigError(
                f"sessions.dir holds the sessions of tenant {owner[:80]!r}, not {tenant!r}: this "
                "volume was another tenant's; give this tenant a volume of its own (or wipe it)"
            )
        return
    if any(_session_file(name) is not None for name in os.listdir(directory)):
        raise ConfigError(
            "sessions.dir holds sessions but does not say whose: refusing a volume that may be "
            "another tenant's; give this tenant a volume of its own (or wipe it)"
        )
    _write_atomically(mark, f"{tenant}\n".encode())


def _read_regular_file(path: Path) -> bytes | None:
    """The file's bytes; None when there is none. Only a regular file is read: a FIFO would
    block the reading thread for good, a symbolic link would read elsewhere."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SessionError(f"{path.name} cannot be read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise SessionError(f"{path.name} is not a regular file")
        chunks = []
        while chunk := os.read(descriptor, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def _decoded(raw: bytes, session_id: str) -> list[LLMMessage]:
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ValueError(f"not a history of format {_FORMAT}")
        return list(ChatCompletionContextState.model_validate(document["state"]).messages)
    except (ValueError, KeyError, TypeError, ValidationError) as exc:
        raise SessionError(
            f"session {session_id}: its stored history is unreadable ({type(exc).__name__}); "
            f"DELETE /v1/sessions/{session_id} to start it over"
        ) from None


def _document(messages: list[LLMMessage]) -> bytes:
    state = ChatCompletionContextState(messages=messages).model_dump()
    return json.dumps({"format": _FORMAT, "state": state}, separators=(",", ":")).encode()


def _encoded_within(messages: list[LLMMessage], limit: int) -> bytes:
    """The history as stored: the oldest exchanges (a task and its answer, two messages) go
    first until it fits in LIMIT bytes, each message measured once. The last exchange is the
    turn being saved: if it alone does not fit, the turn is refused."""
    sizes = [len(_document([message])) for message in messages]
    overhead = len(_document([]))
    start, total = 0, overhead + sum(size - overhead + 1 for size in sizes)
    while total > limit and start < len(messages) - 2:
        total -= sum(size - overhead + 1 for size in sizes[start : start + 2])
        start += 2
    data = _document(messages[start:])
    while len(data) > limit and start < len(messages) - 2:  # the estimate was short
        start += 2
        data = _document(messages[start:])
    if len(data) > limit:
        raise TurnTooLarge(
            f"this turn alone ({len(data)} bytes stored) is longer than the session may keep "
            f"(maxSessionBytes {limit}); it was not saved, and the session's history is unchanged"
        )
    return data


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
    _fsync_directory(path.parent)


def _unlink_durably(path: Path) -> None:
    """Delete, and make the deletion survive a crash: a history forgotten stays forgotten."""
    path.unlink()
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
