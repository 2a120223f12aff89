"""The operator's Kopf wiring and what its controller does with watch events, without a cluster."""

from __future__ import annotations

import inspect
from typing import Any

import kopf
from tenantry.config import OperatorConfig
from tenantry.controller import Controller, watched_kinds
from tenantry.handlers import (
    LIST_CHUNK,
    WORKER_IDLE_SECONDS,
    configure,
    in_cluster_server,
    template_event,
    tenant_event,
)
from tenantry.memory import QUIET_SECONDS


def test_kopf_watches_tenants_and_templates_only_and_a_selector_filters_tenants_on_the_server() -> (
    None
):
    """The children and runtime pods are the controller's own watches (tenantry.watches)."""
    handlers = kopf.get_default_registry()._watching.get_all_handlers()
    watched = {(h.selector.group, h.selector.any_name): h.fn for h in handlers}  # type: ignore[union-attr]
    assert watched == {
        ("tenantry.dev", "agenttenants"): tenant_event,
        ("tenantry.dev", "agenttenanttemplates"): template_event,
    }
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig(tenant_selector="shard=a,!canary"))
    tenants = kopf.Resource("tenantry.dev", "v1alpha1", "agenttenants")
    assert settings.watching.label_selectors.collect(tenants) == ["shard=a,!canary"]
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig())
    assert settings.watching.label_selectors.collect(tenants) == []


def test_with_scoped_secrets_no_secret_is_listed_or_watched_cluster_wide() -> None:
    # The operator then holds no cluster-wide right on Secrets: a watch would be refused.
    scoped = OperatorConfig(service_account="tenantry-system/tenantry")
    assert "Secret" not in {kind.kind for kind in watched_kinds(scoped)}
    assert "Secret" in {kind.kind for kind in watched_kinds(OperatorConfig())}


def test_every_event_handler_is_a_coroutine_and_kopf_keeps_no_diff_base() -> None:
    # Kopf runs plain functions in a thread pool; the queue they feed belongs to the event loop.
    for handler in (tenant_event, template_event):
        assert inspect.iscoroutinefunction(handler), handler.__name__
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig())
    storage = settings.persistence.diffbase_storage
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"a": 1}})
    assert storage.build(body=body) is None
    assert storage.fetch(body=body) is None


def test_kopf_lists_in_pages_and_its_workers_let_go_of_their_events_before_the_trim() -> None:
    # Memory after a restart (docs/bench/operator-memory.md): Kopf's lists come in pages, and a
    # per-object worker exits soon after its object's last event, dropping the event it holds,
    # well before the operator trims its heap (a quiet spell of QUIET_SECONDS).
    settings = kopf.OperatorSettings()
    configure(settings, OperatorConfig())
    assert settings.watching.chunk_size == LIST_CHUNK
    assert settings.queueing.idle_timeout == WORKER_IDLE_SECONDS
    assert WORKER_IDLE_SECONDS < QUIET_SECONDS


async def test_a_resync_keeps_a_tenant_created_while_it_listed() -> None:
    controller = Controller(OperatorConfig(), None, None)  # type: ignore[arg-type] # no request is made
    old = {"type": "ADDED", "object": {"metadata": {"name": "old", "uid": "1"}}}
    controller.tenant_seen(old)
    controller.tenant_seen({**old, "object": {"metadata": {"name": "gone", "uid": "2"}}})
    listing_since = controller.events_seen
    # The list is being read; meanwhile a tenant is created and its event arrives.
    controller.tenant_seen({**old, "object": {"metadata": {"name": "new", "uid": "3"}}})
    controller.forget_missing({"old"}, listing_since)  # the list: only "old" then
    assert set(controller.tenants) == {"old", "new"}


async def test_a_late_event_of_a_tenant_made_again_under_its_name_leaves_the_new_one() -> None:
    """Found by review: Kopf hands each object's events to a worker of its own, so of a tenant
    deleted and made again under its name, the old one's deletion may be handled after the new
    one's creation. It made the operator forget the new tenant, and nothing brought it back
    until it changed; an older event of the old one put the old body back in its place."""
    controller = Controller(OperatorConfig(), None, None)  # type: ignore[arg-type] # no request is made
    old = {"metadata": {"name": "acme", "uid": "1", "creationTimestamp": "2026-12-01T10:00:00Z"}}
    new = {"metadata": {"name": "acme", "uid": "2", "creationTimestamp": "2026-12-01T10:00:05Z"}}
    controller.tenant_seen({"type": "ADDED", "object": old})
    controller.tenant_seen({"type": "ADDED", "object": new})
    deleting = {"metadata": {**old["metadata"], "deletionTimestamp": "2026-12-01T10:00:04Z"}}
    for late in (("MODIFIED", old), ("MODIFIED", deleting), ("DELETED", deleting)):
        controller.tenant_seen({"type": late[0], "object": late[1]})
        assert controller.tenants["acme"]["metadata"]["uid"] == "2", late[0]
    assert "acme" in controller.queue._pending
    controller.tenant_seen({"type": "DELETED", "object": new})
    assert "acme" not in controller.tenants


