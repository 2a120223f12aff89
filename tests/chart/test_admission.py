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
from chartkit import run, template_text, tool

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

RS = ("apps", "replicasets")
PODS = ("", "pods")
NETPOL = ("networking.k8s.io", "networkpolicies")
BINDINGS = ("rbac.authorization.k8s.io", "rolebindings")

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
CASES: dict[str, Case] = {
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
    "editor: delete the sandbox Deployment": (E, EG, "DELETE", ("apps", "deployments"), "", None, workload("Deployment", "apps/v1", SANDBOX), TENANT, None),
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
    "storage version migrator: a sandbox pod": (*controller("storage-version-migrator-controller"), "CREATE", PODS, "", pod(SANDBOX), None, TENANT, LABEL_REFUSED),
    "namespace controller: change a NetworkPolicy": (*controller("namespace-controller"), "UPDATE", NETPOL, "", ALLOW_ALL, ALLOW_ALL, TENANT, NETWORK_POLICY_REFUSED),
    # The same controllers without --use-service-account-credentials.
    "kube-controller-manager: a sandbox pod": (KCM, AUTHENTICATED, "CREATE", PODS, "", pod(SANDBOX), None, TENANT, None),
    "kube-controller-manager: a sandbox ReplicaSet": (KCM, AUTHENTICATED, "CREATE", RS, "", workload("ReplicaSet", "apps/v1", SANDBOX), None, TENANT, None),
    "kube-controller-manager: delete a NetworkPolicy": (KCM, AUTHENTICATED, "DELETE", NETPOL, "", None, ALLOW_ALL, TENANT, None),
    "kube-controller-manager: a NetworkPolicy": (KCM, AUTHENTICATED, "CREATE", NETPOL, "", ALLOW_ALL, None, TENANT, NETWORK_POLICY_REFUSED),
    "kube-controller-manager: a sandbox Deployment": (KCM, AUTHENTICATED, "CREATE", ("apps", "deployments"), "", workload("Deployment", "apps/v1", SANDBOX), None, TENANT, LABEL_REFUSED),
    "kube-controller-manager: exec": (KCM, AUTHENTICATED, "CONNECT", PODS, "exec", EXEC, None, TENANT, SHELL_REFUSED),
    # The operator's own policy (tenantry-writes) is still there.
    "operator: a NetworkPolicy in kube-system": (OPERATOR, EG, "CREATE", NETPOL, "", {**ALLOW_ALL, "metadata": meta("a", {}, "kube-system")}, None, "kube-system", "the Tenantry operator may write only in namespaces it manages, and namespace kube-system"),
}  # fmt: skip


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
        "objectName": "x",
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
