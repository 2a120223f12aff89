"""Running one piece of tenant code in a limited subprocess: the sandbox server's engine.

Each run is a fresh process in a new session, so it leads its own process group, in the
workspace directory, with an environment built from nothing (the server's env, with its
token file path, is never inherited), rlimits on CPU, address space, file size, open files,
processes and core dumps, and a wall-clock limit. When a run ends in any way (exit, time
limit, cancellation) its whole process group is killed, so nothing it started in the
background outlives it.

The runner is also the reaper of what runs leave behind. Killed grandchildren are re-parented
to the nearest "child subreaper", else to PID 1; in a container PID 1 is this server, and a
process that never reaps its adopted children fills the pod's PID limit (and the user's
RLIMIT_NPROC) with zombies. So the server marks itself a subreaper (on any host, not only as
PID 1), and `sweep()` reaps adopted zombies and kills adopted processes that no active run
owns: among them any that left their run's group with setsid() to dodge the group kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import SandboxLimits

log = logging.getLogger(__name__)

TIMEOUT_EXIT_CODE = 124
"""Reported for a run killed at the time limit, as `timeout(1)` does."""

_LANGUAGES = {"python": "python", "py": "python", "python3": "python"}
_LANGUAGES.update({"sh": "sh", "shell": "sh", "bash": "bash"})
# After the run's group is killed the pipe closes at once; only a process that left the
# group can hold it open, and a run does not wait for that one longer than this.
_DRAIN_SECONDS = 2.0
_PR_SET_CHILD_SUBREAPER = 36


def normalize_language(language: str) -> str | None:
    """The sandbox's name for a code block's language, or None if it cannot run it."""
    return _LANGUAGES.get(language.strip().lower())


def code_digest(code: str) -> str:
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    output: str
    timed_out: bool
    truncated: bool
    duration_seconds: float


def _command(language: str, code: str) -> list[str]:
    if language == "python":
        # -I: ignore PYTHON* variables and the user site directory; -B: write no bytecode.
        return [sys.executable, "-I", "-B", "-c", code]
    return ["/bin/sh" if language == "sh" else "bash", "-c", code]


def _clean_env(workdir: Path) -> dict[str, str]:
    # The interpreter's directory comes first so that `python` in a shell block is the
    # interpreter the sandbox runs python blocks with.
    path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def _limit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def _limiter(limits: SandboxLimits) -> Callable[[], None]:
    # The CPU limit backs up the wall-clock one for a process that escapes the group kill.
    cpu_seconds = int(limits.timeout_seconds) + 1

    def apply_limits() -> None:
        # Runs in the child between fork and exec: no locks, no logging.
        _limit(resource.RLIMIT_CPU, cpu_seconds)
        _limit(resource.RLIMIT_AS, limits.memory_bytes)
        _limit(resource.RLIMIT_FSIZE, limits.file_size_bytes)
        _limit(resource.RLIMIT_NOFILE, limits.open_files)
        _limit(resource.RLIMIT_NPROC, limits.max_processes)
        _limit(resource.RLIMIT_CORE, 0)

    return apply_limits


def _kill(pid: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _children(parent: int) -> Iterator[tuple[int, int, str]]:
    """(pid, process group, state) of each child of `parent`, read from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as stat:
                # The command name may hold spaces and parentheses; the fields after it do not.
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            yield int(entry.name), int(fields[2]), fields[0]


