"""The reconcile's decisions, without a cluster: what is the tenant's, what to write and how,
what to prune, what counts as drift corrected, and each child group's state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tenantry.children import ChildKey, LiveChild, child_key, summarize
from tenantry.cli import load_tenants
from tenantry.config import OperatorConfig
from tenantry.kinds import BY_KIND
from tenantry.models import AgentTenant
from tenantry.plan import (
    Plan,
    Stall,
    Waiting,
    check_found_namespace,
    check_namespace_name,
    ours,
    outcome,
    owns,
    plan,
)
from tenantry.pods import RuntimeRefusal
from tenantry.render import ClusterFacts, Manifest, render
from tenantry.status import GroupState

REPO = Path(__file__).resolve().parents[2]
UID = "00000000-0000-0000-0000-000000000001"
NAMESPACE = "tenant-acme"
NAMESPACE_UID = "namespace-uid-1"
FACTS = ClusterFacts(
    uid=UID,
    secret_data={"model-credentials": {"api-key": "c2stdGVzdA=="}},
    sandbox_token="token-1",
)


def acme(**spec_changes: Any) -> AgentTenant:
    tenant = load_tenants(str(REPO / "examples" / "acme.yaml"))[0]
    if not spec_changes:
        return tenant
    spec = tenant.spec.model_copy(update=spec_changes)
    return tenant.model_copy(update={"spec": spec})


def desired(tenant: AgentTenant | None = None) -> list[dict[str, Any]]:
    return render(tenant or acme(), OperatorConfig(), FACTS)


def applied_fields(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The fieldsV1 the API server files for an apply of the manifest: every value a field, a
    list one field, an owner reference by its uid (tests/unit/test_children.py has the real
    thing, from the API server)."""

    def tree(value: Any, path: tuple[str, ...]) -> dict[str, Any]:
        if isinstance(value, dict):
            return {f"f:{key}": tree(item, (*path, key)) for key, item in value.items()}
        if path == ("metadata", "ownerReferences"):
            return {f'k:{{"uid":"{ref["uid"]}"}}': {} for ref in value}
        return {}

    meta = manifest["metadata"]
    kept = {key: meta[key] for key in ("labels", "annotations", "ownerReferences") if key in meta}
    body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    return tree({**body, "metadata": kept}, ())


def as_live(*args: Any, **kwargs: Any) -> dict[ChildKey, LiveChild]:
    return {key: summarize(body) for key, body in as_bodies(*args, **kwargs).items()}


def as_bodies(
    manifests: list[dict[str, Any]],
    managers: Mapping[ChildKey, str] = {},
    available: bool = True,
    taken: Mapping[ChildKey, str] = {},
    deployment_status: Mapping[str, Any] | None = None,
) -> dict[ChildKey, dict[str, Any]]:
    """The live children the watch would report for these manifests, as applied by us (and by
    the managers given, per child, which own fields of their own or, for a child in `taken`,
    that label of ours: they changed it), with every Deployment available or not (or with the
    status given)."""
    live = {}
    for manifest in manifests:
        key = child_key(manifest)
        ours = applied_fields(manifest)
        theirs: dict[str, Any] = {"f:metadata": {"f:labels": {"f:team": {}}}}
        if key in taken:
            del ours["f:metadata"]["f:labels"][f"f:{taken[key]}"]
            theirs["f:metadata"]["f:labels"][f"f:{taken[key]}"] = {}
        entries = [{"manager": "tenantry", "operation": "Apply", "fieldsV1": ours}]
        if key in managers:
            entries.append({"manager": managers[key], "operation": "Update", "fieldsV1": theirs})
        body = {
            **manifest,
            "metadata": {**manifest["metadata"], "uid": f"uid-{key[2]}", "managedFields": entries},
        }
        if manifest["kind"] == "Deployment":
            # Rolled out, and (unless available) its replica lost since: a problem, not a rollout.
            replicas = 1 if available else 0
            body["status"] = {
                "updatedReplicas": 1,
                "availableReplicas": replicas,
                "observedGeneration": 0,
                "conditions": [{"type": "Progressing", "reason": "NewReplicaSetAvailable"}],
            }
            if deployment_status is not None:
                body["status"] = deployment_status
        live[key] = body
    return live


