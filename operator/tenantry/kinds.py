"""The one table of the kinds of children: what the operator renders, applies, watches and prunes.

Each row names a manifest's `kind`, the lightkube class that reads and writes it, and the phase
it is written in; whether a kind is namespaced comes from its class. The watch list (handlers),
the classes for writes and deletes (reconcile), the apply phases and what is pruned (plan), how a
live child is recognised as a tenant's (plan.ours), and the tests' list of child kinds all come
from here, so a kind is added in one place.

The one cluster-scoped kind is the tenant's own namespace: a child is recognised as the tenant's
by the namespace it is in, the namespace by its name; it is created rather than applied the first
time, and never pruned (it goes with the tenant, by garbage collection).

The platform admin's AgentTenantTemplates add rows of their own: the kinds the operator's
`--template-kinds` allows (`templated_kinds`), watched, written and pruned like the rest. A kind
Tenantry renders itself is never one of them, except a PersistentVolumeClaim (`templatable`):
storage a platform adds per tenant, counted by the tenant's quota, under names of its own.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from lightkube.core.exceptions import LoadResourceError
from lightkube.core.resource import NamespacedResource
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import (
    ConfigMap,
    LimitRange,
    Namespace,
    PersistentVolumeClaim,
    ResourceQuota,
    Secret,
    Service,
    ServiceAccount,
)
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.rbac_authorization_v1 import RoleBinding


@dataclass(frozen=True)
class ChildKind:
    kind: str
    resource: Any  # a lightkube resource class
    # Children are written phase by phase, every child of one phase at once: the namespace before
    # anything in it; the operator's RoleBinding before the Secrets it lets the operator write
    # (scoped-secrets mode); workloads last, so their pods never start before the accounts,
    # Secrets and policies they depend on exist (a pod created before its ServiceAccount is
    # refused, and its ReplicaSet retries only after a backoff).
    phase: int
    # Whether drift (fields another manager wrote) is corrected by replacing the object whole.
    # Not a claim: its spec is immutable once bound (a replace is refused, a delete loses its
    # data). Nor the namespace: it is the cluster admin's to label as well (a replace would drop
    # their labels). Drift on those is a field we set that someone changed or removed, taken
    # back by a forced apply (children.taken_fields).
    replaceable: bool = True
    # Whether AgentTenantTemplates may render objects of this kind too (see the module's notes).
    templatable: bool = False

    @property
    def namespaced(self) -> bool:
        return issubclass(self.resource, NamespacedResource)

    @property
    def api_version(self) -> str:
        info = self.resource._api_info.resource
        return f"{info.group}/{info.version}" if info.group else str(info.version)

    @property
    def watched(self) -> tuple[str, str, str]:
        """(group, version, plural), as Kopf names a resource to watch."""
        info = self.resource._api_info
        return (info.resource.group, info.resource.version, info.plural)


CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("Namespace", Namespace, 0, replaceable=False),
    ChildKind("RoleBinding", RoleBinding, 1),
    ChildKind("ResourceQuota", ResourceQuota, 2),
    ChildKind("LimitRange", LimitRange, 2),
    ChildKind("NetworkPolicy", NetworkPolicy, 2),
    ChildKind("ServiceAccount", ServiceAccount, 2),
    ChildKind("Secret", Secret, 2),
    ChildKind("ConfigMap", ConfigMap, 2),
    # With the workloads: the quota that counts it is written a phase before, so the quota
    # controller has (nearly always) computed its usage, which admission needs to admit a claim.
    ChildKind(
        "PersistentVolumeClaim", PersistentVolumeClaim, 3, replaceable=False, templatable=True
    ),
    ChildKind("Deployment", Deployment, 3),
    ChildKind("Service", Service, 3),
)
BY_KIND = {child.kind: child for child in CHILD_KINDS}


# Kinds no template renders whatever the flag says: each could open what the tenant's
# NetworkPolicies (any kind named *NetworkPolicy, of any CNI) or its bindings close.
NEVER_TEMPLATED = frozenset(
    {
        "Role",
        "ClusterRole",
        "ClusterRoleBinding",
        "AdminNetworkPolicy",
        "BaselineAdminNetworkPolicy",
    }
)
# Templated children are written with the workloads: after the quota that may count them.
TEMPLATE_PHASE = 3
# The row of a templated kind for the pure planning, which needs no class: namespaced, written
# with the workloads, replaced whole when another manager changed it.
TEMPLATED = ChildKind("*", NamespacedResource, TEMPLATE_PHASE)

# "apiVersion/Kind", or "apiVersion/Kind=plural" when the plural is not the usual one.
TEMPLATE_KIND_ENTRY = re.compile(
    r"^(?:(?P<group>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)/)?(?P<version>v[0-9]+[a-z0-9]*)"
    r"/(?P<kind>[A-Z][A-Za-z0-9]{0,62})(?:=(?P<plural>[a-z][a-z0-9]{0,62}))?$"
)


def row(kind: str) -> ChildKind:
    """The table's row of a kind; any kind not in it is a templated one (`templated_kinds`)."""
    return BY_KIND.get(kind, TEMPLATED)


