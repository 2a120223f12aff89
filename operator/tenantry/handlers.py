"""Thin Kopf wiring: watch events feed caches and a queue; the reconcile does the work.

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
import random
import time
from collections.abc import Mapping
from typing import Any

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret
from lightkube.types import OnErrorAction, OnErrorResult

from tenantry import metrics
from tenantry.children import ChildCache
from tenantry.config import OperatorConfig
from tenantry.kinds import CHILD_KINDS
from tenantry.live import APPLIED_KINDS, AgentTenantResource
from tenantry.models import GROUP, PLURAL, VERSION
from tenantry.names import MANAGED_BY, OPERATOR
from tenantry.queue import ReconcileQueue
from tenantry.reconcile import Reconciler
from tenantry.report import TenantGone, kube_time

logger = logging.getLogger("tenantry.handlers")

# The kinds of children, as (group, version, plural); their watches are filtered server-side.
CHILD_RESOURCES = tuple(child.watched for child in CHILD_KINDS)
CHILD_SELECTOR = f"{MANAGED_BY}={OPERATOR}"


class Controller:
    """The state one operator process keeps: tenants and children seen, and the work queue."""

    def __init__(
        self, config: OperatorConfig, client: AsyncClient, operator_namespace: str | None
    ) -> None:
        self.config = config
        self.tenants: dict[str, dict[str, Any]] = {}
        self.children = ChildCache()
        self.reconciler = Reconciler(client, config, operator_namespace, self.known_tenants)
        self.queue = ReconcileQueue(self.reconcile, config.max_concurrent_reconciles)
        # The outcome of each tenant's last pass (ready, progressing, stalled), for the gauge.
        self.outcomes: dict[str, str] = {}
        # When each tenant's last event came, counted in tenant events: a resync must not forget
        # a tenant created while it listed (it is in the cache, not in the list).
        self.events_seen = 0
        self.last_seen: dict[str, int] = {}
        # (name -> creationTimestamp) of every tenant the last list found, watched or not yet.
        self.listed: dict[str, str] = {}

    async def reconcile(self, name: str) -> None:
        body = self.tenants.get(name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # garbage collection removes the children of a deleted tenant
        started = time.monotonic()
        try:
            observation = await self.reconciler.reconcile(body, self.children.of(name))
        except TenantGone:
            # Deleted while the watch was away: a reconnecting watch replays what exists, not
            # what vanished, so the deletion shows only here.
            self.forget(name, body["metadata"].get("uid", ""))
            return
        except Exception as error:
            metrics.observe_reconcile(None, time.monotonic() - started)
            metrics.api_error("reconcile", error)
            raise  # the queue retries it with backoff
        metrics.observe_reconcile(observation, time.monotonic() - started)
        if name in self.tenants:  # not deleted while the pass ran
            self.outcomes[name] = metrics.outcome(observation)
            metrics.count_tenants(self.outcomes.values())

    def known_tenants(self) -> list[tuple[str, str]]:
        """(name, creationTimestamp) of every tenant listed or seen: no two may run as one user.
        The list counts too: after a start, a younger tenant may be reconciled before the older
        one's watch event arrives."""
        known = dict(self.listed)
        for name, body in self.tenants.items():
            known[name] = body["metadata"].get("creationTimestamp") or ""
        return list(known.items())

    def tenant_seen(self, event: dict[str, Any]) -> None:
        body = event["object"]
        name = body["metadata"]["name"]
        if event.get("type") == "DELETED":
            self.forget(name, body["metadata"].get("uid", ""))
            return
        self.tenants[name] = body
        self.events_seen += 1
        self.last_seen[name] = self.events_seen
        self.queue.enqueue(name)

    def forget(self, name: str, uid: str) -> None:
        self.tenants.pop(name, None)
        self.last_seen.pop(name, None)
        self.reconciler.forget(uid)
        self.children.forget(name)
        self.queue.forget(name)
        self.outcomes.pop(name, None)
        metrics.count_tenants(self.outcomes.values())
        logger.info("tenant deleted", extra={"tenant": name})

    def forget_missing(self, listed: set[str], listing_since: int) -> None:
        """Forget the cached tenants a fresh list no longer has, except those whose events came
        after the list began: they were created (or changed) while it was read."""
        for name in set(self.tenants) - listed:
            if self.last_seen.get(name, 0) <= listing_since:
                self.forget(name, self.tenants[name]["metadata"].get("uid", ""))

    async def resync(self) -> None:
        """Rebuild the caches from fresh lists of tenants and children.

        Watch events alone can leave ghosts: a watch that reconnects after a gap (an API server
        restart) replays the objects that exist, never the deletions it missed. A child deleted
        in such a gap would stay cached, and never be restored.
        """
        client = self.reconciler.client
        listing_since = self.events_seen
        # All tenants, whatever --tenant-selector says: only the ones cached here are compared.
        listed = {
            str(t.metadata.name): kube_time(t.metadata.creationTimestamp)  # type: ignore[union-attr]
            async for t in client.list(AgentTenantResource)
        }
        self.listed = listed
        self.forget_missing(set(listed), listing_since)
        fresh = ChildCache()
        for kind, resource in APPLIED_KINDS.items():
            if kind == "Secret" and self.config.scoped_secrets:
                continue  # not listable cluster-wide then; each reconcile lists its tenant's
            where = {} if kind == "Namespace" else {"namespace": "*"}
            async for obj in client.list(resource, labels={MANAGED_BY: OPERATOR}, **where):  # type: ignore[call-overload]
                fresh.observe({**obj.to_dict(), "kind": kind}, deleted=False)
        self.children.replace(fresh)

    async def run(self) -> None:
        """Fill the caches from fresh lists, then reconcile what the watches queue.

        The first reconcile after a start, or after a standby took over, must see every existing
        child: with an empty cache it would re-apply every child as "missing", report a Ready
        tenant NotReady and post DriftCorrected for nothing. Tenant events that arrive meanwhile
        wait in the queue. (Kopf's indexes would hold the handlers the same way, but their
        readiness check wakes every waiting object on every object listed: with a thousand
        tenants, 17,000 children, a restarted operator did nothing for ten minutes.)
        """
        delay = 1.0
        while True:
            try:
                await self.resync()
                break
            except Exception as error:  # the API server is away: try again, as the watches do
                metrics.api_error("watch", error)
                logger.warning("could not list the children yet: %s", error)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
        await self.queue.run()

    def child_seen(self, event: dict[str, Any]) -> None:
        body = event["object"]
        tenant = self.children.observe(body, deleted=event.get("type") == "DELETED")
        if tenant and tenant in self.tenants:
            # Only an object the tenant owns, or one in its own namespace (a child whose owner
            # reference was removed), wakes it: a label anyone can set does not (the reconcile
            # ignores such objects too, see reconcile.ours).
            known = self.tenants[tenant]
            meta = body.get("metadata", {})
            owners = {owner.get("uid") for owner in meta.get("ownerReferences") or []}
            where = meta.get("name") if body.get("kind") == "Namespace" else meta.get("namespace")
            home = (known.get("status") or {}).get("namespace")
            if known["metadata"].get("uid") in owners or (home and where == home):
                self.queue.enqueue(tenant)

    async def watch_secret_sources(self) -> None:
        """Reconcile the tenants that copy a source Secret whenever it changes.

        A rotated key then reaches the runtime at once, and a tenant stalled on a Secret that
        did not exist or did not allow it resumes as soon as that is fixed.
        """
        watch = self.reconciler.client.watch(
            Secret, namespace=self.config.secret_source_namespace, on_error=retry_with_backoff
        )
        async for _, secret in watch:
            name = secret.metadata.name if secret.metadata else None
            for tenant, body in list(self.tenants.items()):
                if any(
                    ref.get("from") == name for ref in (body.get("spec") or {}).get("secrets") or []
                ):
                    self.queue.enqueue(tenant)

    async def correct_drift(self) -> None:
        """Reconcile every tenant about once per interval, spread out so they do not all fire at once."""
        interval = self.config.drift_interval_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))  # noqa: S311
            try:
                await self.resync()
            except ApiError as error:  # the API server is away: the queue's retries cover it
                logger.warning("could not resync the caches: %s", error.status.message)
            for name in list(self.tenants):
                self.queue.enqueue(name, delay=random.uniform(0, interval * 0.1))  # noqa: S311