def created(decided: Plan) -> dict[ChildKey, dict[str, Any]]:
    """What the API server answers to the writes of children that did not exist: no status."""
    return {
        write.key: {**write.manifest, "metadata": {**write.manifest["metadata"], "generation": 1}}
        for write in decided.writes
    }


def written(decided: Plan) -> dict[ChildKey, tuple[str, str]]:
    return {write.key: (write.method, write.reason) for write in decided.writes}


def test_a_new_tenant_writes_every_child_phase_by_phase_creating_its_namespace() -> None:
    children = desired()
    decided = plan(acme(), NAMESPACE, children, {}, namespace_uid=None, was_ready=False)
    assert set(written(decided)) == {child_key(m) for m in children}
    assert written(decided)[("Namespace", "", NAMESPACE)] == ("create", "missing")
    assert {method for method, _ in written(decided).values()} == {"create", "apply"}
    phases = [{BY_KIND[write.key[0]].phase for write in phase} for phase in decided.phases]
    assert all(len(kinds) == 1 for kinds in phases)
    assert [min(kinds) for kinds in phases] == sorted({BY_KIND[m["kind"]].phase for m in children})
    assert decided.prune == () and decided.corrected == ()
    groups, _ = outcome(acme(), NAMESPACE, children, {}, created(decided))
    assert groups["RuntimeReady"].reason == "RollingOut"
    assert not groups["RuntimeReady"].ok


def test_a_namespace_written_again_is_bound_to_the_namespace_the_pass_found() -> None:
    """A server-side apply makes what does not exist: the namespace's apply carries the uid the
    pass found, so the API server refuses it when that namespace is gone, or is another one."""
    live = as_live(desired())
    renamed = acme(display_name="Acme, renamed")
    decided = plan(renamed, NAMESPACE, desired(renamed), live, NAMESPACE_UID, was_ready=True)
    (write,) = decided.writes
    assert (write.key, write.method) == (("Namespace", "", NAMESPACE), "apply")
    assert write.manifest["metadata"]["uid"] == NAMESPACE_UID
    first = plan(renamed, NAMESPACE, desired(renamed), {}, namespace_uid=None, was_ready=False)
    assert all("uid" not in write.manifest["metadata"] for write in first.writes)


def test_an_unchanged_tenant_writes_nothing_and_is_ready() -> None:
    children = desired()
    live = as_live(children)
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, was_ready=True)
    assert decided.writes == () and decided.prune == () and decided.corrected == ()
    groups, stalled = outcome(acme(), NAMESPACE, children, live, {})
    assert all(state.ok for state in groups.values()) and stalled is None, groups


def test_a_workload_that_is_not_available_keeps_its_group_false_with_the_reason() -> None:
    children = desired()
    live = as_live(children, available=False)
    assert plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, True).writes == ()
    groups, _ = outcome(acme(), NAMESPACE, children, live, {})
    assert groups["RuntimeReady"].reason == "Unavailable"
    assert "0 of 1 replicas available" in groups["RuntimeReady"].message


def test_a_workload_rolling_out_says_so_whatever_the_step_of_its_rollout() -> None:
    children = desired()
    steps = ({}, {"observedGeneration": 1}, {"observedGeneration": 1, "updatedReplicas": 1})
    for status in steps:
        live = as_live(children, deployment_status=status)
        assert plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, was_ready=False).writes == ()
        groups, _ = outcome(acme(), NAMESPACE, children, live, {})
        for group, name in (("RuntimeReady", "runtime"), ("SandboxReady", "sandbox")):
            state = groups[group]
            assert (state.reason, state.message) == (
                "RollingOut",
                f"the {name} Deployment is rolling out",
            )


def test_a_deployment_the_pass_wrote_is_judged_by_the_api_servers_answer() -> None:
    """Finding: a Deployment written by a pass counted as rolling out until its watch event,
    so taking back a label someone added (a replace that changes no spec) turned a Ready
    tenant NotReady for a moment, with a Warning event."""
    children = desired()
    runtime = ("Deployment", NAMESPACE, "runtime")
    live = as_live(children, managers={runtime: "intruder"})
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, was_ready=True)
    assert written(decided) == {runtime: ("replace", "changed by intruder")}
    answer = as_bodies(children)[runtime]  # the same spec, its rollout long over
    groups, _ = outcome(acme(), NAMESPACE, children, live, {runtime: answer})
    assert groups["RuntimeReady"] == GroupState(True, "Available")
    # A write that changed the spec moved the generation: a rollout, until the controller says.
    moved = {**answer, "metadata": {**answer["metadata"], "generation": 2}}
    moved["status"] = {**answer["status"], "observedGeneration": 1}
    groups, _ = outcome(acme(), NAMESPACE, children, as_live(children), {runtime: moved})
    assert groups["RuntimeReady"].reason == "RollingOut"


