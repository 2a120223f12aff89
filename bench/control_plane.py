"""Operator benchmarks on the real control plane: provisioning, latency, cost at rest, memory and
recovery. Each trial starts on a fresh cluster (see harness) and returns plain JSON data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.kinds import apply_phase
from tenantry.models import AgentTenant
from tenantry.render import ClusterFacts, render

from bench.harness import (
    KUBECONFIG,
    AuditLog,
    Operator,
    ReadyWatch,
    by_verb,
    claim_template,
    control_plane_cpu,
    fresh_cluster,
    log,
    source_secret,
    tenant,
    tenant_names,
    writes,
)
from bench.kube import Kube, collection, gather_limited

# How many tenants the bench applies at once, and how many the baseline writes at once: the same.
CONCURRENCY = 32
# The operator's default drift interval: provisioning runs with what users run.
DEFAULT_DRIFT_SECONDS = 300.0


@dataclass
class Trial:
    """A provisioned cluster, kept for the measurements that follow on it."""

    kube: Kube
    audit: AuditLog
    watch: ReadyWatch
    watcher: asyncio.Task[None]
    operator: Operator | None
    names: list[str]


async def write_directly(kube: Kube, name: str, config: OperatorConfig) -> None:
    """The baseline: the tenant and its children, written by the bench itself.

    The children are what the operator would render (tenantry.render, pure), so both sides
    write the same objects; only the tenant's uid must be known first (owner references).
    """
    created = await kube.apply(tenant(name))
    secret = source_secret([])
    facts = ClusterFacts(
        uid=created["metadata"]["uid"],
        secret_data={"model-credentials": secret["data"]},
        secret_types={"model-credentials": "Opaque"},
        sandbox_token=secrets.token_urlsafe(32),
    )
    manifests = render(AgentTenant.model_validate(created), config, facts)
    # In the operator's order: each phase's children at once, phase after phase.
    for phase in sorted({apply_phase(m["kind"]) for m in manifests}):
        await asyncio.gather(*(kube.apply(m) for m in manifests if apply_phase(m["kind"]) == phase))


async def watching_operator(audit: AuditLog, log_file: Path) -> Operator:
    """`tenantry run` with the default drift interval, once it watches AgentTenants and
    reconciles: a trial times provisioning, not the operator's start."""
    operator = Operator(log_file, DEFAULT_DRIFT_SECONDS)
    mark = audit.mark()
    operator.start()
    await operator.until_watching(audit, mark)
    await operator.until_synced()
    return operator


@contextlib.asynccontextmanager
async def provisioned(
    count: int, mode: str, workdir: Path, result: dict[str, Any]
) -> AsyncIterator[Trial]:
    """Apply `count` tenants at once on a fresh cluster, operator or direct, and wait until all
    are ready. `result` receives the figures; the trial stays up inside the `with`."""
    names = tenant_names(count)
    await fresh_cluster(names)
    kube = Kube(KUBECONFIG)
    audit = AuditLog()
    operator = None
    if mode == "operator":
        operator = await watching_operator(
            audit, workdir / f"operator-{count}-{int(time.time())}.log"
        )
        result["rss_mib_empty"] = operator.rss_mib()
    watch = ReadyWatch(kube, mode)
    watcher = asyncio.create_task(watch.run())
    trial = Trial(kube, audit, watch, watcher, operator, names)
    try:
        mark = audit.mark()
        started = time.monotonic()
        if mode == "operator":
            await gather_limited([kube.apply(tenant(name)) for name in names], CONCURRENCY)
        else:
            config = OperatorConfig()
            await gather_limited([write_directly(kube, n, config) for n in names], CONCURRENCY)
        result["apply_seconds"] = time.monotonic() - started
        done = await watch.until(names, timeout=300 + count)
        result["seconds"] = done - started
        result["per_tenant_seconds"] = sorted(watch.ready_at[n] - started for n in names)
        if operator:
            await operator.until_idle(count, timeout=300)
            result["operator_cpu_seconds"] = operator.cpu_seconds()
            # The figure of section 4 is read once the operator has trimmed its heap (see
            # Operator.until_trimmed); the moment it went idle is kept beside it.
            result.update(await operator.idle_memory())
        requests = audit.requests(mark)
        result["requests"] = {
            agent: by_verb(requests, agent)
            for agent in ("operator", "bench", "kube-controller-manager", "kube-scheduler", "kwok")
        }
        log(f"{mode} N={count}: ready in {result['seconds']:.1f}s")
        yield trial
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if trial.operator:  # the one running now: `restart` replaces it
            trial.operator.stop()
        await kube.close()


async def provisioning(count: int, mode: str, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"count": count, "mode": mode}
    async with provisioned(count, mode, workdir, result):
        pass
    return result


async def restart(trial: Trial, drift_interval: float, workdir: Path) -> dict[str, Any]:
    """Stop the operator and start a new one over the tenants in place: time until it is idle
    again (every tenant reconciled, nothing queued) and the requests it made to get there."""
    assert trial.operator is not None
    trial.operator.stop()
    trial.operator = Operator(workdir / f"operator-restart-{int(time.time())}.log", drift_interval)
    mark = trial.audit.mark()
    trial.operator.start()
    seconds = await trial.operator.until_idle(len(trial.names), timeout=600)
    requests = by_verb(trial.audit.requests(mark), "operator")
    cpu_seconds = trial.operator.cpu_seconds()
    return {
        "count": len(trial.names),
        "seconds_to_idle": seconds,
        "cpu_seconds_to_idle": cpu_seconds,
        "requests": requests,
        "writes": writes(requests),
        # As after provisioning: the resident size once the operator has trimmed its heap.
        **await trial.operator.idle_memory(),
    }


