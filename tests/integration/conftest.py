"""Fixtures for tests that run against the local Kubernetes control plane."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tenants
from lightkube import Client, KubeConfig, codecs
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import ConfigMap, Namespace, ServiceAccount
from operator_process import LOGS, TENANTRY, Operator, OperatorProcess, StartOperator
from tenants import OPERATOR_LABEL, SECRET_SOURCE_NAMESPACE
from waiting import wait_until

from tests.support import processes
from tests.support.ports import free_port

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Client:
    return Client(config=KubeConfig.from_file(kubeconfig), field_manager="tenantry-tests")


def namespace_filled(kube: Client, name: str) -> bool:
    accounts = {sa.metadata.name for sa in kube.list(ServiceAccount, namespace=name)}  # type: ignore[union-attr]
    maps = {cm.metadata.name for cm in kube.list(ConfigMap, namespace=name)}  # type: ignore[union-attr]
    return "default" in accounts and "kube-root-ca.crt" in maps


@pytest.fixture
def make_namespace(kube: Client) -> Iterator[Callable[..., str]]:
    """Create namespaces with unique names; delete them when the test ends."""
    created: list[str] = []

    def make(
        prefix: str = "test", labels: dict[str, str] | None = None, fill_timeout: float = 60
    ) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        kube.create(Namespace(metadata=ObjectMeta(name=name, labels=labels or {})))
        created.append(name)
        # kube-controller-manager fills every new namespace; wait, so snapshots start quiet.
        wait_until(
            lambda: namespace_filled(kube, name),
            f"namespace {name} to be filled",
            timeout=fill_timeout,
        )
        return name

    yield make
    for name in created:
        try:
            kube.delete(Namespace, name)
        except ApiError as error:
            if error.status.code != 404:
                raise


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd_installed(kube: Client) -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        for crd in codecs.load_all_yaml(path.read_text()):
            kube.apply(crd, force=True)
    for name in ("agenttenants.tenantry.dev", "agenttenanttemplates.tenantry.dev"):
        wait_until(
            lambda name=name: any(  # type: ignore[misc]
                c.type == "Established" and c.status == "True"
                for c in kube.get(CustomResourceDefinition, name).status.conditions or []  # type: ignore[union-attr]
            ),
            f"the CRD {name} to be established",
        )


# Module-scoped: tests/integration/test_chart_install.py runs its own operator (as the chart's
# identity), and two operators must never reconcile the same tenants at once.
@pytest.fixture(scope="module")
def operator_process(
    kubeconfig: Path, kube: Client, crd_installed: None
) -> Iterator[OperatorProcess]:
    """The operator, run as a user runs it (`tenantry run`), against the local cluster.

    A demo operator (`make demo`) on the same cluster would reconcile the test tenants too, so
    it is stopped first. Tenants labelled with OPERATOR_LABEL belong to the operators a test
    starts itself: this one leaves them alone.
    """
    subprocess.run([sys.executable, str(REPO / "e2e" / "demo.py"), "down"], check=True)
    try:
        kube.create(Namespace(metadata=ObjectMeta(name=SECRET_SOURCE_NAMESPACE)))
    except ApiError as error:
        if error.status.code != 409:
            raise
    log_path = REPO / ".cache" / "test-logs" / "operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    process = OperatorProcess(kubeconfig, log_path)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def operator(operator_process: OperatorProcess) -> Path:
    """A running operator; the path of its log, which failing tests print."""
    if not operator_process.running():  # a fault test killed it and failed before restarting
        operator_process.start()
    return operator_process.log


# Operators a test starts itself, with flags of its own (test_ha.py, test_faults.py): each
# selects only the tenants labelled for that test, so two never reconcile the same tenant.
@pytest.fixture
def start_operator(
    kubeconfig: Path, crd_installed: None, request: pytest.FixtureRequest
) -> Iterator[StartOperator]:
    """Start `tenantry run` processes for one test; stop whatever is left of them afterwards."""
    started: list[Operator] = []
    LOGS.mkdir(parents=True, exist_ok=True)

    def start(name: str, *flags: str) -> Operator:
        port = free_port()
        log = LOGS / f"{request.node.name[:60]}-{name}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                [TENANTRY, "run", "--metrics-address", f"127.0.0.1:{port}", *flags],
                # POD_NAME as the Downward API would set it: the Lease identity starts with it.
                env={
                    **os.environ,
                    "KUBECONFIG": str(kubeconfig),
                    "POD_NAME": name,
                    "TENANTRY_SECRET_SOURCE_NAMESPACE": SECRET_SOURCE_NAMESPACE,
                },
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        started.append(Operator(name, process, log, port))
        return started[-1]

    yield start
    for operator in started:
        processes.stop(operator.process, timeout=15)
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for operator in started:
            print(f"---- last lines of the log of {operator.name} ----")
            print("\n".join(operator.log_text().splitlines()[-40:]))


@pytest.fixture
def labelled_tenants(kube: Client) -> Iterator[Callable[..., list[str]]]:
    """Apply AgentTenants labelled for one test's operators; delete them when the test ends."""
    names: list[str] = []

    def make(shard: str, count: int, spec: dict[str, Any] | None = None) -> list[str]:
        batch = [f"{shard}-{index}-{uuid.uuid4().hex[:4]}" for index in range(count)]
        for name in batch:
            tenants.apply(kube, tenants.manifest(name, spec, labels={OPERATOR_LABEL: shard}))
        names.extend(batch)
        return batch

    yield make
    for name in names:
        tenants.delete(kube, name)
