"""The Helm chart on the real control plane.

The chart is installed with helm into `tenantry-system` (Pod Security `restricted` enforced).
Pods cannot run real containers here, so the operator then runs as a local process with exactly
the command, arguments and environment of the installed Deployment, authenticated as the
chart's ServiceAccount (a token from the TokenRequest API): whatever the chart's RBAC or
admission policy lacks, the operator lacks too. It provisions the example tenants; the API
server then answers for RBAC both ways, and real statuses go through the Argo CD health check
and kstatus (Flux).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemas
import tenants
import yaml
from lightkube import Client, KubeConfig, codecs
from lightkube.core.exceptions import ApiError
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Namespace,
    Pod,
    Secret,
    Service,
    ServiceAccount,
    ServiceAccountToken,
)
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import PatchType
from tenants import SECRET_SOURCE_NAMESPACE
from waiting import wait_until

from tests.support import processes
from tests.support.chartkit import (
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    argocd_health,
    find,
    helm,
    run,
    set_flags,
    template,
    template_text,
    tool,
)
from tests.support.ports import free_port

pytestmark = pytest.mark.cluster

SERVICE_ACCOUNT = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
EXAMPLES = ("acme", "globex")
CRD_FILE = CHART / "crds" / "agenttenants.tenantry.dev.yaml"


@dataclass
class Release:
    documents: list[dict[str, Any]]  # what helm installed (`helm get manifest`)
    kubeconfig: Path

    @property
    def container(self) -> dict[str, Any]:
        (container,) = find(self.documents, "Deployment")["spec"]["template"]["spec"]["containers"]
        return dict(container)


@pytest.fixture(scope="module")
def kubectl(kubeconfig: Path) -> list[str]:
    return [tool("kubectl"), "--kubeconfig", str(kubeconfig)]


@pytest.fixture(scope="module")
def release(kubeconfig: Path, kube: Client) -> Iterator[Release]:
    """The chart, installed with helm; uninstalled (the CRD stays, as Helm leaves it) at the end."""
    # A demo operator would reconcile the example tenants too.
    subprocess.run([sys.executable, str(REPO / "e2e" / "demo.py"), "down"], check=True)
    # A namespace still terminating (a previous run's) accepts no new content.
    wait_until(
        lambda: release_namespace_settled(kube),
        f"namespace {RELEASE_NAMESPACE} to finish terminating",
        180,
    )
    kube.apply(
        Namespace(
            metadata=ObjectMeta(
                name=RELEASE_NAMESPACE,
                labels={"pod-security.kubernetes.io/enforce": "restricted"},
            )
        ),
        force=True,
    )
    # The chart's Role for source Secrets lives there: the namespace comes first (chart README).
    kube.apply(Namespace(metadata=ObjectMeta(name=SECRET_SOURCE_NAMESPACE)), force=True)
    # The operator runs on this machine, where other engineers' operators may run too: its
    # ports are free ones, passed as the chart's values so the flags stay the chart's own.
    values = {"health.port": str(free_port()), "metrics.port": str(free_port())}
    helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        *set_flags(values), "--wait", "--timeout", "180s", kubeconfig=kubeconfig,
    )  # fmt: skip
    manifest = helm(
        "get", "manifest", RELEASE, "--namespace", RELEASE_NAMESPACE, kubeconfig=kubeconfig
    )
    documents = [doc for doc in yaml.safe_load_all(manifest.stdout) if doc]
    try:
        yield Release(documents, kubeconfig)
    finally:
        helm(
            "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", kubeconfig=kubeconfig
        )
        kube.delete(Namespace, RELEASE_NAMESPACE)
        wait_until(
            lambda: tenants.namespace_gone(kube, RELEASE_NAMESPACE),
            f"{RELEASE_NAMESPACE} gone",
            180,
        )


def release_namespace_settled(kube: Client) -> bool:
    try:
        namespace = kube.get(Namespace, RELEASE_NAMESPACE)
    except ApiError as error:
        if error.status.code == 404:
            return True
        raise
    return namespace.metadata is not None and namespace.metadata.deletionTimestamp is None


def account_kubeconfig(release: Release, kube: Client, account: str, directory: Path) -> Path:
    """A kubeconfig for a ServiceAccount of the release namespace: the local API server, its CA,
    a bound token."""
    token = kube.create(
        ServiceAccountToken(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[], expirationSeconds=3600)
        ),
        account,
        namespace=RELEASE_NAMESPACE,
    )
    admin = yaml.safe_load(release.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    ca = Path(cluster["certificate-authority"]).read_bytes()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "local",
                "cluster": {
                    "server": cluster["server"],
                    "certificate-authority-data": base64.b64encode(ca).decode(),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token.status.token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account}}],
        "current-context": account,
    }
    path = directory / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def sa_kubeconfig(release: Release, kube: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the chart's ServiceAccount: the local API server, its CA, a bound token."""
    return account_kubeconfig(release, kube, RELEASE, tmp_path_factory.mktemp("operator-identity"))


