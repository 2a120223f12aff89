"""The reconcile queue coalesces, never runs one key twice at once, and retries failures."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY
from tenantry.memory import MALLOC_TRIM, TrimWhenQuiet
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


async def ordered_run(enqueue_while_first_runs: list[tuple[str, bool]]) -> list[str]:
    """Keys in the order one worker reconciles them: "a", "b", "c" waiting as first passes,
    then, while "a" runs, the given (key, follow_up) enqueued."""
    calls: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def work(key: str) -> None:
        calls.append(key)
        started.set()
        await release.wait()

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    for key in ("a", "b", "c"):
        queue.enqueue(key)
    await started.wait()
    for key, follow_up in enqueue_while_first_runs:
        queue.enqueue(key, follow_up=follow_up)
    release.set()
    await until_idle(queue)
    task.cancel()
    return calls


async def test_a_follow_up_pass_goes_ahead_of_first_passes_waiting_before_it() -> None:
    # A tenant whose Deployments just became available ("x": a child event) is not left
    # behind other tenants' first passes; a first pass still waits its turn.
    assert await ordered_run([("y", False), ("x", True)]) == ["a", "x", "b", "c", "y"]


async def test_a_waiting_first_pass_moves_to_the_follow_up_lane_and_runs_once() -> None:
    assert await ordered_run([("c", True), ("c", False), ("c", True)]) == ["a", "c", "b"]


async def test_a_change_during_a_pass_keeps_the_lane_it_asked_for() -> None:
    # Progress while "a" ran (a Deployment became available): its next pass goes first.
    assert await ordered_run([("a", True)]) == ["a", "a", "b", "c"]
    # Anything else (the echo of its own writes): its next pass waits its turn.
    assert await ordered_run([("a", False)]) == ["a", "b", "c", "a"]
    assert await ordered_run([("a", False), ("a", True)]) == ["a", "a", "b", "c"]


async def test_the_queue_says_when_it_drains_and_memory_is_trimmed_only_after_a_quiet_spell() -> (
    None
):
    drained = 0

    def on_idle() -> None:
        nonlocal drained
        drained += 1

    async def work(key: str) -> None:
        await asyncio.sleep(0.01)

    queue = ReconcileQueue(work, concurrency=2, on_idle=on_idle)
    task = asyncio.create_task(queue.run())
    queue.enqueue("a")
    queue.enqueue("b")
    assert drained == 0
    await until_idle(queue)
    assert drained == 1  # once, when the last key was done
    task.cancel()

    counted = REGISTRY.get_sample_value("tenantry_memory_trims_total") or 0.0
    busy = True
    trimmer = TrimWhenQuiet(lambda: not busy, seconds=0.05)
    trimmer()
    await asyncio.sleep(0.1)
    assert trimmer.trims == 0  # busy again when the spell ended: nothing walked the heap
    busy = False
    trimmer()
    trimmer()  # drained twice within the spell: one trim
    await asyncio.sleep(0.1)
    assert trimmer.trims == 1
    # What the bench waits for before it reads the operator's resident size at rest.
    assert REGISTRY.get_sample_value("tenantry_memory_trims_total") == counted + 1
    assert MALLOC_TRIM is not None  # glibc, as in the operator's image


async def test_a_watch_event_after_the_queue_drained_puts_the_trim_off() -> None:
    # After a restart the queue drains while Kopf still hands over its lists' events: the trim
    # waits until those stop too. The quiet spell is read from this clock, so the real time the
    # test takes decides nothing.
    now = 100.0
    trimmer = TrimWhenQuiet(lambda: True, seconds=0.01, clock=lambda: now)
    trimmer()  # drained at 100
    now = 100.005
    trimmer.activity()  # an event at 100.005: quiet from then on
    now = 100.01  # a spell since the drain, not since the event
    for _ in range(5):
        await asyncio.sleep(0.02)  # the timer fires, finds the spell unfinished, waits again
    assert trimmer.trims == 0
    now = 100.016
    for _ in range(100):
        if trimmer.trims:
            break
        await asyncio.sleep(0.01)
    assert trimmer.trims == 1


async def test_a_sooner_delay_wins_over_a_later_timer_of_the_same_key() -> None:
    """Found by review: a key with a timer set (a drift pass's, a backoff's) ignored a later
    ask for a sooner pass, so the controller's "look again in a second" waited the longer."""
    calls: list[str] = []

    async def work(key: str) -> None:
        calls.append(key)

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    queue.enqueue("a", delay=60)
    queue.enqueue("a", delay=0.05)
    queue.enqueue("a", delay=30)  # later than the one set: changes nothing
    await asyncio.sleep(0.3)
    await until_idle(queue)
    assert calls == ["a"]
    task.cancel()


async def test_a_pass_takes_the_place_of_one_asked_for_later_and_not_of_one_asked_for_during_it() -> (
    None
):
    """A pass asked for in a while (here 0.2 s: a tenant's first Deployment available, waiting
    for its second, see controller.NEXT_AVAILABLE_WAIT) is not run as well when a pass of the
    key starts before it: that pass reads the same. One asked for while a pass runs still runs
    after it."""
    calls: list[str] = []

    async def work(key: str) -> None:
        calls.append(key)
        if len(calls) == 2:
            queue.enqueue(key, delay=0.1)  # asked for by the pass itself: still wanted

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    queue.enqueue("a", delay=0.2)
    queue.enqueue("b", delay=0.2)
    await asyncio.sleep(0.05)
    queue.enqueue("a")  # now: takes the place of the one in 0.2 s
    await asyncio.sleep(0.4)
    await until_idle(queue)
    task.cancel()
    assert calls == ["a", "b", "b"]


async def test_a_follow_up_asked_for_later_goes_ahead_of_first_passes_when_its_time_comes() -> None:
    """Found by review: a timer forgot the lane it was asked for, so the pass a tenant's first
    available Deployment asks for in a second (controller.NEXT_AVAILABLE_WAIT) queued behind
    every first pass of a burst."""
    calls: list[str] = []
    release = asyncio.Event()

    async def work(key: str) -> None:
        calls.append(key)
        if key == "busy":
            await release.wait()

    queue = ReconcileQueue(work, concurrency=1)
    task = asyncio.create_task(queue.run())
    queue.enqueue("busy")
    await asyncio.sleep(0.01)
    queue.enqueue("later", delay=0.05, follow_up=True)
    queue.enqueue("later", delay=0.5)  # a later ask in the slower lane changes neither
    for key in ("first-1", "first-2"):
        queue.enqueue(key)
    await asyncio.sleep(0.1)
    release.set()
    await until_idle(queue)
    task.cancel()
    assert calls == ["busy", "later", "first-1", "first-2"]
