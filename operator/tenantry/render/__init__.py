"""Pure rendering: from a validated tenant to the list of child manifests. No I/O.

Manifests are built as data and serialised by a YAML or JSON encoder, never by pasting text
into a template, so no user-supplied string can change a manifest's structure; each string is
also validated by the models before it gets here. Each `build_*` function returns one child,
in the module of its group (namespace, policies, secrets, runtime, sandbox); `render` returns
them all, in the order they are applied. The one exception to "never by pasting text" is the
platform admin's AgentTenantTemplates (`templates`), rendered in Jinja2's sandbox with every
value quoted and the output checked before it becomes a child.
"""

from __future__ import annotations

from collections.abc import Sequence

from tenantry.config import OperatorConfig
from tenantry.models import OPERATOR_CHILD_NAMES, AgentTenant, AgentTenantTemplate, BrokenTemplate
from tenantry.names import DEFAULT_ACCOUNT, RUNTIME, SANDBOX
from tenantry.render.namespace import (
    build_limit_range,
    build_namespace,
    build_operator_binding,
    build_resource_quota,
)
from tenantry.render.policies import (
    BLOCKED_RANGES,
    build_default_deny,
    build_runtime_policy,
    build_sandbox_policy,
    build_service_account,
)
from tenantry.render.runtime import (
    build_runtime_config,
    build_runtime_deployment,
    build_sessions_claim,
)
from tenantry.render.sandbox import build_sandbox_deployment
from tenantry.render.secrets import build_copied_secret, build_sandbox_token
from tenantry.render.templates import TemplateRefused, is_templated, render_templates
from tenantry.render.tenant import (
    ClusterFacts,
    Manifest,
    stamp,
    tenant_namespace,
    tenant_uid,
    uid_slot,
)
from tenantry.render.workloads import build_service

# What the other layers use; the builders are reached through their modules.
__all__ = [
    "BLOCKED_RANGES",
    "ClusterFacts",
    "DuplicateChild",
    "Manifest",
    "TemplateRefused",
    "is_templated",
    "render",
    "tenant_namespace",
    "tenant_uid",
    "uid_slot",
]


class DuplicateChild(ValueError):
    """Two children of one tenant would be the same object; the models should refuse this first."""


def render(
    tenant: AgentTenant,
    config: OperatorConfig,
    facts: ClusterFacts | None = None,
    templates: Sequence[AgentTenantTemplate | BrokenTemplate] = (),
) -> list[Manifest]:
    """Every child of a tenant, in the order they are applied (the namespace first), the
    children of the templates that select it last; TemplateRefused when one cannot render."""
    facts = facts or ClusterFacts()
    namespace = tenant_namespace(tenant, config)
    spec = tenant.spec
    templated = render_templates(tenant, namespace, facts, config, templates)
    children = [
        build_namespace(tenant, config, facts),
        *(
            [build_operator_binding(tenant, namespace, facts, config)]
            if config.scoped_secrets
            else []
        ),
        build_resource_quota(
            tenant, namespace, facts, [m for m in templated if m["kind"] == "PersistentVolumeClaim"]
        ),
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
    if spec.runtime.sessions.enabled:
        children.append(build_sessions_claim(tenant, namespace, facts))
    children += [
        build_runtime_deployment(tenant, namespace, facts, config),
        build_service(tenant, namespace, facts, RUNTIME),
        *templated,
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