@pytest.fixture(scope="module")
def sa_client(sa_kubeconfig: Path) -> Client:
    return Client(config=KubeConfig.from_file(sa_kubeconfig), field_manager="tenantry")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of command and args: $$ escapes, unknown names stay."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def container_env(container: dict[str, Any], pod_namespace: str) -> dict[str, str]:
    """The container's environment, with the downward API resolved as the kubelet would."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif item.get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.namespace"}}:
            env[item["name"]] = pod_namespace
        else:
            pytest.fail(
                f"the test cannot resolve env {item['name']} of the operator container: {item}"
            )
    return env


@dataclass
class RunningOperator:
    log: Path
    dropped: list[str]


@pytest.fixture(scope="module")
def chart_operator(release: Release, sa_kubeconfig: Path) -> Iterator[RunningOperator]:
    """`tenantry run` as the chart runs it, with the chart ServiceAccount's identity."""
    container = release.container
    venv_bin = str(Path(sys.executable).parent)
    path = f"{venv_bin}{os.pathsep}{os.environ['PATH']}"
    executable = shutil.which(container["command"][0], path=path)
    assert executable, f"{container['command'][0]} is not on PATH"
    accepted = set(re.findall(r"--[a-z][a-z-]*", run(executable, "run", "--help").stdout))
    env = container_env(container, RELEASE_NAMESPACE)
    # The pod listens on every interface; on this machine the same endpoints stay on loopback.
    args = [expand(arg, env).replace("0.0.0.0:", "127.0.0.1:") for arg in container["args"]]
    dropped = [arg for arg in args if arg.partition("=")[0] not in accepted]
    assert dropped == [], f"the operator CLI does not accept the chart's {dropped}"
    command = [executable, *container["command"][1:], *args]
    # Nothing of this shell leaks in (no admin KUBECONFIG, no TENANTRY_* settings): only what a
    # pod would have, plus the identity.
    process_env = {
        "PATH": path,
        "HOME": os.environ.get("HOME", "/"),
        **env,
        "KUBECONFIG": str(sa_kubeconfig),
    }
    log_path = REPO / ".cache" / "test-logs" / "chart-operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        log.write(f"# {' '.join(command)}\n# dropped: {dropped}\n")
        log.flush()
        process = subprocess.Popen(command, env=process_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield RunningOperator(log_path, dropped)
    finally:
        processes.stop(process, timeout=15)


@pytest.fixture(autouse=True)
def operator_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    log = REPO / ".cache" / "test-logs" / "chart-operator.log"
    if report is not None and report.failed and log.exists():
        print("---- last lines of the chart operator's log ----")
        print("\n".join(log.read_text().splitlines()[-60:]))


def delete_tenants(kube: Client, names: list[str]) -> None:
    for name in names:
        tenants.delete(kube, name)


@pytest.fixture(scope="module")
def examples(
    kube: Client, kubectl: list[str], chart_operator: RunningOperator
) -> Iterator[list[str]]:
    """examples/, applied as a user would, and Ready — provisioned by the chart's operator."""
    # Left over from `make demo`: start from nothing, so it is this operator that provisions them.
    delete_tenants(kube, list(EXAMPLES))
    for name in EXAMPLES:
        wait_until(
            lambda n=name: tenants.namespace_gone(kube, f"tenant-{n}"), f"tenant-{name} gone", 120
        )
    run(*kubectl, "apply", "-f", str(REPO / "examples" / "secret-source.yaml"))
    run(*kubectl, "apply", "-f", str(REPO / "examples"))
    for name in EXAMPLES:
        tenants.wait_condition(kube, name, "Ready", timeout=180)
    yield list(EXAMPLES)
    delete_tenants(kube, list(EXAMPLES))


def test_the_chart_conforms_to_the_cluster_openapi(kubectl: list[str], tmp_path: Path) -> None:
    """helm template | kubeconform -strict, with schemas from this cluster's own OpenAPI."""
    variants = {
        "defaults": {},
        "single replica": {"replicaCount": "1", "leaderElection.enabled": "false"},
        "no admission policy or network policy": {
            "admissionPolicy.enabled": "false",
            "networkPolicy.enabled": "false",
            "serviceAccount.create": "false",
            "serviceAccount.name": "existing",
        },
        "metrics scraped from a namespace": {
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name": "monitoring",
            "image.digest": "sha256:" + "b" * 64,
            "tolerations[0].key": "dedicated",
            "tolerations[0].operator": "Exists",
        },
    }
    rendered = {
        name: template_text(values, include_crds=True).stdout for name, values in variants.items()
    }
    example_text = "\n---\n".join(p.read_text() for p in sorted((REPO / "examples").glob("*.yaml")))
    documents = [
        doc
        for text in [*rendered.values(), example_text]
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    crd = yaml.safe_load(CRD_FILE.read_text())
    custom = {
        (f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])
        for v in crd["spec"]["versions"]
    }
    builtin = {(doc["apiVersion"], doc["kind"]) for doc in documents} - custom
    out = tmp_path / "schemas"
    schemas.builtin(kubectl, out, builtin)
    schemas.custom(kubectl, out, crd)

    def kubeconform(text: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            tool("kubeconform"), "-strict", "-summary",
            "-schema-location", str(out / schemas.LOCATION), input=text, check=check,
        )  # fmt: skip

    for name, text in rendered.items():
        summary = kubeconform(text).stdout
        assert "Invalid: 0, Errors: 0, Skipped: 0" in summary, f"{name}: {summary}"
    assert "Invalid: 0, Errors: 0, Skipped: 0" in kubeconform(example_text).stdout
    # The schemas are strict: a misspelt field in a Deployment or an AgentTenant is caught.
    deployment = yaml.safe_dump(
        {
            **find(template(), "Deployment"),
            "spec": {**find(template(), "Deployment")["spec"], "replica": 2},
        }
    )
    refused = kubeconform(deployment, check=False)
    assert refused.returncode != 0 and "replica" in refused.stdout, refused.stdout
    tenant = yaml.safe_dump(
        tenants.manifest("typo", {"displayName": "Typo", "sandbox": {"enable": False}})
    )
    refused = kubeconform(tenant, check=False)
    assert refused.returncode != 0 and "enable" in refused.stdout, refused.stdout


def test_the_operator_pods_pass_pod_security_restricted(release: Release, kube: Client) -> None:
    namespace = kube.get(Namespace, RELEASE_NAMESPACE)
    assert (namespace.metadata.labels or {})["pod-security.kubernetes.io/enforce"] == "restricted"  # type: ignore[union-attr]
    deployment = kube.get(Deployment, RELEASE, namespace=RELEASE_NAMESPACE)
    assert deployment.status is not None and deployment.status.availableReplicas == 2
    pods = list(
        kube.list(Pod, namespace=RELEASE_NAMESPACE, labels={"app.kubernetes.io/instance": RELEASE})
    )
    assert len(pods) == 2
    assert {pod.spec.serviceAccountName for pod in pods} == {RELEASE}  # type: ignore[union-attr]


def test_the_probes_reach_the_operators_liveness_endpoint(
    release: Release, chart_operator: RunningOperator
) -> None:
    container = release.container
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        action = container[probe]["httpGet"]
        port = ports.get(action["port"], action["port"])
        url = f"http://127.0.0.1:{port}{action['path']}"

        def answers(url: str = url) -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(answers, f"{probe} {url} to answer 200", timeout=60)


def test_the_chart_identity_provisions_the_examples(
    kube: Client, examples: list[str], chart_operator: RunningOperator
) -> None:
    for name in examples:
        ready = tenants.condition(kube, name, "Ready")
        assert ready["status"] == "True", ready
    copied = kube.get(Secret, "model-credentials", namespace="tenant-acme")
    assert copied.data and "api-key" in copied.data
    # Events are posted (Role in "default") ...
    posted = [
        event
        for event in kube.list(Event, namespace="default", fields={"involvedObject.name": "acme"})
        if event.reason == "Ready"
    ]
    assert posted, "no Ready event about acme in namespace default"
    # ... and nothing the operator tried was refused.
    log = chart_operator.log.read_text()
    refusals = [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]
    assert not refusals, "\n".join(refusals[:10])
    assert chart_operator.dropped == []


def test_the_chart_identity_takes_back_a_child_an_admin_changed(
    kube: Client, examples: list[str], chart_operator: RunningOperator
) -> None:
    """A break-glass admin (the tenant-namespace policy spares them) narrows the runtime's policy
    with a label: the operator replaces the policy whole (plan.write_method), which takes a GET
    and an update, not only the verbs of server-side apply. Found while adding templates: the
    chart granted neither, so the correction was refused on every retry."""
    kube.patch(
        NetworkPolicy, "runtime", {"spec": {"podSelector": {"matchLabels": {"debug": "on"}}}},
        namespace=TENANT, patch_type=PatchType.MERGE, field_manager="break-glass",
    )  # fmt: skip

    def restored() -> bool:
        policy = kube.get(NetworkPolicy, "runtime", namespace=TENANT)
        labels = policy.spec.podSelector.matchLabels or {}  # type: ignore[union-attr]
        managers = {entry.manager for entry in policy.metadata.managedFields or []}  # type: ignore[union-attr]
        return "debug" not in labels and "break-glass" not in managers

    wait_until(restored, "the chart's operator to take the runtime's policy back")
    log = chart_operator.log.read_text()
    refusals = [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]
    assert not refusals, "\n".join(refusals[:10])


def can_i(kubectl: list[str], verb: str, resource: str, namespace: str | None, *extra: str) -> bool:
    scope = ["--namespace", namespace] if namespace else ["--all-namespaces"]
    result = run(
        *kubectl,
        "auth",
        "can-i",
        verb,
        resource,
        *scope,
        *extra,
        f"--as={SERVICE_ACCOUNT}",
        check=False,
    )
    assert result.stdout.strip() in ("yes", "no"), result.stdout + result.stderr
    return result.stdout.strip() == "yes"


TENANT = "tenant-acme"
NEEDED = [
    ("list", "agenttenants.tenantry.dev", None),
    ("watch", "agenttenants.tenantry.dev", None),
    ("patch", "agenttenants.tenantry.dev", None, "--subresource=status"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),
    *[(verb, "namespaces", None) for verb in ("get", "list", "watch", "create", "patch")],
    # Secrets in a tenant namespace: through the RoleBinding the operator applied there.
    *[(verb, "secrets", TENANT) for verb in ("get", "list", "create", "update", "patch", "delete")],
    *[(verb, "secrets", SECRET_SOURCE_NAMESPACE) for verb in ("get", "list", "watch")],
    *[
        (verb, "rolebindings.rbac.authorization.k8s.io", TENANT)
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
    ],
    ("bind", "clusterroles.rbac.authorization.k8s.io/tenantry-tenant-secrets", None),
    *[
        (verb, kind, TENANT)
        for kind in (
            "configmaps",
            "limitranges",
            "resourcequotas",
            "serviceaccounts",
            "services",
            "deployments.apps",
            "networkpolicies.networking.k8s.io",
        )
        # get and update: a child someone else wrote to is read and replaced whole.
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
    ],
    # Runtime pods' termination messages (a refused runtime.json): read, never one by one.
    ("list", "pods", None),
    ("watch", "pods", None),
    ("create", "events", "default"),
    ("create", "leases.coordination.k8s.io", RELEASE_NAMESPACE),
    ("get", "leases.coordination.k8s.io/tenantry-leader", RELEASE_NAMESPACE),
    ("update", "leases.coordination.k8s.io/tenantry-leader", RELEASE_NAMESPACE),
]
NOT_NEEDED = [
    ("*", "*", None),
    ("*", "*", TENANT),
    # No Secret anywhere but in tenant namespaces and the secret-source namespace.
    ("get", "secrets", "kube-system"),
    ("list", "secrets", "kube-system"),
    ("watch", "secrets", None),
    ("list", "secrets", None),
    ("get", "secrets", "default"),
    ("get", "secrets", RELEASE_NAMESPACE),
    ("create", "secrets", SECRET_SOURCE_NAMESPACE),
    ("update", "secrets", "kube-system"),
    ("deletecollection", "secrets", "kube-system"),
    ("watch", "secrets", TENANT),
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", None),
    ("create", "pods", TENANT, "--subresource=exec"),
    ("create", "pods", TENANT),
    ("get", "pods", TENANT),
    ("delete", "nodes", None),
    ("get", "nodes", None),
    ("delete", "namespaces", None),
    ("update", "namespaces", None),
    ("create", "clusterroles.rbac.authorization.k8s.io", None),
    ("bind", "clusterroles.rbac.authorization.k8s.io", None),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
    ("impersonate", "users", None),
    ("impersonate", "serviceaccounts", "kube-system"),
    ("create", "serviceaccounts", "kube-system", "--subresource=token"),
    ("create", "agenttenants.tenantry.dev", None),
    ("update", "agenttenants.tenantry.dev", None),
    ("patch", "agenttenants.tenantry.dev", None),
    ("delete", "agenttenants.tenantry.dev", None),
    ("update", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("create", "events", "kube-system"),
    ("update", "leases.coordination.k8s.io/kube-scheduler", "kube-system"),
    ("update", "leases.coordination.k8s.io/another-lease", RELEASE_NAMESPACE),
    ("delete", "leases.coordination.k8s.io/tenantry-leader", RELEASE_NAMESPACE),
    ("delete", "validatingadmissionpolicies.admissionregistration.k8s.io", None),
    ("delete", "validatingadmissionpolicybindings.admissionregistration.k8s.io", None),
]


@pytest.mark.parametrize("question", NEEDED, ids=lambda q: " ".join(x for x in q if x))
def test_rbac_allows_what_the_operator_needs(
    release: Release, kubectl: list[str], examples: list[str], question: tuple[str, ...]
) -> None:
    # After the examples: Secrets in tenant-acme come from the RoleBinding the operator put there.
    verb, resource, namespace, *extra = question
    assert can_i(kubectl, verb, resource, namespace, *extra), (
        f"{SERVICE_ACCOUNT} may not {question}"
    )


@pytest.mark.parametrize("question", NOT_NEEDED, ids=lambda q: " ".join(x for x in q if x))
def test_rbac_refuses_what_the_operator_does_not_need(
    release: Release, kubectl: list[str], question: tuple[str, ...]
) -> None:
    verb, resource, namespace, *extra = question
    assert not can_i(kubectl, verb, resource, namespace, *extra), (
        f"{SERVICE_ACCOUNT} may {question}"
    )


def denied(attempt: Callable[[], Any]) -> str:
    with pytest.raises(ApiError) as refused:
        attempt()
    assert refused.value.status.code == 403, refused.value.status
    return str(refused.value.status.message)


def test_admission_confines_the_operators_writes_to_tenant_namespaces(
    sa_client: Client, examples: list[str]
) -> None:
    """What RBAC grants everywhere, the chart's ValidatingAdmissionPolicy takes back (dry runs)."""
    name = f"probe-{uuid.uuid4().hex[:6]}"
    for namespace in ("kube-system", "default", RELEASE_NAMESPACE, SECRET_SOURCE_NAMESPACE):
        message = denied(
            lambda ns=namespace: sa_client.create(
                ConfigMap(metadata=ObjectMeta(name=name, namespace=ns)), dry_run=True
            )
        )
        assert f"may write only in namespaces it manages, and namespace {namespace}" in message
        # Secrets there are not even granted: RBAC refuses before admission is asked.
        message = denied(
            lambda ns=namespace: sa_client.create(
                Secret(metadata=ObjectMeta(name=name, namespace=ns)), dry_run=True
            )
        )
        assert 'cannot create resource "secrets"' in message
    # The operator may bind its tenant-secrets role, but only in a tenant namespace: a binding in
    # kube-system would hand it that namespace's Secrets.
    secrets_binding = RoleBinding(
        metadata=ObjectMeta(name=name, namespace="kube-system"),
        roleRef=RoleRef(
            apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name="tenantry-tenant-secrets"
        ),
        subjects=[Subject(kind="ServiceAccount", name=RELEASE, namespace=RELEASE_NAMESPACE)],
    )
    message = denied(lambda: sa_client.create(secrets_binding, dry_run=True))
    assert "may write only in namespaces it manages, and namespace kube-system" in message
    message = denied(
        lambda: sa_client.create(Namespace(metadata=ObjectMeta(name=name)), dry_run=True)
    )
    assert "may create or change only tenant namespaces" in message
    tenant_labels = {
        "app.kubernetes.io/managed-by": "tenantry",
        "pod-security.kubernetes.io/enforce": "restricted",
    }
    # Labelling a namespace as a tenant's does not make it one.
    denied(
        lambda: sa_client.apply(
            Namespace(metadata=ObjectMeta(name="default", labels=tenant_labels)),
            dry_run=True,
            force=True,
        )
    )
    # The same requests in or for a tenant namespace pass: the denials above are the policy's.
    sa_client.create(Secret(metadata=ObjectMeta(name=name, namespace="tenant-acme")), dry_run=True)
    secrets_binding.metadata.namespace = "tenant-acme"  # type: ignore[union-attr]
    sa_client.create(secrets_binding, dry_run=True)
    sa_client.create(Namespace(metadata=ObjectMeta(name=name, labels=tenant_labels)), dry_run=True)


def kstatus(kubectl: list[str], name: str) -> dict[str, str]:
    body = run(*kubectl, "get", "agenttenant", name, "-o", "json").stdout
    (line,) = run(tool("kstatus"), input=body).stdout.splitlines()
    result: dict[str, str] = json.loads(line)
    return result


@pytest.fixture(scope="module")
def stalled_and_converging(
    kube: Client, chart_operator: RunningOperator
) -> Iterator[dict[str, str]]:
    suffix = uuid.uuid4().hex[:6]
    names = {"stalled": f"chart-stalled-{suffix}", "converging": f"chart-converging-{suffix}"}
    # Stalled: the source Secret does not exist; only a human can fix that.
    tenants.apply(
        kube,
        tenants.manifest(
            names["stalled"], {"secrets": [{"name": "keys", "from": f"absent-{suffix}"}]}
        ),
    )
    # Converging for good: a quota of one pod, for a runtime and a sandbox.
    tenants.apply(kube, tenants.manifest(names["converging"], {"quota": {"pods": 1}}))
    tenants.wait_condition(kube, names["stalled"], "Stalled", reason="SecretNotFound")
    tenants.wait_condition(kube, names["converging"], "Reconciling", timeout=120)
    yield names
    delete_tenants(kube, list(names.values()))


def test_argocd_and_flux_read_real_statuses(
    kube: Client,
    kubectl: list[str],
    examples: list[str],
    stalled_and_converging: dict[str, str],
) -> None:
    expected = {
        **{name: ("Healthy", "Current") for name in examples},
        stalled_and_converging["stalled"]: ("Degraded", "Failed"),
        stalled_and_converging["converging"]: ("Progressing", "InProgress"),
    }
    for name, (argocd, flux) in expected.items():
        body = json.loads(run(*kubectl, "get", "agenttenant", name, "-o", "json").stdout)
        health = argocd_health(body)
        assert health["status"] == argocd, (name, health, body.get("status"))
        computed = kstatus(kubectl, name)
        assert computed["status"] == flux, (name, computed, body.get("status"))
    health = argocd_health(
        json.loads(
            run(
                *kubectl, "get", "agenttenant", stalled_and_converging["stalled"], "-o", "json"
            ).stdout
        )
    )
    assert health["message"].startswith("SecretNotFound: spec.secrets[0].from"), health


def test_the_documented_crd_upgrade_replaces_an_older_crd(
    kube: Client, kubectl: list[str], release: Release
) -> None:
    chart_crd = yaml.safe_load(CRD_FILE.read_text())
    name = chart_crd["metadata"]["name"]
    # An older CRD, written as Helm writes CRDs (an update, not an apply): fewer printer
    # columns, another description, other short names.
    older = copy.deepcopy(chart_crd)
    version = older["spec"]["versions"][0]
    version["additionalPrinterColumns"] = version["additionalPrinterColumns"][:2]
    version["schema"]["openAPIV3Schema"]["description"] = "An older AgentTenant."
    older["spec"]["names"]["shortNames"] = ["oldtenant"]
    older["metadata"]["resourceVersion"] = kube.get(
        CustomResourceDefinition, name
    ).metadata.resourceVersion  # type: ignore[union-attr]
    kube.replace(codecs.from_dict(older), field_manager="helm")

    def live() -> dict[str, Any]:
        result: dict[str, Any] = json.loads(run(*kubectl, "get", "crd", name, "-o", "json").stdout)
        return result

    assert live()["spec"]["names"]["shortNames"] == ["oldtenant"]
    readme = (CHART / "README.md").read_text()
    section = readme.split("## Upgrading the CRD", 1)[1]
    (command,) = re.findall(r"^kubectl apply --server-side .*$", section, re.MULTILINE)
    run(*kubectl, *command.split()[1:], cwd=REPO)
    upgraded = live()
    assert upgraded["spec"]["names"]["shortNames"] == chart_crd["spec"]["names"]["shortNames"]
    (served,) = upgraded["spec"]["versions"]
    (wanted,) = chart_crd["spec"]["versions"]
    assert served["additionalPrinterColumns"] == wanted["additionalPrinterColumns"]
    assert served["schema"] == wanted["schema"]


# In tenant namespaces, the chart's second admission policy leaves NetworkPolicies, RBAC, quota
# and the runtime's and sandbox's label to Tenantry (chart README, "Who may write in a tenant
# namespace"). People are played by ServiceAccounts of the release namespace, bound in
# tenant-acme (created by the chart's operator) to the built-in `edit` and `admin` ClusterRoles
# by the test's admin, who is in system:masters and so exempt.
EDITOR = "tenant-editor"
TENANT_ADMIN = "tenant-admin"
TENANT_POLICY = f"{RELEASE}-tenant-namespaces"
SANDBOX_LABELS = {"tenantry.dev/tenant": "acme", "tenantry.dev/component": "sandbox"}
LABEL_REFUSED = "Objects labelled tenantry.dev/component (in their labels or their pod template's)"
# A pod Pod Security "restricted" admits, so only the tenant-namespace policy can refuse it.
RESTRICTED_POD_SPEC = {
    "automountServiceAccountToken": False,
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "main",
            "image": "registry.example.com/not-the-sandbox:1",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    ],
}


@dataclass
class TenantUser:
    client: Client
    kubeconfig: Path


@pytest.fixture(scope="module")
def tenant_users(
    release: Release, kube: Client, examples: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TenantUser]]:
    """An `edit` and an `admin` of tenant-acme, each with a client and a kubeconfig."""
    users: dict[str, TenantUser] = {}
    for account, role in ((EDITOR, "edit"), (TENANT_ADMIN, "admin")):
        kube.apply(
            ServiceAccount(metadata=ObjectMeta(name=account, namespace=RELEASE_NAMESPACE)),
            force=True,
        )
        kube.apply(
            RoleBinding(
                metadata=ObjectMeta(name=account, namespace=TENANT),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[
                    Subject(kind="ServiceAccount", name=account, namespace=RELEASE_NAMESPACE)
                ],
            ),
            force=True,
        )
        path = account_kubeconfig(release, kube, account, tmp_path_factory.mktemp(account))
        users[account] = TenantUser(
            Client(config=KubeConfig.from_file(path), field_manager=account), path
        )
    yield users
    for account in users:
        kube.delete(RoleBinding, account, namespace=TENANT)
        kube.delete(ServiceAccount, account, namespace=RELEASE_NAMESPACE)


