"""The Helm chart, offline: lint, kube-score, values schema, RBAC and the operator Deployment.

Rendering and checks use the real tools built from Go modules (helm, kube-score); what needs
the cluster (kubeconform against the cluster's own OpenAPI, installing, RBAC answers of the API
server) is in tests/integration/test_chart_install.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import CHART, K8S_VERSION, REPO, find, helm, kinds, run, template, template_text, tool
from tenantry.config import OperatorConfig
from tenantry.handlers import CHILD_RESOURCES, watched_children

README = (CHART / "README.md").read_text()

# kube-score checks the chart fails on purpose; README.md ("kube-score exceptions") says why.
KUBE_SCORE_EXCEPTIONS = frozenset({"container-image-pull-policy", "pod-probes-identical"})
# Off by default in kube-score, on here: both hold for the chart.
KUBE_SCORE_OPTIONAL = ("container-seccomp-profile", "container-ports-check")

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
    },
}


def rules_by_resource(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                found.setdefault((group, resource), set()).update(rule["verbs"])
    return found


def test_the_chart_crd_is_the_repository_crd() -> None:
    chart_copy = (CHART / "crds" / "agenttenants.tenantry.dev.yaml").read_bytes()
    original = (REPO / "crds" / "agenttenants.tenantry.dev.yaml").read_bytes()
    assert chart_copy == original, "charts/tenantry/crds/ differs from crds/: run `make crd`"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["agenttenants.tenantry.dev.yaml"]


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
    children = {(group, plural) for group, _version, plural in watched_children(scoped)}
    expected = {
        ("tenantry.dev", "agenttenants"): {"list", "watch"},
        ("tenantry.dev", "agenttenants/status"): {"patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        **{child: {"list", "watch", "create", "patch", "delete"} for child in children},
        # Read before any write (never adopt one); never deleted: garbage collection does that.
        ("", "namespaces"): {"get", "list", "watch", "create", "patch"},
        ("rbac.authorization.k8s.io", "clusterroles"): {"bind"},
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
        ("", "secrets"): {"get", "list", "create", "patch", "delete"}
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
    policy = find(documents, "ValidatingAdmissionPolicy")
    covered = {
        (group, resource)
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        if {"CREATE", "UPDATE", "DELETE"} <= set(rule["operations"])
    }
    assert covered == {(group, plural) for group, _version, plural in CHILD_RESOURCES}
    condition = policy["spec"]["matchConditions"][0]["expression"]
    assert (
        condition == 'request.userInfo.username == "system:serviceaccount:tenantry-system:tenantry"'
    )
    binding = find(documents, "ValidatingAdmissionPolicyBinding")
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


def test_the_network_policy_admits_metrics_and_reaches_only_the_api_server() -> None:
    policy = find(template(), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    (egress,) = policy["spec"]["egress"]
    assert {p["port"] for p in egress["ports"]} == {443, 6443}
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
