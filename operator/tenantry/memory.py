"""Freed memory goes back to the system once the operator has gone quiet.

CPython gives back its small-object arenas when they empty, but what it freed of larger blocks
(the parsed body of a watch event, a page of a list) stays in the C allocator's heap, and the
process's resident size stays at the peak of its busiest moment: after provisioning a thousand
tenants, or a restart over them, tens of MiB the process no longer uses (docs/benchmarks.md,
memory). glibc's `malloc_trim` returns those pages. It walks the heap (milliseconds), so it runs
once the operator has been quiet for a few seconds — its queue empty and no watch event handled
— not after every pass.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
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
    """Trims once the queue has drained and nothing has happened for `seconds`.

    Called whenever the queue drains; `activity` is called for every watch event handled. Both
    count: after a restart our queue drains while Kopf is still handing over the events of its
    initial lists (most change nothing a reconcile reads, so they queue nothing), for several
    seconds over a thousand tenants, and a trim in the middle of that returned too little: a
    second trim from outside once the events had stopped gave back another 17 MiB (measured
    before the other changes of that day: docs/bench/operator-memory.md, 2026-11-30 afternoon).
    """

    def __init__(
        self,
        is_idle: Callable[[], bool],
        seconds: float = QUIET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._is_idle = is_idle
        self._seconds = seconds
        self._clock = clock
        self._last = float("-inf")  # the clock at the last drain or event
        self._timer: asyncio.TimerHandle | None = None
        self.trims = 0

    def __call__(self) -> None:
        self._last = self._clock()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._seconds, self._fire)

    def activity(self) -> None:
        """A watch event was handled: the quiet spell starts again (no timer is armed for it:
        an event that queues work drains the queue later, and one that queues none after a
        drain puts off the trim the drain asked for)."""
        self._last = self._clock()

    def _fire(self) -> None:
        self._timer = None
        if MALLOC_TRIM is None or not self._is_idle():
            return  # busy again: the next drain asks again
        left = self._last + self._seconds - self._clock()
        if left > 0:  # something happened since: wait out the rest of the spell
            self._timer = asyncio.get_running_loop().call_later(left, self._fire)
            return
        MALLOC_TRIM(0)
        self.trims += 1
        # The bench reads the operator's resident size at rest after this (bench/harness.py).
        metrics.MEMORY_TRIMS.inc()
