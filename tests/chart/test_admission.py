"""The chart's ValidatingAdmissionPolicies, decided request by request, offline.

e2e/toolchain/vapcheck runs the API server's own admission code (k8s.io/apiserver of the local
control plane's version) on the rendered chart: CEL compiled as for a new policy, match rules,
namespace selectors, match conditions, variables and messages as the API server evaluates them.
What it cannot show — RBAC before admission, Pod Security, the real controllers' identities — the
cluster tests in tests/integration/test_chart_install.py do.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.chartkit import run, template_text, tool

OPERATOR = "system:serviceaccount:tenantry-system:tenantry"
EDITOR = "system:serviceaccount:tenantry-system:tenant-editor"
AUTHENTICATED = ["system:authenticated"]
ACCOUNT_GROUPS = [
    "system:serviceaccounts",
    "system:serviceaccounts:tenantry-system",
    *AUTHENTICATED,
]
KCM = "system:kube-controller-manager"
TENANT = "tenant-acme"
TENANT_POLICY = "ValidatingAdmissionPolicy 'tenantry-tenant-namespaces'"
SANDBOX = {"tenantry.dev/tenant": "acme", "tenantry.dev/component": "sandbox"}
RUNTIME = {"tenantry.dev/tenant": "acme", "tenantry.dev/component": "runtime"}

NETWORK_POLICY_REFUSED = (
    "NetworkPolicies in tenant namespace tenant-acme are written only by Tenantry: policies only "
    "add, so one more could reopen what the tenant's policies deny (the cloud metadata service, "
    "the API server, other tenants). Change spec.network of AgentTenant acme instead."
)
RBAC_REFUSED = (
    "Roles and RoleBindings in tenant namespace tenant-acme are written only by Tenantry and "
    "cluster administrators: a binding here could give the tenant's runtime or sandbox access to "
    "the Kubernetes API. Ask a cluster administrator (a member of system:masters) to grant access "
    "to this namespace."
)
QUOTA_REFUSED = (
    "ResourceQuotas and LimitRanges in tenant namespace tenant-acme are written only by Tenantry. "
    "Change spec.quota of AgentTenant acme instead."
)
LABEL_REFUSED = (
    "Objects labelled tenantry.dev/component (in their labels or their pod template's) in tenant "
    "namespace tenant-acme are written only by Tenantry: the label marks the runtime and the "
    "sandbox, which the tenant's NetworkPolicies trust. Change spec.runtime or spec.sandbox of "
    "AgentTenant acme instead, or leave the label off pods of your own."
)
SHELL_REFUSED = (
    "exec, attach, port-forward and proxy into pods and services of tenant namespace tenant-acme "
    "are refused: they would act as the tenant's runtime or sandbox. Read logs with kubectl logs "
    "and the tenant's state in the status of AgentTenant acme; a cluster administrator (a member "
    "of system:masters) may debug."
)


TOKEN_REFUSED = (
    "Tokens for ServiceAccounts of tenant namespace tenant-acme are refused: the tenant's runtime "
    "and sandbox run with no token at all, and a token minted for their accounts (or any other "
    "here) would be an identity nobody reviewed. Pods that mount a projected token still get one "
    "from their kubelet; a cluster administrator (a member of system:masters) may mint one."
)


def owned_refused(what: str) -> str:
    """The refusal of a write to (or of a new) object labelled as one of the operator's own."""
    return (
        f"{what} in tenant namespace tenant-acme is written only by Tenantry: it is labelled "
        "app.kubernetes.io/managed-by=tenantry (before or after this change), the mark of the "
        "operator's own objects, and the operator cannot tell a change made by someone else from "
        "its own. Change AgentTenant acme instead, and leave that label off objects of your own."
    )


def scale_refused(what: str) -> str:
    return (
        f"Scaling {what} in tenant namespace tenant-acme is refused: a scale request carries no "
        "labels, so it cannot be told from one that scales the runtime, the sandbox or an old "
        "ReplicaSet of theirs (whose pods would run a stale template). Tenantry runs the replicas "
        "AgentTenant acme asks for; for workloads of your own, set spec.replicas (kubectl patch, "
        "edit or apply) instead of kubectl scale or an autoscaler."
    )


NAMESPACES = [
    {
        "metadata": {
            "name": TENANT,
            "labels": {
                "kubernetes.io/metadata.name": TENANT,
                "app.kubernetes.io/managed-by": "tenantry",
                "tenantry.dev/tenant": "acme",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        }
    },
    {"metadata": {"name": "plain", "labels": {"kubernetes.io/metadata.name": "plain"}}},
    {"metadata": {"name": "kube-system", "labels": {"kubernetes.io/metadata.name": "kube-system"}}},
]


def controller(name: str) -> tuple[str, list[str]]:
    return (
        f"system:serviceaccount:kube-system:{name}",
        ["system:serviceaccounts", "system:serviceaccounts:kube-system", *AUTHENTICATED],
    )


def meta(name: str, labels: dict[str, str] | None = None, namespace: str = TENANT) -> Any:
    found: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels is not None:
        found["labels"] = labels
    return found


def pod(labels: dict[str, str] | None, namespace: str = TENANT) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta("p", labels, namespace),
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }


