"""Pure rendering: from a validated tenant to the list of child manifests. No I/O.

Manifests are built as data and serialised by a YAML or JSON encoder, never by pasting text
into a template, so no user-supplied string can change a manifest's structure; each string is
also validated by the models before it gets here. Each `build_*` function returns one child;
`render` returns them all, in the order they are applied.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import (
    API_VERSION,
    KIND,
    NEVER_ALLOWED_RANGES,
    OPERATOR_CHILD_NAMES,
    AgentTenant,
    EgressRule,
    Resources,
)

Manifest = dict[str, Any]

MANAGED_BY = "app.kubernetes.io/managed-by"
TENANT_LABEL = "tenantry.dev/tenant"
COMPONENT_LABEL = "tenantry.dev/component"
APPLIED_HASH = "tenantry.dev/applied-hash"
CONFIG_HASH = "tenantry.dev/config-hash"
SECRET_SOURCE = "tenantry.dev/source"  # noqa: S105 - an annotation key
ALLOWED_TENANTS = "tenantry.dev/allowed-tenants"
DISPLAY_NAME = "tenantry.dev/display-name"
OPERATOR = "tenantry"

RUNTIME = "runtime"
SANDBOX = "sandbox"
HTTP_PORT = 8080
SANDBOX_TOKEN_SECRET = "sandbox-token"  # noqa: S105 - a Secret name
RUNTIME_CONFIG = "runtime-config"
DEFAULT_DENY = "default-deny"
QUOTA = "tenant-quota"
LIMITS = "tenant-defaults"
DEFAULT_ACCOUNT = "default"
OPERATOR_BINDING = "tenantry-operator"
CONFIG_DIR = "/etc/tenantry"
SECRETS_DIR = "/var/run/secrets/tenantry"
SANDBOX_TOKEN_DIR = f"{SECRETS_DIR}/sandbox"
WORKSPACE_DIR = "/workspace"
TASK_TIMEOUT_SECONDS = 120
# Each tenant's pods run as users of their own: RLIMIT_NPROC and every other per-user budget
# on a node counts all processes of one uid, whatever pod they are in, so a shared uid would let
# one tenant's code hold another's (docs/security.md). Even uids in [2^24, 2^24 + 2^30): the
# runtime gets one, the sandbox the next, clear of system and subordinate-uid ranges.
TENANT_UID_BASE = 1 << 24
TENANT_UID_SLOTS = 1 << 29
WORKSPACE_SIZE = "256Mi"
TMP_SIZE = "64Mi"

# Destinations a runtime never reaches through a broader egress rule: private and shared
# address space, unless a listed CIDR lies inside one (listing it allows it), and the ranges no
# tenant may ever reach (models.NEVER_ALLOWED_RANGES: metadata, loopback, IPv4 inside IPv6...),
# which no listed CIDR may lie inside.
PRIVATE_RANGES = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
BLOCKED_RANGES = PRIVATE_RANGES + tuple(map(ipaddress.ip_network, NEVER_ALLOWED_RANGES))


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
    (reconcile.check_uid_slot), so no two tenants of one operator ever run as one user."""
    return int(hashlib.sha256(tenant_name.encode()).hexdigest()[:16], 16) % TENANT_UID_SLOTS


def tenant_uid(tenant: AgentTenant, component: str) -> int:
    """The user (and group) a tenant's runtime or sandbox runs as: its own, not a shared one."""
    return TENANT_UID_BASE + 2 * uid_slot(tenant.name) + (1 if component == SANDBOX else 0)


class DuplicateChild(ValueError):
    """Two children of one tenant would be the same object; the models should refuse this first."""


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


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def stamp(manifest: Manifest) -> Manifest:
    """Record the hash of a manifest on it, so the reconcile can skip children already applied."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations.pop(APPLIED_HASH, None)
    annotations[APPLIED_HASH] = digest(manifest)
    return manifest


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


def build_resource_quota(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    quota = tenant.spec.quota
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": metadata(tenant, facts, QUOTA, namespace),
        "spec": {
            "hard": {
                "requests.cpu": quota.cpu,
                "limits.cpu": quota.cpu,
                "requests.memory": quota.memory,
                "limits.memory": quota.memory,
                "pods": str(quota.pods),
            }
        },
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


def build_copied_secret(
    tenant: AgentTenant,
    namespace: str,
    facts: ClusterFacts,
    name: str,
    source: str,
    config: OperatorConfig,
) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(
            tenant,
            facts,
            name,
            namespace,
            RUNTIME,
            {SECRET_SOURCE: f"{config.secret_source_namespace}/{source}"},
        ),
        "type": facts.secret_types.get(name, "Opaque"),
    }
    if facts.secret_data is not None:
        manifest["data"] = dict(facts.secret_data.get(name, {}))
    return manifest


def build_sandbox_token(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(tenant, facts, SANDBOX_TOKEN_SECRET, namespace, SANDBOX),
        "type": "Opaque",
    }
    if facts.sandbox_token is not None:
        manifest["data"] = {"token": base64.b64encode(facts.sandbox_token.encode()).decode()}
    return manifest


def runtime_config(tenant: AgentTenant) -> dict[str, Any]:
    """The runtime's `runtime.json` (docs/runtime-contract.md)."""
    spec = tenant.spec
    model = spec.runtime.model
    return {
        "tenant": tenant.name,
        "topicTypes": list(spec.runtime.topic_types),
        "agents": [
            {
                "name": agent.name,
                "kind": agent.kind.value,
                "topicType": agent.topic_type,
                "systemMessage": agent.system_message,
            }
            for agent in spec.runtime.agents
        ],
        "model": (
            {
                "model": model.model,
                "baseUrl": model.base_url,
                "apiKeyFile": f"{SECRETS_DIR}/secrets/{model.credentials_secret}/{model.credentials_key}",
            }
            if model
            else None
        ),
        "sandbox": (
            {
                "url": f"http://{SANDBOX}:{HTTP_PORT}",
                "tokenFile": f"{SANDBOX_TOKEN_DIR}/token",
                "timeoutSeconds": spec.sandbox.timeout_seconds,
            }
            if spec.sandbox.enabled
            else None
        ),
        "taskTimeoutSeconds": TASK_TIMEOUT_SECONDS,
    }


