"""The models enforce, without an API server, what the CRD's schema and CEL rules enforce."""

from __future__ import annotations

import operator
from typing import Any

import pytest
from pydantic import ValidationError
from tenantry import plan
from tenantry.models import PATTERN_MEANINGS, RESERVED_NAMESPACES, AgentTenant, human_errors
from tenantry.plan import Stall, check_namespace_name, check_uid_slot

from tests.support.uid_slots import names_in_one_uid_slot


def tenant(spec: dict[str, Any], name: str = "acme") -> AgentTenant:
    return AgentTenant.model_validate({"metadata": {"name": name}, "spec": spec})


def test_operator_folder_does_not_shadow_the_stdlib() -> None:
    assert operator.__file__ is not None
    assert "site-packages" not in operator.__file__
    assert not operator.__file__.endswith("operator/__init__.py")


def test_defaults() -> None:
    defaults = tenant({}).spec
    assert defaults.sandbox.enabled is True
    assert defaults.runtime.topic_types == ["default"]
    assert defaults.network.egress == [] and defaults.network.ingress_from == []
    assert defaults.quota.pods == 10


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"namespace": "kube-system"}, 'must not be "default" or start with "kube-"'),
        ({"namespace": "default"}, 'must not be "default" or start with "kube-"'),
        ({"namespace": "UPPER"}, "String should match pattern"),
        ({"displayName": "a\nb: c"}, "String should match pattern"),
        ({"network": {"egress": [{"cidr": "10.0.0.1/8", "ports": [443]}]}}, "must be a CIDR"),
        ({"network": {"egress": [{"cidr": "nonsense", "ports": [443]}]}}, "must be a CIDR"),
        (
            {"network": {"egress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}},
            "greater than or equal to 1",
        ),
        (
            {"runtime": {"agents": [{"name": "a", "kind": "autogen_ext.tools.FunctionTool"}]}},
            "spec.runtime.agents.0.kind",
        ),
        (
            {
                "runtime": {
                    "agents": [
                        {"name": "a", "kind": "coder"},
                        {"name": "a", "kind": "coder", "topicType": "b"},
                    ]
                }
            },
            "names must be unique",
        ),
        (
            {
                "runtime": {
                    "agents": [
                        {"name": "a", "kind": "coder"},
                        {"name": "b", "kind": "coder", "topicType": "b"},
                    ]
                }
            },
            "at most one agent of kind coder",
        ),
        (
            {
                "runtime": {
                    "agents": [{"name": "a", "kind": "coder"}, {"name": "b", "kind": "coder"}]
                }
            },
            "its own topicType",
        ),
        (
            {"runtime": {"agents": [{"name": "a", "kind": "assistant"}]}},
            "an assistant agent needs a model",
        ),
        (
            {"runtime": {"agents": [{"name": "a", "kind": "team"}]}},
            "(so does a team)",
        ),
        ({"runtime": {"topicTypes": []}}, "at least 1 item"),
        (
            {
                "runtime": {
                    "model": {"model": "m", "baseUrl": "https://x", "credentialsSecret": "k"}
                }
            },
            "must name one of spec.secrets",
        ),
        (
            {
                "sandbox": {"enabled": False},
                "runtime": {"agents": [{"name": "c", "kind": "coder"}]},
            },
            "needs the sandbox",
        ),
        ({"surprise": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        tenant(spec)
    assert message in str(refused.value)


@pytest.mark.parametrize("name", ["a" * 41, "Acme", "-acme", "acme-", "ac.me", ""])
def test_tenant_names_are_short_dns_labels(name: str) -> None:
    with pytest.raises(ValidationError):
        tenant({}, name=name)


@pytest.mark.parametrize(
    "namespace",
    [
        "kube-system",
        "default",
        "kube-public",
        "kube-node-lease",
        "kube-anything",
        "tenantry-secrets",
        "x" * 64,
    ],
)
def test_the_operator_refuses_reserved_namespaces_even_past_the_api_server(namespace: str) -> None:
    # The CRD's CEL rules refuse most of these at admission; the reconcile refuses them again for
    # objects that got in some other way (an older CRD, a default namespace from the prefix).
    with pytest.raises(Stall) as refused:
        check_namespace_name(namespace, RESERVED_NAMESPACES | {"tenantry-secrets"})
    assert "spec.namespace" in refused.value.message


def test_an_ordinary_namespace_is_accepted() -> None:
    check_namespace_name("tenant-acme", RESERVED_NAMESPACES)


RESERVED_SECRET_NAMES = [
    "sandbox-token",
    "runtime-config",
    "runtime",
    "sandbox",
    "default",
    "default-deny",
    "tenant-quota",
    "tenant-defaults",
    "tenantry-operator",
    "tenantry-anything",
]


@pytest.mark.parametrize("name", RESERVED_SECRET_NAMES)
def test_a_copied_secret_cannot_take_an_operator_childs_name(name: str) -> None:
    """Finding: `secrets: [{name: sandbox-token, ...}]` put a model key into the sandbox."""
    with pytest.raises(ValidationError, match=r"spec.secrets\[\]\.name must not be one of"):
        tenant({"secrets": [{"name": name, "from": "acme-openai"}]})


NEVER_REACHABLE = [
    "169.254.169.254/32",  # cloud metadata, listed on its own
    "169.254.0.0/16",
    "168.63.129.16/32",  # Azure WireServer
    "100.100.100.200/32",
    "0.0.0.0/8",
    "127.0.0.1/32",
    "224.0.0.0/24",
    "64:ff9b::a9fe:a9fe/128",  # the same through NAT64
    "2002:a9fe:a9fe::/48",  # and through 6to4
    "fe80::/64",
    "fd00:ec2::254/128",
    "fd00:ec2::23/128",  # EKS Pod Identity: IAM credentials
    "fd20:ce::254/128",
    "fd00:c1::a9fe:a9fe/128",
    "192.0.0.192/32",
    "::1/128",
]


@pytest.mark.parametrize("cidr", NEVER_REACHABLE)
def test_egress_inside_a_never_reachable_range_is_refused(cidr: str) -> None:
    with pytest.raises(ValidationError, match=r"must not lie inside a range no tenant may reach"):
        tenant({"network": {"egress": [{"cidr": cidr, "ports": [80]}]}})


@pytest.mark.parametrize(
    "cidr", ["10.20.0.0/16", "203.0.113.0/24", "0.0.0.0/0", "::/0", "2001:db8::/32"]
)
def test_egress_outside_or_around_those_ranges_is_accepted(cidr: str) -> None:
    tenant({"network": {"egress": [{"cidr": cidr, "ports": [443]}]}})


def test_an_ipv4_mapped_range_is_refused_in_favour_of_the_ipv4_one() -> None:
    with pytest.raises(ValidationError, match="IPv4-mapped range: list the IPv4 range"):
        tenant({"network": {"egress": [{"cidr": "::ffff:a9fe:a9fe/128", "ports": [80]}]}})


def test_the_younger_of_two_tenants_whose_names_share_a_uid_slot_is_refused() -> None:
    """A name can be searched for that hashes to another tenant's users (a birthday search over
    2^29 slots takes a few tens of thousands of names); the younger tenant is stalled."""
    older, younger = names_in_one_uid_slot("t")
    neighbours = [(older, "2026-01-01T00:00:00Z"), (younger, "2026-02-01T00:00:00Z"), ("x", "")]
    check_uid_slot(older, "2026-01-01T00:00:00Z", neighbours)
    with pytest.raises(Stall, match=f"would run as the same users as tenant '{older}'") as stall:
        check_uid_slot(younger, "2026-02-01T00:00:00Z", neighbours)
    assert stall.value.reason == "UserIdCollision"


def test_a_uid_slot_refusal_names_the_oldest_tenant_of_the_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Finding (a review): the neighbours come in no set order, and with three tenants in one
    slot the message named whichever older one came first, so it could change from pass to
    pass (a status write and an event for nothing)."""
    monkeypatch.setattr(plan, "uid_slot", lambda name: 0)  # every name in one slot
    neighbours = [("b", "2026-02-01T00:00:00Z"), ("a", "2026-01-01T00:00:00Z")]
    with pytest.raises(Stall, match="as tenant 'a'"):
        check_uid_slot("c", "2026-03-01T00:00:00Z", neighbours)
    with pytest.raises(Stall, match="as tenant 'a'"):
        check_uid_slot("c", "2026-03-01T00:00:00Z", neighbours[::-1])


def patterns(schema: object) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["pattern"]} if isinstance(schema.get("pattern"), str) else set()
        return found.union(*(patterns(value) for value in schema.values()))
    if isinstance(schema, list):
        return set().union(*(patterns(value) for value in schema))
    return set()


def test_every_pattern_a_manifest_meets_is_explained_in_words() -> None:
    """A person who mistypes a name reads what a name may be, not a regular expression."""
    definitions = AgentTenant.model_json_schema(by_alias=True)["$defs"]
    # The status is the operator's to write, never a person's.
    spec_patterns = patterns(
        [
            schema
            for name, schema in definitions.items()
            if name not in ("AgentTenantStatus", "Condition")
        ]
    )
    assert spec_patterns <= set(PATTERN_MEANINGS), spec_patterns - set(PATTERN_MEANINGS)
    try:
        tenant({"namespace": "UPPER", "quota": {"cpu": "lots"}})
    except ValidationError as error:
        problems = human_errors(error)
    assert problems == [
        "spec.namespace: must be a DNS-1123 label: lowercase letters, digits and '-', starting "
        "and ending with a letter or digit (got 'UPPER')",
        "spec.quota.cpu: must be a Kubernetes quantity such as 500m, 2 or 8Gi (got 'lots')",
    ]


def test_an_agent_names_a_kind_by_name_with_a_config_the_runtime_validates() -> None:
    config = '{"secret": "s", "n": [1]}'
    agent = {"name": "faq", "kind": "faq", "topicType": "faq", "config": config}
    spec = tenant({"runtime": {"agents": [agent]}}).spec
    assert spec.runtime.agents[0].kind == "faq"
    assert spec.runtime.agents[0].config == config


@pytest.mark.parametrize("kind", ["acme_agents:FAQ", "os.system", "FunctionTool", "a/b"])
def test_an_agent_kind_is_never_a_module_or_a_path(kind: str) -> None:
    with pytest.raises(ValidationError) as refused:
        tenant({"runtime": {"agents": [{"name": "a", "kind": kind}]}})
    assert human_errors(refused.value) == [
        f"spec.runtime.agents.0.kind: must be a DNS-1123 label: lowercase letters, digits and '-', "
        f"starting and ending with a letter or digit (got {kind!r})"
    ]


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ('{"blob": "' + "x" * (16 * 1024) + '"}', "at most 16384 characters"),
        # Finding: kept as a free-form object, this (2 KB) broke Python's json in Kopf's watch and
        # the operator's lists, for every tenant; as text, the models refuse it, and the API server
        # stores a string.
        ('{"a": ' + "[" * 1000 + "]" * 1000 + "}", "nested too deeply"),
        ('{"a": ' + "[" * 17 + "]" * 17 + "}", "nested more than 16 levels"),
        ("[1, 2]", "must be a JSON object"),
        ("{'a': 1}", "not valid JSON"),
    ],
)
def test_an_agent_config_is_json_text_of_bounded_depth(config: str, reason: str) -> None:
    agent = {"name": "a", "kind": "faq", "config": config}
    with pytest.raises(ValidationError) as refused:
        tenant({"runtime": {"agents": [agent]}})
    assert reason in str(refused.value)


def test_session_retention_must_fit_the_sessions_volume() -> None:
    """Found by review: the sum of the histories' bytes is not what they take of a file system
    (whole blocks, an inode each, a temporary copy per task in flight)."""

    def tenant(size: str, **retention: int) -> dict[str, Any]:
        sessions = {"enabled": True, "storage": {"size": size}, "retention": retention}
        return {"metadata": {"name": "a"}, "spec": {"runtime": {"sessions": sessions}}}

    with pytest.raises(ValidationError) as raised:
        AgentTenant.model_validate(tenant("100Mi", maxSessions=1000))
    assert "must fit in storage.size" in str(raised.value)
    # 1000 x 256 KiB + 64 copies of 256 KiB = 266 MiB
    AgentTenant.model_validate(tenant("266Mi", maxSessions=1000))
    with pytest.raises(ValidationError):
        AgentTenant.model_validate(tenant("265Mi", maxSessions=1000))
    # Small histories still take an inode's share each: 100000 x 16 KiB, not 100000 x 4 KiB.
    with pytest.raises(ValidationError):
        AgentTenant.model_validate(tenant("1Gi", maxSessions=100_000, maxSessionBytes=4096))
