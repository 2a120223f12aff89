"""The Secrets in a tenant namespace: copies of the grants in the secret-source namespace, and the
sandbox's token (the only Secret the sandbox mounts).
"""

from __future__ import annotations

import base64

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant
from tenantry.names import RUNTIME, SANDBOX, SANDBOX_TOKEN_SECRET, SECRET_SOURCE
from tenantry.render.tenant import ClusterFacts, Manifest, metadata


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
