"""The platform's policy: what a manifest may ask for on this cluster (operator flags)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant
from tenantry.policy import quantity, violations


def tenant(spec: dict[str, Any]) -> AgentTenant:
    return AgentTenant.model_validate({"metadata": {"name": "acme"}, "spec": spec})


def fields(spec: dict[str, Any], **config: Any) -> list[str]:
    return [field for field, _ in violations(tenant(spec), OperatorConfig(**config))]


def test_a_plain_tenant_is_within_the_default_policy() -> None:
    assert fields({}) == []
    assert fields({"namespace": "tenant-acme-prod"}) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"runtime": {"image": "attacker.example/miner:1"}}, "spec.runtime.image"),
        ({"sandbox": {"image": "tenantry/runtime:0.1.0-globex-private"}}, "spec.sandbox.image"),
        ({"sandbox": {"runtimeClassName": "nvidia"}}, "spec.sandbox.runtimeClassName"),
        ({"quota": {"cpu": "17"}}, "spec.quota.cpu"),
        ({"quota": {"cpu": "16001m"}}, "spec.quota.cpu"),
        ({"quota": {"memory": "65Gi"}}, "spec.quota.memory"),
        ({"quota": {"memory": "70G"}}, "spec.quota.memory"),
        ({"quota": {"pods": 101}}, "spec.quota.pods"),
        (
            {"runtime": {"sessions": {"enabled": True, "storage": {"size": "11Gi"}}}},
            "spec.runtime.sessions.storage.size",
        ),
        ({"namespace": "gateway"}, "spec.namespace"),
        ({"namespace": "monitoring"}, "spec.namespace"),
    ],
)
def test_what_the_default_policy_refuses(spec: dict[str, Any], field: str) -> None:
    """Finding: images, runtime classes, quota and namespaces reached past the platform's intent."""
    assert fields(spec) == [field]


def test_the_admin_widens_the_policy_with_flags() -> None:
    config = {
        "allowed_images": "registry.example/agents/, other.example/exact:1",
        "allowed_runtime_classes": "gvisor",
        "max_quota_cpu": "64",
        "max_quota_pods": 500,
        "namespace_pattern": "agents-*",
    }
    spec = {
        "runtime": {"image": "registry.example/agents/acme:2"},
        "sandbox": {"image": "other.example/exact:1", "runtimeClassName": "gvisor"},
        "quota": {"cpu": "64", "pods": 500},
        "namespace": "agents-acme",
    }
    assert fields(spec, **config) == []
    # A prefix is a prefix of the path, and an exact entry is exact.
    assert fields({"runtime": {"image": "registry.example/agentsX/acme:2"}}, **config) == [
        "spec.runtime.image"
    ]
    assert fields({"runtime": {"image": "other.example/exact:2"}}, **config) == [
        "spec.runtime.image"
    ]
    assert fields({"namespace": "tenant-acme"}, **config) == ["spec.namespace"]


def test_each_refusal_names_the_flag_and_the_fix() -> None:
    ((_, message),) = violations(
        tenant({"sandbox": {"runtimeClassName": "nvidia"}}), OperatorConfig()
    )
    assert "--allowed-runtime-classes" in message and "remove the field" in message
    ((_, message),) = violations(tenant({"namespace": "gateway"}), OperatorConfig())
    assert "'tenant-*'" in message and "--namespace-pattern" in message


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("1.5", "1.5"),
        ("8Gi", str(8 * 2**30)),
        ("2k", "2000"),
        ("3M", "3000000"),
    ],
)
def test_quantities(text: str, value: str) -> None:
    assert quantity(text) == Decimal(value)