def apply_phase(kind: str) -> int:
    """When a child of KIND may be written (see ChildKind.phase)."""
    return row(kind).phase


def guess_plural(kind: str) -> str:
    """The resource name Kubernetes' generators give a kind (ServiceMonitor: servicemonitors)."""
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


def templated_kind(entry: str) -> ChildKind:
    """The row of one `--template-kinds` entry; ValueError saying why it may not be one."""
    match = TEMPLATE_KIND_ENTRY.match(entry)
    if match is None:
        raise ValueError(
            f"{entry!r} is not apiVersion/Kind (for example v1/PersistentVolumeClaim or "
            "monitoring.coreos.com/v1/ServiceMonitor), optionally =plural"
        )
    group, version, kind = match["group"] or "", match["version"], match["kind"]
    api_version = f"{group}/{version}" if group else version
    if kind in NEVER_TEMPLATED or kind.endswith("NetworkPolicy"):
        raise ValueError(
            f"{entry!r}: a {kind} could open what the tenant's own policies and bindings close; "
            "templates never render one"
        )
    own = BY_KIND.get(kind)
    if own is not None and not own.templatable:
        raise ValueError(f"{entry!r}: {kind} is a kind Tenantry renders itself, never a template")
    if own is not None and own.api_version != api_version:
        raise ValueError(f"{entry!r}: a {kind} is {own.api_version}/{kind}")
    try:
        known = own.resource if own else resource_registry.load(api_version, kind)
    except (LoadResourceError, ImportError, AttributeError):
        known = None
    if known is not None and not issubclass(known, NamespacedResource):
        raise ValueError(
            f"{entry!r}: a {kind} is cluster-scoped; templates write into the tenant's namespace only"
        )
    if known is not None and match["plural"] and match["plural"] != known._api_info.plural:
        # Found by review: the chart grants the operator the plural it names, so a slip such as
        # v1/Pod=secrets granted Secrets cluster-wide while the operator wrote Pods.
        raise ValueError(f"{entry!r}: the resource of a {kind} is {known._api_info.plural}")
    if own is not None:
        return own
    plural = match["plural"] or guess_plural(kind)
    resource = known or create_namespaced_resource(group, version, kind, plural)
    return ChildKind(kind, resource, TEMPLATE_PHASE)


@functools.cache
def templated_kinds(entries: tuple[str, ...]) -> tuple[ChildKind, ...]:
    """The rows of the kinds the operator lets templates render, in the order given."""
    rows = tuple(templated_kind(entry) for entry in entries)
    kinds = [child.kind for child in rows]
    for kind in kinds:
        if kinds.count(kind) > 1:
            raise ValueError(f"{kind} is listed twice: one apiVersion per kind")
    return rows


def child_kinds(template_entries: tuple[str, ...] = ()) -> tuple[ChildKind, ...]:
    """Every kind the operator watches and writes: its own and the templates' (once each)."""
    extra = tuple(child for child in templated_kinds(template_entries) if child.kind not in BY_KIND)
    return CHILD_KINDS + extra


def resource_of(kind: str, template_entries: tuple[str, ...]) -> Any:
    """The lightkube class that reads and writes children of KIND."""
    if kind in BY_KIND:
        return BY_KIND[kind].resource
    for child in templated_kinds(template_entries):
        if child.kind == kind:
            return child.resource
    raise KeyError(f"{kind} is neither Tenantry's nor an allowed template kind")