def workload(
    kind: str, api: str, template_labels: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": meta("w", labels or {}),
        "spec": {
            "selector": {"matchLabels": template_labels},
            "template": {
                "metadata": {"labels": template_labels},
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }


def cron_job(template_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta("cj", {}),
        "spec": {
            "schedule": "* * * * *",
            "jobTemplate": {
                "spec": {
                    "template": {
                        "metadata": {"labels": template_labels},
                        "spec": {"containers": [{"name": "c", "image": "x"}]},
                    }
                }
            },
        },
    }


ALLOW_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": meta("allow-all", {}),
    "spec": {"podSelector": {}, "ingress": [{}], "egress": [{}]},
}
ROLE = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("r")}
OPERATOR_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "RoleBinding",
    "metadata": meta("tenantry-operator"),
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
}
QUOTA = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": meta("tenant-quota")}
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("notes")}
EXEC = {"apiVersion": "v1", "kind": "PodExecOptions", "command": ["sh"]}

# The operator's own children, labelled as tenantry.render.tenant_labels labels them.
TENANTRYS = {
    "app.kubernetes.io/managed-by": "tenantry",
    "app.kubernetes.io/part-of": "tenantry",
    "app.kubernetes.io/instance": "acme",
    "tenantry.dev/tenant": "acme",
}


def child(
    kind: str, api: str, name: str, component: str | None = None, **fields: Any
) -> dict[str, Any]:
    labels = {**TENANTRYS, **({"app.kubernetes.io/component": component} if component else {})}
    return {"apiVersion": api, "kind": kind, "metadata": meta(name, labels), **fields}


def relabelled(
    obj: dict[str, Any], labels: dict[str, str] | None, name: str | None = None
) -> dict[str, Any]:
    """obj with other labels (None: none at all), and another name if given."""
    return {**obj, "metadata": meta(name or obj["metadata"]["name"], labels)}


RUNTIME_CONFIG = child(
    "ConfigMap", "v1", "runtime-config", "runtime",
    data={"runtime.json": '{"model": {"baseUrl": "https://models.example.com/v1"}}'},
)  # fmt: skip
REPOINTED_CONFIG = {
    **RUNTIME_CONFIG,
    "data": {"runtime.json": '{"model": {"baseUrl": "https://attacker.example.net/v1"}}'},
}
SANDBOX_TOKEN = child(
    "Secret", "v1", "sandbox-token", "sandbox", type="Opaque", data={"token": "c2VjcmV0"}
)
COPIED_SECRET = child(
    "Secret", "v1", "model-credentials", "runtime", type="Opaque", data={"api-key": "a2V5"}
)
RUNTIME_SERVICE = child(
    "Service", "v1", "runtime", "runtime",
    spec={"selector": RUNTIME, "ports": [{"name": "http", "port": 8080}]},
)  # fmt: skip
RUNTIME_ACCOUNT = child(
    "ServiceAccount", "v1", "runtime", "runtime", automountServiceAccountToken=False
)
TENANT_POLICY_OBJECT = child("NetworkPolicy", "networking.k8s.io/v1", "sandbox", "sandbox")
SANDBOX_DEPLOYMENT = relabelled(
    workload("Deployment", "apps/v1", SANDBOX),
    {**TENANTRYS, "app.kubernetes.io/component": "sandbox"},
    "sandbox",
)
# What the endpoint controllers write for the runtime Service: its labels, copied.
RUNTIME_ENDPOINTS = relabelled(
    {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta("runtime"), "subsets": []},
    {**RUNTIME_SERVICE["metadata"]["labels"], "endpoints.kubernetes.io/managed-by": "endpoint-controller"},
)  # fmt: skip
RUNTIME_SLICE = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": meta(
        "runtime-abcde",
        {
            **RUNTIME_SERVICE["metadata"]["labels"],
            "kubernetes.io/service-name": "runtime",
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        },
    ),
    "addressType": "IPv4",
    "endpoints": [],
}
# Written by the built-in controllers without Tenantry's label: unaffected.
ROOT_CA = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {
        **meta("kube-root-ca.crt"),
        "annotations": {"kubernetes.io/description": "Contains a CA bundle ..."},
    },
    "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
}
ACCOUNT_TOKEN = {
    "apiVersion": "v1",
    "kind": "Secret",
    "metadata": {
        **meta("build-robot-token"),
        "annotations": {"kubernetes.io/service-account.name": "build-robot"},
    },
    "type": "kubernetes.io/service-account-token",
}
DEFAULT_ACCOUNT = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("default")}
OWN_PVC = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": meta("data", TENANTRYS),
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
}
CLUSTER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "x", "labels": TENANTRYS},
}


def scale(name: str, replicas: int = 1) -> dict[str, Any]:
    """What admission sees of a scale request: a Scale, which carries no labels."""
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {"replicas": replicas},
    }


OLD_RUNTIME_RS = "runtime-5d4f8b9c7"

RS = ("apps", "replicasets")
PODS = ("", "pods")
NETPOL = ("networking.k8s.io", "networkpolicies")
BINDINGS = ("rbac.authorization.k8s.io", "rolebindings")
CONFIGMAPS = ("", "configmaps")
SECRETS = ("", "secrets")
SERVICES = ("", "services")
ACCOUNTS = ("", "serviceaccounts")
ENDPOINTS = ("", "endpoints")
SLICES = ("discovery.k8s.io", "endpointslices")

