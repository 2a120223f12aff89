"""Who may talk to whom, and as whom: the default-deny and per-component NetworkPolicies, and
the ServiceAccounts (none of which mounts a token).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import NEVER_ALLOWED_NETWORKS, AgentTenant, EgressRule
from tenantry.names import DEFAULT_DENY, HTTP_PORT, MANAGED_BY, OPERATOR, RUNTIME, SANDBOX
from tenantry.render.tenant import ClusterFacts, Manifest, metadata, pod_labels

# Destinations a runtime never reaches through a broader egress rule: private and shared
# address space, unless a listed CIDR lies inside one (listing it allows it), and the ranges no
# tenant may ever reach (models.NEVER_ALLOWED_RANGES: metadata, loopback, IPv4 inside IPv6...),
# which no listed CIDR may lie inside.
PRIVATE_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
BLOCKED_RANGES = PRIVATE_RANGES + NEVER_ALLOWED_NETWORKS


def build_default_deny(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    # Empty rule lists are set explicitly so that server-side apply owns them: a rule someone
    # adds to this policy conflicts with ours and is reverted by the next forced apply.
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(tenant, facts, DEFAULT_DENY, namespace),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }


def egress_ip_block(rule: EgressRule, config: OperatorConfig) -> dict[str, Any]:
    network = ipaddress.ip_network(rule.cidr)
    blocked_ranges = BLOCKED_RANGES + tuple(map(ipaddress.ip_network, config.cluster_cidrs))
    excluded = sorted(
        {
            str(blocked)
            for blocked in blocked_ranges
            if blocked.version == network.version
            and blocked != network
            and blocked.subnet_of(network)  # type: ignore[arg-type]
        },
        key=lambda cidr: ipaddress.ip_network(cidr).network_address.packed,
    )
    block: dict[str, Any] = {"cidr": str(network)}
    if excluded:
        block["except"] = excluded
    return block


def tcp(port: int) -> dict[str, Any]:
    return {"protocol": "TCP", "port": port}


# Added to every caller's namespace selector: whatever labels a tenant's manifest trusts, no
# tenant namespace (the operator labels each, and only cluster admins can relabel namespaces)
# is ever among its callers.
NOT_A_TENANT_NAMESPACE = {"key": MANAGED_BY, "operator": "NotIn", "values": [OPERATOR]}


def build_runtime_policy(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, config: OperatorConfig
) -> Manifest:
    network = tenant.spec.network
    ingress = (
        [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": dict(peer.namespace_selector.match_labels),
                            "matchExpressions": [NOT_A_TENANT_NAMESPACE],
                        }
                    }
                    for peer in network.ingress_from
                ],
                "ports": [tcp(HTTP_PORT)],
            }
        ]
        if network.ingress_from
        else []
    )
    egress: list[dict[str, Any]] = [
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, tcp(53)],
        }
    ]
    if tenant.spec.sandbox.enabled:
        egress.append(
            {
                "to": [{"podSelector": {"matchLabels": pod_labels(tenant, SANDBOX)}}],
                "ports": [tcp(HTTP_PORT)],
            }
        )
    egress.extend(
        {
            "to": [{"ipBlock": egress_ip_block(rule, config)}],
            "ports": [tcp(port) for port in rule.ports],
        }
        for rule in network.egress
    )
    return component_policy(tenant, namespace, facts, RUNTIME, ingress, egress)


def build_sandbox_policy(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    from_runtime = {
        "from": [{"podSelector": {"matchLabels": pod_labels(tenant, RUNTIME)}}],
        "ports": [tcp(HTTP_PORT)],
    }
    # No egress at all, not even DNS.
    return component_policy(tenant, namespace, facts, SANDBOX, [from_runtime], [])


def component_policy(
    tenant: AgentTenant,
    namespace: str,
    facts: ClusterFacts,
    component: str,
    ingress: list[dict[str, Any]],
    egress: list[dict[str, Any]],
) -> Manifest:
    """The NetworkPolicy of one component's pods; both directions are always listed, so an
    empty list denies (and is owned by our field manager, see build_default_deny)."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(tenant, facts, component, namespace, component),
        "spec": {
            "podSelector": {"matchLabels": pod_labels(tenant, component)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def build_service_account(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, component: str
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(tenant, facts, component, namespace, component),
        "automountServiceAccountToken": False,
    }
