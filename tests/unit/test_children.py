"""What counts as drift on the children never replaced (the namespace, claims): a field we set
that Tenantry's own entries in managedFields no longer own. The entries here are shaped as the
API server files them (kube-apiserver 1.35, seen on this project's control plane): a create is
an Update entry naming maps with "." and an owner reference whole; an apply names what it set."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tenantry.children import apply_reason, replacement, summarize
from tenantry.cli import load_tenants
from tenantry.config import OperatorConfig
from tenantry.render import ClusterFacts, render

REPO = Path(__file__).resolve().parents[2]
UID = "00000000-0000-0000-0000-000000000001"
ENFORCE = "pod-security.kubernetes.io/enforce"


def namespace(uid: str = UID) -> dict[str, Any]:
    acme = load_tenants(str(REPO / "examples" / "acme.yaml"))[0]
    facts = ClusterFacts(uid=uid, secret_data={"model-credentials": {"api-key": "eA=="}})
    return next(m for m in render(acme, OperatorConfig(), facts) if m["kind"] == "Namespace")


def entry(
    manager: str,
    operation: str,
    labels: Sequence[str],
    annotations: Sequence[str] = (),
    owner: str | None = None,
) -> dict[str, Any]:
    """One managedFields entry. A create (Update) names the maps it made with "."."""
    dot: dict[str, Any] = {".": {}} if operation == "Update" and manager == "tenantry" else {}
    meta: dict[str, Any] = {}
    if labels:
        meta["f:labels"] = {**dot, **{f"f:{key}": {} for key in labels}}
    if annotations:
        meta["f:annotations"] = {**dot, **{f"f:{key}": {} for key in annotations}}
    if owner:
        meta["f:ownerReferences"] = {**dot, f'k:{{"uid":"{owner}"}}': {}}
    return {"manager": manager, "operation": operation, "fieldsV1": {"f:metadata": meta}}


def created_and_applied(manifest: dict[str, Any], *others: dict[str, Any]) -> dict[str, Any]:
    """The live namespace as Tenantry created it, applied it since, and others wrote to it."""
    meta = manifest["metadata"]
    labels, annotations = list(meta["labels"]), list(meta["annotations"])
    uid = meta["ownerReferences"][0]["uid"]
    created = entry(
        "tenantry", "Update", [*labels, "kubernetes.io/metadata.name"], annotations, uid
    )
    applied = entry("tenantry", "Apply", labels, annotations, uid)
    return live(manifest, created, applied, *others)


def live(manifest: dict[str, Any], *entries: dict[str, Any]) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest["metadata"], "managedFields": list(entries)}}


def without(body: dict[str, Any], label: str) -> dict[str, Any]:
    """The body with the label taken from Tenantry's entries (changed or removed by someone)."""
    for item in body["metadata"]["managedFields"]:
        if item["manager"] == "tenantry":
            item["fieldsV1"]["f:metadata"]["f:labels"].pop(f"f:{label}", None)
    return body


def test_a_label_of_an_admins_own_and_the_same_labels_applied_by_another_are_no_drift() -> None:
    """Seen on the API server: neither manager ever leaves after a forced apply of ours."""
    desired = namespace()
    labels = list(desired["metadata"]["labels"])
    body = created_and_applied(
        desired,
        entry("kubectl-label", "Update", ["team"]),
        entry("tenantry-bench", "Apply", labels),  # co-owns every label, with our values
    )
    child = summarize(body)
    assert child.foreign_managers == ()  # they decide nothing here: nobody is listed
    assert apply_reason(desired, child) is None


def test_a_namespace_tenantry_only_created_is_no_drift() -> None:
    """Every Ready tenant's namespace before this rule: a restart after an upgrade writes none."""
    desired = namespace()
    meta = desired["metadata"]
    created = entry(
        "tenantry",
        "Update",
        [*meta["labels"], "kubernetes.io/metadata.name"],
        list(meta["annotations"]),
        UID,
    )
    assert apply_reason(desired, summarize(live(desired, created))) is None


def test_a_label_of_ours_someone_changed_or_removed_is_drift_whoever_else_is_there() -> None:
    desired = namespace()
    expected = f"someone changed metadata.labels[{ENFORCE}]"
    # `kubectl label --overwrite`: the API server moves the field to the one who changed it.
    overwritten = created_and_applied(desired, entry("kubectl-label", "Update", [ENFORCE, "team"]))
    assert apply_reason(desired, summarize(without(overwritten, ENFORCE))) == expected
    # `kubectl label KEY-`: the field leaves every entry, and no entry of the remover is left.
    removed = created_and_applied(desired, entry("kubectl-label", "Update", ["team"]))
    assert apply_reason(desired, summarize(without(removed, ENFORCE))) == expected


def test_our_owner_reference_changed_is_drift() -> None:
    """An owner reference is filed whole: changing any of it (controller, blockOwnerDeletion)
    takes it from us."""
    desired = namespace()
    body = created_and_applied(desired)
    for item in body["metadata"]["managedFields"]:
        item["fieldsV1"]["f:metadata"].pop("f:ownerReferences")
    reason = apply_reason(desired, summarize(body))
    assert reason == "someone changed metadata.ownerReferences[tenant]"


