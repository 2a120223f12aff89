"""A corpus of hostile and broken AgentTenants (bad_inputs.yaml) against the real API server.

Each one is rejected by the API server with a message naming the field, or accepted and then
Stalled by the operator with a reason and a message naming the field; and a snapshot of every
object outside the offending tenant is identical before and after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import snapshots
import tenants
import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace
from operator_process import OperatorProcess

from tests.support import tally

pytestmark = pytest.mark.cluster
CORPUS = yaml.safe_load((Path(__file__).parent / "bad_inputs.yaml").read_text())
SHARED_SECRET = "bad-inputs-shared"
FOREIGN_SECRET = "bad-inputs-foreign"


@pytest.fixture(scope="module")
def neighbours(kube: Client, operator_process: OperatorProcess) -> Iterator[dict[str, Any]]:
    """The things the corpus refers to: a user's namespace, another tenant, source Secrets."""
    suffix = uuid.uuid4().hex[:6]
    # Inside the platform's tenant namespace pattern (tenant-*), so the ownership check decides.
    user_namespace = f"tenant-user-{suffix}"
    kube.create(Namespace(metadata=ObjectMeta(name=user_namespace)))
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name="precious", namespace=user_namespace), data={"keep": "me"}
        )
    )
    other = f"bystander-{suffix}"
    tenants.apply(kube, tenants.manifest(other))
    tenants.wait_condition(kube, other, "Ready")
    tenants.source_secret(kube, FOREIGN_SECRET, allowed="someone-else")
    yield {
        "USER_NAMESPACE": user_namespace,
        "OTHER_TENANT_NAMESPACE": f"tenant-{other}",
        "LONG_IMAGE": "a" * 600,
        "LONG_DISPLAY_NAME": "x" * 129,
        "LONG_NAMESPACE": "a" * 64,
        "LONG_TENANT_NAME": "a" * 41,
        "LONG_TEXT": "x" * 5000,
        "SEVENTEEN_AGENTS": [
            {"name": f"a{i}", "kind": "coder", "topicType": f"t{i}"} for i in range(17)
        ],
        "SHARED_SECRET": SHARED_SECRET,
        "FOREIGN_SECRET": FOREIGN_SECRET,
    }
    tenants.delete(kube, other)
    kube.delete(Namespace, user_namespace)


def substitute(value: Any, names: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return names[value[2:-1]]
    return value


@pytest.mark.parametrize("case", CORPUS, ids=[c["case"] for c in CORPUS])
def test_bad_input_is_refused_and_touches_nothing(
    kube: Client, neighbours: dict[str, Any], case: dict[str, Any]
) -> None:
    name = substitute(case.get("name"), neighbours) or f"bad-{uuid.uuid4().hex[:6]}"
    spec = substitute(case["spec"], neighbours)
    tenants.source_secret(kube, SHARED_SECRET, allowed=name)
    snapshots.settle(kube)
    before = snapshots.snapshot(kube, exclude_tenants=frozenset({name}))
    tally.counts["bad inputs tried"] += 1
    try:
        if "rejected" in case:
            with pytest.raises(ApiError) as refused:
                tenants.apply(kube, tenants.manifest(name, spec))
            assert refused.value.status.code in (400, 422, 500), refused.value.status
            assert case["rejected"] in str(refused.value.status.message)
            assert tenants.get(kube, name) is None
        else:
            tenants.apply(kube, tenants.manifest(name, spec))
            stalled = tenants.wait_condition(kube, name, "Stalled", reason=case["stalled"])
            assert case["names"] in stalled["message"], stalled
            assert tenants.condition(kube, name, "Ready")["status"] == "False"
        after = snapshots.snapshot(kube, exclude_tenants=frozenset({name}))
        changes = snapshots.differences(before, after)
        tally.counts["objects lost"] += len(changes["lost"])
        assert changes == {"lost": [], "added": [], "changed": []}
    finally:
        if tenants.get(kube, name) is not None:
            tenants.delete(kube, name)
