"""The leader election's decisions: when a Lease has lapsed, who may take it, when to step down."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from lightkube.resources.coordination_v1 import Lease
from tenantry.leader import (
    LEASE_NAME,
    Record,
    Timings,
    default_identity,
    expired,
    lease_time,
    may_take,
    must_step_down,
    record_of,
)


def held_by(holder: str, duration: int = 15) -> Record:
    return Record(holder=holder, duration=duration, transitions=3, acquired=None)


def test_a_lease_lapses_only_after_its_duration_without_change_on_our_own_clock() -> None:
    now = time.monotonic()
    assert not expired(held_by("a"), changed_at=now, now=now)
    assert not expired(held_by("a"), changed_at=now - 14.9, now=now)
    assert expired(held_by("a"), changed_at=now - 15, now=now)
    assert expired(held_by("a", duration=1), changed_at=now - 1.5, now=now)


def test_who_may_take_the_lease() -> None:
    now = time.monotonic()
    just_changed = now - 0.1
    # Held and renewed a moment ago by another: wait.
    assert not may_take(held_by("other"), "me", just_changed, now)
    # It stopped changing for longer than its duration: the holder is gone.
    assert may_take(held_by("other"), "me", now - 16, now)
    # Released (no holder) or never taken: free at once, however recent the change.
    assert may_take(held_by(""), "me", just_changed, now)
    # The holder renews its own Lease, whatever others think of its age.
    assert may_take(held_by("me"), "me", just_changed, now)
    assert may_take(held_by("me"), "me", now - 60, now)


def test_a_leader_steps_down_when_it_could_not_renew_within_the_deadline() -> None:
    timings = Timings(lease_duration=15, renew_deadline=10, retry_period=2)
    now = time.monotonic()
    assert not must_step_down(now - 9.9, now, timings)
    assert must_step_down(now - 10, now, timings)
    # It stops before a standby may take over: the deadline is shorter than the duration.
    assert timings.renew_deadline < timings.lease_duration


def test_the_default_timings_are_sound_and_unsound_ones_name_the_flag_and_the_fix() -> None:
    assert Timings().problems() == []
    (problem,) = Timings(lease_duration=10, renew_deadline=10, retry_period=2).problems()
    assert "--lease-renew-deadline (10s) must be shorter than --lease-duration (10s)" in problem
    (problem,) = Timings(lease_duration=15, renew_deadline=2, retry_period=2).problems()
    assert "--lease-retry-period (2s) must be shorter than --lease-renew-deadline (2s)" in problem
    assert "--lease-retry-period must be more than 0 seconds" in Timings(15, 10, 0).problems()


def test_lease_times_are_never_on_a_whole_second() -> None:
    # The API server refuses a MicroTime without six fractional digits, which is what lightkube
    # writes for a datetime whose microseconds are 0.
    whole = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
    fractional = datetime(2026, 11, 24, 3, 0, 0, 250000, tzinfo=UTC)
    assert lease_time(fractional) == fractional
    lease = Lease.from_dict({"metadata": {"name": LEASE_NAME}, "spec": {}})
    assert lease.spec is not None
    lease.spec.renewTime = whole
    assert lease.to_dict()["spec"]["renewTime"] == "2026-11-24T03:00:00Z"  # what would be refused
    lease.spec.renewTime = lease_time(whole)
    assert lease.to_dict()["spec"]["renewTime"] == "2026-11-24T03:00:00.000001Z"


def test_a_lease_is_read_as_a_record() -> None:
    lease = Lease.from_dict(
        {
            "metadata": {"name": LEASE_NAME, "namespace": "ops", "resourceVersion": "7"},
            "spec": {
                "holderIdentity": "tenantry-7d9f-a1b2c3",
                "leaseDurationSeconds": 15,
                "leaseTransitions": 4,
                "acquireTime": "2026-11-24T03:00:00.000001Z",
                "renewTime": "2026-11-24T03:00:10.000001Z",
            },
        }
    )
    assert record_of(lease) == Record(
        "tenantry-7d9f-a1b2c3", 15, 4, datetime(2026, 11, 24, 3, 0, 0, 1, tzinfo=UTC)
    )
    # A released Lease: no holder, so it is free.
    released = Lease.from_dict(
        {"metadata": {"name": LEASE_NAME}, "spec": {"leaseDurationSeconds": 1}}
    )
    assert record_of(released).holder == ""


def test_each_process_is_a_new_candidate_named_after_its_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "tenantry-5f7c9-xk2lq")
    first, second = default_identity(), default_identity()
    assert first.startswith("tenantry-5f7c9-xk2lq-")
    assert second.startswith("tenantry-5f7c9-xk2lq-")
    assert first != second  # a restarted pod never takes its previous life's Lease for its own