def refused_by_tenant_policy(attempt: Callable[[], Any]) -> str:
    message = denied(attempt)
    assert f"ValidatingAdmissionPolicy '{TENANT_POLICY}'" in message, message
    return " ".join(message.split())


def test_tenant_namespace_editors_cannot_reopen_the_network_policies(
    tenant_users: dict[str, TenantUser],
) -> None:
    editor = tenant_users[EDITOR].client
    allow_all = codecs.from_dict(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "allow-all", "namespace": TENANT},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{}],
                "egress": [{}],
            },
        }
    )
    message = refused_by_tenant_policy(lambda: editor.create(allow_all, dry_run=True))
    assert (
        f"NetworkPolicies in tenant namespace {TENANT} are written only by Tenantry" in message
        and "Change spec.network of AgentTenant acme instead." in message
    ), message
    # Nor may the tenant's own policies be deleted or loosened.
    refused_by_tenant_policy(
        lambda: editor.delete(NetworkPolicy, "default-deny", namespace=TENANT, dry_run=True)
    )
    refused_by_tenant_policy(
        lambda: editor.patch(
            NetworkPolicy,
            "sandbox",
            {"spec": {"egress": [{}]}},
            namespace=TENANT,
            patch_type=PatchType.MERGE,
            dry_run=True,
        )
    )


