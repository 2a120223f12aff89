"""The platform's policy for tenant manifests: what an AgentTenant may ask for on this cluster.

The CRD decides what a manifest may say anywhere; the platform admin decides, with operator flags
(config.py), what it may say here: which images, which RuntimeClasses, how much quota, which
namespaces. `violations` is pure: the reconcile stalls a tenant on the first one before anything
is written, and `tenantry render` refuses the same manifest offline.
"""

from __future__ import annotations

import fnmatch

from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant, quantity

__all__ = ["quantity", "violations"]


def image_allowed(image: str, config: OperatorConfig) -> bool:
    if image in (config.runtime_image, config.sandbox_image):
        return True
    return any(
        image.startswith(entry) if entry.endswith("/") else image == entry
        for entry in config.allowed_images
    )


def violations(tenant: AgentTenant, config: OperatorConfig) -> list[tuple[str, str]]:
    """(field, what is wrong and how to fix it) for every way the tenant breaks the policy."""
    spec = tenant.spec
    found: list[tuple[str, str]] = []
    allowed = ", ".join(config.allowed_images) or "none besides the defaults"
    for field, image in (
        ("spec.runtime.image", spec.runtime.image),
        ("spec.sandbox.image", spec.sandbox.image),
    ):
        if image and not image_allowed(image, config):
            found.append(
                (
                    field,
                    f"image {image!r} is not allowed on this cluster (--allowed-images: {allowed}): "
                    "use an allowed image, or leave the field empty for the default",
                )
            )
    runtime_class = spec.sandbox.runtime_class_name
    if runtime_class and runtime_class not in config.allowed_runtime_classes:
        classes = ", ".join(config.allowed_runtime_classes) or "none"
        found.append(
            (
                "spec.sandbox.runtimeClassName",
                f"RuntimeClass {runtime_class!r} is not allowed on this cluster "
                f"(--allowed-runtime-classes: {classes}): use an allowed one, or remove the field",
            )
        )
    session_storage = spec.runtime.sessions.storage.size if spec.runtime.sessions.enabled else "0"
    for field, asked, ceiling, flag in (
        ("spec.quota.cpu", spec.quota.cpu, config.max_quota_cpu, "--max-quota-cpu"),
        ("spec.quota.memory", spec.quota.memory, config.max_quota_memory, "--max-quota-memory"),
        (
            "spec.runtime.sessions.storage.size",
            session_storage,
            config.max_session_storage,
            "--max-session-storage",
        ),
    ):
        if quantity(asked) > quantity(ceiling):
            found.append(
                (field, f"{asked} is more than this cluster allows a tenant ({flag} {ceiling})")
            )
    if spec.quota.pods > config.max_quota_pods:
        found.append(
            (
                "spec.quota.pods",
                f"{spec.quota.pods} is more than this cluster allows a tenant "
                f"(--max-quota-pods {config.max_quota_pods})",
            )
        )
    pattern = config.tenant_namespace_pattern
    if spec.namespace and not fnmatch.fnmatchcase(spec.namespace, pattern):
        found.append(
            (
                "spec.namespace",
                f"namespace {spec.namespace!r} does not match this cluster's tenant namespaces "
                f"({pattern!r}, --namespace-pattern): choose a name that matches, or leave the "
                "field empty for the default",
            )
        )
    return found
