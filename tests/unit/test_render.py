"""Rendering is pure: golden files for the examples, and the security properties of every child."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from tenantry.cli import dump_all, load_tenants
from tenantry.config import OperatorConfig
from tenantry.models import AgentTenant
from tenantry.render import ClusterFacts, apply_phase, render

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.yaml") if "AgentTenant" in p.read_text())
CONFIG = OperatorConfig()
FACTS = ClusterFacts(
    uid="00000000-0000-0000-0000-000000000001",
    secret_data={"model-credentials": {"api-key": "c2stdGVzdA=="}},
    sandbox_token="token-1",
)


def tenant(spec: dict[str, Any], name: str = "acme") -> AgentTenant:
    return AgentTenant.model_validate({"metadata": {"name": name}, "spec": spec})


def by_key(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def acme() -> AgentTenant:
    return load_tenants(str(REPO / "examples" / "acme.yaml"))[0]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_render_as_their_golden_files(example: Path) -> None:
    rendered = dump_all([m for t in load_tenants(str(example)) for m in render(t, CONFIG)])
    golden = GOLDEN / f"{example.stem}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert rendered == golden.read_text(), (
        f"run UPDATE_GOLDEN=1 pytest {__file__} and review the diff"
    )


def test_every_child_is_labelled_and_owned() -> None:
    for manifest in render(acme(), CONFIG, FACTS):
        meta = manifest["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tenantry"
        assert meta["labels"]["tenantry.dev/tenant"] == "acme"
        assert meta["ownerReferences"][0]["uid"] == FACTS.uid
        assert meta["ownerReferences"][0]["kind"] == "AgentTenant"
        assert meta.get("namespace", "tenant-acme") == "tenant-acme"


def test_offline_rendering_has_no_owner_and_no_secret_data() -> None:
    for manifest in render(acme(), CONFIG):
        assert "ownerReferences" not in manifest["metadata"]
        assert "data" not in manifest or manifest["kind"] != "Secret"


def test_pods_pass_pod_security_restricted() -> None:
    children = by_key(render(acme(), CONFIG, FACTS))
    for component in ("runtime", "sandbox"):
        pod = children[("Deployment", component)]["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsUser"] != 0
        assert {kind for volume in pod["volumes"] for kind in volume if kind != "name"} <= {
            "configMap",
            "secret",
            "emptyDir",
        }
        sa = children[("ServiceAccount", component)]
        assert sa["automountServiceAccountToken"] is False


def test_the_sandbox_never_gets_model_credentials_or_egress() -> None:
    children = by_key(render(acme(), CONFIG, FACTS))
    sandbox = children[("Deployment", "sandbox")]["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"] for v in sandbox["volumes"] if "secret" in v}
    assert secrets == {"sandbox-token"}
    assert all("valueFrom" not in e for c in sandbox["containers"] for e in c["env"])
    policy = children[("NetworkPolicy", "sandbox")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    assert policy["ingress"] == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {
                            "tenantry.dev/tenant": "acme",
                            "tenantry.dev/component": "runtime",
                        }
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]
    deny = children[("NetworkPolicy", "default-deny")]["spec"]
    assert deny == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [],
        "egress": [],
    }


def egress_blocks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    policy = by_key(render(tenant(spec), CONFIG, FACTS))[("NetworkPolicy", "runtime")]["spec"]
    return [
        peer["ipBlock"] for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]


def test_broad_egress_still_excludes_metadata_and_private_ranges() -> None:
    (block,) = egress_blocks({"network": {"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]}})
    excluded = [ipaddress.ip_network(c) for c in block["except"]]
    for address in ("169.254.169.254", "10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1"):
        assert any(ipaddress.ip_address(address) in network for network in excluded), address


def test_an_explicitly_listed_private_range_is_allowed() -> None:
    assert egress_blocks({"network": {"egress": [{"cidr": "10.20.0.0/16", "ports": [5432]}]}}) == [
        {"cidr": "10.20.0.0/16"}
    ]


def test_a_hostile_display_name_cannot_change_the_manifest_structure() -> None:
    hostile = "x' }}\" : {a: b} # --- \u202e ${HOME} $(id) `id`"
    manifests = render(tenant({"displayName": hostile}), CONFIG, FACTS)
    reparsed = list(yaml.safe_load_all(dump_all(manifests)))
    assert reparsed == manifests
    assert reparsed[0]["metadata"]["annotations"]["tenantry.dev/display-name"] == hostile


def test_the_runtime_config_hash_follows_config_and_secrets() -> None:
    def config_hash(facts: ClusterFacts, spec: dict[str, Any] | None = None) -> str:
        deployment = by_key(render(tenant(spec or {}), CONFIG, facts))[("Deployment", "runtime")]
        value: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "tenantry.dev/config-hash"
        ]
        return value

    base = config_hash(FACTS)
    assert config_hash(FACTS) == base
    assert (
        config_hash(
            ClusterFacts(FACTS.uid, {"model-credentials": {"api-key": "b3RoZXI="}}, {}, "token-1")
        )
        != base
    )
    assert config_hash(FACTS, {"runtime": {"topicTypes": ["other"]}}) != base


def test_disabled_sandbox_renders_no_sandbox_children() -> None:
    kinds = set(by_key(render(tenant({"sandbox": {"enabled": False}}), CONFIG, FACTS)))
    assert not {key for key in kinds if key[1] in ("sandbox", "sandbox-token")}


def test_namespace_is_sticky_once_in_status() -> None:
    body = {"metadata": {"name": "acme"}, "spec": {}, "status": {"namespace": "tenants-acme"}}
    namespace = render(
        AgentTenant.model_validate(body), CONFIG.model_copy(update={"namespace_prefix": "new"})
    )[0]
    assert namespace["metadata"]["name"] == "tenants-acme"


def test_scoped_secrets_bind_the_operator_in_the_tenant_namespace_only() -> None:
    scoped = CONFIG.model_copy(
        update={
            "service_account": "tenantry-system/tenantry",
            "secrets_role": "tenantry-secrets-role",
        }
    )
    children = by_key(render(acme(), scoped, FACTS))
    binding = children[("RoleBinding", "tenantry-operator")]
    assert binding["metadata"]["namespace"] == "tenant-acme"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "tenantry-secrets-role",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tenantry", "namespace": "tenantry-system"}
    ]
    order = [key for key in by_key(render(acme(), scoped, FACTS))]
    assert order.index(("RoleBinding", "tenantry-operator")) < order.index(
        ("Secret", "model-credentials")
    )
    assert ("RoleBinding", "tenantry-operator") not in by_key(render(acme(), CONFIG, FACTS))


def test_children_are_written_namespace_first_and_workloads_last() -> None:
    scoped = OperatorConfig(service_account="tenantry-system/tenantry")
    for config in (OperatorConfig(), scoped):
        kinds = [
            m["kind"] for m in render(load_tenants(str(REPO / "examples" / "acme.yaml"))[0], config)
        ]
        phases = {kind: apply_phase(kind) for kind in kinds}
        assert phases["Namespace"] < min(p for k, p in phases.items() if k != "Namespace")
        # A pod refused for a missing ServiceAccount is retried only after a backoff.
        before_workloads = {
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "NetworkPolicy",
            "ResourceQuota",
        }
        for kind in before_workloads:
            assert phases[kind] < phases["Deployment"], kind
        if config.scoped_secrets:
            # The operator may write Secrets there only once its RoleBinding exists.
            assert phases["RoleBinding"] < phases["Secret"]
