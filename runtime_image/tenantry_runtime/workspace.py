"""The sandbox's workspace: a directory per task, gone when the task ends.

A task of the runtime may run code several times (the coder iterates), so its files must last
from one run to the next, and no longer: another task, perhaps for another end user of the
tenant, must not find them. Each run names its task (`taskId` in the execute body) and works
in `<workspace>/<taskId>`; the runtime says when a task has ended, and then everything in the
workspace that belongs to no live task goes, whatever the code wrote where (a task's files
outside its own directory included). A run with no task id is a task of its own, ended when
the run ends. A task that ended runs no more code: its caller is gone, and its files would
outlive it. The workspace is emptied when the server starts too (an emptyDir outlives a
container restart).

With `keep` (TENANTRY_SANDBOX_KEEP_WORKSPACE=true, the tenant asked for persistence), every run
works in the workspace itself and nothing is removed.

With `ipc`, what code leaves outside the workspace in IPC objects goes with it (ipc.py: the
entries of /dev/shm and /dev/mqueue the sandbox's uid owns, and its System V shared memory,
message queues and semaphores). Those name no task, so they go only when no task is live (and
at start): while tasks overlap, one task's objects wait for the last of them to end.

The container's termination-message file (/dev/termination-log, which the kubelet makes
writable by every user) is emptied on the same rule as the IPC objects.

Tasks that overlap in time are not isolated from each other: their code runs as one user,
which may read and write anything the other can. Nothing else outside the workspace is wiped
(the sandbox pod has no writable /tmp); HOME and TMPDIR of a run point into its task's
directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter, OrderedDict
from pathlib import Path

from .ipc import SHARED_DIRECTORIES, SysvObject, owned_entries, remove_sysv, sysv_objects

log = logging.getLogger(__name__)

# Ended task ids are remembered, to refuse their late runs, up to this many.
_ENDED_REMEMBERED = 4096


class TaskEnded(Exception):
    """A run for a task the runtime already ended."""


def _remove(path: Path) -> None:
    """Remove `path`, however code nested it and even where code took its own permissions away
    (it owns the files).

    Nothing recurses, and no path grows longer than two names below `path`: each directory's
    subdirectories are moved up into `path` under names of their own before it is emptied, so a
    tree thousands of levels deep (made with nothing but mkdir and chdir) costs no deeper a
    stack than a flat one. Python's own walk and rmtree recurse once a level and stop at its
    recursion limit, which left such a tree, and every task's files after it, in place."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
        return
    moved = 0
    pending = [path]
    while pending:
        directory = pending.pop()
        # Made ours again before it is listed or emptied. Only `path` and entries listed as
        # directories, not symlinks, reach here.
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o700)
        try:
            entries = list(os.scandir(directory))
        except OSError:
            entries = []
        for entry in entries:
            with contextlib.suppress(OSError):
                if not entry.is_dir(follow_symlinks=False):
                    os.unlink(entry.path)
                elif directory == path:
                    pending.append(Path(entry.path))
                else:
                    # Moving a directory to another parent needs write access to it.
                    os.chmod(entry.path, 0o700)
                    flat = path / f".removing-{moved}"
                    while os.path.lexists(flat):  # code may have made that name itself
                        moved += 1
                        flat = path / f".removing-{moved}"
                    os.rename(entry.path, flat)
                    pending.append(flat)
        if directory != path:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _empty(path: Path) -> None:
    """Empty a file code may write to but must not pass notes through (it stays: the kubelet
    reads it when the container ends)."""
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size:
            path.write_bytes(b"")
            log.info("emptied %s, written by a task no longer live", path)


def _remove_all(paths: list[Path], ipc_entries: list[Path], sysv: list[SysvObject]) -> None:
    for path in paths + ipc_entries:
        # One path that cannot go keeps nothing after it (the IPC objects among them).
        try:
            _remove(path)
        except Exception:
            log.exception("could not remove %s", path)
    removed = len(ipc_entries) + remove_sysv(sysv)
    if removed:
        log.info("removed %d IPC object(s) left by tasks no longer live", removed)


class Workspaces:
    """Which directory each run works in, and removing what ended tasks leave behind."""

    def __init__(
        self, root: Path, keep: bool, ipc: bool = False, termination_log: Path | None = None
    ) -> None:
        self.root = root
        self.keep = keep
        self.ipc = ipc  # remove this uid's IPC objects too, when no task is live
        self.termination_log = termination_log  # emptied too, when no task is live
        self._live: set[str] = set()  # tasks that have run code and not ended
        self._running: Counter[str] = Counter()  # runs in flight, per task
        self._ended: OrderedDict[str, None] = OrderedDict()
        # One removal at a time: two at once would list the same directories, move their levels
        # up under the same names, and leave what either was refused (`_remove`).
        self._wiping = asyncio.Lock()

    def enter(self, task_id: str) -> Path:
        """The directory a run of `task_id` works in; TaskEnded if that task has ended.

        `task_id` names a directory: the server lets only protocol.TASK_ID_RE through."""
        if task_id in self._ended:
            raise TaskEnded(task_id)
        self._live.add(task_id)
        self._running[task_id] += 1
        if self.keep:
            return self.root
        workdir = self.root / task_id
        workdir.mkdir(mode=0o700, exist_ok=True)
        return workdir

    async def leave(self, task_id: str) -> None:
        """A run of `task_id` is over (its processes are gone)."""
        self._running[task_id] -= 1
        if self._running[task_id] <= 0:
            del self._running[task_id]
            if task_id in self._ended:
                await self.wipe()  # it ended while this run was still going

    async def end(self, *task_ids: str) -> None:
        """These tasks are over: their files go now, or when their last run in flight ends."""
        for task_id in task_ids:
            self._live.discard(task_id)
            self._ended[task_id] = None
            self._ended.move_to_end(task_id)
        while len(self._ended) > _ENDED_REMEMBERED:
            self._ended.popitem(last=False)
        await self.wipe()

    async def end_all(self) -> None:
        await self.end(*self._live)

    async def wipe(self) -> None:
        """Remove everything in the workspace that belongs to no live task, nor to a run."""
        if self.keep:
            return
        async with self._wiping:
            await self._wipe()

    async def _wipe(self) -> None:
        kept = self._live | set(self._running)
        doomed = [entry for entry in self.root.iterdir() if entry.name not in kept]
        ipc_entries: list[Path] = []
        sysv: list[SysvObject] = []
        if self.ipc and not kept:
            # Listed now, not in the thread: a run that starts meanwhile keeps what it makes.
            uid = os.geteuid()
            ipc_entries = [path for d in SHARED_DIRECTORIES for path in owned_entries(d, uid)]
            sysv = sysv_objects(uid)
        if self.termination_log is not None and not kept:
            _empty(self.termination_log)
        # In a thread: a task may leave many files, and the event loop serves other runs.
        await asyncio.to_thread(_remove_all, doomed, ipc_entries, sysv)
