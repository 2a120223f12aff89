"""Thin Kopf wiring: the tenants' and templates' watch events feed the controller's caches and
queue; the reconcile does the work. The children, runtime pods and source Secrets are watched
by the controller itself (tenantry.watches).

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
from tenantry.models import GROUP, PLURAL, TEMPLATE_PLURAL, VERSION
from tenantry.transport import api_client

logger = logging.getLogger("tenantry.handlers")

# Objects per page of Kopf's initial list of tenants. See configure.
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
    # Kopf watches tenants and templates; the children and runtime pods are watched by
    # tenantry.watches, whose module docstring says why. Kopf's initial list of tenants comes in
    # pages, and a per-object worker exits soon after its tenant's last event, dropping the
    # event it holds: a restart replays every tenant, and whole lists parsed at once and
    # workers kept for Kopf's 5 s left the heap larger for good (docs/bench/operator-memory.md,
    # 2026-11-30 afternoon, measured when Kopf watched the children too).
    settings.watching.chunk_size = LIST_CHUNK
    settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
    tenant_selector = config.tenant_selector
    if tenant_selector:
        # Tenants it does not select never reach this process: their children's events and source
        # Secrets then concern no tenant it knows, so another operator may own them (sharding).
        # Keys are (group, plural): Kopf silently ignores "group/plural".
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


@kopf.on.event(GROUP, VERSION, TEMPLATE_PLURAL, id="templates")
async def template_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    controller(memo).template_seen(dict(event))