def build_runtime_config(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(tenant, facts, RUNTIME_CONFIG, namespace, RUNTIME),
        "data": {"runtime.json": json.dumps(runtime_config(tenant), indent=2, sort_keys=True)},
    }


def container_security(uid: int) -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(spec: Resources) -> dict[str, Any]:
    return spec.model_dump(exclude_none=True)


def env(pairs: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs.items()]


def deployment(
    tenant: AgentTenant,
    namespace: str,
    facts: ClusterFacts,
    component: str,
    pod_spec: dict[str, Any],
    template_annotations: Mapping[str, str],
    sysctls: Mapping[str, str] | None = None,
) -> Manifest:
    selector = pod_labels(tenant, component)
    uid = tenant_uid(tenant, component)
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if sysctls:
        security["sysctls"] = [{"name": name, "value": value} for name, value in sysctls.items()]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(tenant, facts, component, namespace, component),
        "spec": {
            "replicas": 1,
            # No old ReplicaSets kept: scaled up by hand, one would run a template (an image, a
            # setting) the tenant no longer has.
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector, "annotations": dict(template_annotations)},
                "spec": {
                    "serviceAccountName": component,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": security,
                    **pod_spec,
                },
            },
        },
    }


def image_and_pull_policy(
    chosen: str | None, default: str, config: OperatorConfig
) -> dict[str, str]:
    """A tenant's own image is pulled every time: the node then checks the tenant's right to pull
    it, instead of starting whatever another tenant's pull left in its cache."""
    if chosen and chosen != default:
        return {"image": chosen, "imagePullPolicy": config.tenant_image_pull_policy}
    return {"image": default, "imagePullPolicy": config.image_pull_policy}


def memory_volume(name: str, size: str) -> dict[str, Any]:
    """A tmpfs of a hard size, counted in the pod's memory limit: filling it fails a write in
    that pod instead of pushing the node's disk into pressure (and evicting other tenants)."""
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def http_probe(path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10}


def build_runtime_deployment(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, config: OperatorConfig
) -> Manifest:
    spec = tenant.spec
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, the only writable path
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": RUNTIME_CONFIG}},
        memory_volume("tmp", TMP_SIZE),
    ]
    for index, secret in enumerate(spec.secrets):
        volume = f"secret-{index}"
        volumes.append({"name": volume, "secret": {"secretName": secret.name}})
        mounts.append(
            {"name": volume, "mountPath": f"{SECRETS_DIR}/secrets/{secret.name}", "readOnly": True}
        )
    if spec.sandbox.enabled:
        volumes.append({"name": "sandbox-token", "secret": {"secretName": SANDBOX_TOKEN_SECRET}})
        mounts.append({"name": "sandbox-token", "mountPath": SANDBOX_TOKEN_DIR, "readOnly": True})
    # The pod template changes, and so the runtime restarts, whenever its config or secrets do.
    config_hash = digest(
        {
            "config": runtime_config(tenant),
            "secrets": facts.secret_data,
            "token": facts.sandbox_token,
        }
    )
    container = {
        "name": RUNTIME,
        **image_and_pull_policy(spec.runtime.image, config.runtime_image, config),
        "args": ["serve"],
        "env": env(
            {
                "TENANTRY_TENANT": tenant.name,
                "TENANTRY_CONFIG": f"{CONFIG_DIR}/runtime.json",
                "TENANTRY_AUDIT_LOG": "-",
                "TENANTRY_PORT": str(HTTP_PORT),
            }
        ),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/readyz"),
        "livenessProbe": http_probe("/healthz"),
        "resources": resources(spec.runtime.resources),
        "securityContext": container_security(tenant_uid(tenant, RUNTIME)),
        "volumeMounts": mounts,
    }
    return deployment(
        tenant,
        namespace,
        facts,
        RUNTIME,
        {"containers": [container], "volumes": volumes},
        {CONFIG_HASH: config_hash},
    )


