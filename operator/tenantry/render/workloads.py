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


# How often the kubelet asks a running pod whether it is live and ready. Every readiness probe of
# the runtime also pings its sandbox, so this stays slow: a pod that stops answering is noticed
# within a period, and a pod at rest costs the node one request per period.
PROBE_PERIOD_SECONDS = 10
# How often the kubelet asks a starting container whether it has started: only until it has.
STARTUP_PROBE_PERIOD_SECONDS = 1


def http_probe(path: str) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": PROBE_PERIOD_SECONDS}


def startup_probe(path: str, within_seconds: int) -> dict[str, Any]:
    """Asked every second from the container's start until it first answers, never again.

    Why (kubelet 1.35, pkg/kubelet/prober): without a startup probe a pod is Ready at the first
    readiness probe that finds it listening, and those come as its container starts, at each
    sync of the pod's status while it is not ready (one or two within about a second;
    prober_manager.go `UpdatePodStatus` triggers them), then every PROBE_PERIOD_SECONDS: a
    process that takes longer to listen (the runtime imports autogen) was Ready 10 s late.
    While a startup probe has not succeeded, readiness and liveness are not probed at all
    (worker.go `doProbe`); its success changes a result, the kubelet syncs the pod
    (kubelet.go `syncLoopIteration`), and that sync, finding the container started and not
    ready, runs its readiness probe at once (`UpdatePodStatus`, kubernetes#101738). So the pod
    is Ready within about a second of listening and is then asked only every
    PROBE_PERIOD_SECONDS; a short readiness period would buy the same start by probing every
    pod that often for ever.

    WITHIN_SECONDS is how long the container may take to listen before the kubelet restarts it
    (failureThreshold probes a second apart); liveness, which bounded that before (three misses
    10 s apart), waits for it. The path must answer as soon as the process serves, never wait
    for anything else (the runtime's /readyz waits for its sandbox): a startup probe that fails
    restarts the container, which cures nothing when the sandbox is what is missing.
    """
    return {
        **http_probe(path),
        "periodSeconds": STARTUP_PROBE_PERIOD_SECONDS,
        "failureThreshold": within_seconds // STARTUP_PROBE_PERIOD_SECONDS,
    }


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