def test_a_tenant_without_a_sandbox_reports_it_disabled() -> None:
    tenant = acme(sandbox=acme().spec.sandbox.model_copy(update={"enabled": False}))
    children = desired(tenant)
    groups, _ = outcome(tenant, NAMESPACE, children, as_live(children), {})
    assert groups["SandboxReady"].reason == "Disabled" and groups["SandboxReady"].ok


def test_drift_on_a_ready_tenant_is_corrected_and_reported() -> None:
    children = desired()
    policy = ("NetworkPolicy", NAMESPACE, "runtime")
    secret = ("Secret", NAMESPACE, "model-credentials")
    live = as_live(children, managers={policy: "kubectl-edit"})
    del live[secret]
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, was_ready=True)
    # Someone else's fields on a child: replaced whole, so what they added goes too.
    assert written(decided) == {
        policy: ("replace", "changed by kubectl-edit"),
        secret: ("apply", "missing"),
    }
    assert sorted(str(c) for c in decided.corrected) == [
        "NetworkPolicy tenant-acme/runtime (changed by kubectl-edit)",
        "Secret tenant-acme/model-credentials (missing)",
    ]


def test_a_change_to_the_spec_is_written_but_is_not_drift() -> None:
    before = as_live(desired())
    quota = acme().spec.quota.model_copy(update={"pods": 7})
    decided = plan(
        acme(quota=quota), NAMESPACE, desired(acme(quota=quota)), before, NAMESPACE_UID, True
    )
    assert written(decided) == {("ResourceQuota", NAMESPACE, "tenant-quota"): ("apply", "changed")}
    assert decided.corrected == ()


def test_a_child_a_template_renders_for_the_first_time_is_written_but_is_not_drift() -> None:
    children = desired()
    claim = ("PersistentVolumeClaim", NAMESPACE, "memory")
    live = as_live(children)
    children.append(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": "memory",
                "namespace": NAMESPACE,
                "annotations": {"tenantry.dev/applied-hash": "h"},
            },
        }
    )
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, True, new=frozenset({claim}))
    assert written(decided) == {claim: ("apply", "missing")}
    assert decided.corrected == ()
    # Deleted by hand later, it is drift like any child.
    again = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, True)
    assert [str(c) for c in again.corrected] == [
        "PersistentVolumeClaim tenant-acme/memory (missing)"
    ]


def test_nothing_is_drift_before_the_tenant_was_ready() -> None:
    children = desired()
    live = as_live(children)
    del live[("Service", NAMESPACE, "runtime")]
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, was_ready=False)
    assert written(decided) == {("Service", NAMESPACE, "runtime"): ("apply", "missing")}
    assert decided.corrected == ()


def test_the_namespace_is_applied_not_replaced_and_only_a_field_of_ours_changed_is_drift() -> None:
    """Replacing a namespace would drop what the namespace controller and admins legitimately
    keep on it (finalizers, labels of their own); our fields are taken back by a forced apply.
    Someone's label of their own is no drift: a forced apply could never make its manager go."""
    children = desired()
    key = ("Namespace", "", NAMESPACE)
    labelled = as_live(children, {key: "kubectl-label"})
    assert written(plan(acme(), NAMESPACE, children, labelled, NAMESPACE_UID, True)) == {}
    enforce = "pod-security.kubernetes.io/enforce"
    changed = as_live(children, {key: "kubectl-label"}, taken={key: enforce})
    decided = plan(acme(), NAMESPACE, children, changed, NAMESPACE_UID, True)
    assert written(decided) == {key: ("apply", f"someone changed metadata.labels[{enforce}]")}
    assert [str(c) for c in decided.corrected] == [
        f"Namespace {NAMESPACE} (someone changed metadata.labels[{enforce}])"
    ]


