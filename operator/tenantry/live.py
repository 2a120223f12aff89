"""The lightkube resource classes for what the operator and the audit read and write."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource
from lightkube.resources.apps_v1 import DaemonSet, ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import Pod
from lightkube.resources.rbac_authorization_v1 import Role

from tenantry.kinds import CHILD_KINDS
from tenantry.models import GROUP, KIND, PLURAL, VERSION

AgentTenantResource = create_global_resource(GROUP, VERSION, KIND, PLURAL)

# The kinds the operator applies, by the `kind` of a rendered manifest.
APPLIED_KINDS: dict[str, Any] = {child.kind: child.resource for child in CHILD_KINDS}
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
