"""IPC objects: state code can leave outside the workspace that outlives every process.

/dev/shm is a writable tmpfs in every container, read-only root filesystem or not (`shm_open`
and `sem_open` make files there); /dev/mqueue holds POSIX message queues where it is mounted
(container runtimes mount it); System V shared memory segments, message queues and semaphore
sets live in the pod's IPC namespace with no process attached. A later task under the same
uid could read them, so they go when the workspace is wiped (workspace.py).

Only what the given uid owns is listed: the entries of those directories it owns, and the
System V objects it owns or created (the creator keeps the owner's rights after handing an
object to another uid with IPC_SET). The objects of any other user are never touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

SHARED_DIRECTORIES = (Path("/dev/shm"), Path("/dev/mqueue"))  # noqa: S108 - not temp files
_SYSVIPC = Path("/proc/sysvipc")
# The column of each /proc/sysvipc table that holds the object's id.
_ID_COLUMNS = {"shm": "shmid", "msg": "msqid", "sem": "semid"}
_IPC_RMID = 0


@dataclass(frozen=True)
class SysvObject:
    kind: str  # "shm", "msg" or "sem"
    ident: int


def owned_entries(directory: Path, uid: int) -> list[Path]:
    """The entries of `directory` that `uid` owns (none when it is not there)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    owned = []
    for entry in entries:
        with contextlib.suppress(OSError):  # gone in the meantime
            if entry.stat(follow_symlinks=False).st_uid == uid:
                owned.append(Path(entry.path))
    return owned


def sysv_objects(uid: int, tables: Path = _SYSVIPC) -> list[SysvObject]:
    """The System V IPC objects of this IPC namespace that `uid` owns or created."""
    found = []
    for kind, id_column in _ID_COLUMNS.items():
        try:
            header, *rows = (tables / kind).read_text().splitlines()
        except (OSError, ValueError):  # no System V IPC in this kernel
            continue
        names = header.split()
        for row in rows:
            fields = dict(zip(names, row.split(), strict=False))
            with contextlib.suppress(KeyError, ValueError):
                if uid in (int(fields["uid"]), int(fields["cuid"])):
                    found.append(SysvObject(kind, int(fields[id_column])))
    return found


def remove_sysv(objects: list[SysvObject]) -> int:
    """Remove `objects` (IPC_RMID); how many went. A shared memory segment still attached
    goes when its last process detaches."""
    libc = ctypes.CDLL(None, use_errno=True)
    removed = 0
    for found in objects:
        if found.kind == "shm":
            result = libc.shmctl(found.ident, _IPC_RMID, None)
        elif found.kind == "msg":
            result = libc.msgctl(found.ident, _IPC_RMID, None)
        else:
            result = libc.semctl(found.ident, 0, _IPC_RMID)
        removed += result == 0
    return removed