def test_tenant_namespace_editors_cannot_pose_as_the_runtime_or_sandbox(
    kube: Client, kubectl: list[str], tenant_users: dict[str, TenantUser]
) -> None:
    editor = tenant_users[EDITOR].client
    pod = codecs.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fake-sandbox", "namespace": TENANT, "labels": SANDBOX_LABELS},
            "spec": RESTRICTED_POD_SPEC,
        }
    )
    message = refused_by_tenant_policy(lambda: editor.create(pod, dry_run=True))
    assert (
        LABEL_REFUSED in message
        and "Change spec.runtime or spec.sandbox of AgentTenant acme" in message
    )
    replica_set = codecs.from_dict(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "fake-sandbox", "namespace": TENANT},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": SANDBOX_LABELS},
                "template": {"metadata": {"labels": SANDBOX_LABELS}, "spec": RESTRICTED_POD_SPEC},
            },
        }
    )
    assert LABEL_REFUSED in refused_by_tenant_policy(
        lambda: editor.create(replica_set, dry_run=True)
    )
    # `kubectl set image` on the tenant's own sandbox: another image with the sandbox's label.
    sandbox = kube.get(Deployment, "sandbox", namespace=TENANT)
    (container,) = sandbox.spec.template.spec.containers  # type: ignore[union-attr]
    patch = {
        "spec": {
            "template": {"spec": {"containers": [{"name": container.name, "image": "evil:1"}]}}
        }
    }
    assert LABEL_REFUSED in refused_by_tenant_policy(
        lambda: editor.patch(Deployment, "sandbox", patch, namespace=TENANT, dry_run=True)
    )
    # A shell in the runtime is the runtime.
    runtime = next(
        iter(kube.list(Pod, namespace=TENANT, labels={"tenantry.dev/component": "runtime"}))
    )
    assert runtime.metadata and runtime.metadata.name
    shell = run(
        tool("kubectl"), "--kubeconfig", str(tenant_users[EDITOR].kubeconfig), "exec",
        "--namespace", TENANT, runtime.metadata.name, "--", "true", check=False,
    )  # fmt: skip
    assert shell.returncode != 0
    assert (
        f"exec, attach, port-forward and proxy into pods and services of tenant namespace {TENANT} are refused"
        in " ".join(shell.stderr.split())
    ), shell.stderr


