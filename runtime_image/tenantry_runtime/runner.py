"""Running one piece of tenant code in a limited subprocess: the sandbox server's engine.

Each run is a fresh process in a new session, so it leads its own process group, in the
directory it is given (its task's workspace), with an environment built from nothing (the
server's env, with its token file path, is never inherited), rlimits on CPU, address space,
file size, open files, processes and core dumps, and a wall-clock limit. The code reaches the
interpreter as an anonymous in-memory file (memfd) the run inherits, never through argv
(every process on the node may read /proc/<pid>/cmdline) nor a file on disk (that a crash of
the server could leave for later runs to read).

When a run ends in any way (exit, time limit, cancellation) nothing it started may outlive
it: a process left behind could read later runs' code and files, and hold the uid's share of
RLIMIT_NPROC. Its process group is killed first; then `sweep()` kills every descendant of the
server that is not part of a run still in flight (see _strays). That catches what left the
group with setsid(), whether its parent died (it was re-parented to this server, a "child
subreaper") or lives on (it is still a descendant). A process cannot stop being a descendant: orphans go
to the nearest subreaper, and in a pod this server is PID 1 of its PID namespace anyway, so
the descendants are every process of the pod but those `kubectl exec` started. Outside a
container (tests) the same walk never touches a process that is not ours. Strays are stopped
(SIGSTOP) before any is killed, so none can fork again as its relatives die, and the sweep
repeats until none is left; adopted zombies are reaped, so none fills the PID limit.

Every stray is signalled, whatever its state. A pid that /proc shows as a zombie (`Z`) may
be a process whose main thread has exited while its other threads run on: waitpid cannot
reap it, but a signal to its pid reaches the whole process, so it dies and is reaped in a
later round. If strays are still there when a sweep gives up (a process the server may not
signal, one stuck in the kernel), the runner fails closed: it logs an error, the run that
left them is reported as failed (`ProcessesSurvived`) and no run starts until a later sweep
finds none (see `survivors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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

from .sandbox_settings import SandboxLimits

log = logging.getLogger(__name__)

TIMEOUT_EXIT_CODE = 124
"""Reported for a run killed at the time limit, as `timeout(1)` does."""

# After the run's group is killed the pipe closes at once; only a process that left the
# group can hold it open, and a run does not wait for that one longer than this.
_DRAIN_SECONDS = 2.0
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
# A sweep stops strays in rounds until none is left; should some resist (a process of
# another user cannot be signalled), it gives up after this and the next sweep tries again.
_SWEEP_GIVE_UP_SECONDS = 5.0


class ProcessesSurvived(RuntimeError):
    """Processes left by runs could not be killed: no code may run until they are gone.

    Raised by `Runner.run` for a run that starts while they are there (`outcome` None) or
    that ends with them there (`outcome` is what the run itself gave)."""

    def __init__(self, pids: tuple[int, ...], outcome: RunOutcome | None = None) -> None:
        super().__init__(
            f"{len(pids)} process(es) left by runs could not be killed (pids "
            f"{', '.join(map(str, pids))}); the sandbox runs no code until they are gone"
        )
        self.pids = pids
        self.outcome = outcome


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    output: str
    timed_out: bool
    truncated: bool
    duration_seconds: float


def _command(language: str, code_file: str) -> list[str]:
    if language == "python":
        # -I: ignore PYTHON* variables and the user site directory, and put neither the
        # script's directory nor the cwd on sys.path; -B: write no bytecode.
        return [sys.executable, "-I", "-B", code_file]
    return ["/bin/sh" if language == "sh" else "bash", code_file]


def _code_fd(code: str) -> int:
    """An anonymous in-memory file holding `code`: gone once no process holds it open."""
    fd = os.memfd_create("tenantry-code", os.MFD_CLOEXEC)
    with open(fd, "wb", closefd=False) as file:
        file.write(code.encode("utf-8"))
    return fd


def _clean_env(workdir: Path) -> dict[str, str]:
    # The interpreter's directory comes first so that `python` in a shell block is the
    # interpreter the sandbox runs python blocks with. HOME and TMPDIR are the task's
    # workspace, so that what code keeps there goes with the task.
    path = os.pathsep.join([os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
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


def _prctl(option: int, value: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(option, value, 0, 0, 0) == 0)


def _signal(pid: int, signum: int, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def _reap(zombie: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(zombie, os.WNOHANG)  # a zombie already: never blocks


def _processes() -> Iterator[tuple[int, int, int, str]]:
    """(pid, parent pid, session, state) of every process, read from /proc."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as stat:
                # The command name may hold spaces and parentheses; the fields after it do not.
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        yield int(entry.name), int(fields[1]), int(fields[3]), fields[0]