def test_a_sessions_claim_is_applied_never_replaced_and_the_binders_are_no_drift() -> None:
    """A bound claim's spec is immutable: a replace would be refused (and a delete would lose
    every session's history); the volume binder and the scheduler write to it by design, and
    so may anyone to fields of their own."""
    runtime = acme().spec.runtime.model_copy(
        update={"sessions": acme().spec.runtime.sessions.model_copy(update={"enabled": True})}
    )
    tenant = acme(runtime=runtime)
    children = desired(tenant)
    key = ("PersistentVolumeClaim", NAMESPACE, "sessions")
    for manager in ("kube-controller-manager", "kube-scheduler", "kubectl"):
        live = as_live(children, {key: manager})
        assert written(plan(tenant, NAMESPACE, children, live, NAMESPACE_UID, True)) == {}
    live = as_live(children, {key: "kubectl"}, taken={key: "app.kubernetes.io/component"})
    decided = plan(tenant, NAMESPACE, children, live, NAMESPACE_UID, True)
    assert written(decided) == {
        key: ("apply", "someone changed metadata.labels[app.kubernetes.io/component]")
    }


def test_what_the_spec_no_longer_wants_is_pruned_but_never_the_namespace() -> None:
    children = desired()
    stale_secret = ("Secret", NAMESPACE, "old-credentials")
    live = as_live(children)
    live[stale_secret] = live[("Secret", NAMESPACE, "model-credentials")]
    # A namespace of this tenant that the render no longer names (spec.namespace changed).
    live[("Namespace", "", "tenant-acme-old")] = live[("Namespace", "", NAMESPACE)]
    decided = plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, True)
    assert decided.prune == (stale_secret,)


def test_a_child_is_the_tenants_only_when_owned_by_its_uid_in_its_namespace() -> None:
    live = as_live(desired())
    secret = ("Secret", NAMESPACE, "model-credentials")
    namespace = ("Namespace", "", NAMESPACE)
    assert ours(secret, live[secret], UID, NAMESPACE)
    assert ours(namespace, live[namespace], UID, NAMESPACE)
    # Labelled as acme's, but owned by another uid: another tenant's, or a forgery.
    assert not ours(secret, live[secret], "another-uid", NAMESPACE)
    # Owned by acme, but in a namespace that is not acme's (an owner reference can be copied).
    assert not ours(("Secret", "elsewhere", "model-credentials"), live[secret], UID, NAMESPACE)
    assert not ours(("Namespace", "", "elsewhere"), live[namespace], UID, NAMESPACE)


def test_a_namespace_is_the_tenants_only_with_its_owner_reference_and_its_label() -> None:
    manifest = next(m for m in desired() if m["kind"] == "Namespace")
    assert owns(manifest, acme(), UID)
    assert not owns(manifest, acme(), "another-uid")
    relabelled = {
        **manifest,
        "metadata": {**manifest["metadata"], "labels": {"tenantry.dev/tenant": "globex"}},
    }
    assert not owns(relabelled, acme(), UID)


def with_owners(
    namespace: Manifest, *owners: dict[str, Any], tenant: str = "acme", deleting: str = ""
) -> Manifest:
    meta = {**namespace["metadata"], "ownerReferences": list(owners)}
    meta["labels"] = {**meta["labels"], "tenantry.dev/tenant": tenant}
    if deleting:
        meta["deletionTimestamp"] = deleting
    return {**namespace, "metadata": meta}


MADE = "2026-12-01T10:00:00Z"  # the tenant's creationTimestamp