def test_tenant_namespace_rbac_is_left_to_tenantry_and_cluster_admins(
    tenant_users: dict[str, TenantUser],
) -> None:
    role = codecs.from_dict(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "api-access", "namespace": TENANT},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        }
    )
    binding = RoleBinding(
        metadata=ObjectMeta(name="runtime-api-access", namespace=TENANT),
        roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name="view"),
        subjects=[Subject(kind="ServiceAccount", name="runtime", namespace=TENANT)],
    )
    # `edit` may not write RBAC at all: RBAC refuses before admission is asked.
    editor = tenant_users[EDITOR].client
    assert 'cannot create resource "roles"' in denied(lambda: editor.create(role, dry_run=True))
    assert 'cannot create resource "rolebindings"' in denied(
        lambda: editor.create(binding, dry_run=True)
    )
    # `admin` may, by RBAC; the policy refuses.
    admin = tenant_users[TENANT_ADMIN].client
    for attempt in (
        lambda: admin.create(role, dry_run=True),
        lambda: admin.create(binding, dry_run=True),
        lambda: admin.delete(RoleBinding, "tenantry-operator", namespace=TENANT, dry_run=True),
    ):
        message = refused_by_tenant_policy(attempt)
        assert (
            f"Roles and RoleBindings in tenant namespace {TENANT} are written only by Tenantry"
            in message
        )
        assert "a cluster administrator (a member of system:masters)" in message