async def test_only_a_tenants_own_children_wake_it() -> None:
    """Finding: an object labelled `tenantry.dev/tenant: acme` in another tenant's namespace was
    taken for acme's child. A label alone wakes nobody now."""
    acme = {"metadata": {"name": "acme", "uid": "uid-acme"}, "status": {"namespace": "tenant-acme"}}
    labels = {"app.kubernetes.io/managed-by": "tenantry", "tenantry.dev/tenant": "acme"}

    def woken(meta: dict[str, object]) -> bool:
        controller = Controller(OperatorConfig(), None, None)  # type: ignore[arg-type] # no request is made
        controller.tenant_seen({"type": "ADDED", "object": acme})
        controller.queue._pending.clear()  # the tenant's own event
        body = {"kind": "ConfigMap", "metadata": {"name": "x", "labels": labels, **meta}}
        controller.child_seen({"type": "ADDED", "object": body})
        return "acme" in controller.queue._pending

    assert not woken({"namespace": "tenant-globex"})
    assert not woken({"namespace": "tenant-globex", "ownerReferences": [{"uid": "uid-other"}]})
    assert woken({"namespace": "tenant-globex", "ownerReferences": [{"uid": "uid-acme"}]})
    assert woken({"namespace": "tenant-acme"})  # a child whose owner reference was removed


async def test_a_tenants_own_status_write_wakes_nobody_and_anything_else_it_reads_does() -> None:
    acme = {
        "metadata": {
            "name": "acme",
            "uid": "uid-acme",
            "generation": 1,
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"displayName": "Acme"},
    }
    ready = {**acme, "status": {"namespace": "tenant-acme", "conditions": [{"type": "Ready"}]}}

    def woken(after: dict[str, Any]) -> bool:
        controller = Controller(OperatorConfig(), None, None)  # type: ignore[arg-type] # no request is made
        controller.tenant_seen({"type": "ADDED", "object": acme})
        assert "acme" in controller.queue._pending  # a tenant first seen
        controller.queue._pending.clear()
        controller.tenant_seen({"type": "MODIFIED", "object": after})
        assert controller.tenants["acme"].get("status") == after.get("status")  # cached anyway
        assert "managedFields" not in controller.tenants["acme"]["metadata"]
        return "acme" in controller.queue._pending

    assert not woken(ready)
    assert woken({**ready, "spec": {"displayName": "Acme Corp"}})
    for key, value in (
        ("generation", 2),
        ("labels", {"tier": "gold"}),
        ("annotations", {"note": "x"}),
        ("deletionTimestamp", "2026-11-30T00:00:00Z"),
    ):
        assert woken({**ready, "metadata": {**acme["metadata"], key: value}}), key


def test_in_a_pod_the_api_server_is_reached_by_the_services_address_not_by_name() -> None:
    """Finding (real node): Kopf's own login named https://kubernetes.default.svc, which the
    chart's NetworkPolicy, allowing the API server alone and no DNS, never let resolve."""
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "https://10.0.0.1:443"
    assert (
        in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"})
        == "https://[fd00::1]:6443"
    )
    assert in_cluster_server({}) is None


def test_the_operator_has_only_event_handlers_so_kopf_need_remember_no_object() -> None:
    # NoObjectMemories gives Kopf a fresh memory for every event: right only while no handler
    # reads one across events (daemons, timers, indexes, change handlers, webhooks).
    registry = kopf.get_default_registry()
    assert registry._watching.get_all_handlers()
    for kind in ("_indexing", "_spawning", "_changing", "_webhooks"):
        assert not getattr(registry, kind).get_all_handlers(), kind


async def test_kopf_keeps_no_memory_of_the_objects_it_sees() -> None:
    from tenantry.handlers import NoObjectMemories  # noqa: PLC0415

    memories = NoObjectMemories()
    body = {"metadata": {"uid": "a-uid", "name": "a"}}
    first = await memories.recall(body, memobase=kopf.Memo(), noticed_by_listing=True)
    again = await memories.recall(body, memobase=kopf.Memo())
    assert first is not again
    assert list(memories.iter_all_memories()) == []
