"""Fixtures for the tests on the real node: real containers from the built images, real packets.

The node (e2e/node.py) runs beside the kwok nodes whenever the machine can run it; cluster.py
starts both. For this directory's tests new pods go to the real node alone (`node.py place
real`), and back to the kwok nodes afterwards. A machine that cannot run the node fails these
tests with what it lacks: a skipped test would be counted as a pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from realnode.nodekit import (
    INSIDE_ACME_EGRESS,
    KUBECTL,
    METADATA,
    OUTSIDE_EVERY_EGRESS,
    REPO,
    SECRET_SOURCE,
    TENANTS,
    WAIT_FOR_URL,
    Chart,
    Outside,
    apply,
    diagnosis,
    exec_python,
    kubectl,
    model_key_source,
    neighbour,
    node,
    pods,
    ready,
    tenant_manifest,
    wait_until,
)
from tests.support.chartkit import CHART, RELEASE, RELEASE_NAMESPACE, helm, set_flags


@pytest.fixture(scope="session")
def real_node(kubeconfig: Path) -> str:
    """The real node's name, once it is Ready; a clear failure where this machine cannot run it."""
    if os.environ.get("TENANTRY_REAL_NODE") == "0":
        pytest.fail("TENANTRY_REAL_NODE=0: the cluster runs without the real node these tests need")
    problems = node.missing()
    if problems:
        pytest.fail(
            "the real node cannot run on this machine; it lacks:\n  " + "\n  ".join(problems)
        )
    if not node.node_ready():
        pytest.fail(
            "the real node is not Ready: see the [node] lines of `python3 e2e/cluster.py up` "
            f"and the logs in {node.STATE / 'logs'}"
        )
    return node.NODE_NAME


@pytest.fixture(scope="package")
def on_real_node(real_node: str) -> Iterator[str]:
    """New pods go to the real node alone while the module runs."""
    subprocess.run([sys.executable, str(REPO / "e2e" / "demo.py"), "down"], check=True)
    node.place("real")
    try:
        yield real_node
    finally:
        node.place("kwok")


@pytest.fixture(scope="package")
def outside(on_real_node: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outside]:
    model_log = tmp_path_factory.mktemp("model") / "requests.jsonl"
    processes = []
    try:
        processes.append(node.scripted_model(model_log))
        for address, port in (INSIDE_ACME_EGRESS, OUTSIDE_EVERY_EGRESS, METADATA):
            processes.append(node.stand_in(address, port))
        yield Outside(model_log, processes)
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture(scope="package")
def neighbours(on_real_node: str) -> Iterator[dict[str, str]]:
    """A gateway namespace that acme admits, and an outsider nobody admits."""
    apply(
        *neighbour("e2e-gateway", "edge", {"tenantry.dev/gateway": "true"}),
        *neighbour("e2e-outsider", "intruder", {}),
    )
    wait_until(
        lambda: (
            all(ready(p) for ns in ("e2e-gateway", "e2e-outsider") for p in pods(ns))
            and len(pods("e2e-gateway")) == len(pods("e2e-outsider")) == 1
        ),
        "the gateway and outsider pods",
    )
    try:
        yield {"gateway": "e2e-gateway", "outsider": "e2e-outsider"}
    finally:
        kubectl("delete", "namespace", "e2e-gateway", "e2e-outsider", "--wait=false", check=False)


@pytest.fixture(scope="package")
def chart_operator(on_real_node: str) -> Iterator[Chart]:
    """The operator from the built operator image, installed by the Helm chart, running as the
    chart's least-privilege identity; the API server's address is the one the node reaches."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_until(
        lambda: (
            kubectl("get", "namespace", RELEASE_NAMESPACE, check=False) == ""
            or "Terminating" not in kubectl("get", "namespace", RELEASE_NAMESPACE, check=False)
        ),
        f"namespace {RELEASE_NAMESPACE} to finish terminating",
    )
    apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": RELEASE_NAMESPACE,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
            },
        },
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SECRET_SOURCE}},
    )
    values = {
        # The chart's documented setting: where the API server is, as NetworkPolicy sees it.
        "networkPolicy.apiServer.cidrs[0]": f"{node.HOST_IP}/32",
        "networkPolicy.apiServer.ports[0]": str(node.api_port()),
        # The images were imported into the node's containerd: nothing can be pulled here.
        "image.pullPolicy": "Never",
        "operator.runtimeImagePullPolicy": "Never",
        "operator.driftIntervalSeconds": "30",
    }
    helm(
        "upgrade", "--install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        *set_flags(values), "--wait", "--timeout", "180s", kubeconfig=node.KUBECONFIG,
    )  # fmt: skip
    running = pods(RELEASE_NAMESPACE)
    try:
        yield Chart(RELEASE_NAMESPACE, running[0], values)
    finally:
        helm(
            "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait",
            kubeconfig=node.KUBECONFIG, check=False,
        )  # fmt: skip


@pytest.fixture(scope="package")
def tenants(
    chart_operator: Chart, outside: Outside, neighbours: dict[str, str]
) -> Iterator[list[str]]:
    """acme (admits the gateway, egress to 203.0.113.0/24) and globex (egress to the model only),
    both Ready through the chart's operator; deleted, namespaces and all, at the end."""
    apply(
        *(model_key_source(name) for name in TENANTS),
        *(tenant_manifest(name, egress) for name, egress in TENANTS.items()),
    )
    try:
        for name in TENANTS:
            waited = subprocess.run(
                [KUBECTL, "--kubeconfig", str(node.KUBECONFIG), "wait", "--for=condition=Ready",
                 f"agenttenant/{name}", "--timeout=240s"],
                capture_output=True, text=True, timeout=260, check=False,
            )  # fmt: skip
            if waited.returncode != 0:
                pytest.fail(
                    f"{name} did not become Ready:\n"
                    + diagnosis([f"tenant-{t}" for t in TENANTS] + ["tenantry-system"])
                )
        # Ready means every replica is available; kube-proxy programs the new Service a moment
        # later (until then its address has no route: "Network is unreachable"), as on any
        # cluster. The gateway waits for the Service before the tests send tasks through it.
        (gateway,) = pods(neighbours["gateway"])
        exec_python(neighbours["gateway"], gateway["metadata"]["name"], WAIT_FOR_URL,
                    "http://runtime.tenant-acme.svc.cluster.local:8080/readyz", timeout=90)  # fmt: skip
        yield list(TENANTS)
    finally:
        kubectl("delete", "agenttenants", *TENANTS, "--wait=false", check=False)
        wait_until(
            lambda: (
                not any(
                    kubectl("get", "namespace", f"tenant-{name}", check=False) for name in TENANTS
                )
            ),
            "the tenants' namespaces to go",
            240,
        )
