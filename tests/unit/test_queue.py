"""The reconcile queue coalesces, never runs one key twice at once, and retries failures."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from tenantry.queue import ReconcileQueue


async def until_idle(queue: ReconcileQueue) -> None:
    """Give the workers up to a second to drain the queue."""
    for _ in range(100):
        if queue.idle:
            return
        await asyncio.sleep(0.01)


async def test_events_for_one_key_coalesce_and_a_change_during_a_pass_runs_once_more() -> None:
    calls: list[str] = []
    running = 0
    most = 0
    release = asyncio.Event()

    async def work(key: str) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        calls.append(key)
        await release.wait()
        running -= 1

    queue = ReconcileQueue(work, concurrency=4)
    task = asyncio.create_task(queue.run())
    for _ in range(5):
        queue.enqueue("a")
    await asyncio.sleep(0.05)
    for _ in range(5):
        queue.enqueue("a")  # while "a" runs: exactly one more pass afterwards
    release.set()
    await until_idle(queue)
    task.cancel()
    assert calls == ["a", "a"]
    assert most == 1


async def test_failures_are_retried_with_backoff() -> None:
    attempts: list[float] = []

    async def work(key: str) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise RuntimeError("API server unavailable")

    queue = ReconcileQueue(work, concurrency=1, max_backoff=0.1)
    task = asyncio.create_task(queue.run())
    queue.enqueue("a")
    for _ in range(200):
        if len(attempts) == 3 and queue.idle:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 0.08  # waited, not hammered


async def test_forget_cancels_a_scheduled_retry() -> None:
    calls: list[str] = []

    async def work(key: str) -> None:
        calls.append(key)

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    queue.enqueue("gone", delay=0.05)
    queue.forget("gone")
    await asyncio.sleep(0.1)
    task.cancel()
    assert calls == []


async def test_the_depth_gauge_counts_waiting_and_running_keys_and_is_zero_when_idle() -> None:
    release = asyncio.Event()

    async def work(key: str) -> None:
        await release.wait()

    def depth() -> float:
        return REGISTRY.get_sample_value("tenantry_queue_depth") or 0.0

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    for key in ("a", "b", "c", "a"):
        queue.enqueue(key)
    assert depth() == 3  # "a" once: coalesced
    await asyncio.sleep(0.02)
    queue.enqueue("a")  # while "a" runs: one more pass later, but still one key
    assert depth() == 3
    release.set()
    await until_idle(queue)
    task.cancel()
    assert queue.idle
    assert depth() == 0
