"""Fixtures for tests that run against the local Kubernetes control plane."""

from __future__ import annotations

import os
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
from lightkube.resources.core_v1 import Namespace
from tenants import DRIFT_INTERVAL_SECONDS, SECRET_SOURCE_NAMESPACE
from waiting import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Client:
    return Client(config=KubeConfig.from_file(kubeconfig), field_manager="tenantry-tests")


@pytest.fixture
def make_namespace(kube: Client) -> Iterator[Callable[..., str]]:
    """Create namespaces with unique names; delete them when the test ends."""
    created: list[str] = []

    def make(prefix: str = "test", labels: dict[str, str] | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        kube.create(Namespace(metadata=ObjectMeta(name=name, labels=labels or {})))
        created.append(name)
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
    for crd in codecs.load_all_yaml((REPO / "crds" / "agenttenants.tenantry.dev.yaml").read_text()):
        kube.apply(crd, force=True)
    wait_until(
        lambda: any(
            c.type == "Established" and c.status == "True"
            for c in kube.get(
                CustomResourceDefinition, "agenttenants.tenantry.dev"
            ).status.conditions
            or []  # type: ignore[union-attr]
        ),
        "the AgentTenant CRD to be established",
    )


# Module-scoped: tests/integration/test_chart_install.py runs its own operator (as the chart's identity),
# and two operators must never reconcile the same tenants at once.
@pytest.fixture(scope="module")
def operator(kubeconfig: Path, kube: Client, crd_installed: None) -> Iterator[Path]:
    """The operator, run as a user runs it (`tenantry run`), against the local cluster.

    Yields the path of its log, which failing tests print. A demo operator (`make demo`) on the
    same cluster would reconcile the test tenants too, so it is stopped first.
    """
    subprocess.run([sys.executable, str(REPO / "e2e" / "demo.py"), "down"], check=True)
    try:
        kube.create(Namespace(metadata=ObjectMeta(name=SECRET_SOURCE_NAMESPACE)))
    except ApiError as error:
        if error.status.code != 409:
            raise
    log_path = REPO / ".cache" / "test-logs" / "operator.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "TENANTRY_SECRET_SOURCE_NAMESPACE": SECRET_SOURCE_NAMESPACE,
    }
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tenantry"),
                "run",
                "--drift-interval",
                str(DRIFT_INTERVAL_SECONDS),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
