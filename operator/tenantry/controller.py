"""What one operator process keeps and runs besides Kopf: the tenants and children its watches
saw, the work queue, the resync from fresh lists, the drift timer, and the watches of children,
runtime pods and source Secrets (tenantry.watches). The Kopf handlers (tenantry.handlers) only
feed it the tenants' and templates' events.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any, Generic, TypeVar

import httpx2
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod, Secret
from pydantic import ValidationError

from tenantry import metrics
from tenantry.children import ChildCache, PassEchoes
from tenantry.config import OperatorConfig
from tenantry.kinds import BY_KIND, ChildKind, child_kinds, row
from tenantry.memory import TrimWhenQuiet
from tenantry.models import AgentTenantTemplate, BrokenTemplate, template_selects
from tenantry.names import ALLOWED_TENANTS, MANAGED_BY, OPERATOR
from tenantry.plan import ours
from tenantry.pods import RUNTIME_POD_LABELS, PodCache
from tenantry.queue import ReconcileQueue
from tenantry.reconcile import ALLOWED_PARSED, Reconciler, allowed_tenants
from tenantry.render import uid_slot
from tenantry.report import TenantGone, kube_time
from tenantry.resources import AgentTenantResource, AgentTenantTemplateResource
from tenantry.transport import ApiClient
from tenantry.watches import MAX_BACKOFF, refused_for_good, watch
from tenantry.writes import NotTheOneFound

logger = logging.getLogger("tenantry.controller")
T = TypeVar("T")

# Objects per page of the resync's lists of children and pods. A list read whole is one response
# of every Deployment (say) of every tenant, parsed at once into lightkube's models beside their
# dicts: on a restart over 1000 tenants, while Kopf's own lists and watch events were in flight,
# that peak left the heap 30-40 MiB larger for good (docs/bench/operator-memory.md, 2026-11-30
# afternoon). A page at a time costs N/200 list requests per kind and drift period instead of
# one, and no GET.
RESYNC_CHUNK = 200
# Seconds between looks of a tenant that waits (plan.Waiting): an earlier tenant's namespace is
# gone within seconds once garbage collection deletes it. No event of it wakes the tenant: it is
# not the tenant's (a pass would otherwise follow every change its owner makes to it).
RECHECK_WAITING_SECONDS = 5.0
# Seconds a tenant's pass waits when one of its Deployments turned available while another still
# rolls out: the other one's turn, often a moment later, then takes one pass (Ready) instead of
# two, the first of which wrote a status for one group alone. Measured: about one new tenant in
# two had that pass, each with a status write (bench/findings.md). Only the group condition
# is later; `Ready` is not, since it waits for the last one, whose pass goes at once.
NEXT_AVAILABLE_WAIT = 1.0


class Controller:
    """The state one operator process keeps: tenants and children seen, and the work queue."""

    def __init__(
        self, config: OperatorConfig, client: ApiClient, operator_namespace: str | None
    ) -> None:
        self.config = config
        self.tenants: dict[str, dict[str, Any]] = {}
        self.children = ChildCache()
        self.pods = PodCache()
        # Every AgentTenantTemplate, from its watch and the resyncs' lists.
        self.templates: Known[AgentTenantTemplate | BrokenTemplate] = Known()
        # The Secrets of the secret-source namespace, from its watch and the resyncs' lists: a
        # reconcile reads its sources from here, never from the API server.
        self.sources: Known[dict[str, Any]] = Known()
        self.reconciler = Reconciler(
            client,
            config,
            operator_namespace,
            self.tenants_in_slot,
            self.known_templates,
            self.sources.get,
            self.children.sandbox_token,
            self.child_written,
        )
        # The events of a tenant's children read while its pass runs (see PassEchoes).
        self.echoes = PassEchoes()
        # Every watch event handled below puts the trim off too (see TrimWhenQuiet).
        self.trimmer = TrimWhenQuiet(lambda: self.queue.idle)
        self.queue = ReconcileQueue(
            self.reconcile, config.max_concurrent_reconciles, on_idle=self.trimmer
        )
        # The outcome of each tenant's last pass (ready, progressing, stalled), for the gauge.
        self.outcomes: dict[str, str] = {}
        # When each tenant's last event came, counted in tenant events: a resync must not forget
        # a tenant created while it listed (it is in the cache, not in the list).
        self.events_seen = 0
        self.last_seen: dict[str, int] = {}
        # (name -> creationTimestamp) of every tenant the last list found, watched or not yet,
        # less those known to be gone since.
        self.listed: dict[str, str] = {}
        # The names of `listed` and `tenants` by uid slot: a pass compares its tenant with the
        # few that share its slot, not with every tenant (which made provisioning quadratic).
        self.slots = SlotIndex()
        # The resourceVersion each kind's last list was read at (children by kind, and "Pod"):
        # where its watch starts.
        self.listed_at: dict[str, str] = {}

    async def reconcile(self, name: str) -> None:
        self.echoes.begin(name)
        try:
            await self._reconcile(name)
        finally:
            woken = self.echoes.end(name)
            if woken is not None and name in self.tenants:
                self.queue.enqueue(name, follow_up=woken)

    def child_written(self, body: Mapping[str, Any]) -> None:
        """The API server's answer to a pass's write of a child (writes.ChildWriter.written)."""
        if self.echoes.outdated(body):
            return  # deleted, perhaps after this write: the pass the deletion asked for looks again
        self.echoes.answered(body, self.children.written(body))

    async def _reconcile(self, name: str) -> None:
        body = self.tenants.get(name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return  # garbage collection removes the children of a deleted tenant
        started = time.monotonic()
        try:
            observation = await self.reconciler.reconcile(
                body, self.children.of(name), self.pods.of(name)
            )
        except TenantGone:
            # Deleted while the watch was away: a reconnecting watch replays what exists, not
            # what vanished, so the deletion shows only here. A tenant of the same name made
            # since, and seen meanwhile, is another: only the gone one's state goes.
            uid = body["metadata"].get("uid", "")
            current = self.tenants.get(name)
            if current is not None and current["metadata"].get("uid") != uid:
                self.reconciler.forget(uid)  # its event queued the new one
            else:
                self.forget(name, uid)
            return
        except NotTheOneFound as refused:
            # The cache held a namespace that is gone, or another's now (its watch events not
            # yet handled, or missed). Nothing was written: forget it, with what was in it, and
            # look again in a second, from the API server.
            self.children.drop_namespace(name, refused.key[2])
            metrics.observe_reconcile(None, time.monotonic() - started)
            logger.info("%s", refused, extra={"tenant": name})
            if name in self.tenants:  # not deleted while the pass ran
                self.queue.enqueue(name, delay=1.0)
            return
        except Exception as error:
            metrics.observe_reconcile(None, time.monotonic() - started)
            metrics.api_error("reconcile", error)
            raise  # the queue retries it with backoff
        metrics.observe_reconcile(observation, time.monotonic() - started)
        if name in self.tenants:  # not deleted while the pass ran
            if observation.waiting:
                # Nothing it watches says when what it waits for is gone: look again.
                self.queue.enqueue(name, delay=RECHECK_WAITING_SECONDS)
            self.outcomes[name] = metrics.outcome(observation)
            metrics.count_tenants(self.outcomes.values())

    def tenants_in_slot(self, slot: int) -> list[tuple[str, str]]:
        """(name, creationTimestamp) of every tenant listed or seen whose name hashes to `slot`:
        no two may run as one user. The list counts too: after a start, a younger tenant may be
        reconciled before the older one's watch event arrives."""
        return [(name, self._created(name)) for name in self.slots.names(slot)]

    def _created(self, name: str) -> str:
        body = self.tenants.get(name)
        if body is None:
            return self.listed.get(name, "")
        return str(body["metadata"].get("creationTimestamp") or "")

    def known_templates(self) -> list[AgentTenantTemplate | BrokenTemplate]:
        return list(self.templates.items.values())

    def template_seen(self, event: dict[str, Any]) -> None:
        """A template changed: reconcile the tenants it selected before and selects now (a
        tenant whose output did not change writes nothing)."""
        self.trimmer.activity()
        body = event["object"]
        name = body["metadata"]["name"]
        after = None if event.get("type") == "DELETED" else read_template(body)
        before = self.templates.seen(name, after)
        for tenant, tenant_body in self.tenants.items():
            labels = tenant_body["metadata"].get("labels") or {}
            if any(t is not None and template_selects(t, labels) for t in (before, after)):
                self.queue.enqueue(tenant)

    def tenant_seen(self, event: dict[str, Any]) -> None:
        self.trimmer.activity()
        body = event["object"]
        meta = body["metadata"]
        name, uid = meta["name"], meta.get("uid", "")
        before = self.tenants.get(name)
        if before is not None and before["metadata"].get("uid") != uid:
            # Another tenant of this name than the one cached. Kopf hands each object's events
            # to a worker of its own, so the events of a tenant deleted and made again under
            # its name may come in any order: a late event of the old one (its deletion, or
            # one from before the new one's creation) leaves the new one as it is.
            if (
                event.get("type") == "DELETED"
                or meta.get("deletionTimestamp")
                or (meta.get("creationTimestamp") or "")
                < (before["metadata"].get("creationTimestamp") or "")
            ):
                self.reconciler.forget(uid)
                return
            self.reconciler.forget(before["metadata"].get("uid", ""))  # made again: the old goes
        if event.get("type") == "DELETED":
            self.forget(name, uid)
            return
        self.tenants[name] = body = without_managed_fields(body)
        if before is None:
            self.slots.add(name)
            # One its slot-mates' passes did not know: a younger one now stops running as its
            # users (reconcile: UserIdCollision).
            self._queue_slot_mates(name)
        self.events_seen += 1
        self.last_seen[name] = self.events_seen
        if before is None or asks_for_a_pass(before, body):
            self.queue.enqueue(name)

    def forget(self, name: str, uid: str) -> None:
        known = self.tenants.pop(name, None)
        # Gone, listed or not: a slot-mate it kept from running may run again.
        self.listed.pop(name, None)
        self.slots.discard(name)
        self._queue_slot_mates(name)
        self.last_seen.pop(name, None)
        self.reconciler.forget(uid)
        self.children.forget(name)
        self.pods.forget(name)
        self.queue.forget(name)
        self.outcomes.pop(name, None)
        metrics.count_tenants(self.outcomes.values())
        if known is not None:  # once: a pass that found it gone, then its watch event
            logger.info("tenant deleted", extra={"tenant": name})

    def _queue_slot_mates(self, name: str) -> None:
        for other in self.slots.names(uid_slot(name)) - {name}:
            if other in self.tenants:
                self.queue.enqueue(other)

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
        self.children.begin_resync()
        self.pods.begin_resync()
        # All tenants, whatever --tenant-selector says: only the ones cached here are compared.
        listed = {
            str(t.metadata.name): kube_time(t.metadata.creationTimestamp)  # type: ignore[union-attr]
            async for t in client.list(AgentTenantResource)
        }
        self.listed = listed
        self.slots = SlotIndex(listed.keys() | self.tenants.keys())
        self.forget_missing(set(listed), listing_since)
        await self.resync_templates()
        await self.resync_sources()
        fresh = ChildCache()
        for child in watched_kinds(self.config):
            where = {"namespace": "*"} if child.namespaced else {}
            try:
                listing = client.list(
                    child.resource, labels={MANAGED_BY: OPERATOR}, chunk_size=RESYNC_CHUNK, **where
                )  # type: ignore[call-overload]
                async for obj in listing:
                    fresh.observe({**obj.to_dict(), "kind": child.kind}, deleted=False)
                self.listed_at[child.kind] = listing.resourceVersion
            except httpx2.HTTPStatusError as error:  # an ApiError, or a plain-text refusal
                if child.kind in BY_KIND or not refused_for_good(error):
                    raise
                # A templated kind not served (its CRD is missing) or not granted: the tenants
                # whose templates render it stall saying so (writes.refusals_stall).
                logger.warning("cannot list %s children: %s", child.kind, error)
        self.children.replace(fresh)
        pods = PodCache()
        try:
            listing = client.list(
                Pod, namespace="*", labels=dict(RUNTIME_POD_LABELS), chunk_size=RESYNC_CHUNK
            )
            async for pod in listing:
                pods.observe({**pod.to_dict(), "kind": "Pod"}, deleted=False)
            self.listed_at["Pod"] = listing.resourceVersion
        except ApiError as error:
            if error.status.code != 403:
                raise
            # An identity without the chart's right to list pods (an older ClusterRole, a hand
            # install): tenants are still reconciled, only refusals are not shown.
            logger.warning("cannot list runtime pods, refused runtime configs are not shown")
        self.pods.replace(pods)

    async def resync_templates(self) -> None:
        """The templates from a fresh list, keeping those whose events came while it was read.
        Before the first reconcile: a pass that did not know a template would prune its children."""
        since = self.templates.events
        listed: dict[str, AgentTenantTemplate | BrokenTemplate] = {}
        try:
            async for obj in self.reconciler.client.list(AgentTenantTemplateResource):
                body = obj.to_dict()  # type: ignore[no-untyped-call]
                listed[body["metadata"]["name"]] = read_template(body)
        except ApiError as error:
            if error.status.code != 404:
                raise
            logger.warning("AgentTenantTemplates are not served: install crds/ to use them")
        self.templates.replace(listed, since)

    async def resync_sources(self) -> None:
        """The source Secrets from a fresh list (one per drift period), before the first reconcile."""
        since = self.sources.events
        listed = {
            str(secret.metadata.name): source_of(secret)  # type: ignore[union-attr]
            async for secret in self.reconciler.client.list(
                Secret, namespace=self.config.secret_source_namespace
            )
        }
        self.sources.replace(listed, since)

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
        logger.info("caches filled from fresh lists: reconciling")
        metrics.CACHES_SYNCED.set(1)
        # The watches start where the first lists ended: a start replays nothing.
        async with asyncio.TaskGroup() as running:
            for child in watched_kinds(self.config):
                running.create_task(self.watch_children(child))
            running.create_task(self.watch_runtime_pods())
            running.create_task(self.queue.run())

    async def watch_children(self, child: ChildKind) -> None:
        def seen(change: str, body: dict[str, Any]) -> None:
            self.child_seen({"type": change, "object": {**body, "kind": child.kind}})

        await watch(
            self.reconciler.client,
            child.resource,
            seen,
            what=f"{child.kind} children",
            since=self.listed_at.get(child.kind),
            namespace="*" if child.namespaced else None,
            labels={MANAGED_BY: OPERATOR},
            # A templated kind not served or not granted: the resync says so once a period.
            refused_wait=MAX_BACKOFF
            if child.kind in BY_KIND
            else self.config.drift_interval_seconds,
        )

    async def watch_runtime_pods(self) -> None:
        def seen(change: str, body: dict[str, Any]) -> None:
            self.pod_seen({"type": change, "object": {**body, "kind": "Pod"}})

        await watch(
            self.reconciler.client,
            Pod,
            seen,
            what="runtime pods",
            since=self.listed_at.get("Pod"),
            namespace="*",
            labels=RUNTIME_POD_LABELS,
            refused_wait=self.config.drift_interval_seconds,
        )

    def child_seen(self, event: dict[str, Any]) -> None:
        self.trimmer.activity()
        body = event["object"]
        deleted = event.get("type") == "DELETED"
        # Only what moves a tenant toward Ready goes ahead of first passes; the echoes of its own
        # writes and a Deployment's progress before it is available wait their turn (each such
        # pass would write a new status message, and under a burst that doubled the status writes).
        progress = not deleted and self.children.makes_available(body)
        tenant = self.children.observe(body, deleted=deleted)
        if deleted:
            tenant = self.echoes.deleted(body) or tenant
        if tenant and tenant in self.tenants:
            # Only an object the tenant owns, or one in its own namespace (a child whose owner
            # reference was removed), wakes it: a label anyone can set does not (the reconcile
            # ignores such objects too, see plan.ours).
            known = self.tenants[tenant]
            meta = body.get("metadata", {})
            owners = {owner.get("uid") for owner in meta.get("ownerReferences") or []}
            child = row(body.get("kind", ""))
            where = meta.get("name") if not child.namespaced else meta.get("namespace")
            uid, home = known["metadata"].get("uid", ""), self.home(tenant)
            wakes = uid in owners or (home and where == home)
            if wakes and (deleted or not self.echoes.hold(tenant, body, progress)):
                if progress and home is not None and self.rolling_out(tenant, uid, home):
                    self.queue.enqueue(tenant, delay=NEXT_AVAILABLE_WAIT, follow_up=True)
                else:
                    self.queue.enqueue(tenant, follow_up=progress)

    def rolling_out(self, tenant: str, uid: str, home: str) -> bool:
        """Whether a Deployment of the tenant's own (plan.ours: owned by its UID, in its HOME
        namespace; a label anyone may set says nothing) is not available yet."""
        return any(
            child.available is False and ours(key, child, uid, home)
            for key, child in self.children.of(tenant).items()
        )

    def home(self, tenant: str) -> str | None:
        """The namespace a known tenant's status names as its own (None before its first pass)."""
        namespace = (self.tenants[tenant].get("status") or {}).get("namespace")
        return namespace if isinstance(namespace, str) else None

    def pod_seen(self, event: dict[str, Any]) -> None:
        self.trimmer.activity()
        body = event["object"]
        tenant = self.pods.observe(body, deleted=event.get("type") == "DELETED")
        if tenant and tenant in self.tenants:
            # Only a pod in the tenant's own namespace counts (anyone who may label a pod
            # elsewhere could otherwise speak for it); plan.current_refusal checks it again.
            home = self.home(tenant)
            if home and (body.get("metadata") or {}).get("namespace") == home:
                self.queue.enqueue(tenant, follow_up=True)

    async def watch_secret_sources(self) -> None:
        """Reconcile the tenants that copy a source Secret whenever it changes.

        A rotated key then reaches the runtime at once, and a tenant stalled on a Secret that
        did not exist or did not allow it resumes as soon as that is fixed. The watch carries
        on after the API server was away (tests/integration/test_faults.py), see watches.py.
        """

        def seen(change: str, body: dict[str, Any]) -> None:
            secret: Secret = Secret.from_dict(body)  # type: ignore[assignment]
            self.source_seen(secret, deleted=change == "DELETED")

        await watch(
            self.reconciler.client,
            Secret,
            seen,
            what="secret sources",
            namespace=self.config.secret_source_namespace,
        )

    def source_seen(self, secret: Secret, *, deleted: bool) -> None:
        name = secret.metadata.name if secret.metadata else None
        if not name:
            return
        self.sources.seen(name, None if deleted else source_of(secret))
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
            # The API server away (a refusal, a connection error): the next period tries again,
            # and the queue's retries cover the passes. Only an ApiError was caught once: any
            # other error ended the timer for good (tests/integration/test_faults.py).
            except Exception as error:
                metrics.api_error("watch", error)  # as the first list's, in run()
                logger.warning("could not resync the caches: %s", error)
            for name in list(self.tenants):
                self.queue.enqueue(name, delay=random.uniform(0, interval * 0.1))  # noqa: S311