def at(seconds: float) -> datetime:
    return datetime(2026, 12, 1, 10, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def test_an_earlier_tenants_namespace_of_the_same_name_is_waited_out_anything_else_stalls() -> None:
    """A tenant deleted and made again at once (a GitOps replace) finds the old one's namespace,
    which garbage collection deletes: it waits, while that namespace terminates or for a minute
    for the collector to begin. Only when every owner is an AgentTenant of its name and API
    version with another uid (gone: a name is one object at a time) and the label names it;
    any other namespace stalls it, as before."""
    namespace = next(m for m in desired() if m["kind"] == "Namespace")
    check_found_namespace(namespace, acme(), UID, MADE, at(3600))  # its own
    earlier = {**namespace["metadata"]["ownerReferences"][0], "uid": "earlier-uid"}
    terminating = with_owners(namespace, earlier, deleting="2026-12-01T10:00:01Z")
    for found, now in ((with_owners(namespace, earlier), at(59)), (terminating, at(600))):
        with pytest.raises(Waiting) as waiting:
            check_found_namespace(found, acme(), UID, MADE, now)
        assert waiting.value.reason == "NamespaceTerminating"
        assert NAMESPACE in waiting.value.message
    stuck = {
        "collector never began": (with_owners(namespace, earlier), at(61)),
        "a time stamp that is none": (with_owners(namespace, earlier, deleting="soon"), at(0)),
        "terminating for good": (terminating, at(602)),
    }
    for case, (found, now) in stuck.items():
        with pytest.raises(Stall) as stalled:
            check_found_namespace(found, acme(), UID, MADE, now)
        assert stalled.value.reason == "NamespaceConflict", case
        assert "earlier tenant" in stalled.value.message, case
    other_owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "acme", "uid": "x"}
    not_earlier = {
        "labelled as another's": with_owners(namespace, earlier, tenant="globex"),
        "another tenant's": with_owners(namespace, {**earlier, "name": "globex"}),
        "another group's kind": with_owners(namespace, {**earlier, "apiVersion": "example.com/v1"}),
        # garbage collection cannot look up a version the API server does not serve: never goes
        "a version not served": with_owners(
            namespace, {**earlier, "apiVersion": "tenantry.dev/v9"}
        ),
        "an owner left": with_owners(namespace, earlier, other_owner),
        "nobody's": with_owners(namespace),
    }
    for case, found in not_earlier.items():
        with pytest.raises(Stall) as stalled:
            check_found_namespace(found, acme(), UID, MADE, at(0))
        assert stalled.value.reason == "NamespaceConflict", case
        assert "earlier tenant" not in stalled.value.message, case


@pytest.mark.parametrize(
    "namespace", ["kube-system", "kube-anything", "default", "tenantry-system"]
)
def test_reserved_namespaces_stall(namespace: str) -> None:
    with pytest.raises(Stall) as stalled:
        check_namespace_name(namespace, frozenset({"default", "kube-system", "tenantry-system"}))
    assert stalled.value.reason == "ReservedNamespace"
    assert "spec.namespace" in stalled.value.message


def refusal_of(children: list[dict[str, Any]], namespace: str = NAMESPACE) -> RuntimeRefusal:
    (runtime,) = [
        m for m in children if m["kind"] == "Deployment" and m["metadata"]["name"] == "runtime"
    ]
    template = runtime["spec"]["template"]
    return RuntimeRefusal(
        namespace,
        template["metadata"]["annotations"]["tenantry.dev/config-hash"],
        template["spec"]["containers"][0]["image"],
        "tenantry_runtime serve: refusing to start: agent 'x': kind 'search' is not allowed",
    )


def test_a_runtime_that_refuses_its_current_configuration_stalls_the_tenant() -> None:
    children = desired()
    live = as_live(children, available=False)
    refused = refusal_of(children)
    groups, stalled = outcome(acme(), NAMESPACE, children, live, {}, [refused])
    assert stalled == ("RuntimeConfigRefused", refused.message)
    assert groups["RuntimeReady"] == GroupState(False, "RuntimeConfigRefused", refused.message)
    # everything is applied: only a human can help now
    assert plan(acme(), NAMESPACE, children, live, NAMESPACE_UID, True).writes == ()


def test_a_refusal_of_another_configuration_or_image_or_namespace_is_the_past() -> None:
    children = desired()
    live = as_live(children, available=False)
    refused = refusal_of(children)
    for old in (
        replace(refused, config_hash="an-older-config"),
        replace(refused, image="an-older-image"),
        replace(refused, namespace="tenant-globex"),
    ):
        groups, stalled = outcome(acme(), NAMESPACE, children, live, {}, [old])
        assert stalled is None
        assert groups["RuntimeReady"].reason == "Unavailable"


def test_an_available_runtime_is_not_stalled_by_an_old_pods_refusal() -> None:
    children = desired()
    groups, stalled = outcome(
        acme(), NAMESPACE, children, as_live(children), {}, [refusal_of(children)]
    )
    assert stalled is None and groups["RuntimeReady"].ok