# name: (user, groups, operation, (group, resource), subresource, object, old object, namespace,
#        expected message, or None for allowed)
Case = tuple[
    str,
    list[str],
    str,
    tuple[str, str],
    str,
    "dict[str, Any] | None",
    "dict[str, Any] | None",
    str,
    "str | None",
]
E, EG = EDITOR, ACCOUNT_GROUPS
TOKEN = {
    "apiVersion": "authentication.k8s.io/v1",
    "kind": "TokenRequest",
    "metadata": {"name": "runtime"},
}
PVCS = ("", "persistentvolumeclaims")
KUBELET, KUBELET_GROUPS = "system:node:node-1", ["system:nodes", *AUTHENTICATED]
CASES: dict[str, Case] = {
    # `edit` may mint tokens for any account of the namespace (serviceaccounts/token).
    "editor: a token for the runtime's account": (E, EG, "CREATE", ACCOUNTS, "token", TOKEN, None, TENANT, TOKEN_REFUSED),
    "editor: a token for an account of their own": (E, EG, "CREATE", ACCOUNTS, "token", {**TOKEN, "metadata": {"name": "ci"}}, None, TENANT, TOKEN_REFUSED),
    "kubelet: a projected token for a pod": (KUBELET, KUBELET_GROUPS, "CREATE", ACCOUNTS, "token", TOKEN, None, TENANT, None),
    "editor: a token elsewhere": (E, EG, "CREATE", ACCOUNTS, "token", TOKEN, None, "plain", None),
    "system:masters: a token": ("admin", ["system:masters", *AUTHENTICATED], "CREATE", ACCOUNTS, "token", TOKEN, None, TENANT, None),
    # What a user of the namespace may not do (RBAC decides who gets this far: `edit` writes
    # NetworkPolicies and workloads, `admin` RBAC too, custom roles quota).
    "editor: an allow-all NetworkPolicy": (E, EG, "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    "editor: loosen a NetworkPolicy": (E, EG, "UPDATE", NETPOL, "", ALLOW_ALL, ALLOW_ALL, TENANT, NETWORK_POLICY_REFUSED),
    "editor: delete default-deny": (E, EG, "DELETE", NETPOL, "", None, ALLOW_ALL, TENANT, NETWORK_POLICY_REFUSED),
    "admin: a Role": (E, EG, "CREATE", ("rbac.authorization.k8s.io", "roles"), "", ROLE, None, TENANT, RBAC_REFUSED),
    "admin: a RoleBinding": (E, EG, "CREATE", BINDINGS, "", OPERATOR_BINDING, None, TENANT, RBAC_REFUSED),
    "admin: delete the operator's RoleBinding": (E, EG, "DELETE", BINDINGS, "", None, OPERATOR_BINDING, TENANT, RBAC_REFUSED),
    "custom role: delete the quota": (E, EG, "DELETE", ("", "resourcequotas"), "", None, QUOTA, TENANT, QUOTA_REFUSED),
    "custom role: change the LimitRange": (E, EG, "UPDATE", ("", "limitranges"), "", QUOTA, QUOTA, TENANT, QUOTA_REFUSED),
    "editor: a pod labelled as the sandbox": (E, EG, "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a pod labelled as the runtime": (E, EG, "CREATE", PODS, "", pod(RUNTIME), None, TENANT, LABEL_REFUSED),
    "editor: label a pod of their own": (E, EG, "UPDATE", PODS, "", pod(SANDBOX), pod({}), TENANT, LABEL_REFUSED),
    "editor: unlabel the sandbox pod": (E, EG, "UPDATE", PODS, "", pod({}), pod(SANDBOX), TENANT, LABEL_REFUSED),
    "editor: an ephemeral container in the sandbox": (E, EG, "UPDATE", PODS, "ephemeralcontainers", pod(SANDBOX), pod(SANDBOX), TENANT, LABEL_REFUSED),
    "editor: a ReplicaSet of sandboxes": (E, EG, "CREATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a Deployment of sandboxes": (E, EG, "CREATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: set image on the sandbox Deployment": (E, EG, "UPDATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", SANDBOX), workload("Deployment", "apps/v1", SANDBOX), TENANT, LABEL_REFUSED),
    "editor: a StatefulSet of sandboxes": (E, EG, "CREATE", ("apps", "statefulsets"), "", workload("StatefulSet", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a DaemonSet of sandboxes": (E, EG, "CREATE", ("apps", "daemonsets"), "", workload("DaemonSet", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a Job of sandboxes": (E, EG, "CREATE", ("batch", "jobs"), "", workload("Job", "batch/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a CronJob of sandboxes": (E, EG, "CREATE", ("batch", "cronjobs"), "", cron_job(SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a ReplicationController of sandboxes": (E, EG, "CREATE", ("", "replicationcontrollers"), "", workload("ReplicationController", "v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "editor: a Deployment labelled itself": (E, EG, "CREATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", {"app": "x"}, RUNTIME), None, TENANT, LABEL_REFUSED),
    "editor: exec": (E, EG, "CONNECT", PODS, "exec", EXEC, None, TENANT, SHELL_REFUSED),
    "editor: attach": (E, EG, "CONNECT", PODS, "attach", {"apiVersion": "v1", "kind": "PodAttachOptions"}, None, TENANT, SHELL_REFUSED),
    "editor: port-forward": (E, EG, "CONNECT", PODS, "portforward", {"apiVersion": "v1", "kind": "PodPortForwardOptions"}, None, TENANT, SHELL_REFUSED),
    "editor: pod proxy": (E, EG, "CONNECT", PODS, "proxy", {"apiVersion": "v1", "kind": "PodProxyOptions"}, None, TENANT, SHELL_REFUSED),
    "editor: service proxy": (E, EG, "CONNECT", ("", "services"), "proxy", {"apiVersion": "v1", "kind": "ServiceProxyOptions"}, None, TENANT, SHELL_REFUSED),
    "a namespace-local account named like a controller": (f"system:serviceaccount:{TENANT}:replicaset-controller", EG, "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    # What a namespace editor still may do.
    "editor: a ConfigMap": (E, EG, "CREATE", ("", "configmaps"), "", CONFIG_MAP, None, TENANT, None),
    "editor: a pod of their own": (E, EG, "CREATE", PODS, "", pod({"app": "debug"}), None, TENANT, None),
    "editor: a pod without labels": (E, EG, "CREATE", PODS, "", pod(None), None, TENANT, None),
    "editor: a Deployment of their own": (E, EG, "CREATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", {"app": "x"}), None, TENANT, None),
    "editor: a CronJob of their own": (E, EG, "CREATE", ("batch", "cronjobs"), "", cron_job({"app": "x"}), None, TENANT, None),
    "editor: delete the sandbox pod": (E, EG, "DELETE", PODS, "", None, pod(SANDBOX), TENANT, None),
    "editor: delete a Deployment of sandboxes not labelled as Tenantry's": (E, EG, "DELETE", ("apps", "deployments"), "", None, workload("Deployment", "apps/v1", SANDBOX), TENANT, None),
    "editor: a NetworkPolicy elsewhere": (E, EG, "CREATE", NETPOL, "", {**ALLOW_ALL, "metadata": meta("a", {}, "plain")}, None, "plain", None),
    "editor: a labelled pod elsewhere": (E, EG, "CREATE", PODS, "", pod(SANDBOX, "plain"), None, "plain", None),
    "editor: exec elsewhere": (E, EG, "CONNECT", PODS, "exec", EXEC, None, "plain", None),
    # The operator and break-glass administrators.
    "operator: a NetworkPolicy": (OPERATOR, EG, "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, None),
    "operator: delete its RoleBinding": (OPERATOR, EG, "DELETE", BINDINGS, "", None, OPERATOR_BINDING, TENANT, None),
    "operator: update the sandbox Deployment": (OPERATOR, EG, "UPDATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", SANDBOX), workload("Deployment", "apps/v1", SANDBOX), TENANT, None),
    "system:masters: a NetworkPolicy": ("admin", ["system:masters", *AUTHENTICATED], "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, None),
    "system:masters: exec": ("admin", ["system:masters", *AUTHENTICATED], "CONNECT", PODS, "exec", EXEC, None, TENANT, None),
    "a user without groups": ("someone", [], "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    # The built-in controllers, each at its own job only (service-account credentials).
    "ReplicaSet controller: a sandbox pod": (*controller("replicaset-controller"), "CREATE", PODS, "", pod(SANDBOX), None, TENANT, None),
    "ReplicaSet controller: adopt a sandbox pod": (*controller("replicaset-controller"), "UPDATE", PODS, "", pod(SANDBOX), pod(SANDBOX), TENANT, None),
    "ReplicaSet controller: a NetworkPolicy": (*controller("replicaset-controller"), "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    "ReplicaSet controller: a sandbox ReplicaSet": (*controller("replicaset-controller"), "CREATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "ReplicaSet controller: an ephemeral container": (*controller("replicaset-controller"), "UPDATE", PODS, "ephemeralcontainers", pod(SANDBOX), pod(SANDBOX), TENANT, LABEL_REFUSED),
    "Deployment controller: a sandbox ReplicaSet": (*controller("deployment-controller"), "CREATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), None, TENANT, None),
    "Deployment controller: scale a sandbox ReplicaSet": (*controller("deployment-controller"), "UPDATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), workload("ReplicaSet", "apps/v1", SANDBOX), TENANT, None),
    "Deployment controller: a sandbox pod": (*controller("deployment-controller"), "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    "Job controller: a sandbox pod": (*controller("job-controller"), "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    "garbage collector: delete a NetworkPolicy": (*controller("generic-garbage-collector"), "DELETE", NETPOL, "", None, ALLOW_ALL, TENANT, None),
    "garbage collector: a finalizer off a RoleBinding": (*controller("generic-garbage-collector"), "UPDATE", BINDINGS, "", OPERATOR_BINDING, OPERATOR_BINDING, TENANT, None),
    "garbage collector: orphan a sandbox pod": (*controller("generic-garbage-collector"), "UPDATE", PODS, "", pod(SANDBOX), pod(SANDBOX), TENANT, None),
    "garbage collector: a NetworkPolicy": (*controller("generic-garbage-collector"), "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    "namespace controller: delete a RoleBinding": (*controller("namespace-controller"), "DELETE", BINDINGS, "", None, OPERATOR_BINDING, TENANT, None),
    "namespace controller: delete the quota": (*controller("namespace-controller"), "DELETE", ("", "resourcequotas"), "", None, QUOTA, TENANT, None),
    "storage version migrator: rewrite a NetworkPolicy": (*controller("storage-version-migrator-controller"), "UPDATE", NETPOL, "", ALLOW_ALL, ALLOW_ALL, TENANT, None),
    "storage version migrator: rewrite a sandbox pod": (*controller("storage-version-migrator-controller"), "UPDATE", PODS, "", pod(SANDBOX), pod(SANDBOX), TENANT, None),
    "volume binder: bind the sessions claim": (*controller("persistent-volume-binder"), "UPDATE", PVCS, "", OWN_PVC, OWN_PVC, TENANT, None),
    "PVC protection: the sessions claim's finalizer off": (*controller("pvc-protection-controller"), "UPDATE", PVCS, "", OWN_PVC, OWN_PVC, TENANT, None),
    "scheduler: note the sessions claim's node": ("system:kube-scheduler", AUTHENTICATED, "UPDATE", PVCS, "", OWN_PVC, OWN_PVC, TENANT, None),
    "volume binder: create a claim labelled as Tenantry's": (*controller("persistent-volume-binder"), "CREATE", PVCS, "", OWN_PVC, None, TENANT, owned_refused("PersistentVolumeClaim data")),
    "volume binder: a NetworkPolicy": (*controller("persistent-volume-binder"), "UPDATE", NETPOL, "", ALLOW_ALL, ALLOW_ALL, TENANT, NETWORK_POLICY_REFUSED),
    "scheduler: a sandbox pod": ("system:kube-scheduler", AUTHENTICATED, "UPDATE", PODS, "", pod(SANDBOX), pod(SANDBOX), TENANT, LABEL_REFUSED),
    "storage version migrator: a sandbox pod": (*controller("storage-version-migrator-controller"), "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    "namespace controller: change a NetworkPolicy": (*controller("namespace-controller"), "UPDATE", NETPOL, "", ALLOW_ALL, ALLOW_ALL, TENANT, NETWORK_POLICY_REFUSED),
    # The same controllers without --use-service-account-credentials.
    "kube-controller-manager: a sandbox pod": (KCM, AUTHENTICATED, "CREATE", PODS, "", pod(SANDBOX), None, TENANT, None),
    "kube-controller-manager: a sandbox ReplicaSet": (KCM, AUTHENTICATED, "CREATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), None, TENANT, None),
    "kube-controller-manager: delete a NetworkPolicy": (KCM, AUTHENTICATED, "DELETE", NETPOL, "", None, ALLOW_ALL, TENANT, None),
    "kube-controller-manager: a NetworkPolicy": (KCM, AUTHENTICATED, "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    "kube-controller-manager: a sandbox Deployment": (KCM, AUTHENTICATED, "CREATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "kube-controller-manager: exec": (KCM, AUTHENTICATED, "CONNECT", PODS, "exec", EXEC, None, TENANT, SHELL_REFUSED),
    # The operator's own children (labelled app.kubernetes.io/managed-by=tenantry): its drift
    # detection trusts field-manager names anyone can choose (`kubectl patch
    # --field-manager=tenantry`), so only admission keeps others out.
    "editor: repoint runtime-config's model baseUrl": (E, EG, "UPDATE", CONFIGMAPS, "", REPOINTED_CONFIG, RUNTIME_CONFIG, TENANT, owned_refused("ConfigMap runtime-config")),
    "editor: unlabel runtime-config": (E, EG, "UPDATE", CONFIGMAPS, "", relabelled(REPOINTED_CONFIG, {}), RUNTIME_CONFIG, TENANT, owned_refused("ConfigMap runtime-config")),
    "editor: delete runtime-config": (E, EG, "DELETE", CONFIGMAPS, "", None, RUNTIME_CONFIG, TENANT, owned_refused("ConfigMap runtime-config")),
    "editor: replace the sandbox token": (E, EG, "UPDATE", SECRETS, "", {**SANDBOX_TOKEN, "data": {"token": "a25vd24="}}, SANDBOX_TOKEN, TENANT, owned_refused("Secret sandbox-token")),
    "editor: change a copied Secret": (E, EG, "UPDATE", SECRETS, "", {**COPIED_SECRET, "data": {"api-key": "b3RoZXI="}}, COPIED_SECRET, TENANT, owned_refused("Secret model-credentials")),
    "editor: delete a copied Secret": (E, EG, "DELETE", SECRETS, "", None, COPIED_SECRET, TENANT, owned_refused("Secret model-credentials")),
    "editor: repoint the runtime Service": (E, EG, "UPDATE", SERVICES, "", {**RUNTIME_SERVICE, "spec": {"selector": {"app": "debug"}, "ports": [{"port": 8080}]}}, RUNTIME_SERVICE, TENANT, owned_refused("Service runtime")),
    "editor: delete the runtime Service": (E, EG, "DELETE", SERVICES, "", None, RUNTIME_SERVICE, TENANT, owned_refused("Service runtime")),
    "editor: mount tokens of the runtime ServiceAccount": (E, EG, "UPDATE", ACCOUNTS, "", {**RUNTIME_ACCOUNT, "automountServiceAccountToken": True}, RUNTIME_ACCOUNT, TENANT, owned_refused("ServiceAccount runtime")),
    "editor: delete the sandbox Deployment": (E, EG, "DELETE", ("apps", "deployments"), "", None, SANDBOX_DEPLOYMENT, TENANT, owned_refused("Deployment sandbox")),
    "editor: plant a ConfigMap labelled as Tenantry's": (E, EG, "CREATE", CONFIGMAPS, "", relabelled(CONFIG_MAP, TENANTRYS), None, TENANT, owned_refused("ConfigMap notes")),
    "editor: label a ConfigMap of their own as Tenantry's": (E, EG, "UPDATE", CONFIGMAPS, "", relabelled(CONFIG_MAP, TENANTRYS), CONFIG_MAP, TENANT, owned_refused("ConfigMap notes")),
    "editor: a PersistentVolumeClaim labelled as Tenantry's": (E, EG, "CREATE", PVCS, "", OWN_PVC, None, TENANT, owned_refused("PersistentVolumeClaim data")),
    "editor: a pod labelled as Tenantry's": (E, EG, "CREATE", PODS, "", pod(TENANTRYS), None, TENANT, owned_refused("Pod p")),
    "editor: an EndpointSlice for the runtime Service": (E, EG, "CREATE", SLICES, "", RUNTIME_SLICE, None, TENANT, owned_refused("EndpointSlice runtime-abcde")),
    # Where the policy refuses a kind outright, its own message comes first.
    "editor: the sandbox NetworkPolicy, labelled as Tenantry's": (E, EG, "UPDATE", NETPOL, "", TENANT_POLICY_OBJECT, TENANT_POLICY_OBJECT, TENANT, NETWORK_POLICY_REFUSED),
    "admin: delete the operator's RoleBinding, labelled as Tenantry's": (E, EG, "DELETE", BINDINGS, "", None, relabelled(OPERATOR_BINDING, TENANTRYS), TENANT, RBAC_REFUSED),
    "editor: set image on Tenantry's sandbox Deployment": (E, EG, "UPDATE", ("apps", "deployments"), "", SANDBOX_DEPLOYMENT, SANDBOX_DEPLOYMENT, TENANT, LABEL_REFUSED),
    # What an editor still may do with objects that are not Tenantry's.
    "editor: change a ConfigMap of their own": (E, EG, "UPDATE", CONFIGMAPS, "", {**CONFIG_MAP, "data": {"a": "b"}}, CONFIG_MAP, TENANT, None),
    "editor: delete a ConfigMap of their own": (E, EG, "DELETE", CONFIGMAPS, "", None, CONFIG_MAP, TENANT, None),
    "editor: a ConfigMap labelled as Tenantry's elsewhere": (E, EG, "CREATE", CONFIGMAPS, "", {**CONFIG_MAP, "metadata": meta("notes", TENANTRYS, "plain")}, None, "plain", None),
    "editor: plant a ConfigMap labelled as Tenantry's, by generateName": (E, EG, "CREATE", CONFIGMAPS, "", {**CONFIG_MAP, "metadata": {"generateName": "notes-", "namespace": TENANT, "labels": TENANTRYS}}, None, TENANT, owned_refused("ConfigMap")),
    "a tenant Namespace itself is not this policy's": ("someone", AUTHENTICATED, "UPDATE", ("", "namespaces"), "", NAMESPACES[0], NAMESPACES[0], TENANT, None),
    "kubelet: an Event": ("system:node:node-1", ["system:nodes", *AUTHENTICATED], "CREATE", ("", "events"), "", {"apiVersion": "v1", "kind": "Event", "metadata": meta("runtime.1"), "involvedObject": {"kind": "Pod", "name": "runtime-x"}}, None, TENANT, None),
    "a cluster-scoped object labelled as Tenantry's is not this policy's": ("someone", AUTHENTICATED, "CREATE", ("rbac.authorization.k8s.io", "clusterroles"), "", CLUSTER_ROLE, None, "", None),
    "operator: repoint runtime-config": (OPERATOR, EG, "UPDATE", CONFIGMAPS, "", REPOINTED_CONFIG, RUNTIME_CONFIG, TENANT, None),
    "operator: delete a copied Secret": (OPERATOR, EG, "DELETE", SECRETS, "", None, COPIED_SECRET, TENANT, None),
    "system:masters: change runtime-config": ("admin", ["system:masters", *AUTHENTICATED], "UPDATE", CONFIGMAPS, "", REPOINTED_CONFIG, RUNTIME_CONFIG, TENANT, None),
    # The built-in controllers that write Tenantry's children, each at its own job.
    "garbage collector: delete runtime-config": (*controller("generic-garbage-collector"), "DELETE", CONFIGMAPS, "", None, RUNTIME_CONFIG, TENANT, None),
    "garbage collector: orphan the runtime Service": (*controller("generic-garbage-collector"), "UPDATE", SERVICES, "", RUNTIME_SERVICE, RUNTIME_SERVICE, TENANT, None),
    "namespace controller: delete the sandbox token": (*controller("namespace-controller"), "DELETE", SECRETS, "", None, SANDBOX_TOKEN, TENANT, None),
    "namespace controller: change runtime-config": (*controller("namespace-controller"), "UPDATE", CONFIGMAPS, "", REPOINTED_CONFIG, RUNTIME_CONFIG, TENANT, owned_refused("ConfigMap runtime-config")),
    "storage version migrator: rewrite the sandbox token": (*controller("storage-version-migrator-controller"), "UPDATE", SECRETS, "", SANDBOX_TOKEN, SANDBOX_TOKEN, TENANT, None),
    "Deployment controller: the sandbox Deployment's status": (*controller("deployment-controller"), "UPDATE", ("apps", "deployments"), "status", SANDBOX_DEPLOYMENT, SANDBOX_DEPLOYMENT, TENANT, None),
    "ResourceQuota controller: the quota's status": (*controller("resourcequota-controller"), "UPDATE", ("", "resourcequotas"), "status", child("ResourceQuota", "v1", "tenant-quota"), child("ResourceQuota", "v1", "tenant-quota"), TENANT, None),
    "Deployment controller: delete an old sandbox ReplicaSet": (*controller("deployment-controller"), "DELETE", RS, "", None, workload("ReplicaSet", "apps/v1", SANDBOX), TENANT, None),
    "ReplicaSet controller: delete a sandbox pod": (*controller("replicaset-controller"), "DELETE", PODS, "", None, pod(SANDBOX), TENANT, None),
    "kubelet: delete a sandbox pod": ("system:node:node-1", ["system:nodes", *AUTHENTICATED], "DELETE", PODS, "", None, pod(SANDBOX), TENANT, None),
    "endpoints controller: the runtime Service's Endpoints": (*controller("endpoint-controller"), "CREATE", ENDPOINTS, "", RUNTIME_ENDPOINTS, None, TENANT, None),
    "endpoints controller: update them": (*controller("endpoint-controller"), "UPDATE", ENDPOINTS, "", RUNTIME_ENDPOINTS, RUNTIME_ENDPOINTS, TENANT, None),
    "endpoints controller: delete them": (*controller("endpoint-controller"), "DELETE", ENDPOINTS, "", None, RUNTIME_ENDPOINTS, TENANT, None),
    "EndpointSlice controller: the runtime Service's slice": (*controller("endpointslice-controller"), "CREATE", SLICES, "", RUNTIME_SLICE, None, TENANT, None),
    "EndpointSlice controller: update it": (*controller("endpointslice-controller"), "UPDATE", SLICES, "", RUNTIME_SLICE, RUNTIME_SLICE, TENANT, None),
    "EndpointSlice controller: delete it": (*controller("endpointslice-controller"), "DELETE", SLICES, "", None, RUNTIME_SLICE, TENANT, None),
    "kube-controller-manager: the runtime Service's slice": (KCM, AUTHENTICATED, "CREATE", SLICES, "", RUNTIME_SLICE, None, TENANT, None),
    "endpoints controller: runtime-config": (*controller("endpoint-controller"), "UPDATE", CONFIGMAPS, "", REPOINTED_CONFIG, RUNTIME_CONFIG, TENANT, owned_refused("ConfigMap runtime-config")),
    "EndpointSlice controller: the runtime Service's Endpoints": (*controller("endpointslice-controller"), "UPDATE", ENDPOINTS, "", RUNTIME_ENDPOINTS, RUNTIME_ENDPOINTS, TENANT, owned_refused("Endpoints runtime")),
    # Controllers that write objects without Tenantry's label are unaffected.
    "root CA publisher: kube-root-ca.crt": (*controller("root-ca-cert-publisher"), "CREATE", CONFIGMAPS, "", ROOT_CA, None, TENANT, None),
    "root CA publisher: update kube-root-ca.crt": (*controller("root-ca-cert-publisher"), "UPDATE", CONFIGMAPS, "", ROOT_CA, ROOT_CA, TENANT, None),
    "tokens controller: a service-account token": (KCM, AUTHENTICATED, "UPDATE", SECRETS, "", {**ACCOUNT_TOKEN, "data": {"token": "dA=="}}, ACCOUNT_TOKEN, TENANT, None),
    "service account controller: the default ServiceAccount": (*controller("service-account-controller"), "CREATE", ACCOUNTS, "", DEFAULT_ACCOUNT, None, TENANT, None),
    # Scale requests (`kubectl scale`, autoscalers): a Scale carries no labels, so all of them.
    "editor: scale up an old runtime ReplicaSet": (E, EG, "UPDATE", RS, "scale", scale(OLD_RUNTIME_RS), scale(OLD_RUNTIME_RS, 0), TENANT, scale_refused(f"replicasets/{OLD_RUNTIME_RS}")),
    "editor: scale the runtime Deployment": (E, EG, "UPDATE", ("apps", "deployments"), "scale", scale("runtime", 3), scale("runtime"), TENANT, scale_refused("deployments/runtime")),
    "editor: scale the sandbox to zero": (E, EG, "UPDATE", ("apps", "deployments"), "scale", scale("sandbox", 0), scale("sandbox"), TENANT, scale_refused("deployments/sandbox")),
    "editor: scale a StatefulSet": (E, EG, "UPDATE", ("apps", "statefulsets"), "scale", scale("sandbox-db", 2), scale("sandbox-db"), TENANT, scale_refused("statefulsets/sandbox-db")),
    "editor: scale a ReplicationController": (E, EG, "UPDATE", ("", "replicationcontrollers"), "scale", scale("runtime-1", 2), scale("runtime-1"), TENANT, scale_refused("replicationcontrollers/runtime-1")),
    "editor: scale a Deployment of their own": (E, EG, "UPDATE", ("apps", "deployments"), "scale", scale("debug", 2), scale("debug"), TENANT, scale_refused("deployments/debug")),
    "autoscaler: scale up an old runtime ReplicaSet": (*controller("horizontal-pod-autoscaler"), "UPDATE", RS, "scale", scale(OLD_RUNTIME_RS), scale(OLD_RUNTIME_RS, 0), TENANT, scale_refused(f"replicasets/{OLD_RUNTIME_RS}")),
    "kube-controller-manager (an editor's autoscaler): scale an old runtime ReplicaSet": (KCM, AUTHENTICATED, "UPDATE", RS, "scale", scale(OLD_RUNTIME_RS), scale(OLD_RUNTIME_RS, 0), TENANT, scale_refused(f"replicasets/{OLD_RUNTIME_RS}")),
    "garbage collector: scale the runtime Deployment": (*controller("generic-garbage-collector"), "UPDATE", ("apps", "deployments"), "scale", scale("runtime", 3), scale("runtime"), TENANT, scale_refused("deployments/runtime")),
    "Deployment controller: scale an old runtime ReplicaSet": (*controller("deployment-controller"), "UPDATE", RS, "scale", scale(OLD_RUNTIME_RS), scale(OLD_RUNTIME_RS, 0), TENANT, scale_refused(f"replicasets/{OLD_RUNTIME_RS}")),
    "editor: set spec.replicas of a Deployment of their own": (E, EG, "UPDATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", {"app": "x"}), workload("Deployment", "apps/v1", {"app": "x"}), TENANT, None),
    "editor: scale elsewhere": (E, EG, "UPDATE", ("apps", "deployments"), "scale", {**scale("runtime", 3), "metadata": {"name": "runtime", "namespace": "plain"}}, None, "plain", None),
    "operator: scale the runtime Deployment": (OPERATOR, EG, "UPDATE", ("apps", "deployments"), "scale", scale("runtime", 1), scale("runtime", 0), TENANT, None),
    "system:masters: scale the runtime Deployment": ("admin", ["system:masters", *AUTHENTICATED], "UPDATE", ("apps", "deployments"), "scale", scale("runtime", 1), scale("runtime", 0), TENANT, None),
    # The operator's own policy (tenantry-writes) is still there.
    "operator: a NetworkPolicy in kube-system": (OPERATOR, EG, "CREATE", NETPOL, "", {**ALLOW_ALL, "metadata": meta("a", {}, "kube-system")}, None, "kube-system", "the Tenantry operator may write only in namespaces it manages, and namespace kube-system"),
}  # fmt: skip


def object_name(obj: dict[str, Any]) -> str:
    """The request's name, as the API server has it: none yet for a create by generateName."""
    metadata = obj.get("metadata") or {}
    return str(metadata.get("name", "" if "generateName" in metadata else "x"))


def request(name: str, case: Case) -> dict[str, Any]:
    user, groups, operation, (group, resource), subresource, new, old, namespace, _ = case
    return {
        "name": name,
        "user": user,
        "groups": groups,
        "operation": operation,
        "group": group,
        "resource": resource,
        "subResource": subresource,
        "namespace": namespace,
        "objectName": object_name(new or old or {}),
        "object": new,
        "oldObject": old,
    }


def decide(cases: dict[str, Case], values: dict[str, str] | None = None) -> dict[str, Any]:
    """Each case's decision by the chart (rendered with `values`) as the API server takes it."""
    payload = {
        "manifests": template_text(values).stdout,
        "namespaces": NAMESPACES,
        "requests": [request(name, case) for name, case in cases.items()],
    }
    output = run(tool("vapcheck"), input=json.dumps(payload)).stdout
    return {d["name"]: d for d in map(json.loads, output.splitlines())}


@pytest.fixture(scope="module")
def decisions() -> dict[str, Any]:
    return decide(CASES)


@pytest.mark.parametrize("name", CASES)
def test_the_admission_policies_decide(decisions: dict[str, Any], name: str) -> None:
    expected = CASES[name][-1]
    decision = decisions[name]
    if expected is None:
        assert decision["allowed"], decision["message"]
    else:
        assert not decision["allowed"], f"{name} was allowed"
        assert expected in decision["message"], decision["message"]
        policy = TENANT_POLICY if "tenant-acme" in expected else "'tenantry-writes'"
        assert policy in decision["message"], decision["message"]


def test_other_exempt_groups_and_users() -> None:
    cases = {
        "system:masters, no longer exempt": CASES["system:masters: a NetworkPolicy"],
        "a platform admin": ("alice", ["platform-admins", *AUTHENTICATED], *CASES["admin: a RoleBinding"][2:]),
        "a break-glass user": ("break-glass@example.com", AUTHENTICATED, *CASES["admin: a RoleBinding"][2:]),
        "an editor": CASES["admin: a RoleBinding"],
    }  # fmt: skip
    found = decide(
        cases,
        {
            "admissionPolicy.tenantNamespaces.exemptGroups[0]": "platform-admins",
            "admissionPolicy.tenantNamespaces.exemptUsers[0]": "break-glass@example.com",
        },
    )
    assert not found["system:masters, no longer exempt"]["allowed"]
    assert found["a platform admin"]["allowed"], found["a platform admin"]["message"]
    assert found["a break-glass user"]["allowed"], found["a break-glass user"]["message"]
    assert (
        "Ask a cluster administrator (a member of platform-admins)" in found["an editor"]["message"]
    )


def test_without_the_tenant_namespace_policy_editors_are_not_confined() -> None:
    cases = {name: CASES[name] for name in ("editor: an allow-all NetworkPolicy", "editor: exec")}
    found = decide(cases, {"admissionPolicy.tenantNamespaces.enabled": "false"})
    assert all(decision["allowed"] for decision in found.values()), found
