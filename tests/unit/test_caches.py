"""What one operator process keeps from its watches: a replayed event wakes no tenant, a list
never undoes an event that came while it was read, tokens are handed only to their owner."""

from __future__ import annotations

from typing import Any

from tenantry.children import ChildCache
from tenantry.controller import Known


def child(kind: str = "Service", name: str = "runtime", **meta: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "tenant-acme",
            "uid": "u1",
            "labels": {"app.kubernetes.io/managed-by": "tenantry", "tenantry.dev/tenant": "acme"},
            "annotations": {"tenantry.dev/applied-hash": "h1"},
            "ownerReferences": [{"uid": "tenant-uid"}],
            **meta,
        },
    }


def test_an_event_that_changes_nothing_the_reconcile_reads_wakes_no_tenant() -> None:
    cache = ChildCache()
    assert cache.observe(child(), deleted=False) == "acme"
    # A watch's replay after a restart, or a change to a field the reconcile does not read.
    assert cache.observe(child(resourceVersion="2"), deleted=False) is None
    assert cache.observe(child(annotations={"tenantry.dev/applied-hash": "h2"}), False) == "acme"
    assert cache.observe(child(), deleted=True) == "acme"
    assert cache.observe(child(), deleted=True) is None  # already gone


def test_a_sandbox_token_is_handed_only_to_the_tenant_that_owns_its_secret() -> None:
    cache = ChildCache()
    token = {**child("Secret", "sandbox-token"), "data": {"token": "dG9rZW4="}}
    cache.observe(token, deleted=False)
    assert cache.sandbox_token("tenant-acme", "tenant-uid") == "dG9rZW4="
    assert cache.sandbox_token("tenant-acme", "another-uid") is None
    assert cache.sandbox_token("tenant-other", "tenant-uid") is None
    cache.observe(token, deleted=True)
    assert cache.sandbox_token("tenant-acme", "tenant-uid") is None


def test_a_list_never_undoes_what_an_event_said_while_it_was_read() -> None:
    known: Known[str] = Known()
    known.seen("a", "old")
    since = known.events
    known.seen("a", "new")  # changed while the list was read
    known.seen("b", None)  # deleted while the list was read
    known.seen("c", "made")  # created while the list was read
    known.replace({"a": "old", "b": "listed", "d": "listed"}, since)
    assert known.items == {"a": "new", "c": "made", "d": "listed"}
    # The next list is the truth again.
    known.replace({"a": "newer"}, known.events)
    assert known.items == {"a": "newer"}


def test_only_a_deployment_turning_available_is_progress() -> None:
    cache = ChildCache()
    labels = {"app.kubernetes.io/managed-by": "tenantry", "tenantry.dev/tenant": "acme"}

    def deployment(available: int) -> dict[str, Any]:
        return {
            "kind": "Deployment",
            "metadata": {
                "name": "runtime",
                "namespace": "tenant-acme",
                "labels": labels,
                "generation": 1,
            },
            "spec": {"replicas": 1},
            "status": {
                "observedGeneration": 1,
                "updatedReplicas": 1,
                "availableReplicas": available,
            },
        }

    assert not cache.makes_available(deployment(0))  # created, not yet available
    cache.observe(deployment(0), deleted=False)
    assert cache.makes_available(deployment(1))
    cache.observe(deployment(1), deleted=False)
    assert not cache.makes_available(deployment(1))  # available already: no news
    assert not cache.makes_available({**deployment(1), "kind": "Service"})