def test_tenant_namespace_editors_still_write_plain_objects(
    kube: Client, tenant_users: dict[str, TenantUser]
) -> None:
    editor = tenant_users[EDITOR].client
    name = f"notes-{uuid.uuid4().hex[:6]}"
    editor.create(ConfigMap(metadata=ObjectMeta(name=name, namespace=TENANT), data={"a": "b"}))
    assert kube.get(ConfigMap, name, namespace=TENANT).data == {"a": "b"}
    editor.delete(ConfigMap, name, namespace=TENANT)
    # A pod of their own, without the label: Pod Security and quota apply, the policy does not.
    plain = codecs.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": TENANT, "labels": {"app": "debug"}},
            "spec": RESTRICTED_POD_SPEC,
        }
    )
    editor.create(plain, dry_run=True)


# The operator's own children carry app.kubernetes.io/managed-by=tenantry; its drift detection
# knows its own writes by field-manager name, which any client may choose.
OWNED_REFUSED = "is written only by Tenantry: it is labelled app.kubernetes.io/managed-by=tenantry"
CHANGE_THE_TENANT = "Change AgentTenant acme instead, and leave that label off objects of your own."
TENANTRYS = {"app.kubernetes.io/managed-by": "tenantry", "tenantry.dev/tenant": "acme"}


def test_tenant_namespace_editors_cannot_change_tenantrys_own_objects(
    kube: Client, tenant_users: dict[str, TenantUser]
) -> None:
    editor = tenant_users[EDITOR].client
    # `kubectl patch --field-manager=tenantry`: the runtime's model baseUrl, as the operator.
    repointed = json.dumps({"model": {"baseUrl": "https://attacker.example.net/v1"}})
    patched = run(
        tool("kubectl"), "--kubeconfig", str(tenant_users[EDITOR].kubeconfig), "patch",
        "--namespace", TENANT, "configmap", "runtime-config", "--type=merge",
        "--patch", json.dumps({"data": {"runtime.json": repointed}}),
        "--field-manager=tenantry", "--dry-run=server", check=False,
    )  # fmt: skip
    assert patched.returncode != 0, "an editor repointed the runtime's model"
    message = " ".join(patched.stderr.split())
    assert f"ValidatingAdmissionPolicy '{TENANT_POLICY}'" in message, patched.stderr
    assert (
        f"ConfigMap runtime-config in tenant namespace {TENANT} {OWNED_REFUSED}" in message
        and CHANGE_THE_TENANT in message
    ), message
    # The other children, by patch, server-side apply (as the operator's field manager) and
    # delete.
    attempts: dict[str, Callable[[], Any]] = {
        "ConfigMap runtime-config": lambda: editor.apply(
            ConfigMap(
                metadata=ObjectMeta(name="runtime-config", namespace=TENANT),
                data={"runtime.json": repointed},
            ),
            field_manager="tenantry",
            force=True,
            dry_run=True,
        ),
        "Secret sandbox-token": lambda: editor.patch(
            Secret, "sandbox-token", {"stringData": {"token": "known-to-the-editor"}},
            namespace=TENANT, patch_type=PatchType.MERGE, field_manager="tenantry", dry_run=True,
        ),
        "Secret model-credentials": lambda: editor.delete(
            Secret, "model-credentials", namespace=TENANT, dry_run=True
        ),
        "Service runtime": lambda: editor.patch(
            Service, "runtime", {"spec": {"selector": {"app": "debug"}}},
            namespace=TENANT, patch_type=PatchType.MERGE, dry_run=True,
        ),
        "ServiceAccount runtime": lambda: editor.patch(
            ServiceAccount, "runtime", {"automountServiceAccountToken": True},
            namespace=TENANT, patch_type=PatchType.MERGE, dry_run=True,
        ),
        "Deployment sandbox": lambda: editor.delete(
            Deployment, "sandbox", namespace=TENANT, dry_run=True
        ),
        # Nor may an editor plant an object labelled as Tenantry's.
        "ConfigMap runtime-config-extra": lambda: editor.create(
            ConfigMap(
                metadata=ObjectMeta(name="runtime-config-extra", namespace=TENANT, labels=TENANTRYS)
            ),
            dry_run=True,
        ),
    }  # fmt: skip
    for what, attempt in attempts.items():
        message = refused_by_tenant_policy(attempt)
        assert f"{what} in tenant namespace {TENANT} {OWNED_REFUSED}" in message, message
        assert CHANGE_THE_TENANT in message, message
    # ... or label one of their own so.
    name = f"notes-{uuid.uuid4().hex[:6]}"
    editor.create(ConfigMap(metadata=ObjectMeta(name=name, namespace=TENANT), data={"a": "b"}))
    try:
        message = refused_by_tenant_policy(
            lambda: editor.patch(
                ConfigMap, name, {"metadata": {"labels": TENANTRYS}}, namespace=TENANT,
                patch_type=PatchType.MERGE, dry_run=True,
            )
        )  # fmt: skip
        assert f"ConfigMap {name} in tenant namespace {TENANT} {OWNED_REFUSED}" in message
        # Their own objects stay theirs.
        editor.patch(
            ConfigMap, name, {"data": {"a": "c"}}, namespace=TENANT, patch_type=PatchType.MERGE
        )
    finally:
        editor.delete(ConfigMap, name, namespace=TENANT)
    # Pods are never labelled as Tenantry's own: deleting one (the Deployment restores it) stays
    # allowed.
    runtime = next(
        iter(kube.list(Pod, namespace=TENANT, labels={"tenantry.dev/component": "runtime"}))
    )
    assert runtime.metadata and runtime.metadata.name
    editor.delete(Pod, runtime.metadata.name, namespace=TENANT, dry_run=True)