class _BoundedOutput:
    """Keeps the first `limit` bytes of a stream and drains (discards) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.truncated = False

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            room = self.limit - len(self.data)
            if len(chunk) > room:
                self.truncated = True
            if room > 0:
                self.data += chunk[:room]


_POLL_SECONDS = 0.05


async def poll_exit(pid: int) -> None:
    """Returns once child `pid` has terminated, without reaping it (the pidfd fallback)."""
    # WNOHANG: the check never blocks; WNOWAIT: the run still reaps its own child.
    exited = os.WEXITED | os.WNOHANG | os.WNOWAIT
    while os.waitid(os.P_PID, pid, exited) is None:  # noqa: ASYNC110, ASYNC222
        await asyncio.sleep(_POLL_SECONDS)


def _exit_future(pid: int) -> asyncio.Future[None]:
    """Resolves when child `pid` (not yet reaped) terminates.

    Through a pidfd, not asyncio's subprocess support: in Python 3.11 that only reports an
    exit once every pipe is closed, so a background grandchild holding stdout would make a
    finished run look hung until its time limit. Where there is no pidfd (an old kernel, or a
    sandboxed kernel that lacks it), the exit is polled for instead.
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return asyncio.ensure_future(poll_exit(pid))
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    return exited


class Runner:
    """Runs code in `workdir` within `limits`; one per sandbox server."""

    def __init__(self, workdir: Path, limits: SandboxLimits) -> None:
        self.workdir = workdir
        self.limits = limits
        self._groups: set[int] = set()  # process groups (= leader pids) of active runs

    @staticmethod
    def become_subreaper() -> bool:
        """Adopt orphaned descendants (Linux); without it they go to PID 1 instead."""
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)

    def sweep(self) -> None:
        """Reap adopted zombies; kill adopted processes that belong to no active run."""
        for pid, pgid, state in _children(os.getpid()):
            if state == "Z":
                # An active run's leader is reaped by that run, after its group is killed.
                if pid not in self._groups:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
            elif pgid not in self._groups:
                _kill(pid, group=False)

    def _spawn(self, language: str, code: str) -> subprocess.Popen[bytes]:
        # Synchronous on purpose: the child is registered before anything else can run on
        # the event loop, so a concurrent sweep() never takes it for a stray.
        proc = subprocess.Popen(  # noqa: S603 -- argv is built by _command, no shell parsing
            _command(language, code),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=_clean_env(self.workdir),
            start_new_session=True,
            preexec_fn=_limiter(self.limits),  # noqa: PLW1509 -- rlimits must be set in the child
        )
        self._groups.add(proc.pid)
        return proc

    async def run(self, language: str, code: str) -> RunOutcome:
        """Run `code` (its language already normalized) once."""
        started = time.monotonic()
        proc = self._spawn(language, code)
        try:
            return await self._supervise(proc, started)
        finally:
            self._groups.discard(proc.pid)
            self.sweep()

    async def _supervise(self, proc: subprocess.Popen[bytes], started: float) -> RunOutcome:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), proc.stdout
        )
        output = _BoundedOutput(self.limits.output_bytes)
        reader = asyncio.create_task(output.drain(stream))
        exited = _exit_future(proc.pid)
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.shield(exited), self.limits.timeout_seconds)
        except TimeoutError:
            timed_out = True
        finally:
            # start_new_session made the child a group leader, and it is not reaped yet, so
            # its pid still names its group. The group is killed after a normal exit too:
            # nothing the code started in the background may outlive the run.
            _kill(proc.pid, group=True)
        await exited
        returncode = proc.wait()  # already exited: reaps at once
        # On timeout wait_for cancels the reader; what it read so far stays in `output`.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, _DRAIN_SECONDS)
        transport.close()
        text = output.data.decode("utf-8", errors="replace")
        if output.truncated:
            text += f"\n[tenantry sandbox: output truncated at {self.limits.output_bytes} bytes]"
        if timed_out:
            limit = self.limits.timeout_seconds
            text += f"\n[tenantry sandbox: killed after the {limit:g} s time limit]"
            exit_code = TIMEOUT_EXIT_CODE
        else:
            # A death by signal is reported as shells do, so exit codes stay non-negative.
            exit_code = 128 - returncode if returncode < 0 else returncode
        return RunOutcome(
            exit_code=exit_code,
            output=text,
            timed_out=timed_out,
            truncated=output.truncated,
            duration_seconds=time.monotonic() - started,
        )
