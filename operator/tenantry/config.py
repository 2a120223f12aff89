"""The operator's own configuration: flags of `tenantry run`, or TENANTRY_* environment variables."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from tenantry.models import DNS_LABEL, QUANTITY, Model

PullPolicy = Literal["Always", "IfNotPresent", "Never"]


def _comma_separated(value: object) -> object:
    """A flag's or environment variable's list: "a, b" is ("a", "b"); "" is ()."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


CommaList = Annotated[tuple[str, ...], BeforeValidator(_comma_separated)]


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

    # The platform's policy for what a manifest may ask for (policy.py checks a tenant against
    # it before anything is written).
    allowed_images: CommaList = Field(
        (),
        description=(
            'Images a tenant may name in spec.runtime.image or spec.sandbox.image: an entry ending in "/" '
            "allows every image under that prefix (a registry or a repository path), any other entry "
            "exactly that image. Empty: only the default runtime and sandbox images."
        ),
    )
    tenant_image_pull_policy: PullPolicy = Field(
        "Always",
        description=(
            "The imagePullPolicy of an image a tenant names: Always makes the node check the tenant's "
            "right to pull it, so no tenant runs another's private image from the node's cache."
        ),
    )
    image_pull_policy: PullPolicy = Field(
        "IfNotPresent", description="The imagePullPolicy of the default runtime and sandbox images."
    )
    allowed_runtime_classes: CommaList = Field(
        (),
        description="RuntimeClasses a tenant may name in spec.sandbox.runtimeClassName (empty: none).",
    )
    max_quota_cpu: str = Field(
        "16", pattern=QUANTITY, description="The largest spec.quota.cpu a tenant may ask for."
    )
    max_quota_memory: str = Field(
        "64Gi", pattern=QUANTITY, description="The largest spec.quota.memory a tenant may ask for."
    )
    max_quota_pods: int = Field(
        100, ge=1, description="The largest spec.quota.pods a tenant may ask for."
    )
    max_session_storage: str = Field(
        "10Gi",
        pattern=QUANTITY,
        description="The largest spec.runtime.sessions.storage.size a tenant may ask for.",
    )
    namespace_pattern: str = Field(
        "",
        max_length=63,
        pattern=r"^[-a-z0-9*?]*$",
        description=(
            'A pattern (* and ? wildcards) every spec.namespace must match; empty means "<prefix>-*", '
            "so no tenant takes a namespace the platform means for something else."
        ),
    )
    cluster_cidrs: CommaList = Field(
        (),
        description=(
            "The cluster's pod, service and node CIDRs: carved out of every tenant egress range like the "
            "private ranges, even where they are public addresses."
        ),
    )

    template_kinds: CommaList = Field(
        (),
        description=(
            "The kinds AgentTenantTemplates may render, as apiVersion/Kind (=plural when it is not "
            "the usual one), for example v1/PersistentVolumeClaim,monitoring.coreos.com/v1/ServiceMonitor. "
            "Empty: templates render nothing. Never a kind Tenantry renders itself, except PersistentVolumeClaim."
        ),
    )

    @field_validator("cluster_cidrs")
    @classmethod
    def _cidrs_are_valid(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as error:
                raise ValueError(f"{cidr!r} is not a CIDR with no host bits set: {error}") from None
        return cidrs

    @property
    def tenant_namespace_pattern(self) -> str:
        return self.namespace_pattern or f"{self.namespace_prefix}-*"