def test_tenant_namespace_editors_cannot_scale_workloads(
    kube: Client, tenant_users: dict[str, TenantUser]
) -> None:
    """A Scale carries no labels: every scale request in a tenant namespace is refused, the
    runtime's, an old ReplicaSet's (whose pods would run a stale template) and an editor's own."""
    editor = tenant_users[EDITOR].client

    def scale(target: str, replicas: int) -> str:
        result = run(
            tool("kubectl"), "--kubeconfig", str(tenant_users[EDITOR].kubeconfig), "scale",
            "--namespace", TENANT, target, f"--replicas={replicas}", "--dry-run=server",
            check=False,
        )  # fmt: skip
        assert result.returncode != 0, f"an editor scaled {target}"
        message = " ".join(result.stderr.split())
        assert f"ValidatingAdmissionPolicy '{TENANT_POLICY}'" in message, result.stderr
        assert "a scale request carries no labels" in message, message
        assert "set spec.replicas (kubectl patch, edit or apply)" in message, message
        return message

    runtime_rs = next(
        iter(kube.list(ReplicaSet, namespace=TENANT, labels={"tenantry.dev/component": "runtime"}))
    )
    assert runtime_rs.metadata and runtime_rs.metadata.name
    name = runtime_rs.metadata.name
    assert f"Scaling replicasets/{name} in tenant namespace {TENANT} is refused" in scale(
        f"replicaset/{name}", 2
    )
    assert "Scaling deployments/runtime" in scale("deployment/runtime", 2)
    assert "Scaling deployments/sandbox" in scale("deployment/sandbox", 0)
    # An editor's own Deployment (no pods: replicas 0) is scaled by spec.replicas instead.
    own = f"debug-{uuid.uuid4().hex[:6]}"
    labels = {"app": own}
    editor.create(
        codecs.from_dict(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": own, "namespace": TENANT},
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": RESTRICTED_POD_SPEC},
                },
            }
        )
    )
    try:
        assert f"Scaling deployments/{own}" in scale(f"deployment/{own}", 1)
        editor.patch(
            Deployment, own, {"spec": {"replicas": 1}}, namespace=TENANT,
            patch_type=PatchType.MERGE, dry_run=True,
        )  # fmt: skip
    finally:
        editor.delete(Deployment, own, namespace=TENANT)


