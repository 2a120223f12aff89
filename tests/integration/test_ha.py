"""High availability and metrics, with operators run as users run them, on the real control plane.

Each test starts operators of its own (`tenantry run`), which select only the tenants labelled
for that test (--tenant-selector); the shared `operator` fixture selects only unlabelled
tenants. So no tenant is ever reconciled by two operators that do not share a Lease.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import tenants
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.networking_v1 import NetworkPolicy
from operator_process import StartOperator
from tenantry.leader import LEASE_NAME, LeaderElector, Timings
from tenants import OPERATOR_LABEL
from waiting import wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def holder(kube: Client, namespace: str) -> str:
    try:
        lease = kube.get(Lease, LEASE_NAME, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return ""
        raise
    return (lease.spec.holderIdentity if lease.spec else None) or ""


def ready(kube: Client, name: str) -> bool:
    found = tenants.condition(kube, name, "Ready")
    tenant = tenants.get(kube, name)
    return (
        found.get("status") == "True"
        and tenant is not None
        and found.get("observedGeneration") == tenant.metadata.generation
    )


async def test_of_two_candidates_exactly_one_holds_the_lease(
    kubeconfig: Path, make_namespace: Callable[..., str]
) -> None:
    """The Lease protocol itself, against the real API server: create, renew, lapse, release."""
    namespace = make_namespace("lease")
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    timings = Timings(lease_duration=2, renew_deadline=1.5, retry_period=0.5)
    a, b, c = (LeaderElector(client, namespace, name, timings) for name in ("a", "b", "c"))
    try:
        # Both find no Lease and try to create it: the API server lets exactly one.
        first = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
        assert sorted(first) == [False, True]
        leader, standby = (a, b) if first[0] else (b, a)
        assert await leader.try_acquire_or_renew()  # renews
        assert not await standby.try_acquire_or_renew()  # renewed a moment ago: wait
        assert not await c.try_acquire_or_renew()

        # The leader falls silent. Once the Lease has not changed for its duration, the
        # standbys try together, with the same resourceVersion: one wins, the other conflicts.
        await asyncio.sleep(timings.lease_duration + 0.2)
        second = await asyncio.gather(standby.try_acquire_or_renew(), c.try_acquire_or_renew())
        assert sorted(second) == [False, True]
        new_leader = standby if second[0] else c
        # The old leader comes back: it sees the new holder and must not renew.
        assert not await leader.try_acquire_or_renew()
        assert leader.holder == new_leader.identity
        lease = await client.get(Lease, LEASE_NAME, namespace=namespace)
        assert lease.spec is not None
        assert (lease.spec.holderIdentity, lease.spec.leaseTransitions) == (new_leader.identity, 1)

        # Released: free at once for the next candidate, no lease duration to wait.
        await new_leader.release()
        assert await leader.try_acquire_or_renew()
    finally:
        await client.close()


def test_the_standby_takes_over_when_the_leader_is_killed(
    kube: Client,
    make_namespace: Callable[..., str],
    start_operator: StartOperator,
    labelled_tenants: Callable[..., list[str]],
) -> None:
    namespace = make_namespace("ha")
    shard = f"ha-{uuid.uuid4().hex[:6]}"
    flags = (
        "--leader-election",
        "--leader-election-namespace",
        namespace,
        "--tenant-selector",
        f"{OPERATOR_LABEL}={shard}",
    )
    operators = {op.name: op for op in (start_operator(name, *flags) for name in ("ha-a", "ha-b"))}

    # Exactly one leads: the Lease names it, and the other says it waits for it.
    identity = wait_until(lambda: holder(kube, namespace), "a leader to hold the Lease")
    leader = operators[identity.rsplit("-", 1)[0]]
    standby = next(op for op in operators.values() if op is not leader)
    waiting = f"waiting for the leader Lease {namespace}/{LEASE_NAME}, held by {identity}"
    wait_until(lambda: waiting in standby.log_text(), f"{standby.name} to wait for {identity}")
    wait_until(lambda: leader.metric("tenantry_leader") == 1, "the leader's metrics to say so")
    assert standby.metric("tenantry_leader") == 0
    assert standby.metric("tenantry_caches_synced") == 0
    wait_until(lambda: leader.metric("tenantry_caches_synced") == 1, "the leader's caches")

    # A first batch becomes Ready under the leader; the standby reconciles nothing meanwhile.
    settled = labelled_tenants(shard, 5)
    for name in settled:
        wait_until(lambda name=name: ready(kube, name), f"{name} to be Ready", timeout=90)
    assert standby.total("tenantry_reconcile_duration_seconds_count") == 0
    assert "applied" not in standby.log_text()
    assert leader.total("tenantry_reconcile_duration_seconds_count") > 0
    ready_since = {
        name: tenants.condition(kube, name, "Ready")["lastTransitionTime"] for name in settled
    }

    # A second batch; the leader is killed as soon as it has begun provisioning it.
    provisioning = labelled_tenants(shard, 5)
    wait_until(
        lambda: any(not tenants.namespace_gone(kube, f"tenant-{n}") for n in provisioning),
        "the leader to begin provisioning the second batch",
    )
    leader.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert leader.process.wait(timeout=10) == -signal.SIGKILL
    assert not all(ready(kube, name) for name in provisioning), "killed too late to show takeover"

    # The standby takes the Lease once it has lapsed, and finishes every tenant.
    taken = wait_until(
        lambda: holder(kube, namespace).startswith(f"{standby.name}-"),
        "the standby to take the Lease",
        timeout=90,
    )
    lease_changed = time.monotonic() - killed
    for name in settled + provisioning:
        wait_until(lambda name=name: ready(kube, name), f"{name} to be Ready", timeout=90)
    all_ready = time.monotonic() - killed
    print(
        f"\ntakeover: the Lease changed holder {lease_changed:.1f}s after the leader was killed "
        f"(lease duration 15s); all {len(settled + provisioning)} tenants Ready after "
        f"{all_ready:.1f}s"
    )
    assert taken
    assert standby.metric("tenantry_leader") == 1
    assert f"leading as {standby.name}-" in standby.log_text()
    lease = kube.get(Lease, LEASE_NAME, namespace=namespace)
    assert lease.spec is not None and lease.spec.leaseTransitions == 1

    # The takeover is invisible on tenants that were Ready: no re-apply, no flapping condition.
    assert standby.total("tenantry_drift_corrections_total") == 0
    for name, since in ready_since.items():
        assert tenants.condition(kube, name, "Ready")["lastTransitionTime"] == since, name

    # A rolling update: a new replica starts, the leader is asked to stop and releases the
    # Lease. A fresh candidate would otherwise wait a whole lease duration (15s) of no change.
    successor = start_operator("ha-c", *flags)
    wait_until(lambda: "waiting for the leader Lease" in successor.log_text(), "ha-c to wait")
    standby.process.terminate()
    asked = time.monotonic()
    wait_until(
        lambda: holder(kube, namespace).startswith("ha-c-"), "ha-c to take the Lease", timeout=90
    )
    handed_over = time.monotonic() - asked
    print(f"handover on SIGTERM: ha-c leads {handed_over:.1f}s after the leader was asked to stop")
    assert standby.process.wait(timeout=30) == 0
    assert f"released the leader Lease {namespace}/{LEASE_NAME}" in standby.log_text()
    # The leader election's client is closed too: aiohttp logs one left open as an error.
    assert "Unclosed" not in standby.log_text()
    assert handed_over < 15, "the Lease was not released: ha-c waited for it to lapse"


def test_metrics_count_reconciles_tenants_by_condition_and_drift(
    kube: Client, start_operator: StartOperator, labelled_tenants: Callable[..., list[str]]
) -> None:
    shard = f"metrics-{uuid.uuid4().hex[:6]}"
    # Without leader election: a lone operator reconciles, and says so.
    operator = start_operator("metrics", "--tenant-selector", f"{OPERATOR_LABEL}={shard}")
    good = labelled_tenants(shard, 2)
    (stalled,) = labelled_tenants(
        shard, 1, {"secrets": [{"name": "key", "from": f"missing-{uuid.uuid4().hex[:6]}"}]}
    )
    for name in good:
        wait_until(lambda name=name: ready(kube, name), f"{name} to be Ready", timeout=90)
    tenants.wait_condition(kube, stalled, "Stalled", reason="SecretNotFound")

    def by_condition() -> dict[str, float]:
        return {
            condition: operator.metric("tenantry_tenants", condition=condition)
            for condition in ("Ready", "Reconciling", "Stalled")
        }

    expected = {"Ready": 2.0, "Reconciling": 0.0, "Stalled": 1.0}
    wait_until(lambda: by_condition() == expected, f"tenants by condition to be {expected}")
    assert operator.metric("tenantry_leader") == 1
    assert operator.metric("tenantry_caches_synced") == 1
    for outcome in ("ready", "stalled"):
        count = operator.metric("tenantry_reconcile_duration_seconds_count", outcome=outcome)
        assert count > 0, outcome
        assert (
            operator.metric(
                "tenantry_reconcile_duration_seconds_bucket", outcome=outcome, le="+Inf"
            )
            == count
        )
    assert operator.metric("tenantry_reconcile_duration_seconds_sum", outcome="ready") > 0
    assert operator.total("tenantry_drift_corrections_total") == 0

    # Someone deletes a policy of a Ready tenant: it is restored, and counted by kind.
    kube.delete(NetworkPolicy, "runtime", namespace=f"tenant-{good[0]}")
    wait_until(
        lambda: operator.metric("tenantry_drift_corrections_total", kind="NetworkPolicy") == 1,
        "the restored NetworkPolicy to be counted",
    )
    assert kube.get(NetworkPolicy, "runtime", namespace=f"tenant-{good[0]}")
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/healthz", timeout=5) as answer:
        assert answer.read() == b"ok"
