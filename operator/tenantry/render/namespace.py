"""The tenant's namespace and what comes with it: quota, default limits, and (scoped-secrets
mode) the operator's own RoleBinding there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant, quantity
from tenantry.names import DISPLAY_NAME, LIMITS, OPERATOR_BINDING, QUOTA
from tenantry.render.tenant import (
    ClusterFacts,
    Manifest,
    claim_storage,
    metadata,
    tenant_namespace,
)


def build_namespace(tenant: AgentTenant, config: OperatorConfig, facts: ClusterFacts) -> Manifest:
    psa = {
        f"pod-security.kubernetes.io/{mode}{suffix}": value
        for mode in ("enforce", "audit", "warn")
        for suffix, value in (("", "restricted"), ("-version", "latest"))
    }
    annotations = {DISPLAY_NAME: tenant.spec.display_name} if tenant.spec.display_name else None
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata(
            tenant, facts, tenant_namespace(tenant, config), None, None, annotations, psa
        ),
    }


def build_operator_binding(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, config: OperatorConfig
) -> Manifest:
    """The operator's own access to Secrets in this namespace, and nowhere else (see config)."""
    account_namespace, _, account = config.service_account.partition("/")
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(tenant, facts, OPERATOR_BINDING, namespace),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": config.secrets_role,
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}],
    }


def build_resource_quota(
    tenant: AgentTenant,
    namespace: str,
    facts: ClusterFacts,
    templated_claims: Sequence[Manifest] = (),
) -> Manifest:
    quota = tenant.spec.quota
    hard = {
        "requests.cpu": quota.cpu,
        "limits.cpu": quota.cpu,
        "requests.memory": quota.memory,
        "limits.memory": quota.memory,
        "pods": str(quota.pods),
    }
    sessions = tenant.spec.runtime.sessions
    # The sessions volume is the tenant's only storage: counted, and nothing beyond it; none at
    # all without sessions (found by review: no limit let anyone with edit rights there claim
    # volumes of any size, or take the one claim's place before the operator).
    hard["persistentvolumeclaims"] = "1" if sessions.enabled else "0"
    hard["requests.storage"] = sessions.storage.size if sessions.enabled else "0"
    if templated_claims:
        # The platform's own claims (AgentTenantTemplates) are counted too, and only them.
        sizes = [quantity(claim_storage(claim) or "0") for claim in templated_claims]
        own = [quantity(sessions.storage.size)] if sessions.enabled else []
        hard["persistentvolumeclaims"] = str(len(own) + len(sizes))
        hard["requests.storage"] = str(math.ceil(sum(own + sizes)))
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": metadata(tenant, facts, QUOTA, namespace),
        "spec": {"hard": hard},
    }


def build_limit_range(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    # Containers that name no resources (for example a debug pod) still fit the quota.
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": metadata(tenant, facts, LIMITS, namespace),
        "spec": {
            "limits": [
                {
                    "type": "Container",
                    "defaultRequest": {"cpu": "100m", "memory": "128Mi"},
                    "default": {"cpu": "500m", "memory": "512Mi"},
                }
            ]
        },
    }
