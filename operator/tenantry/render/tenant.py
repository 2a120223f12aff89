"""What every child of a tenant shares: its namespace, the users its pods run as, its labels,
owner reference and metadata, and the hash stamped on each manifest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import API_VERSION, KIND, AgentTenant
from tenantry.names import (
    APPLIED_HASH,
    COMPONENT_LABEL,
    MANAGED_BY,
    OPERATOR,
    SANDBOX,
    TENANT_LABEL,
)

Manifest = dict[str, Any]


# Each tenant's pods run as users of their own: RLIMIT_NPROC and every other per-user budget
# on a node counts all processes of one uid, whatever pod they are in, so a shared uid would let
# one tenant's code hold another's (docs/security.md). Even uids in [2^24, 2^24 + 2^30): the
# runtime gets one, the sandbox the next, clear of system and subordinate-uid ranges.
TENANT_UID_BASE = 1 << 24
TENANT_UID_SLOTS = 1 << 29


@dataclass(frozen=True)
class ClusterFacts:
    """What the reconcile read from the cluster for one tenant; absent when rendering offline."""

    uid: str | None = None
    # Data of the Secrets to copy, by their name in the tenant namespace (base64 values).
    secret_data: Mapping[str, Mapping[str, str]] | None = None
    secret_types: Mapping[str, str] = field(default_factory=dict)
    sandbox_token: str | None = None


def tenant_namespace(tenant: AgentTenant, config: OperatorConfig) -> str:
    """The namespace of a tenant: as named, as already in use, or "<prefix>-<name>"."""
    if tenant.spec.namespace:
        return tenant.spec.namespace
    if tenant.status and tenant.status.namespace:
        return tenant.status.namespace
    return f"{config.namespace_prefix}-{tenant.name}"


def uid_slot(tenant_name: str) -> int:
    """Which pair of users a tenant's pods run as. Two names can share a slot (a name can even be
    searched for that shares another's): the reconcile refuses the younger of two such tenants
    (plan.check_uid_slot) and stops its pods if it runs, so two tenants of one operator run as
    one user only until it knows both (docs/security.md)."""
    return int(hashlib.sha256(tenant_name.encode()).hexdigest()[:16], 16) % TENANT_UID_SLOTS


def tenant_uid(tenant: AgentTenant, component: str) -> int:
    """The user (and group) a tenant's runtime or sandbox runs as: its own, not a shared one."""
    return TENANT_UID_BASE + 2 * uid_slot(tenant.name) + (1 if component == SANDBOX else 0)


def tenant_labels(tenant: AgentTenant, component: str | None = None) -> dict[str, str]:
    labels = {
        MANAGED_BY: OPERATOR,
        "app.kubernetes.io/part-of": "tenantry",
        "app.kubernetes.io/instance": tenant.name,
        TENANT_LABEL: tenant.name,
    }
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def pod_labels(tenant: AgentTenant, component: str) -> dict[str, str]:
    """The labels of a component's pods: what Services and NetworkPolicies select on."""
    return {TENANT_LABEL: tenant.name, COMPONENT_LABEL: component}


def owner_references(tenant: AgentTenant, facts: ClusterFacts) -> list[dict[str, Any]]:
    if not facts.uid:
        return []  # offline: the API server has not assigned the tenant a uid yet
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": tenant.name,
            "uid": facts.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def metadata(
    tenant: AgentTenant,
    facts: ClusterFacts,
    name: str,
    namespace: str | None,
    component: str | None = None,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**tenant_labels(tenant, component), **(labels or {})},
    }
    if namespace:
        meta["namespace"] = namespace
    if annotations:
        meta["annotations"] = dict(annotations)
    references = owner_references(tenant, facts)
    if references:
        meta["ownerReferences"] = references
    return meta


def claim_storage(claim: Mapping[str, Any]) -> str | None:
    """The storage a PersistentVolumeClaim requests, if it names one as text."""
    resources = (
        (claim.get("spec") or {}).get("resources") if isinstance(claim.get("spec"), dict) else None
    )
    requests = resources.get("requests") if isinstance(resources, dict) else None
    storage = requests.get("storage") if isinstance(requests, dict) else None
    return storage if isinstance(storage, str) else None


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def stamp(manifest: Manifest) -> Manifest:
    """Record the hash of a manifest on it, so the reconcile can skip children already applied."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(APPLIED_HASH, None)
    annotations[APPLIED_HASH] = digest(manifest)
    return manifest
