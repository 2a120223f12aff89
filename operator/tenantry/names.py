"""The names every layer shares: the labels and annotations the operator writes on its children
and recognises them by, the fixed names of those children, and the ports and paths inside their
pods. Plain data, no imports: the render, the reconcile, the audit and the tests all read it.
"""

from __future__ import annotations

# Labels and annotations on every child: whose it is, which part of the tenant, what was applied.
MANAGED_BY = "app.kubernetes.io/managed-by"
TENANT_LABEL = "tenantry.dev/tenant"
COMPONENT_LABEL = "tenantry.dev/component"
APPLIED_HASH = "tenantry.dev/applied-hash"
CONFIG_HASH = "tenantry.dev/config-hash"
SECRET_SOURCE = "tenantry.dev/source"  # noqa: S105 - an annotation key
ALLOWED_TENANTS = "tenantry.dev/allowed-tenants"
DISPLAY_NAME = "tenantry.dev/display-name"
OPERATOR = "tenantry"

# The fixed names of the operator's children in a tenant namespace.
RUNTIME = "runtime"
SANDBOX = "sandbox"
SANDBOX_TOKEN_SECRET = "sandbox-token"  # noqa: S105 - a Secret name
RUNTIME_CONFIG = "runtime-config"
DEFAULT_DENY = "default-deny"
QUOTA = "tenant-quota"
LIMITS = "tenant-defaults"
DEFAULT_ACCOUNT = "default"
OPERATOR_BINDING = "tenantry-operator"
SESSIONS = "sessions"  # the runtime's PersistentVolumeClaim, when the tenant keeps sessions

# Ports, paths and limits inside the tenant's pods (docs/runtime-contract.md).
HTTP_PORT = 8080
CONFIG_DIR = "/etc/tenantry"
SECRETS_DIR = "/var/run/secrets/tenantry"
SANDBOX_TOKEN_DIR = f"{SECRETS_DIR}/sandbox"
WORKSPACE_DIR = "/workspace"
SESSIONS_DIR = "/var/lib/tenantry/sessions"
TASK_TIMEOUT_SECONDS = 120
# Kubernetes' default terminationMessagePath: what a container writes there becomes its
# status's `terminated.message`.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
