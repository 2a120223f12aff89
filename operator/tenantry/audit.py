"""Pure isolation checks of one tenant's live objects against what Tenantry renders.

`audit_tenant` takes the tenant and every object found in its namespace (as plain dicts) and
returns the violations; reading the cluster is the caller's job (`tenantry audit`). A check
that passes returns nothing, so a clean tenant audits to an empty list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tenantry.config import OperatorConfig
from tenantry.models import KIND, AgentTenant, AgentTenantTemplate, BrokenTemplate
from tenantry.names import RUNTIME, SANDBOX, SANDBOX_TOKEN_SECRET, SECRET_SOURCE, TENANT_LABEL
from tenantry.render import ClusterFacts, TemplateRefused, render, tenant_namespace

# Kinds that run code; each must be one Tenantry rendered, or owned by one.
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "Pod", "StatefulSet", "DaemonSet", "Job", "CronJob")
# Kinds the audit compares, with the spec fields that must equal the rendered ones.
COMPARED_FIELDS = {
    "NetworkPolicy": ("spec",),
    "ResourceQuota": ("spec",),
    "LimitRange": ("spec",),
    "ServiceAccount": ("automountServiceAccountToken",),
}
PSA_MODES = ("enforce", "audit", "warn")


@dataclass(frozen=True)
class Finding:
    tenant: str
    check: str
    object: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def ref(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return (
        f"{obj.get('kind')}/{namespace}/{meta.get('name')}"
        if namespace
        else f"{obj.get('kind')}/{meta.get('name')}"
    )


def key(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj.get("kind", ""), obj.get("metadata", {}).get("name", "")


def owned_by(obj: Mapping[str, Any], uids: set[str]) -> bool:
    return any(
        owner.get("uid") in uids for owner in obj.get("metadata", {}).get("ownerReferences") or []
    )


def without_nulls(value: Any) -> Any:
    """Drop null fields, empty maps and empty lists: the API server stores them as absent."""
    if isinstance(value, Mapping):
        cleaned = {k: without_nulls(v) for k, v in value.items() if v is not None}
        return {k: v for k, v in cleaned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def check_namespace(
    tenant: AgentTenant, uid: str, namespace: Mapping[str, Any] | None, name: str
) -> list[str]:
    if namespace is None:
        return [f"namespace {name} does not exist"]
    meta = namespace.get("metadata", {})
    problems = []
    owners = [
        o
        for o in meta.get("ownerReferences") or []
        if o.get("kind") == KIND and o.get("uid") == uid
    ]
    if not owners or (meta.get("labels") or {}).get(TENANT_LABEL) != tenant.name:
        problems.append("not owned by the tenant (ownerReference and tenant label)")
    labels = meta.get("labels") or {}
    for mode in PSA_MODES:
        if labels.get(f"pod-security.kubernetes.io/{mode}") != "restricted":
            problems.append(
                f"pod-security.kubernetes.io/{mode} is {labels.get(f'pod-security.kubernetes.io/{mode}')!r}, not 'restricted'"
            )
    return problems


def check_pod_security(pod: Mapping[str, Any]) -> list[str]:
    """What makes a pod fall short of PSA restricted and of Tenantry's own bar."""
    spec = pod.get("spec", {})
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"{flag} is set")
    pod_context = spec.get("securityContext") or {}
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume.get('name')} is a hostPath")
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        context = container.get("securityContext") or {}
        name = container.get("name")
        if context.get("privileged"):
            problems.append(f"container {name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name} allows privilege escalation")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"container {name} may run as root")
        if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
            problems.append(f"container {name} does not drop all capabilities")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get(
            "type"
        )
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"container {name} has no RuntimeDefault seccomp profile")
        if not context.get("readOnlyRootFilesystem"):
            problems.append(f"container {name} has a writable root filesystem")
    return problems


def mounts_token(pod: Mapping[str, Any], service_accounts: Mapping[str, Mapping[str, Any]]) -> bool:
    spec = pod.get("spec", {})
    for volume in spec.get("volumes") or []:
        sources = (volume.get("projected") or {}).get("sources") or []
        if any("serviceAccountToken" in source for source in sources):
            return True
    if spec.get("automountServiceAccountToken") is not None:
        return bool(spec["automountServiceAccountToken"])
    account = service_accounts.get(spec.get("serviceAccountName") or "default", {})
    return account.get("automountServiceAccountToken") is not False


