"""What one operator process keeps from its watches: a replayed event wakes no tenant, a list
never undoes an event that came while it was read, tokens are handed only to their owner."""

from __future__ import annotations

from typing import Any

from tenantry.children import ChildCache, PassEchoes, summarize
from tenantry.controller import Known, SlotIndex
from tenantry.pods import PodCache
from tenantry.reconcile import allowed_tenants
from tenantry.render import uid_slot
from test_pods import pod

from tests.support.uid_slots import names_in_one_uid_slot


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


def test_a_rollout_wakes_its_tenant_only_when_it_ends() -> None:
    cache = ChildCache()
    created = {**child("Deployment"), "spec": {"replicas": 1}}

    def rolled(**status: Any) -> dict[str, Any]:
        return {**created, "metadata": {**created["metadata"], "generation": 1}, "status": status}

    assert cache.observe(created, deleted=False) == "acme"
    # The controller sees the spec, then updates the replica, then waits for it: no pass each.
    assert cache.observe(rolled(observedGeneration=1), deleted=False) is None
    assert cache.observe(rolled(observedGeneration=1, updatedReplicas=1), False) is None
    done = rolled(observedGeneration=1, updatedReplicas=1, availableReplicas=1)
    assert cache.observe(done, deleted=False) == "acme"


def rollout(version: str, available: int) -> dict[str, Any]:
    """The runtime Deployment at one resourceVersion, with `available` of its one replica."""
    deployment = child("Deployment", resourceVersion=version, generation=1)
    status = {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": available}
    return {**deployment, "spec": {"replicas": 1}, "status": status}


def test_an_account_of_a_child_older_than_the_one_known_never_replaces_it() -> None:
    cache = ChildCache()
    runtime = ("Deployment", "tenant-acme", "runtime")
    assert cache.observe(rollout("10", available=1), deleted=False) == "acme"
    # A write's answer read after the watch told of a later change: the Deployment turning
    # available must not be taken back, or its tenant waits for an event that never comes.
    cache.written(rollout("9", available=0))
    assert cache.of("acme")[runtime].available
    # An older event still wakes its tenant if it differs, as it did (see PassEchoes), and
    # still leaves the newer account in place.
    assert cache.observe(rollout("8", available=0), deleted=False) == "acme"
    assert cache.observe(rollout("7", available=1), deleted=False) is None
    assert cache.of("acme")[runtime].available
    # A version that is not a number is news, as every account was before versions were read.
    assert cache.observe(rollout("x", available=0), deleted=False) == "acme"
    assert cache.observe(rollout("11", available=1), deleted=False) == "acme"


def test_the_echo_of_a_passs_own_write_wakes_nobody_whichever_is_read_first() -> None:
    echoes = PassEchoes()
    echoes.begin("acme")
    assert echoes.hold("acme", rollout("5", available=0), follow_up=False)  # the echo first
    echoes.answered(rollout("5", available=0), None)
    echoes.answered(child(resourceVersion="7"), None)  # the answer first: its echo after
    assert echoes.hold("acme", child(resourceVersion="7"), follow_up=False)
    assert echoes.end("acme") is None


def test_any_other_event_in_a_pass_wakes_its_tenant_when_the_pass_ends() -> None:
    echoes = PassEchoes()
    # No pass runs: nothing is held.
    assert not echoes.hold("acme", child(resourceVersion="5"), follow_up=False)
    echoes.begin("acme")
    echoes.answered(child(resourceVersion="5"), None)
    assert echoes.hold("acme", child(resourceVersion="6"), follow_up=False)  # after the write
    assert echoes.end("acme") is False
    echoes.begin("acme")
    echoes.answered(child(resourceVersion="5"), None)
    # Another's change just before the write: the pass planned without it, and what it left
    # (a field of theirs on a kind replaced when others write to it) is for the next pass.
    assert echoes.hold("acme", child(resourceVersion="4"), follow_up=False)
    assert echoes.hold("acme", child(resourceVersion="5"), follow_up=False)
    assert echoes.end("acme") is False
    echoes.begin("acme")
    assert echoes.hold("acme", child("ConfigMap", resourceVersion="3"), follow_up=False)
    assert echoes.end("acme") is False  # a child the pass did not write
    echoes.begin("acme")
    echoes.answered(rollout("5", available=0), None)
    assert echoes.hold("acme", rollout("8", available=1), follow_up=True)
    assert echoes.hold("acme", rollout("5", available=0), follow_up=False)
    assert echoes.end("acme") is True  # progress toward Ready goes ahead, as it would have
    echoes.begin("acme")
    assert not echoes.hold("acme", child(resourceVersion="x"), follow_up=False)  # not comparable
    assert echoes.end("acme") is None
    # Another tenant's answer is not this pass's.
    echoes.begin("acme")
    other = child(resourceVersion="9")
    other["metadata"]["labels"] = {**other["metadata"]["labels"], "tenantry.dev/tenant": "other"}
    echoes.answered(other, None)
    assert echoes.hold("acme", child(resourceVersion="9"), follow_up=False)
    assert echoes.end("acme") is False


def test_an_answer_showing_others_writes_to_a_replaced_kind_wakes_its_tenant() -> None:
    """The pass applied a child someone else had made (unlabelled, so never seen) or written
    to just before: the apply kept their fields, and only the next pass's replace drops them."""
    cache, echoes = ChildCache(), PassEchoes()
    theirs = child(resourceVersion="5")
    theirs["metadata"]["managedFields"] = [{"manager": "kubectl-edit", "operation": "Update"}]
    echoes.begin("acme")
    echoes.answered(theirs, cache.written(theirs))
    assert echoes.hold("acme", theirs, follow_up=False)  # its echo, read after
    assert echoes.end("acme") is False
    echoes.begin("acme")
    ours = child(resourceVersion="6")
    echoes.answered(ours, cache.written(ours))
    assert echoes.end("acme") is None


def test_a_deletion_in_a_pass_wakes_its_tenant_and_an_older_answer_does_not_bring_it_back() -> None:
    echoes = PassEchoes()
    assert echoes.deleted(child(resourceVersion="6")) is None  # no pass runs
    echoes.begin("acme")
    # Deleted (at 6) after the pass's write (5), the deletion read before the answer: the
    # cache never knew the child, so the deletion is what wakes the tenant.
    assert echoes.deleted(child(resourceVersion="6")) == "acme"
    assert echoes.outdated(child(resourceVersion="5"))
    assert not echoes.outdated(child(resourceVersion="7"))  # made again after the deletion
    assert not echoes.outdated(child("ConfigMap", resourceVersion="5"))  # another child
    assert echoes.end("acme") is None  # the deletion was not held: it woke the tenant at once
    assert not echoes.outdated(child(resourceVersion="5"))  # the pass is over
    # A templated kind's versions are not compared: an answer after its deletion may be the
    # older, so it is not taken (the pass the deletion asked for applies it again).
    echoes.begin("acme")
    assert echoes.deleted(child("Widget", resourceVersion="6")) == "acme"
    assert echoes.outdated(child("Widget", resourceVersion="5"))
    assert echoes.outdated(child("Widget", resourceVersion="7"))
    assert not echoes.outdated(child("Gadget", resourceVersion="5"))
    echoes.end("acme")


def test_templated_kinds_and_versions_that_are_not_numbers_are_never_compared() -> None:
    """An aggregated API server may serve a templated kind with versions that do not grow."""
    cache, echoes = ChildCache(), PassEchoes()
    widget = child("Widget", resourceVersion="10")
    assert cache.observe(widget, deleted=False) == "acme"
    changed = child("Widget", resourceVersion="3", annotations={"tenantry.dev/applied-hash": "h2"})
    assert cache.observe(changed, deleted=False) == "acme"
    assert cache.of("acme")[("Widget", "tenant-acme", "runtime")].applied_hash == "h2"
    echoes.begin("acme")
    echoes.answered(widget, None)
    assert not echoes.hold("acme", widget, follow_up=False)
    assert not echoes.hold("acme", child(resourceVersion="x"), follow_up=False)
    assert echoes.end("acme") is None


def test_an_older_account_of_a_deployment_is_no_progress() -> None:
    cache = ChildCache()
    rolling = rollout("10", available=0)
    rolling["metadata"]["generation"] = 2  # a new rollout: not available until it is seen
    cache.observe(rolling, deleted=False)
    assert not cache.makes_available(rollout("9", available=1))  # the rollout before
    assert cache.makes_available(rollout("11", available=1))


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


def test_a_resync_never_undoes_what_an_event_said_of_a_child_while_it_listed() -> None:
    """Finding (a flaky DriftCorrected count): the echo of a pass's restore arrived while the
    drift timer's resync was listing, after it had read that child; the list's older copy
    replaced the echo, and the timer's pass restored the child and posted DriftCorrected again."""
    cache = ChildCache()
    tampered = child(managedFields=[{"manager": "kubectl-label", "operation": "Update"}])
    cache.observe(tampered, deleted=False)
    cache.begin_resync()
    listed = ChildCache()
    listed.observe(tampered, deleted=False)  # the list read the child before the restore
    restored, gone = child(), child(name="gone")
    cache.observe(restored, deleted=False)  # the restore's echo, while the list went on
    cache.observe(gone, deleted=False)
    listed.observe(gone, deleted=False)
    cache.observe(gone, deleted=True)  # deleted after the list read it
    token = {**child("Secret", "sandbox-token"), "data": {"token": "bmV3"}}
    listed.observe({**token, "data": {"token": "b2xk"}}, deleted=False)
    cache.written(token)  # a write's answer counts as an event
    cache.replace(listed)
    children = cache.of("acme")
    assert children[("Service", "tenant-acme", "runtime")] == summarize(restored)
    assert ("Service", "tenant-acme", "gone") not in children
    assert cache.sandbox_token("tenant-acme", "tenant-uid") == "bmV3"
    # The next list is the truth again.
    cache.begin_resync()
    cache.replace(ChildCache())
    assert cache.of("acme") == {}


def test_a_resync_never_undoes_what_an_event_said_of_a_pod_while_it_listed() -> None:
    refusing = pod(terminated={"exitCode": 2, "message": "refusing to start: x"})
    cache = PodCache()
    cache.observe(refusing, deleted=False)
    cache.begin_resync()
    listed = PodCache()
    listed.observe(refusing, deleted=False)
    cache.observe(refusing, deleted=True)  # the refusing pod went while the list was read
    cache.replace(listed)
    assert cache.of("acme") == ()


def test_a_namespace_found_not_to_be_the_cached_one_is_forgotten_with_what_was_in_it() -> None:
    """Found by review: a refusal for the namespace's uid dropped the namespace alone, and the
    retry, which makes the namespace again, took the children cached in the old one for live
    (its Deployments available: Ready, with an empty namespace)."""
    cache = ChildCache()
    namespace = child("Namespace", "tenant-acme")
    del namespace["metadata"]["namespace"]  # cluster-scoped
    other = child()
    other["metadata"]["namespace"] = "tenant-other"
    token = {**child("Secret", "sandbox-token"), "data": {"token": "b2xk"}}
    for body in (namespace, child(), token, other):
        cache.observe(body, deleted=False)
    listed = ChildCache()
    for body in (namespace, child(), token, other):
        listed.observe(body, deleted=False)
    cache.begin_resync()  # a resync whose list read them before the namespace went
    cache.drop_namespace("acme", "tenant-acme")
    assert set(cache.of("acme")) == {("Service", "tenant-other", "runtime")}
    assert cache.sandbox_token("tenant-acme", "tenant-uid") is None
    cache.replace(listed)
    assert set(cache.of("acme")) == {("Service", "tenant-other", "runtime")}


def test_the_slot_index_finds_the_names_that_share_a_slot_until_they_are_discarded() -> None:
    older, younger = names_in_one_uid_slot("slot")
    slots = SlotIndex([older, "elsewhere"])
    slots.add(younger)
    assert slots.names(uid_slot(older)) == {older, younger}
    assert slots.names(uid_slot("elsewhere")) == {"elsewhere"}
    slots.discard(older)
    slots.discard("never-added")
    assert slots.names(uid_slot(younger)) == {younger}
    slots.discard(younger)
    assert slots.names(uid_slot(younger)) == set()


def test_a_source_secrets_allowed_tenants_are_its_comma_separated_names() -> None:
    assert allowed_tenants(" a, b ,c") == {"a", "b", "c"}
    assert "" in allowed_tenants("")  # no name is empty: an empty annotation allows no tenant