def without_managed_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A tenant's body as the cache keeps it: managedFields dropped (nothing reads a tenant's,
    and with the status writers' entries they are the biggest part of its metadata)."""
    meta = body.get("metadata") or {}
    if "managedFields" not in meta:
        return body
    return {**body, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


# What a tenant's pass reads of its own object besides spec; resourceVersion changes with every
# write, managedFields are dropped from the cache.
_READ_METADATA = ("uid", "generation", "labels", "annotations", "deletionTimestamp", "finalizers")


def asks_for_a_pass(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether a tenant's new version asks for a reconcile: not when only its status changed.

    Status is the operator's own writing: each pass that writes it made its decisions already,
    and a pass for the event its write caused would only compute them again (under a burst,
    one more pass for every status write of every tenant).
    """
    if before.get("spec") != after.get("spec"):
        return True
    old, new = before.get("metadata") or {}, after.get("metadata") or {}
    return any(old.get(key) != new.get(key) for key in _READ_METADATA)


class SlotIndex:
    """Tenant names by the uid slot each hashes to (`render.tenant.uid_slot`)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._by_slot: dict[int, set[str]] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        self._by_slot.setdefault(uid_slot(name), set()).add(name)

    def discard(self, name: str) -> None:
        slot = uid_slot(name)
        names = self._by_slot.get(slot)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_slot[slot]

    def names(self, slot: int) -> frozenset[str]:
        return frozenset(self._by_slot.get(slot, ()))


class Known(Generic[T]):
    """Objects by name from a watch, refreshed by each resync's list. An object whose event came
    while the list was being read stays as the event said (created, changed or deleted): the
    list may predate it."""

    def __init__(self) -> None:
        self.items: dict[str, T] = {}
        self.events = 0
        self._last_seen: dict[str, int] = {}

    def get(self, name: str) -> T | None:
        return self.items.get(name)

    def seen(self, name: str, value: T | None) -> T | None:
        """Record one event (None: deleted); return what was known before."""
        before = self.items.pop(name, None)
        if value is not None:
            self.items[name] = value
        self.events += 1
        self._last_seen[name] = self.events
        return before

    def replace(self, listed: dict[str, T], since: int) -> None:
        """Take over a list begun when `events` was `since`."""
        for name, seen in self._last_seen.items():
            if seen > since:
                if name in self.items:
                    listed[name] = self.items[name]
                else:
                    listed.pop(name, None)
        self._last_seen = {name: seen for name, seen in self._last_seen.items() if seen > since}
        self.items = listed


def source_of(secret: Secret) -> dict[str, Any]:
    """What a reconcile reads of a source Secret: its annotations (the grant), data and type."""
    meta = secret.metadata
    annotations = dict((meta.annotations if meta else None) or {})
    return {
        "metadata": {"annotations": annotations},
        "data": dict(secret.data or {}),
        "type": secret.type or "Opaque",
        # Parsed once, kept as long as the Secret: one shared by every tenant names them all.
        ALLOWED_PARSED: allowed_tenants(annotations.get(ALLOWED_TENANTS, "")),
    }


def read_template(body: dict[str, Any]) -> AgentTenantTemplate | BrokenTemplate:
    """A template as the models read it, or kept as a refusal when they cannot (the CRD refuses
    such templates; an older CRD may not): its tenants stall instead of losing its objects."""
    try:
        return AgentTenantTemplate.model_validate(body)
    except ValidationError as error:
        broken = BrokenTemplate.of(body, error)
        logger.warning("AgentTenantTemplate %s cannot be read: %s", broken.name, broken.problem)
        return broken


def watched_kinds(config: OperatorConfig) -> list[ChildKind]:
    """The child kinds listed and watched cluster-wide: Tenantry's own and those templates may
    render. With scoped Secrets the operator may not list Secrets cluster-wide, so each
    reconcile lists its tenant's instead (see reconcile)."""
    kinds = child_kinds(config.template_kinds)
    return [c for c in kinds if not (c.kind == "Secret" and config.scoped_secrets)]