def kubectl_as(kubectl: list[str], user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A server-side dry run as `user` (impersonated by the admin): admission runs, nothing is
    written."""
    return run(
        *kubectl, f"--as={user}", "--namespace", TENANT, *args, "--dry-run=server", check=False
    )


def test_the_controllers_still_do_their_jobs_in_tenant_namespaces(
    kube: Client, kubectl: list[str], examples: list[str], tmp_path: Path
) -> None:
    """The built-in controllers, as they authenticate with --use-service-account-credentials.

    The local cluster's kube-controller-manager uses kwok's admin certificate (system:masters,
    exempt), so the controllers are impersonated here to exercise the policy's allowances.
    """
    controller = "system:serviceaccount:kube-system:{}".format
    pod = tmp_path / "pod.yaml"
    pod.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "sandbox-abcde", "labels": SANDBOX_LABELS},
                "spec": RESTRICTED_POD_SPEC,
            }
        )
    )
    replica_set = tmp_path / "replicaset.yaml"
    replica_set.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {"name": "sandbox-abcde", "labels": SANDBOX_LABELS},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": SANDBOX_LABELS},
                    "template": {
                        "metadata": {"labels": SANDBOX_LABELS},
                        "spec": RESTRICTED_POD_SPEC,
                    },
                },
            }
        )
    )
    allowed = {
        "the ReplicaSet controller creates a sandbox pod": (
            controller("replicaset-controller"), "create", "-f", str(pod)
        ),
        "the Deployment controller creates a sandbox ReplicaSet": (
            controller("deployment-controller"), "create", "-f", str(replica_set)
        ),
        "the garbage collector deletes a NetworkPolicy": (
            controller("generic-garbage-collector"), "delete", "networkpolicy", "default-deny"
        ),
        "the garbage collector deletes the operator's RoleBinding": (
            controller("generic-garbage-collector"), "delete", "rolebinding", "tenantry-operator"
        ),
        "the namespace controller deletes a NetworkPolicy": (
            controller("namespace-controller"), "delete", "networkpolicy", "sandbox"
        ),
        "the namespace controller deletes the ResourceQuota": (
            controller("namespace-controller"), "delete", "resourcequota", "tenant-quota"
        ),
    }  # fmt: skip
    for job, (user, *args) in allowed.items():
        result = kubectl_as(kubectl, user, *args)
        assert result.returncode == 0, f"{job}: {result.stderr}"
    # Each only at its own job: the ReplicaSet controller may update ReplicaSets by RBAC (a
    # replace; it may not patch them), but not the tenant's.
    sandbox_rs = next(
        iter(kube.list(ReplicaSet, namespace=TENANT, labels={"tenantry.dev/component": "sandbox"}))
    )
    assert sandbox_rs.metadata and sandbox_rs.metadata.name
    body = json.loads(
        run(
            *kubectl,
            "get",
            "replicaset",
            "--namespace",
            TENANT,
            sandbox_rs.metadata.name,
            "-o",
            "json",
        ).stdout
    )
    body["metadata"].setdefault("labels", {})["example.com/touched"] = "yes"
    changed = tmp_path / "changed-replicaset.json"
    changed.write_text(json.dumps(body))
    result = kubectl_as(kubectl, controller("replicaset-controller"), "replace", "-f", str(changed))
    assert result.returncode != 0, (
        "the ReplicaSet controller changed the tenant's sandbox ReplicaSet"
    )
    assert LABEL_REFUSED in " ".join(result.stderr.split()), result.stderr


def test_the_controllers_still_write_tenantrys_own_objects_in_tenant_namespaces(
    kube: Client, kubectl: list[str], examples: list[str], tmp_path: Path
) -> None:
    """Objects labelled app.kubernetes.io/managed-by=tenantry, written by the built-in
    controllers at their jobs (impersonated, as above: the local kube-controller-manager is
    exempt), and never a scale."""
    controller = "system:serviceaccount:kube-system:{}".format

    def touched(kind: str, name: str) -> str:
        """kind/name as it is plus one annotation, for a replace (the controllers' RBAC has
        update, not always patch); unconditional, so a concurrent status write is no conflict."""
        body = json.loads(
            run(*kubectl, "get", kind, "--namespace", TENANT, name, "-o", "json").stdout
        )
        body["metadata"].pop("resourceVersion", None)
        body["metadata"].setdefault("annotations", {})["example.com/touched"] = "yes"
        path = tmp_path / f"{kind}-{name}.json"
        path.write_text(json.dumps(body))
        return str(path)

    # The endpoint controllers copy the Service's labels, Tenantry's included.
    def runtime_slice() -> dict[str, Any] | None:
        found = json.loads(
            run(
                *kubectl, "get", "endpointslices", "--namespace", TENANT,
                "-l", "kubernetes.io/service-name=runtime", "-o", "json",
            ).stdout
        )["items"]  # fmt: skip
        return found[0] if found else None

    endpoint_slice = wait_until(runtime_slice, "an EndpointSlice of the runtime Service")
    assert endpoint_slice["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tenantry"
    slice_name = endpoint_slice["metadata"]["name"]
    endpoints = json.loads(
        run(*kubectl, "get", "endpoints", "--namespace", TENANT, "runtime", "-o", "json").stdout
    )
    assert endpoints["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tenantry"
    allowed = {
        "the endpoints controller updates the runtime's Endpoints": (
            controller("endpoint-controller"), "replace", "-f", touched("endpoints", "runtime")
        ),
        "the EndpointSlice controller updates the runtime's slice": (
            controller("endpointslice-controller"), "replace", "-f",
            touched("endpointslice", slice_name),
        ),
        "the EndpointSlice controller deletes it": (
            controller("endpointslice-controller"), "delete", "endpointslice", slice_name
        ),
        "the Deployment controller writes the runtime Deployment's status": (
            controller("deployment-controller"), "replace", "--subresource=status", "-f",
            touched("deployment", "runtime"),
        ),
        "the ResourceQuota controller writes the quota's status": (
            controller("resourcequota-controller"), "replace", "--subresource=status", "-f",
            touched("resourcequota", "tenant-quota"),
        ),
        "the garbage collector updates the runtime Service": (
            controller("generic-garbage-collector"), "replace", "-f", touched("service", "runtime")
        ),
        "the garbage collector deletes runtime-config": (
            controller("generic-garbage-collector"), "delete", "configmap", "runtime-config"
        ),
        "the namespace controller deletes the sandbox token": (
            controller("namespace-controller"), "delete", "secret", "sandbox-token"
        ),
        "the root CA publisher updates kube-root-ca.crt": (
            controller("root-ca-cert-publisher"), "replace", "-f",
            touched("configmap", "kube-root-ca.crt"),
        ),
    }  # fmt: skip
    for job, (user, *args) in allowed.items():
        result = kubectl_as(kubectl, user, *args)
        assert result.returncode == 0, f"{job}: {result.stderr}"
    # Only at their jobs: the Deployment controller may write the runtime Deployment by RBAC,
    # but not the object itself; the garbage collector may scale anything by RBAC (and without
    # --use-service-account-credentials it is also the autoscaler), but not here.
    refused = {
        "the Deployment controller changes the runtime Deployment": (
            controller("deployment-controller"), "replace", "-f", touched("deployment", "runtime")
        ),
        "the garbage collector scales the runtime Deployment": (
            controller("generic-garbage-collector"), "scale", "deployment/runtime", "--replicas=2"
        ),
    }  # fmt: skip
    for job, (user, *args) in refused.items():
        result = kubectl_as(kubectl, user, *args)
        assert result.returncode != 0, f"{job} was allowed"
        assert f"ValidatingAdmissionPolicy '{TENANT_POLICY}'" in " ".join(result.stderr.split()), (
            f"{job}: {result.stderr}"
        )


def test_deleting_a_tenant_still_deletes_its_namespace(
    kube: Client, chart_operator: RunningOperator
) -> None:
    """Garbage collection and the namespace controller delete what the policy protects."""
    name = f"chart-gone-{uuid.uuid4().hex[:6]}"
    namespace = f"tenant-{name}"
    tenants.apply(kube, tenants.manifest(name))
    try:
        tenants.wait_condition(kube, name, "SecretsReady", timeout=120)
        policies = {p.metadata.name for p in kube.list(NetworkPolicy, namespace=namespace)}  # type: ignore[union-attr]
        assert {"default-deny", "runtime", "sandbox"} <= policies
        kube.get(RoleBinding, "tenantry-operator", namespace=namespace)
    finally:
        tenants.delete(kube, name)
    wait_until(lambda: tenants.namespace_gone(kube, namespace), f"{namespace} gone", 180)


def test_tenant_namespace_editors_cannot_mint_tokens(tenant_users: dict[str, TenantUser]) -> None:
    """`edit` may create serviceaccounts/token: a token for the runtime's account would be an
    identity its pods never hold. Only kubelets (for projected tokens) and admins mint them."""
    for account in ("runtime", "sandbox", "default"):
        result = run(
            tool("kubectl"), "--kubeconfig", str(tenant_users[EDITOR].kubeconfig), "create",
            "token", account, "--namespace", TENANT, check=False,
        )  # fmt: skip
        assert result.returncode != 0, f"an editor minted a token for {account}"
        message = " ".join(result.stderr.split())
        assert f"ValidatingAdmissionPolicy '{TENANT_POLICY}'" in message, result.stderr
        assert f"Tokens for ServiceAccounts of tenant namespace {TENANT} are refused" in message
