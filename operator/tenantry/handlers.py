"""Thin Kopf wiring: watch events feed the controller's caches and queue; the reconcile does the work.

Only `on.event` handlers are used, so Kopf keeps no per-object
state: no finalizers, no bookkeeping annotations, no status writes of its own. Drift is
corrected by a jittered timer of our own over every known tenant, for the same reason (Kopf's
timers add a finalizer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import kopf

# Not exported by kopf: the store of what it remembers about each object (see NoObjectMemories).
from kopf._core.reactor.inventory import ResourceMemories, ResourceMemory

from tenantry.config import OperatorConfig
from tenantry.controller import Controller
from tenantry.kinds import CHILD_KINDS, child_kinds
from tenantry.models import GROUP, PLURAL, TEMPLATE_PLURAL, VERSION
from tenantry.names import MANAGED_BY, OPERATOR
from tenantry.pods import RUNTIME_POD_LABELS, RUNTIME_PODS_SELECTOR
from tenantry.transport import api_client

logger = logging.getLogger("tenantry.handlers")

# Tenantry's own kinds of children, as (group, version, plural); the templates' are added from
# the operator's configuration. Their watches are filtered server-side, by the label on every child.
CHILD_RESOURCES = tuple(child.watched for child in CHILD_KINDS)
CHILD_SELECTOR = f"{MANAGED_BY}={OPERATOR}"
# Objects per page of Kopf's initial lists (one tenant has 17 watched objects). See configure.
LIST_CHUNK = 50
# Seconds one of Kopf's per-object workers waits for the object's next event before it exits
# (Kopf's default: 5). See configure.
WORKER_IDLE_SECONDS = 0.5


def controller(memo: kopf.Memo) -> Controller:
    result: Controller = memo["controller"]
    return result


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf's diff base for an operator that has no change handlers.

    Kopf deep-copies every event's body to diff it against the last handled state, which only
    on.create/update/delete handlers use; with `on.event` alone that copy was about 7% of the
    operator's CPU time while it provisioned a thousand tenants (docs/benchmarks.md).
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


class NoObjectMemories(ResourceMemories):
    """Kopf's memory of each object, for an operator with only `on.event` handlers: none kept.

    Kopf remembers every object it has seen until that object is deleted (a memo copy, an error
    throttler, daemon and index bookkeeping: about 1 KiB each, measured), for the daemons,
    timers, indexes and change handlers that read it from one event to the next. Tenantry has
    none of those (tests/unit/test_handlers.py holds it to that), and watches 17 objects a
    tenant: 17 MiB at 1000 tenants kept for nothing. Each event gets a fresh one instead.
    """

    async def recall(
        self,
        raw_body: Any,
        *,
        memobase: Any = None,
        noticed_by_listing: bool = False,
        ephemeral: bool = False,
    ) -> ResourceMemory:
        return await super().recall(
            raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing, ephemeral=True
        )


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.posting.enabled = False  # the reconcile posts its own events, about transitions only
    settings.persistence.diffbase_storage = NoDiffBase()
    # Kopf lists every watched kind at start, all kinds at once; each whole list parsed at
    # once held the bodies of every object of the cluster's tenants together, a peak the
    # process kept as its resident size afterwards (docs/benchmarks.md: memory after a restart).
    # Pages of 200 still had 200 objects of each of 17 kinds in flight at once: over 1000
    # tenants, pages of 50 took the resident size after a restart and a trim from 134-136 to
    # 118-119 MiB, for about 340 list requests in that restart instead of 85, and no slower
    # (docs/bench/operator-memory.md, 2026-11-30 afternoon).
    settings.watching.chunk_size = LIST_CHUNK
    # Kopf runs a worker per object that has an event, and the worker keeps its last event until
    # it has waited `idle_timeout` for the next one. A restart replays every watched object (17
    # a tenant): with Kopf's 5 s, thousands of workers and their events were alive together at
    # the peak (2314 still at idle over 1000 tenants), and the heap grown for them stayed
    # resident. Tenantry's handlers keep nothing between one event of an object and the next, so
    # a worker is worth keeping only while its object's events come in a burst. Over 1000
    # tenants: resident after a restart and a trim 235-244 → 163-179 MiB, after provisioning
    # 110 → 104 MiB (one run; docs/bench/operator-memory.md, 2026-11-30 afternoon).
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    # Server-side filters: the API server sends only our children, not every Secret in the cluster.
    # Keys are (group, plural), or ("v1", plural) for the core group: Kopf silently ignores "v1/plural".
    tenant_selector = config.tenant_selector
    for group, version, plural in watched_children(config):
        settings.watching.label_selectors[group or version, plural] = CHILD_SELECTOR
    settings.watching.label_selectors["v1", "pods"] = RUNTIME_PODS_SELECTOR
    if tenant_selector:
        # Tenants it does not select never reach this process: their children's events and source
        # Secrets then concern no tenant it knows, so another operator may own them (sharding).
        settings.watching.label_selectors[GROUP, PLURAL] = tenant_selector


def in_cluster_server(environ: Mapping[str, str]) -> str | None:
    """The API server's URL in a pod: the `kubernetes` Service's address from the environment the
    kubelet sets, as client-go and lightkube find it; None outside a pod."""
    host = environ.get("KUBERNETES_SERVICE_HOST")
    if not host:
        return None
    port = environ.get("KUBERNETES_SERVICE_PORT") or "443"
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's own logins, but in a pod by the Service's address, not by name.

    Kopf's service-account login names https://kubernetes.default.svc, which needs DNS; the
    chart's NetworkPolicy lets the operator reach the API server and nothing else, so on a
    cluster that enforces it the name never resolved (seen on the real node: "Temporary failure
    in name resolution" until the pod was restarted forever)."""
    in_pod = kopf.login_with_service_account(**kwargs)
    server = in_cluster_server(os.environ)
    if in_pod is not None and server is not None:
        return dataclasses.replace(in_pod, server=server)
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings, memo["config"])
    client = api_client()
    state = Controller(memo["config"], client, memo.get("operator_namespace"))
    memo["controller"] = state
    memo["client"] = client
    memo["tasks"] = [
        asyncio.create_task(state.run()),
        asyncio.create_task(state.correct_drift()),
        asyncio.create_task(state.watch_secret_sources()),
    ]
    logger.info("tenantry started: %s", memo["config"].model_dump_json())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", []):
        task.cancel()
    await asyncio.gather(*memo.get("tasks", []), return_exceptions=True)
    await memo["client"].close()


