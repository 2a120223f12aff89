"""The tenant's AutoGen runtime: its `runtime.json` (docs/runtime-contract.md), the ConfigMap that
carries it, its Deployment, and the volume of its sessions when the tenant keeps them.
"""

from __future__ import annotations

import json
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant, parse_agent_config
from tenantry.names import (
    CONFIG_DIR,
    CONFIG_HASH,
    HTTP_PORT,
    RUNTIME,
    RUNTIME_CONFIG,
    SANDBOX,
    SANDBOX_TOKEN_DIR,
    SANDBOX_TOKEN_SECRET,
    SECRETS_DIR,
    SESSIONS,
    SESSIONS_DIR,
    TASK_TIMEOUT_SECONDS,
    TERMINATION_MESSAGE_PATH,
)
from tenantry.render.tenant import ClusterFacts, Manifest, digest, metadata, tenant_uid
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

TMP_SIZE = "64Mi"
# How long the runtime may take to listen (render.workloads.startup_probe): with sessions it
# first waits up to 60 s for the runtime it replaces to let go of the volume
# (tenantry_runtime.sessions), then refuses to start with a message of its own; the probe must
# not restart it first.
START_SECONDS = 90


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
                "kind": agent.kind,
                "topicType": agent.topic_type,
                "systemMessage": agent.system_message,
                # Only when set: the kind validates it (and most agents have none).
                **({"config": parse_agent_config(agent.config)} if agent.config else {}),
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
        # Each of spec.secrets is mounted below it, in a directory of its name; an agent's kind
        # is handed the directories of the Secrets its config names. Only when some agent has a
        # config: a runtime older than agent configs refuses the field, so a tenant that does
        # not use them keeps working with one.
        **(
            {"secretsDir": f"{SECRETS_DIR}/secrets"}
            if any(agent.config for agent in spec.runtime.agents)
            else {}
        ),
        # Only when enabled, for the same reason: an older runtime refuses the field.
        **({"sessions": sessions_config(tenant)} if spec.runtime.sessions.enabled else {}),
    }


def sessions_config(tenant: AgentTenant) -> dict[str, Any]:
    retention = tenant.spec.runtime.sessions.retention
    return {
        "dir": SESSIONS_DIR,
        "maxSessions": retention.max_sessions,
        "maxIdleDays": retention.max_idle_days,
        "maxSessionBytes": retention.max_session_bytes,
    }


def build_sessions_claim(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    """The tenant's own volume for session histories: bounded by its size, in its namespace,
    mounted by its runtime alone (ReadWriteOnce, and a Deployment that never runs two pods)."""
    storage = tenant.spec.runtime.sessions.storage
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(tenant, facts, SESSIONS, namespace, RUNTIME),
        "spec": spec,
    }


def build_runtime_config(tenant: AgentTenant, namespace: str, facts: ClusterFacts) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(tenant, facts, RUNTIME_CONFIG, namespace, RUNTIME),
        "data": {"runtime.json": json.dumps(runtime_config(tenant), indent=2, sort_keys=True)},
    }


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
    sessions = spec.runtime.sessions.enabled
    if sessions:
        volumes.append({"name": SESSIONS, "persistentVolumeClaim": {"claimName": SESSIONS}})
        mounts.append({"name": SESSIONS, "mountPath": SESSIONS_DIR})
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
                # A refused runtime.json is written there too: the operator shows it as the
                # tenant's RuntimeConfigRefused stall (docs/runtime-contract.md).
                "TENANTRY_TERMINATION_MESSAGE_PATH": TERMINATION_MESSAGE_PATH,
            }
        ),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/readyz"),
        "livenessProbe": http_probe("/healthz"),
        "startupProbe": startup_probe("/healthz", START_SECONDS),
        "resources": resources(spec.runtime.resources),
        "securityContext": container_security(tenant_uid(tenant, RUNTIME)),
        "volumeMounts": mounts,
    }
    built = deployment(
        tenant,
        namespace,
        facts,
        RUNTIME,
        {"containers": [container], "volumes": volumes},
        {CONFIG_HASH: config_hash},
    )
    # With sessions the old pod goes before the new one starts, for a rollout at least (the
    # runtime also locks its volume: a pod replaced outside a rollout drains while the next one
    # starts). Written out either way: the API server defaults `rollingUpdate` when the type is
    # RollingUpdate, and a later switch to Recreate is refused unless whoever set those fields
    # takes them away — found when a Ready tenant turned sessions on.
    built["spec"]["strategy"] = (
        {"type": "Recreate"}
        if sessions
        else {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
        }
    )
    return built