def secrets_used(pod: Mapping[str, Any]) -> set[str]:
    """Every Secret a pod can read: volumes (plain and projected), env and envFrom."""
    spec = pod.get("spec", {})
    names = set()
    for volume in spec.get("volumes") or []:
        if "secret" in volume:
            names.add(volume["secret"].get("secretName"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if "secret" in source:
                names.add(source["secret"].get("name"))
    for container in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        for env in container.get("env") or []:
            secret = ((env.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
            if secret:
                names.add(secret)
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                names.add(source["secretRef"].get("name"))
    return {name for name in names if name}


def unexpected(
    obj: Mapping[str, Any],
    rendered: set[tuple[str, str]],
    workload_uids: set[str],
    replica_set_uids: set[str],
) -> list[tuple[str, str]]:
    """An object in the namespace that Tenantry neither rendered nor owns, where that matters."""
    kind, name = key(obj)
    if (kind, name) in rendered:
        return []
    if kind in ("Role", "RoleBinding"):
        return [("no extra access", f"a {kind} Tenantry did not render")]
    if kind in ("ServiceAccount", "Secret"):
        return [("no extra identities or secrets", f"a {kind} Tenantry did not render")]
    if kind in WORKLOAD_KINDS:
        owners = (
            workload_uids if kind == "ReplicaSet" else replica_set_uids if kind == "Pod" else set()
        )
        if not owned_by(obj, owners):
            return [("no extra workloads", f"a {kind} Tenantry did not render")]
    return []


def secret_findings(
    tenant: AgentTenant, config: OperatorConfig, live: Mapping[tuple[str, str], Mapping[str, Any]]
) -> list[tuple[str, str, str]]:
    """(check, object, detail) for the operator's own Secrets whose contents are not theirs.

    Names alone prove nothing: a model key copied under the sandbox token's name would pass a
    check of names while the sandbox mounts it. The token Secret must hold the token and nothing
    else; each copy must say it came from the source the spec names.
    """
    found = []
    token = live.get(("Secret", SANDBOX_TOKEN_SECRET))
    if tenant.spec.sandbox.enabled and token is not None:
        keys = sorted(token.get("data") or {})
        if keys != ["token"]:
            found.append(
                (
                    "sandbox holds no credentials",
                    ref(token),
                    f"holds key(s) {', '.join(keys) or 'none'}, not just 'token'",
                )
            )
    for copied in tenant.spec.secrets:
        secret = live.get(("Secret", copied.name))
        if secret is None:
            continue  # reported as missing
        source = (secret.get("metadata", {}).get("annotations") or {}).get(SECRET_SOURCE)
        expected = f"{config.secret_source_namespace}/{copied.from_}"
        if source != expected:
            found.append(
                (
                    "secrets only where needed",
                    ref(secret),
                    f"copied from {source!r}, not {expected!r}",
                )
            )
    return found


def pod_findings(
    pod: Mapping[str, Any], service_accounts: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    found = [("pod security", problem) for problem in check_pod_security(pod)]
    if mounts_token(pod, service_accounts):
        found.append(("no service-account tokens", "the pod mounts a service-account token"))
    component = (pod["metadata"].get("labels") or {}).get("tenantry.dev/component")
    readable = secrets_used(pod)
    if component == SANDBOX and readable - {SANDBOX_TOKEN_SECRET}:
        extra = ", ".join(sorted(readable - {SANDBOX_TOKEN_SECRET}))
        found.append(("sandbox holds no credentials", f"the sandbox can read Secret(s) {extra}"))
    elif component not in (RUNTIME, SANDBOX) and readable:
        found.append(
            ("secrets only where needed", f"reads Secret(s) {', '.join(sorted(readable))}")
        )
    return found


def audit_tenant(
    tenant: AgentTenant,
    uid: str,
    config: OperatorConfig,
    namespace: Mapping[str, Any] | None,
    objects: Sequence[Mapping[str, Any]],
    templates: Sequence[AgentTenantTemplate | BrokenTemplate] = (),
) -> list[Finding]:
    """Every isolation violation of one tenant, given its namespace and all objects in it, and
    the AgentTenantTemplates (whose children count as rendered, like Tenantry's own)."""
    name = tenant_namespace(tenant, config)
    findings: list[Finding] = []

    def violation(check: str, obj: str, detail: str) -> None:
        findings.append(Finding(tenant.name, check, obj, detail))

    for problem in check_namespace(tenant, uid, namespace, name):
        violation("namespace", f"Namespace/{name}", problem)
    if namespace is None:
        return findings

    try:
        children = render(tenant, config, ClusterFacts(uid=uid), templates)
    except TemplateRefused as error:
        violation("templates render", f"AgentTenantTemplate/{error.template}", str(error))
        children = render(tenant, config, ClusterFacts(uid=uid))
    rendered = {key(m): m for m in children[1:]}
    live = {key(o): o for o in objects}
    for wanted, manifest in rendered.items():
        if wanted not in live:
            violation("rendered objects present", ref(manifest), "missing")
            continue
        for field in COMPARED_FIELDS.get(wanted[0], ()):
            if without_nulls(live[wanted].get(field)) != without_nulls(manifest.get(field)):
                violation(
                    "rendered objects intact",
                    ref(live[wanted]),
                    f"{field} differs from `tenantry render`",
                )

    workload_uids = {
        o["metadata"].get("uid") for k, o in live.items() if k in rendered and k[0] == "Deployment"
    }
    replica_set_uids = {
        o["metadata"].get("uid")
        for o in objects
        if o.get("kind") == "ReplicaSet" and owned_by(o, workload_uids)
    }
    service_accounts = {
        o["metadata"]["name"]: o for o in objects if o.get("kind") == "ServiceAccount"
    }
    for check, obj_ref, detail in secret_findings(tenant, config, live):
        violation(check, obj_ref, detail)
    for obj in objects:
        for check, detail in unexpected(obj, set(rendered), workload_uids, replica_set_uids):
            violation(check, ref(obj), detail)
        if obj.get("kind") == "Pod":
            for check, detail in pod_findings(obj, service_accounts):
                violation(check, ref(obj), detail)
    return findings


def table(findings: Iterable[Finding], tenants: Sequence[str]) -> str:
    """A human report: one line per violation, and one OK line per clean tenant."""
    rows = [("TENANT", "CHECK", "OBJECT", "DETAIL")]
    dirty = set()
    for finding in findings:
        rows.append((finding.tenant, finding.check, finding.object, finding.detail))
        dirty.add(finding.tenant)
    rows += [(tenant, "all checks", "-", "OK") for tenant in tenants if tenant not in dirty]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    )