# Every handler is `async def`: Kopf runs plain functions in a thread pool, and the queue and
# caches they touch belong to the event loop (an asyncio.Queue is not thread-safe; a put from
# another thread may not wake the worker waiting on it). It also saves a thread hop per event.
@kopf.on.event(GROUP, VERSION, PLURAL)
async def tenant_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).tenant_seen(dict(event))


async def child_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).child_seen(dict(event))


async def template_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).template_seen(dict(event))


async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).pod_seen(dict(event))


def watched_children(config: OperatorConfig) -> tuple[tuple[str, str, str], ...]:
    """The child kinds watched cluster-wide, as (group, version, plural): Tenantry's own and
    those templates may render. With scoped Secrets the operator may not list Secrets
    cluster-wide, so each reconcile lists its tenant's instead (see reconcile)."""
    watched = (child.watched for child in child_kinds(config.template_kinds))
    return tuple(c for c in watched if not (config.scoped_secrets and c[2] == "secrets"))


def register_children(config: OperatorConfig) -> None:
    """Register the child watches, and the runtime pods' (for their refusals, see pods.py);
    called once by `tenantry run`, before Kopf starts."""
    for group, version, plural in watched_children(config):
        kopf.on.event(group, version, plural, labels={MANAGED_BY: OPERATOR}, id=f"child-{plural}")(
            child_event
        )
    kopf.on.event("", "v1", "pods", labels=RUNTIME_POD_LABELS, id="runtime-pods")(pod_event)
    kopf.on.event(GROUP, VERSION, TEMPLATE_PLURAL, id="templates")(template_event)
