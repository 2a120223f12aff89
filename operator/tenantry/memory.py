"""Freed memory goes back to the system once the operator has gone quiet.

CPython gives back its small-object arenas when they empty, but what it freed of larger blocks
(the parsed body of a watch event, a page of a list) stays in the C allocator's heap, and the
process's resident size stays at the peak of its busiest moment: after provisioning a thousand
tenants, or a restart over them, tens of MiB the process no longer uses (docs/benchmarks.md,
memory). glibc's `malloc_trim` returns those pages. It walks the heap (milliseconds), so it runs
once the queue has been idle for a few seconds, not after every pass.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

from tenantry import metrics

logger = logging.getLogger("tenantry.memory")

QUIET_SECONDS = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


MALLOC_TRIM = _malloc_trim()


class TrimWhenQuiet:
    """Called whenever the queue drains; trims once it has stayed drained for `seconds`."""

    def __init__(self, is_idle: Callable[[], bool], seconds: float = QUIET_SECONDS) -> None:
        self._is_idle = is_idle
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def __call__(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._seconds, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if MALLOC_TRIM is None or not self._is_idle():
            return  # busy again: the next drain schedules another
        MALLOC_TRIM(0)
        self.trims += 1
        # The bench reads the operator's resident size at rest after this (bench/harness.py).
        metrics.MEMORY_TRIMS.inc()
