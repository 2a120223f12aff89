"""Fixtures for tests that run against the local Kubernetes control plane."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

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
        kube.delete(Namespace, name)
