"""Rendering is pure: golden files for the examples, and the security properties of every child."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from tenantry.cli import dump_all, load_tenants
from tenantry.config import OperatorConfig
from tenantry.kinds import BY_KIND, apply_phase
from tenantry.models import AgentTenant
from tenantry.render import ClusterFacts, render

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
    # The one secret it gets is its token, in its env (a mounted file its code could read).
    assert [v for v in sandbox["volumes"] if "emptyDir" not in v] == []
    from_secrets = [e for c in sandbox["containers"] for e in c["env"] if "valueFrom" in e]
    assert from_secrets == [
        {
            "name": "TENANTRY_SANDBOX_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "sandbox-token", "key": "token"}},
        }
    ]
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


def test_two_children_with_one_name_are_refused_whatever_let_them_through() -> None:
    """Finding: a copied Secret named sandbox-token rendered two Secret/sandbox-token manifests,
    applied in turn on alternate passes. The models refuse the name; rendering refuses the pair."""
    from tenantry.models import AgentTenantSpec, SecretRef  # noqa: PLC0415
    from tenantry.render import DuplicateChild  # noqa: PLC0415

    # model_construct skips validation, as a future bug in the models would.
    spec = AgentTenantSpec.model_construct(
        **{
            **acme().spec.__dict__,
            "secrets": [SecretRef.model_construct(name="sandbox-token", from_="acme-openai")],
        }
    )
    smuggled = acme().model_copy(update={"spec": spec})
    with pytest.raises(DuplicateChild, match="Secret sandbox-token would be rendered twice"):
        render(smuggled, CONFIG, FACTS)


def test_every_name_the_operator_renders_is_reserved_from_copied_secrets() -> None:
    from tenantry.models import OPERATOR_CHILD_NAMES, RESERVED_NAME_PREFIX  # noqa: PLC0415

    scoped = OperatorConfig(service_account="tenantry-system/tenantry")
    for config in (CONFIG, scoped):
        for manifest in render(acme(), config, FACTS)[1:]:
            name = manifest["metadata"]["name"]
            copied = {s.name for s in acme().spec.secrets}
            assert (
                name in OPERATOR_CHILD_NAMES
                or name.startswith(RESERVED_NAME_PREFIX)
                or name in copied
            ), name


def test_broad_egress_excludes_every_never_reachable_range() -> None:
    from tenantry.models import NEVER_ALLOWED_RANGES  # noqa: PLC0415

    (v4,) = egress_blocks({"network": {"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]}})
    (v6,) = egress_blocks({"network": {"egress": [{"cidr": "::/0", "ports": [443]}]}})
    excluded = {ipaddress.ip_network(c) for c in v4["except"] + v6["except"]}
    for cidr in NEVER_ALLOWED_RANGES:
        assert ipaddress.ip_network(cidr) in excluded, cidr
    for address in (
        "168.63.129.16",
        "0.1.2.3",
        "64:ff9b::a9fe:a9fe",
        "2002:a9fe:a9fe::1",
        "fe80::1",
    ):
        ip = ipaddress.ip_address(address)
        assert any(ip in network for network in excluded if network.version == ip.version), address


def test_the_clusters_own_cidrs_are_excluded_like_private_ranges() -> None:
    config = OperatorConfig(cluster_cidrs="198.18.0.0/15, 2001:db8:42::/48")  # type: ignore[arg-type]
    assert config.cluster_cidrs == ("198.18.0.0/15", "2001:db8:42::/48")
    spec = {
        "network": {
            "egress": [{"cidr": "0.0.0.0/0", "ports": [443]}, {"cidr": "::/0", "ports": [443]}]
        }
    }
    policy = by_key(render(tenant(spec), config, FACTS))[("NetworkPolicy", "runtime")]["spec"]
    blocks = [
        peer["ipBlock"] for rule in policy["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    assert "198.18.0.0/15" in blocks[0]["except"] and "2001:db8:42::/48" in blocks[1]["except"]


def test_each_tenant_runs_as_users_of_its_own() -> None:
    """Finding: every tenant's pods ran as 65532, so one tenant's processes held the per-user
    process budget of every other tenant's sandbox on the node."""
    from tenantry.render import tenant_uid  # noqa: PLC0415

    def users(name: str) -> dict[str, int]:
        children = by_key(render(tenant({}, name=name), CONFIG, FACTS))
        found = {}
        for component in ("runtime", "sandbox"):
            pod = children[("Deployment", component)]["spec"]["template"]["spec"]
            (container,) = pod["containers"]
            uid = container["securityContext"]["runAsUser"]
            assert pod["securityContext"]["runAsUser"] == uid == pod["securityContext"]["fsGroup"]
            found[component] = uid
        return found

    acme_users, globex_users = users("acme"), users("globex")
    assert acme_users["runtime"] != acme_users["sandbox"]
    assert set(acme_users.values()).isdisjoint(globex_users.values())
    assert all(uid > 65535 for uid in [*acme_users.values(), *globex_users.values()])
    assert acme_users["sandbox"] == tenant_uid(tenant({}, name="acme"), "sandbox")


