"""A coalescing work queue: at most one reconcile per tenant at a time, retries with backoff.

Many events for one tenant (its own changes, its children's) collapse into one pending
reconcile; an event that arrives while that tenant is being reconciled schedules exactly one
more pass afterwards, so no change is ever missed and none is handled twice concurrently.

Two lanes, the follow-up lane served first: a pass that continues a tenant's work in progress
(one of its Deployments became available, its runtime pod refused to start) goes ahead of first
passes, retries, drift checks and every other event; one asked for later keeps its lane. Under
a burst of new tenants, the pass that turns a tenant Ready once its Deployments are available
then waits for the passes running now, not for every other tenant's first pass
(docs/benchmarks.md, latency). A tenant holds at most one worker at a time and its children
settle, so first passes wait only while more tenants than there are workers keep changing
(another controller fighting over their children, say); the drift timer's passes wait with
them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable

from tenantry import metrics

logger = logging.getLogger("tenantry.queue")

Work = Callable[[str], Awaitable[None]]

# Lanes, lower served first.
FOLLOW_UP, FIRST = 0, 1


class ReconcileQueue:
    def __init__(
        self,
        work: Work,
        concurrency: int,
        max_backoff: float = 60.0,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._work = work
        self._on_idle = on_idle  # called each time the last key is done
        self._concurrency = concurrency
        self._max_backoff = max_backoff
        # (lane, arrival, key); a key moved to the follow-up lane leaves a stale entry behind,
        # skipped when it comes up (see _next).
        self._queue: asyncio.PriorityQueue[tuple[int, int, str]] = asyncio.PriorityQueue()
        self._arrivals = itertools.count()
        self._pending: dict[str, int] = {}  # key → the lane it waits in
        self._running: set[str] = set()
        self._dirty: dict[str, int] = {}  # key → the lane its next pass goes to
        self._failures: dict[str, int] = {}
        # key → the pass asked for later: its timer, and the lane it goes to when it fires
        self._timers: dict[str, tuple[asyncio.TimerHandle, int]] = {}

    def enqueue(self, key: str, delay: float = 0.0, *, follow_up: bool = False) -> None:
        """Ask for a reconcile of `key`, now or after `delay` seconds; `follow_up` for a pass
        that continues work in progress (served first)."""
        lane = FOLLOW_UP if follow_up else FIRST
        if delay > 0:
            # One timer per key, the earliest asked for (a retry in a second is not put off by
            # a drift pass or a backoff set for later), in the faster lane either asked for.
            loop = asyncio.get_running_loop()
            timer, timed_lane = self._timers.get(key, (None, lane))
            if timer is None or timer.when() > loop.time() + delay:
                if timer is not None:
                    timer.cancel()
                timer = loop.call_later(delay, self._fire, key)
            self._timers[key] = (timer, min(lane, timed_lane))
            return
        if key in self._running:
            self._dirty[key] = min(lane, self._dirty.get(key, lane))
        elif self._pending.get(key, lane + 1) > lane:  # not waiting, or in the slower lane
            self._pending[key] = lane
            self._queue.put_nowait((lane, next(self._arrivals), key))
        self._count()

    def _count(self) -> None:
        # A key is pending or running, never both; a dirty one is running.
        metrics.QUEUE_DEPTH.set(len(self._pending) + len(self._running))
        if self._on_idle is not None and self.idle:
            self._on_idle()

    def _fire(self, key: str) -> None:
        _, lane = self._timers.pop(key)
        self.enqueue(key, follow_up=lane == FOLLOW_UP)

    def _cancel_timer(self, key: str) -> None:
        timer, _ = self._timers.pop(key, (None, FIRST))
        if timer is not None:
            timer.cancel()

    def forget(self, key: str) -> None:
        """Drop a key that no longer exists (a deleted tenant); a running pass finishes."""
        self._dirty.pop(key, None)
        self._failures.pop(key, None)
        self._cancel_timer(key)

    @property
    def idle(self) -> bool:
        return not (self._pending or self._running or self._dirty)

    async def run(self) -> None:
        """Process keys until cancelled."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            for timer, _ in self._timers.values():
                timer.cancel()

    async def _next(self) -> str:
        """The next key to reconcile: the oldest of the follow-up lane, else of the other."""
        while True:
            lane, _, key = await self._queue.get()
            # An entry whose key was since moved to the faster lane (and ran from there), or
            # already ran, is stale: its key is not waiting in this lane now.
            if self._pending.get(key) == lane:
                del self._pending[key]
                return key

    async def _worker(self) -> None:
        while True:
            key = await self._next()
            # A pass asked for later (a retry, a recheck, a wait) is this one: it reads what is
            # there now. What it leaves to do it asks for again (tests/unit/test_queue.py).
            self._cancel_timer(key)
            self._running.add(key)
            self._count()
            try:
                await self._work(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                # Exponential backoff with jitter, so a broken API server is not hammered.
                delay = min(self._max_backoff, 2 ** (failures - 1)) * random.uniform(0.8, 1.2)  # noqa: S311
                logger.exception(
                    "reconcile failed (attempt %d); retrying in %.1fs",
                    failures,
                    delay,
                    extra={"tenant": key},
                )
                metrics.RECONCILE_RETRIES.inc()
                self.enqueue(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self._running.discard(key)
                if key in self._dirty:
                    self.enqueue(key, follow_up=self._dirty.pop(key) == FOLLOW_UP)
                self._count()
