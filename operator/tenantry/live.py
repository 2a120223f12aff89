"""The lightkube resource classes for what the operator and the audit read and write."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource
from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import (
    ConfigMap,
    LimitRange,
    Namespace,
    Pod,
    ResourceQuota,
    Secret,
    Service,
    ServiceAccount,
)
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from tenantry.models import GROUP, KIND, PLURAL, VERSION

AgentTenantResource = create_global_resource(GROUP, VERSION, KIND, PLURAL)

# The kinds the operator applies, by the `kind` of a rendered manifest.
APPLIED_KINDS: dict[str, Any] = {
    "Namespace": Namespace,
    "ResourceQuota": ResourceQuota,
    "LimitRange": LimitRange,
    "NetworkPolicy": NetworkPolicy,
    "ServiceAccount": ServiceAccount,
    "Secret": Secret,
    "ConfigMap": ConfigMap,
    "Deployment": Deployment,
    "Service": Service,
    "RoleBinding": RoleBinding,
}
# Everything in a tenant namespace that `tenantry audit` inspects.
AUDITED_KINDS: tuple[Any, ...] = (
    *(kind for name, kind in APPLIED_KINDS.items() if name != "Namespace"),
    ReplicaSet,
    Pod,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    Role,
)