def build_sandbox_deployment(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, config: OperatorConfig
) -> Manifest:
    sandbox = tenant.spec.sandbox
    container = {
        "name": SANDBOX,
        **image_and_pull_policy(sandbox.image, config.sandbox_image, config),
        "args": ["sandbox"],
        "env": env(
            {
                "TENANTRY_TENANT": tenant.name,
                "TENANTRY_SANDBOX_TOKEN_FILE": f"{SANDBOX_TOKEN_DIR}/token",
                "TENANTRY_SANDBOX_WORKDIR": WORKSPACE_DIR,
                "TENANTRY_SANDBOX_TIMEOUT_SECONDS": str(sandbox.timeout_seconds),
                "TENANTRY_SANDBOX_KEEP_WORKSPACE": "true" if sandbox.keep_workspace else "false",
                "TENANTRY_PORT": str(HTTP_PORT),
            }
        ),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/healthz"),
        "livenessProbe": http_probe("/healthz"),
        "resources": resources(sandbox.resources),
        "securityContext": container_security(tenant_uid(tenant, SANDBOX)),
        "volumeMounts": [
            # No writable /tmp: code's TMPDIR is its task's own directory in the workspace, so
            # nothing a task leaves in a temporary file reaches a later task.
            {"name": "workspace", "mountPath": WORKSPACE_DIR},
            {"name": "sandbox-token", "mountPath": SANDBOX_TOKEN_DIR, "readOnly": True},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [
            memory_volume("workspace", WORKSPACE_SIZE),
            {"name": "sandbox-token", "secret": {"secretName": SANDBOX_TOKEN_SECRET}},
        ],
    }
    if sandbox.runtime_class_name:
        pod_spec["runtimeClassName"] = sandbox.runtime_class_name
    token_hash = digest({"token": facts.sandbox_token})
    # System V shared memory no process is attached to is removed, so no segment outlives the
    # run (and the task) that made it. A "safe" sysctl: Pod Security restricted allows it.
    return deployment(
        tenant,
        namespace,
        facts,
        SANDBOX,
        pod_spec,
        {CONFIG_HASH: token_hash},
        sysctls={"kernel.shm_rmid_forced": "1"},
    )


def build_service(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, component: str
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(tenant, facts, component, namespace, component),
        "spec": {
            "selector": pod_labels(tenant, component),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def render(
    tenant: AgentTenant, config: OperatorConfig, facts: ClusterFacts | None = None
) -> list[Manifest]:
    """Every child of a tenant, in the order they are applied (the namespace first)."""
    facts = facts or ClusterFacts()
    namespace = tenant_namespace(tenant, config)
    spec = tenant.spec
    children = [
        build_namespace(tenant, config, facts),
        *(
            [build_operator_binding(tenant, namespace, facts, config)]
            if config.scoped_secrets
            else []
        ),
        build_resource_quota(tenant, namespace, facts),
        build_limit_range(tenant, namespace, facts),
        build_default_deny(tenant, namespace, facts),
        build_runtime_policy(tenant, namespace, facts, config),
        # The namespace's "default" account would hand a token to any pod that names no other.
        build_service_account(tenant, namespace, facts, DEFAULT_ACCOUNT),
        build_service_account(tenant, namespace, facts, RUNTIME),
        *(
            build_copied_secret(tenant, namespace, facts, s.name, s.from_, config)
            for s in spec.secrets
        ),
        build_runtime_config(tenant, namespace, facts),
    ]
    if spec.sandbox.enabled:
        children += [
            build_sandbox_policy(tenant, namespace, facts),
            build_service_account(tenant, namespace, facts, SANDBOX),
            build_sandbox_token(tenant, namespace, facts),
            build_sandbox_deployment(tenant, namespace, facts, config),
            build_service(tenant, namespace, facts, SANDBOX),
        ]
    children += [
        build_runtime_deployment(tenant, namespace, facts, config),
        build_service(tenant, namespace, facts, RUNTIME),
    ]
    return [stamp(child) for child in unique(children)]


def unique(children: list[Manifest]) -> list[Manifest]:
    """Refuse two children that would be one object: applied in turn, each would overwrite the
    other on every pass (a model key copied as `sandbox-token` would land in the sandbox)."""
    seen: set[tuple[str, str, str]] = set()
    for child in children:
        meta = child["metadata"]
        key = (child["kind"], meta.get("namespace") or "", meta["name"])
        if key in seen:
            raise DuplicateChild(
                f"{key[0]} {key[2]} would be rendered twice: rename the one spec.secrets names "
                f"(the operator's own children are named {', '.join(OPERATOR_CHILD_NAMES)})"
            )
        seen.add(key)
    return children
