"""The decisions of a reconcile, as pure functions: which live children are this tenant's, which
refusals stall it, what to write (and how), what to prune, which writes correct drift, and the
state of each child group. No I/O: tests/unit/test_plan.py exercises each decision without a
cluster; tenantry.reconcile reads the facts these take and carries out the plan they return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tenantry.children import (
    ChildKey,
    LiveChild,
    apply_reason,
    child_key,
    child_path,
    summarize,
)
from tenantry.kinds import row
from tenantry.models import API_VERSION, KIND, AgentTenant
from tenantry.names import CONFIG_HASH, RUNTIME, SANDBOX, TENANT_LABEL
from tenantry.pods import RuntimeRefusal
from tenantry.render import Manifest, uid_slot
from tenantry.status import Correction, GroupState


class Stall(Exception):
    """The tenant cannot converge until a human changes something; nothing was written, unless
    the stall revoked what the tenant may no longer hold (`revoked`, the groups it changed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.revoked: tuple[str, ...] = ()
        self.groups: dict[str, GroupState] = {}


class Waiting(Exception):
    """The tenant cannot converge yet, and will without anyone acting: what holds it goes away by
    itself (an earlier tenant's namespace that garbage collection is deleting). Nothing was
    written; the pass is done again soon (Controller.reconcile)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def namespace_conflict(namespace: str, why: str = "does not belong to this tenant") -> Stall:
    return Stall(
        "NamespaceConflict",
        f"namespace {namespace!r} already exists and {why}; Tenantry never adopts a namespace: "
        "set spec.namespace to a namespace that does not exist yet",
    )


# How long a tenant waits for an earlier tenant's namespace: for garbage collection to begin
# deleting it (seconds, unless the collector is far behind), and then for it to be gone (pods
# end within their grace period, 30 s by default). Past either, whatever holds it will not go
# by itself: a stall says so, rather than Reconciling for ever (which GitOps tools wait out).
COLLECTION_GRACE = timedelta(seconds=60)
TERMINATION_PATIENCE = timedelta(minutes=10)


def check_found_namespace(
    namespace: Mapping[str, Any], tenant: AgentTenant, uid: str, created: str, now: datetime
) -> None:
    """Refuse a live namespace that is not this tenant's (`owns`): a stall, but for the namespace
    of an earlier tenant of the same name on its way out, which the tenant waits out.

    A tenant deleted and applied again at once (a GitOps replace: `kubectl replace --force`,
    Argo CD's `Force=true,Replace=true`) finds the namespace of the deleted one still there,
    labelled with its name and owned by an AgentTenant of its name with another uid. A name is
    one object at a time, so that owner is gone, and garbage collection deletes what it owned:
    only when every owner is such an earlier tenant (an object with an owner left is not
    collected) of this API version (one the collector cannot look up, it never collects). It
    waits while the namespace is terminating, or until COLLECTION_GRACE after the tenant was
    made for the collector to begin; so anyone who may make a namespace can delay a tenant that
    way, never hold it. Nothing of that namespace is ever adopted: the tenant makes its own.
    """
    if owns(namespace, tenant, uid):
        return
    meta = namespace.get("metadata", {})
    name = str(meta.get("name", ""))
    owners = meta.get("ownerReferences") or []
    earlier = all(
        ref.get("apiVersion") == API_VERSION
        and ref.get("kind") == KIND
        and ref.get("name") == tenant.name
        and ref.get("uid") != uid
        for ref in owners
    )
    if not owners or not earlier or (meta.get("labels") or {}).get(TENANT_LABEL) != tenant.name:
        raise namespace_conflict(name)
    deleting = meta.get("deletionTimestamp")
    if deleting:
        if now - parse_time(deleting) <= TERMINATION_PATIENCE:
            raise Waiting(
                "NamespaceTerminating",
                f"namespace {name!r} is an earlier tenant's of this name, being deleted: this "
                "tenant's is created once it is gone",
            )
        why = (
            "is an earlier tenant's of this name, still terminating 10 minutes after its deletion "
            "began (see what holds it: its metadata.finalizers, spec.finalizers and "
            "status.conditions)"
        )
    elif now - parse_time(created) <= COLLECTION_GRACE:
        raise Waiting(
            "NamespaceTerminating",
            f"namespace {name!r} is an earlier tenant's of this name, which garbage collection "
            "deletes: this tenant's is created once it is gone",
        )
    else:
        why = (
            "is an earlier tenant's of this name, which garbage collection has not begun to "
            "delete a minute after this tenant was made"
        )
    raise namespace_conflict(name, why)


def parse_time(value: object) -> datetime:
    """A Kubernetes time stamp (RFC 3339, UTC: "2026-12-01T23:05:51Z") as an aware datetime; one
    that is not (no object the API server returns) as the earliest time, long past."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def ours(key: ChildKey, child: LiveChild, uid: str, namespace: str) -> bool:
    """A child of this tenant: owned by its uid, and in its namespace (or that namespace itself).

    Labels alone never decide it: anyone who may label an object could otherwise file one under
    another tenant, have it pruned on that tenant's behalf, or hide a tampered child from it.
    """
    kind, child_namespace, name = key
    where = child_namespace if row(kind).namespaced else name
    return uid in child.owner_uids and where == namespace


def owns(namespace: Mapping[str, Any], tenant: AgentTenant, uid: str) -> bool:
    """Whether a live Namespace object is this tenant's: owned by its uid and labelled with it."""
    meta = namespace.get("metadata", {})
    owned = any(
        ref.get("kind") == KIND and ref.get("uid") == uid
        for ref in meta.get("ownerReferences") or []
    )
    return owned and (meta.get("labels") or {}).get(TENANT_LABEL) == tenant.name


def check_namespace_name(namespace: str, reserved: frozenset[str]) -> None:
    """Refuse namespaces no tenant may have, whatever the manifest or the prefix says."""
    if namespace in reserved or namespace.startswith("kube-"):
        raise Stall(
            "ReservedNamespace",
            f"namespace {namespace!r} is reserved for the cluster or the operator: set spec.namespace "
            "to a namespace of the tenant's own",
        )
    if len(namespace) > 63:
        raise Stall(
            "InvalidNamespace",
            f"the default namespace {namespace!r} is longer than 63 characters: set spec.namespace, "
            "or use a shorter tenant name",
        )


def check_uid_slot(name: str, created: str, neighbours: Iterable[tuple[str, str]]) -> None:
    """Refuse a tenant whose pods would run as the users of an older tenant's pods."""
    slot = uid_slot(name)
    # The oldest first, so the message names the same tenant on every pass.
    for other_created, other in sorted((c, n) for n, c in neighbours):
        if other != name and uid_slot(other) == slot and (other_created, other) < (created, name):
            raise Stall(
                "UserIdCollision",
                f"metadata.name: tenant {name!r} would run as the same users as tenant {other!r} "
                "(their names hash to one uid slot, see docs/security.md): choose another name",
            )


# How a child is written: created (the tenant's namespace, the first time: a server-side apply
# would silently take over a namespace that appeared since we looked), replaced whole (someone
# else wrote fields to it, which a forced apply would leave), or applied server-side.
WriteMethod = Literal["create", "replace", "apply"]


@dataclass(frozen=True)
class Write:
    key: ChildKey
    manifest: Manifest
    reason: str  # "missing", "changed", or "changed by <managers>"
    method: WriteMethod


@dataclass(frozen=True)
class Plan:
    """What one pass writes, phase by phase, what it prunes, and which writes correct drift.
    How the tenant then stands is `outcome`'s, from what the writes answered."""

    phases: tuple[tuple[Write, ...], ...]  # in order; every write of one phase at once
    prune: tuple[ChildKey, ...]
    corrected: tuple[Correction, ...]

    @property
    def writes(self) -> tuple[Write, ...]:
        return tuple(write for phase in self.phases for write in phase)


def write_method(
    key: ChildKey, live: Mapping[ChildKey, LiveChild], namespace_uid: str | None
) -> WriteMethod:
    if not row(key[0]).namespaced:
        return "create" if namespace_uid is None else "apply"
    child = live.get(key)
    if child is not None and child.foreign_managers and row(key[0]).replaceable:
        return "replace"
    return "apply"


def pinned(manifest: Manifest, key: ChildKey, namespace_uid: str | None) -> Manifest:
    """The namespace's manifest bound to the namespace the pass found. A server-side apply
    makes what does not exist; one that carries a uid is refused instead, 409 when no object of
    that name exists and 422 when another has it (writes.NotTheOneFound). Unbound, a pass that
    found the namespace (in its cache, or Terminating) made it again after garbage collection
    took it, past the check that its tenant still exists (Reconciler._create_namespace); or
    took over, by a forced apply, another namespace of that name made meanwhile."""
    if row(key[0]).namespaced or namespace_uid is None:
        return manifest
    return {**manifest, "metadata": {**manifest["metadata"], "uid": namespace_uid}}


def plan(
    tenant: AgentTenant,
    namespace: str,
    desired: Iterable[Manifest],
    live: Mapping[ChildKey, LiveChild],
    namespace_uid: str | None,
    was_ready: bool,
    new: frozenset[ChildKey] = frozenset(),
) -> Plan:
    """Compare the rendered children with the live ones (this tenant's only, see `ours`).
    `namespace_uid` is the uid of the tenant's namespace as the pass found it (None: there is
    none). `new` are children this pass renders for the first time (a template that began to
    select the tenant): written because they are wanted, not because anyone changed them."""
    desired = list(desired)
    writes = [
        Write(
            key,
            pinned(manifest, key, namespace_uid),
            reason,
            write_method(key, live, namespace_uid),
        )
        for manifest in desired
        if (reason := apply_reason(manifest, live.get(key := child_key(manifest)))) is not None
    ]
    phases = sorted({row(write.key[0]).phase for write in writes})
    # A change to the spec or a template is not drift; what a Ready tenant lost or had changed
    # by someone is.
    corrected = tuple(
        Correction(write.key[0], child_path(write.key), write.reason)
        for write in writes
        if was_ready and write.reason != "changed" and write.key not in new
    )
    wanted = {child_key(manifest) for manifest in desired}
    return Plan(
        phases=tuple(
            tuple(write for write in writes if row(write.key[0]).phase == phase) for phase in phases
        ),
        # A tenant's namespace (the one cluster-scoped child) goes only with the tenant itself,
        # by garbage collection, never because a pass did not render it.
        prune=tuple(key for key in sorted(set(live) - wanted) if row(key[0]).namespaced),
        corrected=corrected,
    )


def outcome(
    tenant: AgentTenant,
    namespace: str,
    desired: Iterable[Manifest],
    live: Mapping[ChildKey, LiveChild],
    answers: Mapping[ChildKey, Mapping[str, Any]],
    refusals: Iterable[RuntimeRefusal] = (),
) -> tuple[dict[str, GroupState], tuple[str, str] | None]:
    """How the tenant stands after a pass that did not stall: the state of each child group,
    and (reason, message) when it cannot become Ready until a human acts although everything
    was written (its runtime refuses the configuration it was given). `answers` are the API
    server's answers to this pass's writes, newer than `live`."""
    groups = group_states(tenant, namespace, live, answers)
    refused = current_refusal(namespace, desired, refusals)
    if refused is None or groups["RuntimeReady"].ok:
        return groups, None
    stalled = (RUNTIME_CONFIG_REFUSED, refused.message)
    groups["RuntimeReady"] = GroupState(False, *stalled)
    return groups, stalled


RUNTIME_CONFIG_REFUSED = "RuntimeConfigRefused"


def current_refusal(
    namespace: str, desired: Iterable[Manifest], refusals: Iterable[RuntimeRefusal]
) -> RuntimeRefusal | None:
    """A refusal by a runtime pod of this tenant's namespace that ran the configuration and the
    image the tenant has now (its pod template's): an older pod's refusal is a rollout's past."""
    runtime = ("Deployment", namespace, RUNTIME)
    current = {
        (
            manifest["spec"]["template"]["metadata"]["annotations"].get(CONFIG_HASH),
            container["image"],
        )
        for manifest in desired
        if child_key(manifest) == runtime
        for container in manifest["spec"]["template"]["spec"]["containers"]
        if container["name"] == RUNTIME
    }
    for refusal in refusals:
        if refusal.namespace == namespace and (refusal.config_hash, refusal.image) in current:
            return refusal
    return None


def group_states(
    tenant: AgentTenant,
    namespace: str,
    live: Mapping[ChildKey, LiveChild],
    answers: Mapping[ChildKey, Mapping[str, Any]],
) -> dict[str, GroupState]:
    """The state of each child group after a pass (it did not stall) whose writes were answered
    `answers`.

    The namespace, quota, policies and accounts have no state of their own beyond being applied,
    which a pass that did not stall has done: `Ready` covers them. The workloads do: available
    only once their Deployment's controller says so, never merely because they were applied. A
    Deployment this pass wrote is judged by the write's answer, not by what it was before: a
    replace that takes back a label changes no spec, and leaves it available.
    """

    def workload(component: str) -> GroupState:
        key = ("Deployment", namespace, component)
        answer = answers.get(key)
        child = summarize(answer) if answer is not None else live.get(key)
        if child is not None and child.available:
            return GroupState(True, "Available")
        if child is not None and child.problem:
            return GroupState(False, "Unavailable", f"{component}: {child.problem}")
        # Just created, or rolling out as it should (children.deployment_health): one message
        # for all, so that a rollout's steps write no new status.
        return GroupState(False, "RollingOut", f"the {component} Deployment is rolling out")

    return {
        # False only when a stall revokes a copy (reconcile.Reconciler._revoke).
        "SecretsReady": GroupState(True, "Copied", f"{len(tenant.spec.secrets)} secret(s) copied"),
        "RuntimeReady": workload(RUNTIME),
        "SandboxReady": workload(SANDBOX)
        if tenant.spec.sandbox.enabled
        else GroupState(True, "Disabled", "the sandbox is disabled"),
    }
