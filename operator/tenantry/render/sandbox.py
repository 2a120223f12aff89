"""The tenant's code executor: its Deployment (no egress, no credentials, a tmpfs workspace)."""

from __future__ import annotations

from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant
from tenantry.names import (
    CONFIG_HASH,
    HTTP_PORT,
    SANDBOX,
    SANDBOX_TOKEN_SECRET,
    WORKSPACE_DIR,
)
from tenantry.render.tenant import ClusterFacts, Manifest, digest, tenant_uid
from tenantry.render.workloads import (
    container_security,
    deployment,
    env,
    http_probe,
    image_and_pull_policy,
    memory_volume,
    resources,
    startup_probe,
)

WORKSPACE_SIZE = "256Mi"
# How long the sandbox may take to listen (render.workloads.startup_probe); it imports little
# and empties its workspace, so what liveness allowed before (three misses 10 s apart).
START_SECONDS = 30
# How long the sandbox may take to stop beyond its run time limit: on SIGTERM the server answers
# and audits the runs in flight first, waiting up to the limit and 30 s more
# (tenantry_runtime.sandbox.STOP_MARGIN_SECONDS), then exits. The kubelet's SIGKILL, at the end
# of the pod's grace period (30 s unless set), must come after that, or a run ends unaudited.
STOP_MARGIN_SECONDS = 45


def build_sandbox_deployment(
    tenant: AgentTenant, namespace: str, facts: ClusterFacts, config: OperatorConfig
) -> Manifest:
    sandbox = tenant.spec.sandbox
    container = {
        "name": SANDBOX,
        **image_and_pull_policy(sandbox.image, config.sandbox_image, config),
        "args": ["sandbox"],
        "env": [
            *env(
                {
                    "TENANTRY_TENANT": tenant.name,
                    "TENANTRY_SANDBOX_WORKDIR": WORKSPACE_DIR,
                    "TENANTRY_SANDBOX_TIMEOUT_SECONDS": str(sandbox.timeout_seconds),
                    "TENANTRY_SANDBOX_KEEP_WORKSPACE": "true"
                    if sandbox.keep_workspace
                    else "false",
                    "TENANTRY_PORT": str(HTTP_PORT),
                }
            ),
            # In the environment, not a mounted file: code the sandbox runs has the server's uid
            # and could read a file, while the server closes its own /proc entries to it
            # (runner.Runner.close_to_runs; docs/security.md).
            {
                "name": "TENANTRY_SANDBOX_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": SANDBOX_TOKEN_SECRET, "key": "token"}},
            },
        ],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/healthz"),
        "livenessProbe": http_probe("/healthz"),
        "startupProbe": startup_probe("/healthz", START_SECONDS),
        "resources": resources(sandbox.resources),
        "securityContext": container_security(tenant_uid(tenant, SANDBOX)),
        "volumeMounts": [
            # No writable /tmp: code's TMPDIR is its task's own directory in the workspace, so
            # nothing a task leaves in a temporary file reaches a later task.
            {"name": "workspace", "mountPath": WORKSPACE_DIR},
        ],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [memory_volume("workspace", WORKSPACE_SIZE)],
    }
    if sandbox.runtime_class_name:
        pod_spec["runtimeClassName"] = sandbox.runtime_class_name
    pod_spec["terminationGracePeriodSeconds"] = sandbox.timeout_seconds + STOP_MARGIN_SECONDS
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
