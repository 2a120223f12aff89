"""Audit streams for in-process tests of the runtime's audit log and guard."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


class FailingStream(io.StringIO):
    """A stream whose writes fail (a full disk) while `failing` is set."""

    failing = False

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


@dataclass(frozen=True)
class StdoutPipe:
    """This process's stdout as a pipe of 4 KiB (the smallest a pipe can be) that never blocks:
    when full, a write takes what fits and the rest is refused (BlockingIOError)."""

    read_fd: int
    write_fd: int

    def drained(self) -> str:
        """Whatever the pipe holds now (never blocks)."""
        with contextlib.suppress(BlockingIOError):
            return os.read(self.read_fd, 1 << 20).decode()
        return ""


@contextlib.contextmanager
def small_stdout_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[StdoutPipe]:
    """`sys.stdout` on a StdoutPipe for the block: an AuditLog opened on "-" writes to it, as
    `serve` writes to the pod's stdout."""
    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, 4096)
        os.set_blocking(write_fd, False)
        os.set_blocking(read_fd, False)
        monkeypatch.setattr(sys, "stdout", os.fdopen(write_fd, "w", closefd=False))
        yield StdoutPipe(read_fd, write_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)