def _strays(server: int, in_flight: set[int]) -> list[tuple[int, int, str]]:
    """(pid, parent, state) of each descendant of `server` that is part of no run in flight,
    zombies included. `in_flight` are the runs' leaders; a run's processes are the leader's
    descendants and the members of its session (its leader's pid): an orphan that stayed in
    the session, such as a shell's `&` job, was adopted by the server but is still the run's.
    Neither can be faked: a process joins no session but its parent's or a new one."""
    table = {pid: (parent, session, state) for pid, parent, session, state in _processes()}
    found = []
    for pid, (parent, session, state) in table.items():
        if session in in_flight:
            continue
        # Walk up the parents: a run's leader first means the process is that run's; the
        # server first means it belongs to no run; neither means it is not ours at all. (The
        # table is not one atomic snapshot: the step limit guards against a reused pid's loop.)
        ancestor = pid
        for _ in range(len(table)):
            if ancestor in in_flight:
                break
            ancestor = table[ancestor][0]
            if ancestor == server:
                found.append((pid, parent, state))
                break
            if ancestor not in table:
                break
    return found


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
    """Runs code within `limits`, each run in the directory it is given; one per server."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self._leaders: set[int] = set()  # pids (= process groups) of the runs in flight
        self._survivors: tuple[int, ...] = ()  # strays the latest sweep could not end

    @property
    def survivors(self) -> tuple[int, ...]:
        """Pids of the strays the latest sweep gave up on; while any, no run starts."""
        return self._survivors

    @staticmethod
    def become_subreaper() -> bool:
        """Adopt orphaned descendants (Linux); without it they go to PID 1 instead."""
        return _prctl(_PR_SET_CHILD_SUBREAPER, 1)

    @staticmethod
    def close_to_runs() -> bool:
        """Make this process not dumpable (Linux): its /proc files (environ, mem, fd) are then
        root's, and no process without CAP_SYS_PTRACE reads them, its own uid's included. Runs
        have that uid; without this their code could read the token in the server's environ.
        The runs themselves are dumpable again once they exec (the kernel resets the flag)."""
        return _prctl(_PR_SET_DUMPABLE, 0)

    async def sweep(self) -> None:
        """Kill and reap every process of ours that no run in flight owns (see the top)."""
        server, give_up = os.getpid(), time.monotonic() + _SWEEP_GIVE_UP_SECONDS
        while found := _strays(server, self._leaders):
            # Zombies too: a `Z` pid may still have live threads (its main thread exited),
            # and a signal to the pid reaches them; to a dead process it does nothing. All
            # are stopped before any dies: a stopped process forks no replacement.
            for pid, _, _ in found:
                _signal(pid, signal.SIGSTOP)
            for pid, _, _ in found:
                _signal(pid, signal.SIGKILL)
            for pid, parent, state in found:
                if state == "Z" and parent == server:
                    _reap(pid)  # not yet, while it has threads: then a later round does
            if time.monotonic() > give_up:
                self._survivors = tuple(sorted(pid for pid, _, _ in found))
                log.error(
                    "%d process(es) left by runs could not be killed (pid, state: %s): "
                    "refusing to run code until they are gone",
                    len(found),
                    ", ".join(f"{pid} {state}" for pid, _, state in sorted(found)),
                )
                return
            await asyncio.sleep(0.01)  # let the killed die, and the server serve meanwhile
        if self._survivors:
            log.warning("the processes runs left are gone: running code again")
            self._survivors = ()

    def _spawn(self, language: str, code: str, workdir: Path) -> subprocess.Popen[bytes]:
        # Synchronous on purpose: the child is registered before anything else can run on
        # the event loop, so a concurrent sweep() never takes it for a stray.
        code_fd = _code_fd(code)
        try:
            proc = subprocess.Popen(  # noqa: S603 -- argv is built by _command, no shell parsing
                _command(language, f"/dev/fd/{code_fd}"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=_clean_env(workdir),
                pass_fds=(code_fd,),
                start_new_session=True,
                preexec_fn=_limiter(self.limits),  # noqa: PLW1509 -- rlimits must be set in the child
            )
        finally:
            os.close(code_fd)  # the run holds its own copy
        self._leaders.add(proc.pid)
        return proc

    async def run(self, language: str, code: str, workdir: Path) -> RunOutcome:
        """Run `code` (its language already normalized) once, in `workdir`.

        ProcessesSurvived if processes an earlier run left are still there (nothing is run),
        or if this run left some that could not be killed (the run is over)."""
        if self._survivors:
            raise ProcessesSurvived(self._survivors)
        started = time.monotonic()
        proc = self._spawn(language, code, workdir)
        outcome = None
        try:
            outcome = await self._supervise(proc, started)  # it sweeps before it returns
        finally:
            self._leaders.discard(proc.pid)
            if outcome is None:
                # Cancelled or failed before it swept: the leader (a zombie then) and what
                # it left are strays now.
                await self.sweep()
        if self._survivors:
            raise ProcessesSurvived(self._survivors, outcome)
        return outcome

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
            _signal(proc.pid, signal.SIGKILL, group=True)
        await exited
        returncode = proc.wait()  # already exited: reaps at once
        # What left the group may hold the pipe open: the sweep ends it before the drain.
        self._leaders.discard(proc.pid)
        await self.sweep()
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
