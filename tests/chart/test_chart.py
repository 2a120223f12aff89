"""The Helm chart, offline: lint, kube-score, values schema, RBAC and the operator Deployment.

Rendering and checks use the real tools built from Go modules (helm, kube-score); what needs
the cluster (kubeconform against the cluster's own OpenAPI, installing, RBAC answers of the API
server) is in tests/integration/test_chart_install.py.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tenantry.config import OperatorConfig
from tenantry.controller import watched_kinds
from tenantry.kinds import CHILD_KINDS, templated_kinds

from tests.support.chartkit import (
    CHART,
    K8S_VERSION,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    find,
    helm,
    kinds,
    run,
    set_flags,
    template,
    template_text,
    tool,
)

README = (CHART / "README.md").read_text()

# kube-score checks the chart fails on purpose; README.md ("kube-score exceptions") says why.
KUBE_SCORE_EXCEPTIONS = frozenset({"container-image-pull-policy", "pod-probes-identical"})
# Off by default in kube-score, on here: both hold for the chart.
KUBE_SCORE_OPTIONAL = ("container-seccomp-profile", "container-ports-check")

TEMPLATED_SERVICE_MONITOR = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "resource": "servicemonitors",
}
# Every variant a user is likely to install; each must lint and (in the cluster tests) conform.
VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "single replica": {"replicaCount": "1", "leaderElection.enabled": "false"},
    "everything optional": {
        "metrics.serviceMonitor.enabled": "true",
        "metrics.serviceMonitor.labels.release": "prometheus",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name": "monitoring",
        "image.digest": "sha256:" + "a" * 64,
        "serviceAccount.annotations.example\\.com/role": "operator",
        "podAnnotations.example\\.com/owner": "platform",
        "priorityClassName": "tenantry-critical",
        "tolerations[0].key": "dedicated",
        "tolerations[0].operator": "Exists",
        "networkPolicy.apiServer.cidrs[0]": "10.96.0.1/32",
        "operator.clusterCIDRs[0]": "10.244.0.0/16",
        "tenantPolicy.allowedImages[0]": "registry.example.com/agents/",
        "tenantPolicy.allowedRuntimeClasses[0]": "gvisor",
        "tenantPolicy.namespacePattern": "agents-*",
        "admissionPolicy.tenantNamespaces.exemptGroups[0]": "platform-admins",
        **{f"templates.kinds[0].{k}": v for k, v in TEMPLATED_SERVICE_MONITOR.items()},
    },
}


def rules_by_resource(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def test_the_chart_crds_are_the_repository_crds() -> None:
    names = sorted(p.name for p in (REPO / "crds").iterdir())
    assert names == ["agenttenants.tenantry.dev.yaml", "agenttenanttemplates.tenantry.dev.yaml"]
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == names
    for name in names:
        chart_copy = (CHART / "crds" / name).read_bytes()
        original = (REPO / "crds" / name).read_bytes()
        assert chart_copy == original, "charts/tenantry/crds/ differs from crds/: run `make crd`"


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict_passes(variant: str) -> None:
    flags = [f for k, v in VARIANTS[variant].items() for f in ("--set", f"{k}={v}")]
    result = helm("lint", "--strict", "--kube-version", K8S_VERSION, str(CHART), *flags)
    assert "0 chart(s) failed" in result.stdout


def test_kube_score_finds_nothing_but_the_explained_exceptions() -> None:
    rendered = template_text().stdout
    optional = [flag for test in KUBE_SCORE_OPTIONAL for flag in ("--enable-optional-test", test)]
    # Without ignoring anything, exactly the explained exceptions fail: none is stale.
    scored = json.loads(
        run(
            tool("kube-score"),
            "score",
            *optional,
            "--output-format",
            "json",
            "-",
            input=rendered,
            check=False,
        ).stdout
    )
    failing = {
        check["check"]["id"]
        for obj in scored
        for check in obj["checks"]
        if not check["skipped"] and check["grade"] < 10
    }
    assert failing == KUBE_SCORE_EXCEPTIONS
    ignored = [flag for test in sorted(KUBE_SCORE_EXCEPTIONS) for flag in ("--ignore-test", test)]
    run(tool("kube-score"), "score", *optional, *ignored, "-", input=rendered)
    section = README.split("### kube-score exceptions", 1)[1].split("\n## ", 1)[0]
    for test in KUBE_SCORE_EXCEPTIONS:
        assert f"`{test}`" in section, f"README.md must explain the kube-score exception {test}"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"replicaCount": "0"}, "replicaCount"),
        ({"operator.namespacePrefix": "Not_A_Label"}, "namespacePrefix"),
        ({"operator.logLevel": "LOUD"}, "logLevel"),
        ({"health.port": "70000"}, "port"),
        ({"image.digest": "latest"}, "digest"),
        ({"replicaCount": "2", "leaderElection.enabled": "false"}, "leaderElection.enabled=true"),
        (
            {"metrics.serviceMonitor.enabled": "true", "metrics.service.enabled": "false"},
            "metrics.service.enabled=true",
        ),
        ({"serviceAccount.create": "false"}, "serviceAccount.name"),
        ({"operator.runtimeImagePullPolicy": "Sometimes"}, "runtimeImagePullPolicy"),
        ({"operator.clusterCIDRs[0]": "10.0.0.0"}, "clusterCIDRs"),
        ({"tenantPolicy.allowedImages[0]": "a\\,b"}, "allowedImages"),
        ({"tenantPolicy.tenantImagePullPolicy": "always"}, "tenantImagePullPolicy"),
        ({"tenantPolicy.allowedRuntimeClasses[0]": "Kata_Containers"}, "allowedRuntimeClasses"),
        ({"tenantPolicy.maxQuota.pods": "0"}, "pods"),
        ({"tenantPolicy.maxQuota.memory": "lots"}, "memory"),
        ({"tenantPolicy.namespacePattern": "Tenant-*"}, "namespacePattern"),
        ({"networkPolicy.apiServer.cidrs[0]": "kubernetes.default"}, "cidrs"),
        ({"admissionPolicy.tenantNamespaces.exemptGroups[0]": 'a"b'}, "exemptGroups"),
        ({"templates.kinds[0].apiVersion": "v1", "templates.kinds[0].kind": "Pod"}, "resource"),
        # Found by review: a slip granted the operator Secrets cluster-wide.
        (
            {
                "templates.kinds[0].apiVersion": "v1",
                "templates.kinds[0].kind": "Pod",
                "templates.kinds[0].resource": "secrets",
            },
            "templates.kinds: v1/Pod (resource secrets) may never be rendered by templates",
        ),
        (
            {
                "templates.kinds[0].apiVersion": "cilium.io/v2",
                "templates.kinds[0].kind": "CiliumNetworkPolicy",
                "templates.kinds[0].resource": "ciliumnetworkpolicies",
            },
            "may never be rendered by templates",
        ),
    ],
)
def test_mistaken_values_are_refused_naming_the_value(
    values: dict[str, str], expected: str
) -> None:
    result = template_text(values, check=False)
    assert result.returncode != 0, f"helm accepted {values}"
    assert expected in result.stderr, result.stderr


def test_unknown_values_are_refused() -> None:
    result = template_text({"replicas": "3"}, check=False)
    assert result.returncode != 0
    assert "replicas" in result.stderr and "additional" in result.stderr.lower(), result.stderr


def leaf_values(values: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths += leaf_values(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def test_the_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [path for path in leaf_values(values) if f"`{path}`" not in README]
    assert not missing, f"charts/tenantry/README.md does not document: {missing}"


def test_every_object_carries_the_recommended_labels() -> None:
    for doc in template(VARIANTS["everything optional"]):
        labels = doc["metadata"]["labels"]
        for key in (
            "helm.sh/chart",
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
        ):
            assert labels.get(key), f"{doc['kind']} {doc['metadata']['name']} lacks label {key}"
        # The operator watches its children by this label: nothing of the chart may carry its value.
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_the_cluster_role_grants_exact_verbs_on_exactly_the_operator_kinds() -> None:
    documents = template()
    role = find(documents, "ClusterRole", "tenantry")
    for rule in role["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        assert not rule.get("nonResourceURLs"), rule
    # The one named rule: the operator may bind the tenant-secrets ClusterRole, and no other.
    named = [rule for rule in role["rules"] if rule.get("resourceNames")]
    assert named == [
        {
            "apiGroups": ["rbac.authorization.k8s.io"],
            "resources": ["clusterroles"],
            "resourceNames": ["tenantry-tenant-secrets"],
            "verbs": ["bind"],
        }
    ]
    scoped = OperatorConfig(service_account="tenantry-system/tenantry")
    children = {(kind.watched[0], kind.watched[2]) for kind in watched_kinds(scoped)}
    expected = {
        ("tenantry.dev", "agenttenants"): {"list", "watch"},
        ("tenantry.dev", "agenttenants/status"): {"patch"},
        ("tenantry.dev", "agenttenanttemplates"): {"list", "watch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        # A child someone else wrote to is read and replaced whole: get and update too.
        **{
            child: {"get", "list", "watch", "create", "update", "patch", "delete"}
            for child in children
        },
        # Read before any write (never adopt one); never deleted: garbage collection does that.
        ("", "namespaces"): {"get", "list", "watch", "create", "patch"},
        ("rbac.authorization.k8s.io", "clusterroles"): {"bind"},
        # The runtime pods' termination messages (handlers.RUNTIME_PODS_SELECTOR): read only,
        # never one by one, and no other verb.
        ("", "pods"): {"list", "watch"},
    }
    assert rules_by_resource(role["rules"]) == expected
    assert ("", "secrets") not in rules_by_resource(role["rules"])  # no cluster-wide Secret right
    binding = find(documents, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tenantry", "namespace": "tenantry-system"}
    ]
    # What each tenant namespace's RoleBinding grants, there only.
    secrets = find(documents, "ClusterRole", "tenantry-tenant-secrets")
    assert rules_by_resource(secrets["rules"]) == {
        ("", "secrets"): {"get", "list", "create", "update", "patch", "delete"}
    }
    args = operator_container(documents)["args"]
    assert "--service-account=tenantry-system/tenantry" in args
    assert "--secrets-role=tenantry-tenant-secrets" in args


def test_namespaced_roles_grant_the_lease_and_events_only() -> None:
    documents = template()
    lease = find(documents, "Role", "tenantry-leader-election")
    assert lease["metadata"]["namespace"] == "tenantry-system"
    assert lease["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["tenantry-leader"],
            "verbs": ["get", "update"],
        },
    ]
    events = find(documents, "Role", "tenantry-events")
    assert events["metadata"]["namespace"] == "default"
    assert events["rules"] == [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    source = find(documents, "Role", "tenantry-secret-source")
    assert source["metadata"]["namespace"] == "tenantry-secrets"
    assert source["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}
    ]
    single = template(VARIANTS["single replica"])
    roles = [r["metadata"]["name"] for r in single if r["kind"] == "Role"]
    assert roles == ["tenantry-events", "tenantry-secret-source"]


def test_the_admission_policy_covers_every_kind_the_operator_writes() -> None:
    documents = template()
    policy = find(documents, "ValidatingAdmissionPolicy", "tenantry-writes")
    covered = {
        (group, resource)
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
    }
    assert covered == {(kind.watched[0], kind.watched[2]) for kind in CHILD_KINDS}
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert (
        condition == 'request.userInfo.username == "system:serviceaccount:tenantry-system:tenantry"'
    )
    binding = find(documents, "ValidatingAdmissionPolicyBinding", "tenantry-writes")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    assert "ValidatingAdmissionPolicy" not in kinds(template({"admissionPolicy.enabled": "false"}))


def operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return dict(container)


def test_the_operator_pod_passes_pod_security_restricted() -> None:
    deployment = find(template(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert all(set(volume) <= {"name", "emptyDir"} for volume in pod["volumes"])
    security = operator_container([deployment])["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security.get("privileged") is False


def test_the_operator_command_line() -> None:
    container = operator_container(template())
    assert container["command"] == ["tenantry", "run"]
    # One list item per flag, so a flag can be recognised (and, for now, dropped) on its own.
    assert all(re.fullmatch(r"--[a-z-]+(=.+)?", arg) for arg in container["args"]), container[
        "args"
    ]
    args = dict(arg.removeprefix("--").partition("=")[::2] for arg in container["args"])
    assert args["liveness"] == "http://0.0.0.0:8081/healthz"
    assert args["metrics-address"] == "0.0.0.0:9090"
    assert args["leader-election"] == ""
    assert args["secret-source-namespace"] == "tenantry-secrets"
    assert container["env"][0] == {
        "name": "POD_NAMESPACE",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    single = operator_container(template(VARIANTS["single replica"]))
    assert "--leader-election" not in single["args"]
    custom = operator_container(template({"operator.secretSourceNamespace": "shared-keys"}))
    assert "--secret-source-namespace=shared-keys" in custom["args"]


def test_both_probes_ask_the_health_endpoint_that_standbys_serve_too() -> None:
    # Kopf's liveness endpoint starts only on the leader; /healthz on the metrics port answers on
    # every replica, so a standby is never restarted for waiting its turn.
    container = operator_container(template({"health.port": "18081", "metrics.port": "19090"}))
    assert "--liveness=http://0.0.0.0:18081/healthz" in container["args"]
    assert "--metrics-address=0.0.0.0:19090" in container["args"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        action = container[probe]["httpGet"]
        assert action["path"] == "/healthz"
        assert ports[action["port"]] == 19090


def test_the_image_entrypoint_is_the_chart_command() -> None:
    dockerfile = (REPO / "operator_image" / "Dockerfile").read_text()
    entrypoint = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE)
    assert [json.loads(e) for e in entrypoint] == [operator_container(template())["command"]]
    user = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    pod = find(template(), "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert user == [(str(pod["runAsUser"]), str(pod["runAsGroup"]))]


def test_the_metrics_service_and_service_monitor_reach_the_metrics_port() -> None:
    documents = template({"metrics.serviceMonitor.enabled": "true", "metrics.port": "19090"})
    service = find(documents, "Service")
    monitor = find(documents, "ServiceMonitor")
    pod = find(documents, "Deployment")["spec"]["template"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == 19090 and port["targetPort"] == "metrics"
    assert {"name": "metrics", "containerPort": 19090, "protocol": "TCP"} in operator_container(
        documents
    )["ports"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s"}
    ]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["tenantry-system"]}
    assert "ServiceMonitor" not in kinds(template())


def test_replicas_get_a_disruption_budget_and_spread() -> None:
    documents = template()
    assert find(documents, "Deployment")["spec"]["replicas"] == 2
    budget = find(documents, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    affinity = find(documents, "Deployment")["spec"]["template"]["spec"]["affinity"]
    assert affinity["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "PodDisruptionBudget" not in kinds(template(VARIANTS["single replica"]))


PRIVATE_RANGES = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]


def test_the_network_policy_admits_metrics_and_reaches_only_the_api_server() -> None:
    policy = find(template(), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    (egress,) = policy["spec"]["egress"]
    assert {p["port"] for p in egress["ports"]} == {443, 6443}
    # Unset, the API server is looked for in the private ranges: never the internet, nor the
    # link-local metadata service (README.md, "The operator's network policy").
    assert [peer["ipBlock"]["cidr"] for peer in egress["to"]] == PRIVATE_RANGES
    metadata = {4: ipaddress.ip_network("169.254.0.0/16"), 6: ipaddress.ip_network("fe80::/10")}
    for peer in egress["to"]:
        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
        assert not network.is_global, network
        assert not network.overlaps(metadata[network.version]), network
    narrowed = find(
        template(
            {
                "networkPolicy.apiServer.cidrs[0]": "10.0.0.1/32",
                "networkPolicy.apiServer.ports[0]": "443",
            }
        ),
        "NetworkPolicy",
    )
    assert narrowed["spec"]["egress"] == [
        {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
    ]


def test_notes_tell_how_to_upgrade_the_crd() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl apply --server-side --force-conflicts -f" in notes
    assert "kubectl apply --server-side --force-conflicts -f charts/tenantry/crds/" in README


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    pyproject = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, re.MULTILINE)
    assert version and chart["appVersion"] == version.group(1), (
        "appVersion must be the package version"
    )
    assert Path(CHART / "values.schema.json").exists()


# The tenant-namespace policy (README.md, "Who may write in a tenant namespace").
TENANT_POLICY = "tenantry-tenant-namespaces"
CONTROLLERS = {
    "replicaset-controller": "system:serviceaccount:kube-system:replicaset-controller",
    "deployment-controller": "system:serviceaccount:kube-system:deployment-controller",
    "garbage collector": "system:serviceaccount:kube-system:generic-garbage-collector",
    "namespace-controller": "system:serviceaccount:kube-system:namespace-controller",
    "storage version migrator": "system:serviceaccount:kube-system:storage-version-migrator-controller",
    "endpoint-controller": "system:serviceaccount:kube-system:endpoint-controller",
    "endpointslice-controller": "system:serviceaccount:kube-system:endpointslice-controller",
    # The same controllers without --use-service-account-credentials.
    "kube-controller-manager": "system:kube-controller-manager",
}


def match_condition(policy: dict[str, Any], name: str) -> str:
    (expression,) = [
        c["expression"] for c in policy["spec"]["matchConditions"] if c["name"] == name
    ]
    return str(expression)


def test_the_tenant_namespace_policy_is_on_by_default() -> None:
    documents = template()
    policy = find(documents, "ValidatingAdmissionPolicy", TENANT_POLICY)
    binding = find(documents, "ValidatingAdmissionPolicyBinding", TENANT_POLICY)
    assert binding["spec"] == {"policyName": TENANT_POLICY, "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    # Only in tenant namespaces: the label the operator puts on every namespace it creates.
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "tenantry"}
    }
    for values in (
        {"admissionPolicy.tenantNamespaces.enabled": "false"},
        {"admissionPolicy.enabled": "false"},
    ):
        names = [d["metadata"]["name"] for d in template(values) if "AdmissionPolicy" in d["kind"]]
        assert TENANT_POLICY not in names, values


def test_the_tenant_namespace_policy_covers_policies_rbac_quota_workloads_and_shells() -> None:
    policy = find(template(), "ValidatingAdmissionPolicy", TENANT_POLICY)
    covered: dict[tuple[str, str], set[str]] = {}
    for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
        assert rule["apiVersions"] == ["*"], rule
        # Every namespaced resource (no subresource: "*" matches none), for Tenantry's label; not
        # cluster-scoped ones, which a namespace selector never skips.
        assert rule.get("scope") == ("Namespaced" if rule["resources"] == ["*"] else None), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                covered.setdefault((group, resource), set()).update(rule["operations"])
    every_write = {"CREATE", "UPDATE", "DELETE"}
    labelled = {"CREATE", "UPDATE"}  # deleting a pod or workload makes nobody the runtime
    assert covered == {
        ("networking.k8s.io", "networkpolicies"): every_write,
        ("rbac.authorization.k8s.io", "roles"): every_write,
        ("rbac.authorization.k8s.io", "rolebindings"): every_write,
        ("", "resourcequotas"): every_write,
        ("", "limitranges"): every_write,
        ("", "pods"): labelled,
        ("", "pods/ephemeralcontainers"): labelled,
        ("", "replicationcontrollers"): labelled,
        **{
            ("apps", kind): labelled
            for kind in ("deployments", "replicasets", "statefulsets", "daemonsets")
        },
        ("batch", "jobs"): labelled,
        ("batch", "cronjobs"): labelled,
        **{
            ("", sub): {"CONNECT"}
            for sub in (
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "pods/proxy",
                "services/proxy",
            )
        },
        # A Scale carries no labels: every scale request.
        **{("apps", f"{kind}/scale"): {"UPDATE"} for kind in ("deployments", "replicasets", "statefulsets")},
        ("", "replicationcontrollers/scale"): {"UPDATE"},
        # A TokenRequest carries no labels: every token but a kubelet's.
        ("", "serviceaccounts/token"): {"CREATE"},
        # Anything labelled as Tenantry's own, before or after.
        ("*", "*"): every_write,
    }  # fmt: skip
    (tenantrys,) = [
        v["expression"] for v in policy["spec"]["variables"] if v["name"] == "tenantrys"
    ]
    assert "[object, oldObject]" in tenantrys
    assert 'o.?metadata.?labels[?"app.kubernetes.io/managed-by"].orValue("") == "tenantry"' in (
        " ".join(tenantrys.split())
    )
    # Workloads are refused by the label in their own labels or in their pod template's (a
    # CronJob's is one level deeper), before or after the change.
    (labelled_variable,) = [
        v["expression"] for v in policy["spec"]["variables"] if v["name"] == "labelled"
    ]
    assert "[object, oldObject]" in labelled_variable
    for path in (
        "o.?metadata.?labels",
        "o.?spec.?template.?metadata.?labels",
        "o.?spec.?jobTemplate.?spec.?template.?metadata.?labels",
    ):
        assert f'"tenantry.dev/component" in {path}' in labelled_variable, path


def test_the_tenant_namespace_policy_spares_tenantry_controllers_and_break_glass_groups() -> None:
    policy = find(template(), "ValidatingAdmissionPolicy", TENANT_POLICY)
    assert (
        match_condition(policy, "not-the-operator")
        == 'request.userInfo.username != "system:serviceaccount:tenantry-system:tenantry"'
    )
    exempt = match_condition(policy, "not-exempt")
    assert 'g in ["system:masters"]' in exempt
    assert "request.userInfo.username in [])" in exempt
    controllers = match_condition(policy, "not-a-controller-at-its-job")
    for name, user in CONTROLLERS.items():
        assert f'"{user}"' in controllers, name
    # Each controller only at its own job (compared without blanks), and none on a subresource
    # (a scale, ephemeral containers): the whole exemption is under that condition.
    compact = "".join(controllers.split())
    guard = '!(request.?subResource.orValue("")==""&&('
    assert compact.startswith(guard) and compact.endswith("))"), compact
    rs, deploy, gc, ns, migrator, endpoints, slices, kcm = (
        f'"{user}"' for user in CONTROLLERS.values()
    )
    for job in (
        f'request.resource.resource=="pods"'
        f'&&request.operation in["CREATE","UPDATE"]&&request.userInfo.username in[{rs},{kcm}]',
        f'request.resource.resource=="replicasets"&&request.operation in["CREATE","UPDATE"]'
        f"&&request.userInfo.username in[{deploy},{kcm}]",
        f'request.operation in["UPDATE","DELETE"]&&request.userInfo.username in[{gc},{kcm}]',
        f'request.operation=="DELETE"&&request.userInfo.username in[{ns},{kcm}]',
        f'request.operation=="UPDATE"&&request.userInfo.username in[{migrator},{kcm}]',
        f'request.resource.group==""&&request.resource.resource=="endpoints"'
        f"&&request.userInfo.username in[{endpoints},{kcm}]",
        f'request.resource.group=="discovery.k8s.io"&&request.resource.resource=="endpointslices"'
        f"&&request.userInfo.username in[{slices},{kcm}]",
    ):
        assert "".join(job.split()) in compact, job
    # Other exemptions, and another operator identity.
    custom = find(
        template(
            {
                "admissionPolicy.tenantNamespaces.exemptGroups[0]": "platform-admins",
                "admissionPolicy.tenantNamespaces.exemptUsers[0]": "break-glass@example.com",
                "serviceAccount.name": "agents-operator",
            }
        ),
        "ValidatingAdmissionPolicy",
        TENANT_POLICY,
    )
    assert 'g in ["platform-admins"]' in match_condition(custom, "not-exempt")
    assert 'username in ["break-glass@example.com"]' in match_condition(custom, "not-exempt")
    assert "agents-operator" in match_condition(custom, "not-the-operator")
    assert any(
        "a member of platform-admins" in v["messageExpression"]
        for v in custom["spec"]["validations"]
    )
    # No exempt group at all (--set cannot make an empty list, --set-json can).
    rendered = helm(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--kube-version", K8S_VERSION, "--set-json", "admissionPolicy.tenantNamespaces.exemptGroups=[]",
    ).stdout  # fmt: skip
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    nobody = find(documents, "ValidatingAdmissionPolicy", TENANT_POLICY)
    assert "g in []" in match_condition(nobody, "not-exempt")
    assert all("a member of" not in v["messageExpression"] for v in nobody["spec"]["validations"])


def test_the_tenant_namespace_policy_says_what_was_refused_why_and_what_to_do() -> None:
    policy = find(template(), "ValidatingAdmissionPolicy", TENANT_POLICY)
    messages = [" ".join(v["messageExpression"].split()) for v in policy["spec"]["validations"]]
    assert all(v["reason"] == "Forbidden" for v in policy["spec"]["validations"])
    expected = [
        ("NetworkPolicies in tenant namespace", "policies only add", "Change spec.network of"),
        (
            "Roles and RoleBindings in tenant namespace",
            "access to the Kubernetes API",
            "a cluster administrator (a member of system:masters)",
        ),
        (
            "ResourceQuotas and LimitRanges in tenant namespace",
            "written only by Tenantry",
            "Change spec.quota of",
        ),
        (
            "Objects labelled tenantry.dev/component",
            "which the tenant's NetworkPolicies trust",
            "Change spec.runtime or spec.sandbox of",
        ),
        (
            "exec, attach, port-forward and proxy into pods",
            "would act as the tenant's runtime or sandbox",
            "kubectl logs",
        ),
        ('"Scaling "', "a scale request carries no labels", "set spec.replicas"),
        (
            "Tokens for ServiceAccounts of tenant namespace",
            "run with no token at all",
            "may mint one",
        ),
        (
            "is written only by Tenantry",
            "the operator cannot tell a change made by someone else from its own",
            "leave that label off objects of your own",
        ),
    ]
    assert len(messages) == len(expected)
    for message, (what, why, instead) in zip(messages, expected, strict=True):
        assert what in message and why in message and instead in message, message
    # The tenant is named from the namespace's tenantry.dev/tenant label.
    (tenant,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "tenant"]
    assert '"tenantry.dev/tenant"' in tenant and "namespaceObject" in tenant
    # README.md documents the same messages.
    section = README.split("### Who may write in a tenant namespace", 1)[1].split("\n## ", 1)[0]
    for name in (
        "spec.network",
        "spec.quota",
        "spec.runtime",
        "spec.sandbox",
        "kubectl logs",
        "app.kubernetes.io/managed-by=tenantry",
        "spec.replicas",
    ):
        assert name in section, name


def notes(tmp_path: Path, values: dict[str, str] | None = None) -> str:
    """NOTES.txt as `helm install` prints it, rendered offline.

    `helm install --dry-run` needs a cluster and `helm template` prints no notes, so a copy of
    the chart carries the real NOTES.txt as a named template that a ConfigMap renders.
    """
    chart = tmp_path / f"chart-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(CHART, chart)
    text = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes_under_test.tpl").write_text(
        '{{- define "notes-under-test" -}}\n' + text + "\n{{- end -}}\n"
    )
    (chart / "templates" / "notes-under-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "notes-under-test" . | toJson }}\n'
    )
    rendered = helm(
        "template", RELEASE, str(chart), "--namespace", RELEASE_NAMESPACE,
        "--kube-version", K8S_VERSION, "--show-only", "templates/notes-under-test.yaml",
        *set_flags(values),
    ).stdout  # fmt: skip
    result: str = yaml.safe_load(rendered)["data"]["notes"]
    return result


def test_notes_warn_when_the_admission_policy_is_off(tmp_path: Path) -> None:
    assert "WARNING" not in notes(tmp_path, {"networkPolicy.apiServer.cidrs[0]": "10.0.0.1/32"})
    off = " ".join(notes(tmp_path, {"admissionPolicy.enabled": "false"}).split())
    assert "WARNING: admissionPolicy.enabled=false" in off
    assert "effectively cluster-admin" in off
    tenant_off = " ".join(
        notes(tmp_path, {"admissionPolicy.tenantNamespaces.enabled": "false"}).split()
    )
    assert "WARNING: admissionPolicy.tenantNamespaces.enabled=false" in tenant_off
    # values.yaml and README.md say it where the value is documented.
    values = (CHART / "values.yaml").read_text()
    assert "effectively cluster-admin" in " ".join(values.split("admissionPolicy:", 1)[0].split())
    assert "effectively cluster-admin" in README


def test_notes_say_how_to_narrow_the_operators_egress(tmp_path: Path) -> None:
    unset = " ".join(notes(tmp_path).split())
    assert "networkPolicy.apiServer.cidrs is not set" in unset
    assert ", ".join(PRIVATE_RANGES) in unset
    assert "kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes" in unset
    assert "helm upgrade tenantry <the chart> -n tenantry-system --reuse-values" in unset
    narrowed = notes(tmp_path, {"networkPolicy.apiServer.cidrs[0]": "10.0.0.1/32"})
    assert "networkPolicy.apiServer.cidrs" not in narrowed
    wide = " ".join(notes(tmp_path, {"networkPolicy.apiServer.cidrs[0]": "0.0.0.0/0"}).split())
    assert "WARNING: networkPolicy.apiServer.cidrs contains 0.0.0.0/0" in wide
    assert "networkPolicy.apiServer.cidrs" not in notes(
        tmp_path, {"networkPolicy.enabled": "false"}
    )


def test_tenant_policy_values_become_operator_flags() -> None:
    args = operator_container(template())["args"]
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in args)
    assert flags["image-pull-policy"] == "IfNotPresent"
    assert flags["tenant-image-pull-policy"] == "Always"
    assert (flags["max-quota-cpu"], flags["max-quota-memory"], flags["max-quota-pods"]) == (
        "16",
        "64Gi",
        "100",
    )
    # Empty values render no flag: the operator's own default applies.
    for flag in ("allowed-images", "allowed-runtime-classes", "namespace-pattern", "cluster-cidrs"):
        assert flag not in flags, flag
    custom = operator_container(
        template(
            {
                "operator.runtimeImagePullPolicy": "Always",
                "operator.clusterCIDRs": "{10.244.0.0/16,10.96.0.0/12,fd00::/48}",
                "tenantPolicy.allowedImages": "{registry.example.com/agents/,ghcr.io/acme/runtime:1.2.3}",
                "tenantPolicy.tenantImagePullPolicy": "IfNotPresent",
                "tenantPolicy.allowedRuntimeClasses": "{gvisor,kata}",
                "tenantPolicy.maxQuota.cpu": "32",
                "tenantPolicy.maxQuota.memory": "128Gi",
                "tenantPolicy.maxQuota.pods": "250",
                "tenantPolicy.namespacePattern": "agents-*",
            }
        )
    )["args"]
    # One argument per flag, a list comma-separated in it.
    for arg in (
        "--image-pull-policy=Always",
        "--cluster-cidrs=10.244.0.0/16,10.96.0.0/12,fd00::/48",
        "--allowed-images=registry.example.com/agents/,ghcr.io/acme/runtime:1.2.3",
        "--tenant-image-pull-policy=IfNotPresent",
        "--allowed-runtime-classes=gvisor,kata",
        "--max-quota-cpu=32",
        "--max-quota-memory=128Gi",
        "--max-quota-pods=250",
        "--namespace-pattern=agents-*",
    ):
        assert custom.count(arg) == 1, (arg, custom)
    assert len({arg.partition("=")[0] for arg in custom}) == len(custom)


def test_template_kinds_become_a_flag_the_operator_reads_a_grant_and_a_confined_write() -> None:
    values = {
        **{f"templates.kinds[0].{k}": v for k, v in TEMPLATED_SERVICE_MONITOR.items()},
        "templates.kinds[1].apiVersion": "v1",
        "templates.kinds[1].kind": "PersistentVolumeClaim",
        "templates.kinds[1].resource": "persistentvolumeclaims",
    }
    documents = template(values)
    args = operator_container(documents)["args"]
    flags = dict(arg.removeprefix("--").partition("=")[::2] for arg in args)
    entries = flags["template-kinds"]
    assert entries == (
        "monitoring.coreos.com/v1/ServiceMonitor=servicemonitors,"
        "v1/PersistentVolumeClaim=persistentvolumeclaims"
    )
    # The operator reads the flag as the chart wrote it.
    rows = templated_kinds(OperatorConfig(template_kinds=entries).template_kinds)
    assert [row.watched for row in rows] == [
        ("monitoring.coreos.com", "v1", "servicemonitors"),
        ("", "v1", "persistentvolumeclaims"),
    ]
    rules = rules_by_resource(find(documents, "ClusterRole", "tenantry")["rules"])
    assert rules[("monitoring.coreos.com", "servicemonitors")] == {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    }
    policy = find(documents, "ValidatingAdmissionPolicy", "tenantry-writes")
    assert {
        "apiGroups": ["monitoring.coreos.com"],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "resources": ["servicemonitors"],
    } in policy["spec"]["matchConstraints"]["resourceRules"]
    assert "template-kinds" not in "".join(operator_container(template())["args"])
