"""Audit streams for in-process tests of the runtime's audit log and guard."""

from __future__ import annotations

import errno
import io


class FailingStream(io.StringIO):
    """A stream whose writes fail (a full disk) while `failing` is set."""

    failing = False

    def write(self, text: str) -> int:
        if self.failing:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)