def retry_with_backoff(error: Exception, attempt: int) -> OnErrorResult:
    metrics.api_error("watch", error)
    logger.warning("watch of secret sources failed (attempt %d): %s", attempt, error)
    return OnErrorResult(OnErrorAction.RETRY, sleep=min(30.0, 2.0 ** min(attempt, 5)))


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


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.posting.enabled = False  # the reconcile posts its own events, about transitions only
    settings.persistence.diffbase_storage = NoDiffBase()
    # Server-side filters: the API server sends only our children, not every Secret in the cluster.
    # Keys are (group, plural), or ("v1", plural) for the core group: Kopf silently ignores "v1/plural".
    tenant_selector = config.tenant_selector
    for group, version, plural in watched_children(config):
        settings.watching.label_selectors[group or version, plural] = CHILD_SELECTOR
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
    client = AsyncClient()
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


def watched_children(config: OperatorConfig) -> tuple[tuple[str, str, str], ...]:
    """The child kinds watched cluster-wide. With scoped Secrets the operator may not list
    Secrets cluster-wide, so each reconcile lists its tenant's instead (see reconcile)."""
    return tuple(c for c in CHILD_RESOURCES if not (config.scoped_secrets and c[2] == "secrets"))


def register_children(config: OperatorConfig) -> None:
    """Register the child watches; called once by `tenantry run`, before Kopf starts."""
    for group, version, plural in watched_children(config):
        kopf.on.event(group, version, plural, labels={MANAGED_BY: OPERATOR}, id=f"child-{plural}")(
            child_event
        )