def test_managed_fields_someone_cleared_are_drift_every_field_named_up_to_three() -> None:
    desired = namespace()
    labels = list(desired["metadata"]["labels"])
    cleared = live(desired, entry("before-first-apply", "Update", labels, ["x"], UID))
    reason = apply_reason(desired, summarize(cleared)) or ""
    assert reason.startswith("someone changed metadata.labels[app.kubernetes.io/managed-by], ")
    taken = len(labels) + len(desired["metadata"]["annotations"]) + 1
    assert reason.endswith(f" and {taken - 3} more")


def test_a_map_a_create_named_whole_covers_none_of_what_was_taken_from_it() -> None:
    """A create's entry names the labels map itself: once every key in it was taken, it looks
    like a field owned whole, which only an apply's entry can tell."""
    desired = namespace()
    meta = desired["metadata"]
    created = entry("tenantry", "Update", [], list(meta["annotations"]), UID)
    created["fieldsV1"]["f:metadata"]["f:labels"] = {}
    assert (apply_reason(desired, summarize(live(desired, created))) or "").startswith(
        "someone changed metadata.labels["
    )


def test_every_tenants_namespace_shares_one_copy_of_the_fields_it_owns() -> None:
    first, second = namespace(), namespace("00000000-0000-0000-0000-000000000002")
    owned = summarize(created_and_applied(first)).owned
    assert owned is not None
    assert summarize(created_and_applied(second)).owned is owned


def claim(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": "memory",
            "namespace": "tenant-acme",
            "labels": {"app.kubernetes.io/managed-by": "tenantry"},
            "annotations": {"tenantry.dev/applied-hash": "h"},
        },
        "spec": spec,
    }


def test_a_claim_owns_lists_and_structs_the_api_server_files_whole() -> None:
    """A templated claim may set a selector, a struct the API server files as one field, as it
    files accessModes; the volume binder's writes are its own."""
    desired = claim(
        {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1024Mi"}},  # stored as 1Gi: still ours
            "selector": {"matchLabels": {"tier": "fast"}},
        }
    )
    applied = {
        "f:metadata": {
            "f:labels": {"f:app.kubernetes.io/managed-by": {}},
            "f:annotations": {"f:tenantry.dev/applied-hash": {}},
        },
        "f:spec": {
            "f:accessModes": {},
            "f:resources": {"f:requests": {"f:storage": {}}},
            "f:selector": {},
        },
    }
    binder = {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "fieldsV1": {"f:spec": {"f:volumeName": {}}},
    }
    ours = {"manager": "tenantry", "operation": "Apply", "fieldsV1": applied}
    assert apply_reason(desired, summarize(live(desired, ours, binder))) is None
    del applied["f:spec"]["f:selector"]
    reason = apply_reason(desired, summarize(live(desired, ours, binder)))
    assert reason == "someone changed spec.selector.matchLabels.tier"


def deployment(name: str = "runtime") -> dict[str, Any]:
    acme = load_tenants(str(REPO / "examples" / "acme.yaml"))[0]
    facts = ClusterFacts(uid=UID, secret_data={"model-credentials": {"api-key": "eA=="}})
    children = render(acme, OperatorConfig(), facts)
    return next(m for m in children if m["kind"] == "Deployment" and m["metadata"]["name"] == name)


def test_a_replace_keeps_what_the_system_managers_wrote_and_drops_the_rest() -> None:
    """Finding: a replace dropped the revision annotation the Deployment controller writes
    (with its status), which moved the Deployment's generation: a rollout of nothing."""
    manifest = deployment()
    meta = manifest["metadata"]
    revision = "deployment.kubernetes.io/revision"
    ours = entry("tenantry", "Apply", list(meta["labels"]), list(meta["annotations"]))
    controller = {
        **entry("kube-controller-manager", "Update", [], [revision]),
        "subresource": "status",
    }
    intruder = entry("intruder", "Update", ["team"], ["note"])
    body = live(manifest, ours, controller, intruder)
    body["metadata"] = {
        **body["metadata"],
        "resourceVersion": "42",
        "labels": {**meta["labels"], "team": "x"},
        "annotations": {**meta["annotations"], revision: "3", "note": "x"},
    }
    sent = replacement(manifest, body)["metadata"]
    assert sent["labels"] == meta["labels"]
    assert sent["annotations"] == {**meta["annotations"], revision: "3"}
    assert sent["managedFields"] == [ours, controller]
    assert sent["resourceVersion"] == "42"
    # One of ours a system manager also claims stays what we render.
    claimed = {**meta["annotations"], revision: "ours"}
    mine = {**manifest, "metadata": {**meta, "annotations": claimed}}
    assert replacement(mine, body)["metadata"]["annotations"][revision] == "ours"


def test_a_replace_of_a_child_only_others_wrote_to_sends_one_empty_entry() -> None:
    """An empty managedFields list would leave them as they are; one empty entry clears them."""
    manifest = deployment()
    body = live(manifest, entry("intruder", "Update", ["team"]))
    body["metadata"] = {**body["metadata"], "resourceVersion": "7", "labels": {"team": "x"}}
    sent = replacement(manifest, body)["metadata"]
    assert sent["managedFields"] == [{}] and sent["labels"] == manifest["metadata"]["labels"]
