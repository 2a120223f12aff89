"""The one table of the kinds of children: what the operator renders, applies, watches and prunes.

Each row names a manifest's `kind`, the lightkube class that reads and writes it, and the phase
it is written in; whether a kind is namespaced comes from its class. The watch list (handlers),
the classes for writes and deletes (reconcile), the apply phases and what is pruned (plan), how a
live child is recognised as a tenant's (plan.ours), and the tests' list of child kinds all come
from here, so a kind is added in one place.

The one cluster-scoped kind is the tenant's own namespace: a child is recognised as the tenant's
by the namespace it is in, the namespace by its name; it is created rather than applied the first
time, and never pruned (it goes with the tenant, by garbage collection).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightkube.core.resource import NamespacedResource
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
    # A claim's spec is immutable once bound (a replace is refused, a delete loses its data):
    # drift there is corrected by a forced apply, which takes back the fields we own.
    replaceable: bool = True

    @property
    def namespaced(self) -> bool:
        return issubclass(self.resource, NamespacedResource)

    @property
    def watched(self) -> tuple[str, str, str]:
        """(group, version, plural), as Kopf names a resource to watch."""
        info = self.resource._api_info
        return (info.resource.group, info.resource.version, info.plural)


CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("Namespace", Namespace, 0),
    ChildKind("RoleBinding", RoleBinding, 1),
    ChildKind("ResourceQuota", ResourceQuota, 2),
    ChildKind("LimitRange", LimitRange, 2),
    ChildKind("NetworkPolicy", NetworkPolicy, 2),
    ChildKind("ServiceAccount", ServiceAccount, 2),
    ChildKind("Secret", Secret, 2),
    ChildKind("ConfigMap", ConfigMap, 2),
    # With the workloads: the quota that counts it is written a phase before, so the quota
    # controller has (nearly always) computed its usage, which admission needs to admit a claim.
    ChildKind("PersistentVolumeClaim", PersistentVolumeClaim, 3, replaceable=False),
    ChildKind("Deployment", Deployment, 3),
    ChildKind("Service", Service, 3),
)
BY_KIND = {child.kind: child for child in CHILD_KINDS}


def apply_phase(kind: str) -> int:
    """When a child of KIND may be written (see ChildKind.phase)."""
    return BY_KIND[kind].phase
