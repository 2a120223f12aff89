"""The operator's own configuration: flags of `tenantry run`, or TENANTRY_* environment variables."""

from __future__ import annotations

from pydantic import Field

from tenantry.models import DNS_LABEL, Model


class OperatorConfig(Model):
    """Settings that apply to every tenant."""

    @property
    def scoped_secrets(self) -> bool:
        """Whether Secrets are reached through per-tenant RoleBindings, not cluster-wide rights."""
        return bool(self.service_account)

    namespace_prefix: str = Field(
        "tenant",
        max_length=22,
        pattern=DNS_LABEL,
        description='Tenant namespaces are "<prefix>-<tenant name>" unless the tenant names one.',
    )
    secret_source_namespace: str = Field(
        "tenantry-secrets",
        max_length=63,
        pattern=DNS_LABEL,
        description="The namespace whose Secrets tenants may copy, each only when it allows them.",
    )
    runtime_image: str = Field(
        "tenantry/runtime:0.1.0", description="Default image of runtime pods."
    )
    sandbox_image: str = Field(
        "tenantry/runtime:0.1.0", description="Default image of sandbox pods."
    )
    drift_interval_seconds: float = Field(
        300.0, gt=0, description="How often every tenant is reconciled even when nothing changed."
    )
    max_concurrent_reconciles: int = Field(8, ge=1, le=256)
    service_account: str = Field(
        "",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?)?$",
        description=(
            'The operator\'s own ServiceAccount as "namespace/name". When set, each tenant namespace '
            "gets a RoleBinding that grants it `secrets_role` there, so the operator needs no "
            "cluster-wide right on Secrets (the Helm chart sets it)."
        ),
    )
    secrets_role: str = Field(
        "tenantry-tenant-secrets",
        max_length=253,
        description="The ClusterRole bound to the operator in each tenant namespace (with service_account).",
    )
    tenant_selector: str = Field(
        "",
        description="A label selector: only the AgentTenants it selects are reconciled (empty: all).",
    )