def test_a_tenants_own_image_is_always_pulled_and_the_default_is_not() -> None:
    config = OperatorConfig(allowed_images="registry.example/agents/")  # type: ignore[arg-type]
    spec = {"runtime": {"image": "registry.example/agents/acme:1"}}
    children = by_key(render(tenant(spec), config, FACTS))
    (runtime,) = children[("Deployment", "runtime")]["spec"]["template"]["spec"]["containers"]
    (sandbox,) = children[("Deployment", "sandbox")]["spec"]["template"]["spec"]["containers"]
    assert (runtime["image"], runtime["imagePullPolicy"]) == (
        "registry.example/agents/acme:1",
        "Always",
    )
    assert (sandbox["image"], sandbox["imagePullPolicy"]) == (config.sandbox_image, "IfNotPresent")


def test_the_sandbox_workspace_is_a_tmpfs_of_a_hard_size() -> None:
    children = by_key(render(acme(), CONFIG, FACTS))
    for component in ("runtime", "sandbox"):
        pod = children[("Deployment", component)]["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]
    (sandbox,) = children[("Deployment", "sandbox")]["spec"]["template"]["spec"]["containers"]
    assert {"name": "TENANTRY_SANDBOX_KEEP_WORKSPACE", "value": "false"} in sandbox["env"]


def test_pods_are_probed_every_second_only_until_they_have_started() -> None:
    """Ready a second after listening, not at the next 10 s readiness tick (workloads.startup_probe)."""
    children = by_key(render(acme(), CONFIG, FACTS))
    budgets = {}
    for component in ("runtime", "sandbox"):
        pod = children[("Deployment", component)]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        startup = container["startupProbe"]
        assert startup["periodSeconds"] == 1
        # What the process answers as soon as it serves: a startup probe that failed because
        # the runtime's sandbox is missing would restart a runtime that is fine.
        assert startup["httpGet"] == container["livenessProbe"]["httpGet"]
        assert startup["httpGet"]["path"] == "/healthz"
        # At rest the pod is asked no more often than before.
        assert container["readinessProbe"]["periodSeconds"] >= 10
        assert container["livenessProbe"]["periodSeconds"] >= 10
        budgets[component] = startup["periodSeconds"] * startup["failureThreshold"]
    # A runtime with sessions may wait 60 s for the one it replaces to let go of the volume
    # (tenantry_runtime.sessions), then refuses with its own message: not restarted first.
    assert budgets["runtime"] > 60
    assert budgets["sandbox"] >= 30


@pytest.mark.parametrize("timeout", [1, 30, 600])
def test_the_sandbox_pod_is_given_time_to_finish_and_audit_its_runs_when_stopped(
    timeout: int,
) -> None:
    """A run may last spec.sandbox.timeoutSeconds; the kubelet's SIGKILL comes
    terminationGracePeriodSeconds after its SIGTERM (30 s unless set), and a run it kills is
    never audited. The server waits for its runs up to their limit and 30 s more
    (tenantry_runtime.sandbox.STOP_MARGIN_SECONDS; tests/runtime checks the two agree)."""
    sandboxed = tenant({"sandbox": {"timeoutSeconds": timeout}})
    children = by_key(render(sandboxed, CONFIG, FACTS))
    pod = children[("Deployment", "sandbox")]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > timeout + 30


def test_no_tenant_namespace_is_ever_among_a_runtimes_callers() -> None:
    policy = by_key(render(acme(), CONFIG, FACTS))[("NetworkPolicy", "runtime")]["spec"]
    for rule in policy["ingress"]:
        for peer in rule["from"]:
            assert {
                "key": "app.kubernetes.io/managed-by",
                "operator": "NotIn",
                "values": ["tenantry"],
            } in peer["namespaceSelector"]["matchExpressions"]


def test_the_table_of_child_kinds_is_exactly_what_render_produces() -> None:
    """kinds.CHILD_KINDS feeds the watches, the writes and the prunes: a kind rendered but
    missing there would never be watched or pruned, one there but never rendered is dead."""
    scoped = OperatorConfig(service_account="tenantry-system/tenantry")
    acme = load_tenants(str(REPO / "examples" / "acme.yaml"))[0]
    with_sessions = tenant({"runtime": {"sessions": {"enabled": True}}})
    rendered = {
        m["kind"]
        for config in (OperatorConfig(), scoped)
        for one in (acme, with_sessions)
        for m in render(one, config)
    }
    assert rendered == set(BY_KIND)


def test_an_agents_config_reaches_runtime_json_as_data() -> None:
    """A config is the kind's to validate; the operator carries it as JSON data, whatever it holds."""
    hostile = {"secret": "faq", "note": '"}, "tenant": "globex', "nested": {"kind": "os.system"}}
    agents = [{"name": "faq", "kind": "faq", "topicType": "faq", "config": json.dumps(hostile)}]
    rendered = by_key(render(tenant({"runtime": {"agents": agents}}), CONFIG, FACTS))
    runtime_json = json.loads(rendered[("ConfigMap", "runtime-config")]["data"]["runtime.json"])
    assert runtime_json["tenant"] == "acme"
    assert runtime_json["agents"] == [
        {"name": "faq", "kind": "faq", "topicType": "faq", "systemMessage": None, "config": hostile}
    ]
    assert runtime_json["secretsDir"] == "/var/run/secrets/tenantry/secrets"


def test_sessions_get_a_bounded_volume_of_the_tenants_own_mounted_by_the_runtime_alone() -> None:
    sessions = {
        "enabled": True,
        "storage": {"size": "2Gi", "storageClassName": "local-sessions"},
        "retention": {"maxSessions": 100, "maxIdleDays": 7, "maxSessionBytes": 65536},
    }
    rendered = by_key(render(tenant({"runtime": {"sessions": sessions}}), CONFIG, FACTS))
    claim = rendered[("PersistentVolumeClaim", "sessions")]
    assert claim["metadata"]["namespace"] == "tenant-acme"
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "AgentTenant"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": "2Gi"}},
        "storageClassName": "local-sessions",
    }
    quota = rendered[("ResourceQuota", "tenant-quota")]["spec"]["hard"]
    assert (quota["persistentvolumeclaims"], quota["requests.storage"]) == ("1", "2Gi")
    runtime = rendered[("Deployment", "runtime")]["spec"]
    assert runtime["strategy"] == {"type": "Recreate"}
    pod = runtime["template"]["spec"]
    assert {"name": "sessions", "persistentVolumeClaim": {"claimName": "sessions"}} in pod[
        "volumes"
    ]
    (container,) = pod["containers"]
    assert {"name": "sessions", "mountPath": "/var/lib/tenantry/sessions"} in container[
        "volumeMounts"
    ]
    sandbox_pod = rendered[("Deployment", "sandbox")]["spec"]["template"]["spec"]
    assert "sessions" not in json.dumps(sandbox_pod)
    runtime_json = json.loads(rendered[("ConfigMap", "runtime-config")]["data"]["runtime.json"])
    assert runtime_json["sessions"] == {
        "dir": "/var/lib/tenantry/sessions",
        "maxSessions": 100,
        "maxIdleDays": 7,
        "maxSessionBytes": 65536,
    }


def test_without_sessions_nothing_of_them_is_rendered_and_no_storage_is_allowed() -> None:
    rendered = render(acme(), CONFIG, FACTS)
    assert "sessions" not in json.dumps(rendered)
    assert "PersistentVolumeClaim" not in {m["kind"] for m in rendered}
    quota = by_key(rendered)[("ResourceQuota", "tenant-quota")]["spec"]["hard"]
    assert (quota["persistentvolumeclaims"], quota["requests.storage"]) == ("0", "0")
