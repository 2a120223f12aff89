"""Prometheus metrics of the operator, and the HTTP endpoint that serves them beside /healthz.

The pure layers (models, render, status) never measure: the wiring that runs them — handlers,
the queue, the leader election — counts from what they return. Metric names and meanings are
listed in docs/operator.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tenantry.status import READY, RECONCILING, STALLED, Observation
from tenantry.transport import status_code

RECONCILE_SECONDS = Histogram(
    "tenantry_reconcile_duration_seconds",
    "Seconds one reconcile of one tenant took, by outcome: ready, progressing, stalled, "
    "or error (the pass raised and is retried).",
    ["outcome"],
)
TENANTS = Gauge(
    "tenantry_tenants",
    "Tenants whose condition is True after their last reconcile by this process, "
    "by condition (Ready, Reconciling, Stalled).",
    ["condition"],
)
DRIFT_CORRECTIONS = Counter(
    "tenantry_drift_corrections",
    "Children restored after someone else deleted or changed them, by kind.",
    ["kind"],
)
API_ERRORS = Counter(
    "tenantry_api_errors",
    "Failed requests to the API server, each retried, by source (reconcile, lease, watch) and "
    "code: the HTTP status, or the error's type when no answer came (ConnectError, ReadTimeout).",
    ["source", "code"],
)
QUEUE_DEPTH = Gauge(
    "tenantry_queue_depth",
    "Tenants waiting for a reconcile or being reconciled now (passes asked for later, such as "
    "retries waiting out their backoff and the drift timer's spread-out passes, are not counted "
    "until they are due). 0: idle.",
)
RECONCILE_RETRIES = Counter(
    "tenantry_reconcile_retries",
    "Reconciles scheduled again, with exponential backoff, after a pass failed.",
)
MEMORY_TRIMS = Counter(
    "tenantry_memory_trims",
    "Times the operator handed freed heap back to the system (glibc's malloc_trim), each once "
    "its queue had stayed empty and no watch event had come for a few seconds.",
)
CACHES_SYNCED = Gauge(
    "tenantry_caches_synced",
    "1 once this process has filled its caches of children, pods and source Secrets from fresh "
    "lists and reconciles; 0 before (starting, or waiting for the leader Lease).",
)
LEADER = Gauge(
    "tenantry_leader",
    "1 while this process reconciles (it holds the leader Lease, or runs without leader "
    "election), 0 while it waits.",
)

# Which condition is True after a pass with this outcome (an error leaves the last one standing).
CONDITION_OF = {"ready": READY, "progressing": RECONCILING, "stalled": STALLED}


def outcome(observation: Observation) -> str:
    if observation.stalled:
        return "stalled"
    return "ready" if observation.ready else "progressing"


def observe_reconcile(observation: Observation | None, seconds: float) -> None:
    """Record one pass: its duration by outcome, and the drift it corrected (None: it raised)."""
    RECONCILE_SECONDS.labels(outcome=outcome(observation) if observation else "error").observe(
        seconds
    )
    for correction in observation.corrected if observation else ():
        DRIFT_CORRECTIONS.labels(kind=correction.kind).inc()


def count_tenants(outcomes: Iterable[str]) -> None:
    """Set the tenants-by-condition gauge from the last outcome of every known tenant."""
    counts = dict.fromkeys(CONDITION_OF.values(), 0)
    for item in outcomes:
        counts[CONDITION_OF[item]] += 1
    for condition, count in counts.items():
        TENANTS.labels(condition=condition).set(count)


def api_error(source: str, error: BaseException) -> None:
    code = status_code(error) or type(error).__name__
    API_ERRORS.labels(source=source, code=str(code)).inc()


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) as (host, port); raises ValueError saying what is wrong."""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{address!r} is not HOST:PORT: use e.g. 0.0.0.0:9090, or leave it empty to serve no metrics"
        )
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - ":9090" means every interface


async def serve(address: str) -> web.AppRunner:
    """Serve /metrics and /healthz at HOST:PORT until the returned runner is cleaned up.

    The server runs on the operator's event loop, so /healthz answering means the loop is not
    stuck. Unlike Kopf's liveness endpoint, it answers on a standby too, which waits for the
    leader Lease before Kopf starts: probe it in HA deployments.
    """
    host, port = parse_address(address)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
