"""Fixtures for tests that run against the local Kubernetes control plane."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig, codecs
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import ConfigMap, Namespace, ServiceAccount
from operator_process import OperatorProcess
from tenants import SECRET_SOURCE_NAMESPACE
from waiting import wait_until

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

    def make(prefix: str = "test", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        kube.create(Namespace(metadata=ObjectMeta(name=name, labels=labels or {})))
        created.append(name)
        # kube-controller-manager fills every new namespace; wait, so snapshots start quiet.
        wait_until(lambda: namespace_filled(kube, name), f"namespace {name} to be filled")
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