async def with_claim_template(trial: Trial) -> int:
    """Apply one AgentTenantTemplate (a claim per tenant) and wait until every tenant has its
    claim and the operator is idle again; returns the claims it made."""
    assert trial.operator is not None
    await trial.kube.apply(claim_template())
    path = f"{collection('PersistentVolumeClaim')}?labelSelector=app.kubernetes.io/managed-by%3Dtenantry"
    deadline = time.monotonic() + 300
    while len((await trial.kube.get(path))["items"]) < len(trial.names):
        if time.monotonic() > deadline:
            raise TimeoutError("the template's claims did not all appear in 300 s")
        await asyncio.sleep(1)
    await trial.operator.until_idle(len(trial.names), timeout=300)
    return len((await trial.kube.get(path))["items"])


async def at_rest(trial: Trial, drift_interval: float, workdir: Path) -> dict[str, Any]:
    """Idle tenants, each with one child of an AgentTenantTemplate too, over more than two drift
    periods: requests by whom, writes, etcd revisions."""
    claims = await with_claim_template(trial)
    recovery = await restart(trial, drift_interval, workdir)
    window = 2.2 * drift_interval
    kube, audit = trial.kube, trial.audit
    totals_before = await kube.request_totals()
    revision_before = await kube.revision()
    mark = audit.mark()
    await asyncio.sleep(window)
    end = audit.mark()
    revision_after = await kube.revision()
    totals_after = await kube.request_totals()
    requests = audit.requests(mark, end)
    agents = sorted({agent for agent, _ in requests})
    operator = by_verb(requests, "operator")
    reads = sum(n for verb, n in operator.items() if verb in ("get", "list"))
    count = len(trial.names)
    return {
        "count": count,
        "templated_claims": claims,
        "drift_interval_seconds": drift_interval,
        "window_seconds": window,
        "restart": recovery,
        "operator_requests": operator,
        "operator_writes": writes(operator),
        "writes_by_agent": {agent: writes(by_verb(requests, agent)) for agent in agents},
        "apiserver_request_total_delta": {
            verb: totals_after.get(verb, 0) - totals_before.get(verb, 0)
            for verb in sorted(totals_after)
            if totals_after.get(verb, 0) != totals_before.get(verb, 0)
        },
        "etcd_revision_delta": revision_after - revision_before,
        "operator_reads_per_tenant_per_hour": reads / count * 3600 / window,
        # Reads scale with drift passes: at the default interval there are fewer of them.
        "operator_reads_per_tenant_per_hour_at_default_interval": reads
        / count
        * 3600
        / window
        * drift_interval
        / DEFAULT_DRIFT_SECONDS,
    }


async def ceiling(count: int, workdir: Path) -> dict[str, Any]:
    """The machine's direct-write ceiling: tenants per second when `count` are written at once
    with no operator (section 1's baseline). Latency's arrival rates are fractions of it."""
    result = await provisioning(count, "direct", workdir)
    return {"count": count, "seconds": result["seconds"], "rate": count / result["seconds"]}


def machine_cpu(operator: Operator | None) -> dict[str, float]:
    """CPU seconds used so far by the control plane, the bench and the operator (if any)."""
    used = control_plane_cpu()
    if operator:
        used["operator"] = operator.cpu_seconds()
    return used


async def latency(rate: float, duration: float, mode: str, workdir: Path) -> dict[str, Any]:
    """Tenants arriving at a steady rate: apply → ready for each, through the operator or
    written directly (the baseline: the same children, the same readiness test as section 1)."""
    count = round(rate * duration)
    names = tenant_names(count)
    result: dict[str, Any] = {"rate": rate, "count": count, "mode": mode}
    await fresh_cluster(names)
    kube = Kube(KUBECONFIG)
    audit = AuditLog()
    operator = None
    if mode == "operator":
        operator = await watching_operator(
            audit, workdir / f"operator-latency-{int(time.time())}.log"
        )
    watch = ReadyWatch(kube, mode)
    watcher = asyncio.create_task(watch.run())
    config = OperatorConfig()
    try:
        sent: dict[str, float] = {}
        mark = audit.mark()
        # Every process's CPU from the first arrival until the last tenant is ready: what the
        # machine spent on this rate in each mode, side by side.
        machine_before = machine_cpu(operator)
        started = time.monotonic()

        async def arrive(index: int, name: str) -> None:
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            sent[name] = time.monotonic()
            if operator:
                await kube.apply(tenant(name))
            else:
                await write_directly(kube, name, config)

        await asyncio.gather(*(arrive(i, name) for i, name in enumerate(names)))
        result["arrival_seconds"] = time.monotonic() - started
        await watch.until(names, timeout=300 + count)
        result["machine_seconds"] = time.monotonic() - started
        machine_after = machine_cpu(operator)
        result["cpu_seconds"] = {
            process: machine_after[process] - used for process, used in machine_before.items()
        }
        result["cores"] = os.cpu_count()
        result["latencies"] = sorted(watch.ready_at[n] - sent[n] for n in names)
        if operator:
            # What each tenant cost the operator at this rate, its start-up left out. Each
            # watch event of a child may queue a pass, so this differs from a burst's (section 1).
            await operator.until_idle(count, timeout=60)
            result["operator_cpu_seconds"] = operator.cpu_seconds() - machine_before["operator"]
        requests = audit.requests(mark)
        result["requests"] = {agent: by_verb(requests, agent) for agent in ("operator", "bench")}
        log(f"latency {mode} at {rate:.2f}/s: median {result['latencies'][count // 2]:.2f}s")
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if operator:
            operator.stop()
        await kube.close()
    return result
