"""The lightkube resource classes beyond the child kinds (those are in tenantry.kinds): the
AgentTenant itself, and everything `tenantry audit` inspects in a tenant namespace."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource
from lightkube.resources.apps_v1 import DaemonSet, ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import CronJob, Job
from lightkube.resources.core_v1 import Pod
from lightkube.resources.rbac_authorization_v1 import Role

from tenantry.kinds import CHILD_KINDS
from tenantry.models import GROUP, KIND, PLURAL, TEMPLATE_KIND, TEMPLATE_PLURAL, VERSION

AgentTenantResource = create_global_resource(GROUP, VERSION, KIND, PLURAL)
AgentTenantTemplateResource = create_global_resource(GROUP, VERSION, TEMPLATE_KIND, TEMPLATE_PLURAL)

# Everything in a tenant namespace that `tenantry audit` inspects: what we render there, and
# every other kind that runs code or grants access.
AUDITED_KINDS: tuple[Any, ...] = (
    *(child.resource for child in CHILD_KINDS if child.namespaced),
    ReplicaSet,
    Pod,
    StatefulSet,
    DaemonSet,
    Job,
    CronJob,
    Role,
)
