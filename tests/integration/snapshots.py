"""Snapshots of every object outside one tenant, to prove a refusal or a fault touched nothing."""

from __future__ import annotations

from typing import Any

from lightkube import Client
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
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from tenants import AgentTenant, writes_outside_status
from waiting import wait_until

NAMESPACED = (
    Secret,
    ConfigMap,
    NetworkPolicy,
    Deployment,
    Service,
    ServiceAccount,
    ResourceQuota,
    LimitRange,
    Role,
    RoleBinding,
    PersistentVolumeClaim,
)
Snapshot = dict[tuple[str, str, str], str]


def snapshot(
    kube: Client,
    exclude_namespaces: frozenset[str] = frozenset(),
    exclude_tenants: frozenset[str] = frozenset(),
) -> Snapshot:
    """(kind, namespace, name) → what tells a write of every object a tenant could disturb: a
    tenant's resourceVersion (only the operator writes its status), and for any other object
    `writes_outside_status` (the cluster's controllers write theirs at any time)."""
    found: Snapshot = {}
    for namespace in kube.list(Namespace):
        if namespace.metadata.name not in exclude_namespaces:  # type: ignore[union-attr]
            found[("Namespace", "", namespace.metadata.name)] = writes_outside_status(namespace)  # type: ignore[index,union-attr]
    for tenant in kube.list(AgentTenant):
        if tenant.metadata.name not in exclude_tenants:  # type: ignore[union-attr]
            found[("AgentTenant", "", tenant.metadata.name)] = tenant.metadata.resourceVersion  # type: ignore[index,union-attr]
    for kind in NAMESPACED:
        for obj in kube.list(kind, namespace="*"):  # type: ignore[call-overload]
            meta = obj.metadata
            if meta.namespace not in exclude_namespaces:
                found[(kind.__name__, meta.namespace, meta.name)] = writes_outside_status(obj)
    return found


def settle(kube: Client) -> None:
    """Wait until deletions in flight are done, so that snapshots compare a quiet cluster.

    That is: no namespace Terminating, and none left of a deleted tenant (garbage collection
    starts on those a moment after the tenant goes).
    """

    def quiet() -> bool:
        alive = {tenant.metadata.name for tenant in kube.list(AgentTenant)}  # type: ignore[union-attr]
        for namespace in kube.list(Namespace):
            labels = namespace.metadata.labels or {}  # type: ignore[union-attr]
            if namespace.status is not None and namespace.status.phase == "Terminating":
                return False
            owner = labels.get("tenantry.dev/tenant")
            if (
                labels.get("app.kubernetes.io/managed-by") == "tenantry"
                and owner
                and owner not in alive
            ):
                return False
        return True

    wait_until(quiet, "deletions in flight to finish", timeout=180)


def differences(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    changed = {
        key: (before[key], after[key])
        for key in before.keys() & after.keys()
        if before[key] != after[key]
    }
    return {
        "lost": sorted(before.keys() - after.keys()),
        "added": sorted(after.keys() - before.keys()),
        "changed": sorted(changed),
    }
