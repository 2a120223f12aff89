"""What the runtime's and the sandbox's Deployments and Services share: the pod shape, its security
context, probes and volumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant, Resources
from tenantry.names import HTTP_PORT
from tenantry.render.tenant import ClusterFacts, Manifest, metadata, pod_labels, tenant_uid


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
