"""The AgentTenant API: pydantic models of spec and status, the one source of truth.

The CRD's OpenAPI schema is generated from these models (see `crd.py`), so every constraint
here is enforced twice: by the API server when a manifest is applied (schema and CEL rules),
and by pydantic when the operator or `tenantry render` reads it. CEL rules are attached with
`cel(...)`; they are ignored by pydantic, which enforces the same rules with validators.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from tenantry import names

GROUP: Final = "tenantry.dev"
VERSION: Final = "v1alpha1"
KIND: Final = "AgentTenant"
PLURAL: Final = "agenttenants"
API_VERSION: Final = "tenantry.dev/v1alpha1"

# A tenant name becomes part of a namespace name ("<prefix>-<name>", at most 63 characters) and
# of every TopicId source, so it is a DNS-1123 label short enough to leave room for a prefix.
TENANT_NAME_MAX = 40
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Kubernetes resource quantities such as "500m", "2", "8Gi".
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
# Printable text only: no control characters, so nothing can break a line in a log or manifest.
PRINTABLE = r"^[^\x00-\x1F\x7F]*$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"
HTTP_URL = r"^https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%-]+$"
SECRET_KEY = r"^[-._A-Za-z0-9]+$"  # noqa: S105 - the pattern of a key in a Secret

# What each pattern means, in words: pydantic's own message shows the regular expression.
PATTERN_MEANINGS: Final = {
    DNS_LABEL: "must be a DNS-1123 label: lowercase letters, digits and '-', starting and "
    "ending with a letter or digit",
    DNS_SUBDOMAIN: "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', each "
    "part starting and ending with a letter or digit",
    QUANTITY: "must be a Kubernetes quantity such as 500m, 2 or 8Gi",
    PRINTABLE: "must be printable text: no line breaks, tabs or other control characters",
    LABEL_KEY: "must be a label key: an optional DNS subdomain and '/', then letters, digits, "
    "'-', '_' and '.', starting and ending with a letter or digit",
    LABEL_VALUE: "must be a label value: letters, digits, '-', '_' and '.', starting and ending "
    "with a letter or digit",
    IMAGE: "must be an image reference such as registry.example.com/team/agent:1.2",
    HTTP_URL: "must be an http:// or https:// URL",
    SECRET_KEY: "must be a Secret key: letters, digits, '-', '_' and '.'",
}


def human_errors(error: ValidationError) -> list[str]:
    """Each problem of a validation error as "field.path: what is wrong", in words people read:
    the one place the CLI, the operator's Stalled messages and its flags turn errors into text."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if item["type"] == "value_error":  # our own validators' words, without pydantic's prefix
            message = message.removeprefix("Value error, ")
        if item["type"] == "string_pattern_mismatch":
            meaning = PATTERN_MEANINGS.get((item.get("ctx") or {}).get("pattern", ""))
            if meaning is not None:
                message = f"{meaning} (got {str(item['input'])[:80]!r})"
        problems.append(f"{path}: {message}" if path else message)
    return problems


DnsLabel = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
DnsSubdomain = Annotated[
    str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
]
Quantity = Annotated[str, StringConstraints(max_length=32, pattern=QUANTITY)]
Image = Annotated[str, StringConstraints(min_length=1, max_length=512, pattern=IMAGE)]
LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=317, pattern=LABEL_KEY)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]
TopicType = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]

# Namespaces the operator never uses for a tenant, whatever the manifest says.
RESERVED_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})

# The names of the children the operator renders in a tenant namespace (from tenantry.names,
# which the render uses too). A Secret the manifest names is copied under its own name, so it
# must never take one of these: `sandbox-token` is what the sandbox mounts, and a model key
# copied under that name would land in the sandbox's filesystem. The prefix keeps room for
# children to come (and covers the operator's RoleBinding, `tenantry-operator`).
OPERATOR_CHILD_NAMES = tuple(
    sorted(
        {
            names.DEFAULT_ACCOUNT,
            names.DEFAULT_DENY,
            names.RUNTIME,
            names.RUNTIME_CONFIG,
            names.SANDBOX,
            names.SANDBOX_TOKEN_SECRET,
            names.LIMITS,
            names.QUOTA,
        }
    )
)
RESERVED_NAME_PREFIX = "tenantry-"
RESERVED_SECRET_NAME_MESSAGE = (
    f"spec.secrets[].name must not be one of {', '.join(OPERATOR_CHILD_NAMES)} or start with "
    f"{RESERVED_NAME_PREFIX!r}: those names belong to the operator's own children; copy the Secret "
    "under another name"
)

# Destinations no tenant may ever reach, listed or not: cloud metadata and link-local addresses,
# "this network", loopback, multicast and reserved space, and the IPv6 ranges that carry an IPv4
# address to wherever it points (NAT64, 6to4, Teredo). A listed CIDR inside one is refused; a
# broader one is carved around it (render.policies.egress_ip_block). IPv4-mapped IPv6 (::ffff:0:0/96) is
# refused outright instead: Kubernetes reads such a CIDR as the IPv4 range it maps (so it cannot
# be carved out of ::/0), and a socket sends to it over IPv4, where the IPv4 rules apply.
NEVER_ALLOWED_RANGES = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "168.63.129.16/32",  # Azure WireServer and its DNS
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "2001::/32",
    "2002::/16",
    "fe80::/10",
    "192.0.0.0/24",  # IETF protocol assignments; Oracle Cloud's legacy metadata 192.0.0.192
    "fd00:ec2::/32",  # AWS's IPv6 services: metadata (::254), EKS Pod Identity (::23), DNS
    "fd20:ce::254/128",  # Google Cloud metadata over IPv6
    "fd00:c1::a9fe:a9fe/128",  # Oracle Cloud metadata over IPv6
    "ff00::/8",
)
# Parsed once: a tenant's egress rules are checked against them on every pass.
NEVER_ALLOWED_NETWORKS = tuple(map(ipaddress.ip_network, NEVER_ALLOWED_RANGES))
NEVER_ALLOWED_MESSAGE = (
    "spec.network.egress[].cidr must not lie inside a range no tenant may reach (link-local and "
    "cloud metadata, loopback, this-network, multicast and reserved ranges, and the IPv6 ranges "
    f"that embed IPv4 addresses: {', '.join(NEVER_ALLOWED_RANGES)}): list the real destination instead"
)


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule for `x-kubernetes-validations`."""
    validation = {"rule": rule, "message": message}
    if field_path:
        validation["fieldPath"] = field_path
    return validation


def schema_extra(*rules: dict[str, str], **extra: Any) -> dict[str, Any]:
    """`json_schema_extra` for a model or field: CEL rules plus other schema keys."""
    result: dict[str, Any] = dict(extra)
    if rules:
        result["x-kubernetes-validations"] = list(rules)
    return result


_QUANTITY_SUFFIXES = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
}


def quantity(text: str) -> Decimal:
    """A Kubernetes quantity ("500m", "2", "8Gi", as QUANTITY allows) as a number."""
    number = text.rstrip("kKMGTim")
    suffix = text[len(number) :]
    if suffix not in _QUANTITY_SUFFIXES:
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as 500m, 2 or 8Gi")
    try:
        return Decimal(number) * _QUANTITY_SUFFIXES[suffix]
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a Kubernetes quantity such as 500m, 2 or 8Gi") from None


class Model(BaseModel):
    """Base of every API model: camelCase names, unknown fields refused, immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ResourceList(Model):
    """CPU and memory, as Kubernetes quantities."""

    cpu: Quantity | None = Field(None, description='CPU, for example "500m" or "2".')
    memory: Quantity | None = Field(None, description='Memory, for example "512Mi" or "2Gi".')


class Resources(Model):
    """Compute requests and limits of a container."""

    requests: ResourceList = Field(
        default_factory=lambda: ResourceList(cpu="100m", memory="256Mi"),
        description="What the scheduler reserves for the container.",
    )
    limits: ResourceList = Field(
        default_factory=lambda: ResourceList(cpu="1", memory="1Gi"),
        description="The most the container may use.",
    )


# The agent kinds built into the runtime image; an image built FROM it may add more, which a
# manifest names the same way (docs/agents.md).
ASSISTANT: Final = "assistant"
TEAM: Final = "team"
CODER: Final = "coder"
# An agent's config is validated by its kind in the runtime; here only its size is bounded.
MAX_AGENT_CONFIG_BYTES = 16 * 1024
MAX_AGENT_CONFIG_DEPTH = 16


def json_depth(value: Any) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        pending.extend((child, depth + 1) for child in children)
    return deepest


def parse_agent_config(text: str) -> dict[str, Any]:
    """An agent's `config` text as the object it must be; ValueError saying why not."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    if json_depth(value) > MAX_AGENT_CONFIG_DEPTH:
        raise ValueError(f"nested more than {MAX_AGENT_CONFIG_DEPTH} levels")
    return value


class Agent(Model):
    """A declarative agent of a kind the runtime image has, on one topic type of this tenant."""

    name: DnsLabel = Field(description="The agent type name, unique in the tenant.")
    kind: DnsLabel = Field(
        description="The name of an agent kind installed in the runtime image: `assistant` (a model) "
        "and `coder` (runs code in the sandbox) are built in; `python -m tenantry_runtime kinds` "
        "lists the kinds of an image. A name, never a module: the runtime refuses a kind it does not have."
    )
    # JSON text, not a free-form object: an object kept with x-kubernetes-preserve-unknown-fields
    # may nest as deep as the API server allows (10,000 levels), and Python's json gives up near
    # 1,000, so one such tenant would break the operator's watches and lists for every tenant
    # (found by review; tests/unit/test_models.py::test_an_agent_config_is_json_text_of_bounded_depth).
    config: Annotated[str, StringConstraints(max_length=MAX_AGENT_CONFIG_BYTES)] | None = Field(
        None,
        description="The agent's configuration: a JSON object, as text (at most "
        f"{MAX_AGENT_CONFIG_BYTES // 1024} KiB, nested at most {MAX_AGENT_CONFIG_DEPTH} levels), which its kind "
        "validates when the runtime starts; `python -m tenantry_runtime kinds` prints each kind's schema.",
    )
    topic_type: TopicType = Field(
        "default",
        alias="topicType",
        description="The topic type the agent subscribes to; the topic source is always the tenant.",
    )
    system_message: Annotated[str, StringConstraints(max_length=4096)] | None = Field(
        None, alias="systemMessage", description="The system message of an assistant."
    )


class ModelEndpoint(Model):
    """The OpenAI-compatible model endpoint of the tenant's assistants."""

    model: Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=PRINTABLE)] = (
        Field(description='The model name, for example "gpt-4.1-mini".')
    )
    base_url: Annotated[str, StringConstraints(max_length=2048, pattern=HTTP_URL)] = Field(
        alias="baseUrl", description="The base URL of the OpenAI-compatible API."
    )
    credentials_secret: DnsSubdomain = Field(
        alias="credentialsSecret",
        description="The name of one of `spec.secrets` that holds the API key; only the runtime mounts it.",
    )
    credentials_key: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=SECRET_KEY)
    ] = Field(
        "api-key", alias="credentialsKey", description="The key of the API key in that Secret."
    )


# One agent per topic type keeps every task's path deterministic: a publish has exactly one
# subscriber. The runtime refuses other configurations; the API server refuses them first.
AGENT_TOPICS_UNIQUE = cel(
    "self.all(a, self.exists_one(b, b.topicType == a.topicType))",
    "spec.runtime.agents: give each agent its own topicType",
)
ONE_CODER = cel(
    "self.filter(a, a.kind == 'coder').size() <= 1",
    "spec.runtime.agents: at most one agent of kind coder",
)


# Objects the API server defaults to {} so that their fields' defaults show in stored objects.
DEFAULTED: dict[str, Any] = {"default": {}}


SESSIONS_FIT_MESSAGE = (
    "retention.maxSessions histories of retention.maxSessionBytes (each in whole 4 KiB blocks, "
    "at least 16 KiB: a file system's inodes), and a copy for each of 64 tasks in flight, must "
    "fit in storage.size: grow the volume, or keep fewer or smaller sessions"
)


class SessionStorage(Model):
    """The tenant's own volume for session histories: a PersistentVolumeClaim in its namespace."""

    size: Quantity = Field(
        "1Gi", description="The claim's size; it can grow (where the class allows) but not shrink."
    )
    storage_class_name: DnsSubdomain | None = Field(
        None,
        alias="storageClassName",
        description="The StorageClass of the claim; the cluster's default class when empty. Immutable.",
    )


class SessionRetention(Model):
    """How much history the runtime keeps (it enforces these itself, and audits what it forgets)."""

    max_sessions: int = Field(
        1000,
        ge=1,
        le=100_000,
        alias="maxSessions",
        description="Sessions kept; beyond, the least recently used are forgotten.",
    )
    max_idle_days: int = Field(
        30,
        ge=1,
        le=3650,
        alias="maxIdleDays",
        description="A session idle this many days is forgotten.",
    )
    max_session_bytes: int = Field(
        256 * 1024,
        ge=4096,
        # Loading or saving a history holds about three times its size in memory (measured by
        # review), in each of up to 64 tasks in flight: 2 MiB keeps that near 400 MiB.
        le=2 * 1024 * 1024,
        alias="maxSessionBytes",
        description="The most one session's stored history holds; its oldest exchanges go first.",
    )


class Sessions(Model):
    """Conversations that continue (`POST /v1/sessions/{id}/tasks`), kept across restarts."""

    enabled: bool = Field(
        False,
        description="Whether the runtime keeps sessions. Turning it off deletes the claim: the histories go "
        "with its volume, unless the volume's reclaim policy keeps it (Retain).",
    )
    storage: SessionStorage = Field(default_factory=SessionStorage, json_schema_extra=DEFAULTED)
    retention: SessionRetention = Field(
        default_factory=SessionRetention, json_schema_extra=DEFAULTED
    )

    @model_validator(mode="after")
    def _retention_fits_the_volume(self) -> Sessions:
        if self.enabled and sessions_need(self.retention) > quantity(self.storage.size):
            raise ValueError(SESSIONS_FIT_MESSAGE)
        return self


FILE_SYSTEM_BLOCK = 4096
BYTES_PER_INODE = 16 * 1024  # ext4's default: a volume holds at most one file per 16 KiB
TASKS_IN_FLIGHT = 64  # the runtime's default TENANTRY_MAX_TASKS_IN_FLIGHT


def sessions_need(retention: SessionRetention) -> int:
    """What the histories may take of their volume, found by review to be more than the sum of
    their bytes: each file takes whole blocks and an inode (ext4 has one per 16 KiB), and every
    task in flight writes a temporary copy of its history beside the old one."""
    blocks = -(-retention.max_session_bytes // FILE_SYSTEM_BLOCK) * FILE_SYSTEM_BLOCK
    per_session = max(blocks, BYTES_PER_INODE)
    return retention.max_sessions * per_session + TASKS_IN_FLIGHT * blocks


class Runtime(Model):
    """The tenant's AutoGen runtime."""

    image: Image | None = Field(
        None, description="The runtime image; the operator's default when empty."
    )
    topic_types: Annotated[list[TopicType], Field(min_length=1, max_length=32)] = Field(
        default_factory=lambda: ["default"],
        alias="topicTypes",
        description="The topic types served. The topic source is always the tenant's name.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    agents: Annotated[list[Agent], Field(max_length=16)] = Field(
        default_factory=list,
        description="Declarative agents, of kinds from an allowlist only, each on its own topic type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **schema_extra(AGENT_TOPICS_UNIQUE, ONE_CODER),
        },
    )
    model: ModelEndpoint | None = Field(None, description="The model endpoint used by assistants.")
    resources: Resources = Field(
        default_factory=Resources, description="Runtime container resources."
    )
    sessions: Sessions = Field(
        default_factory=Sessions,
        json_schema_extra=DEFAULTED,
        description="Session histories in the tenant's own volume; off by default.",
    )


class Sandbox(Model):
    """The sandboxed code executor; it has no network egress and no model credentials."""

    enabled: bool = Field(True, description="Whether the tenant gets a sandbox.")
    image: Image | None = Field(
        None, description="The sandbox image; the operator's default when empty."
    )
    runtime_class_name: DnsSubdomain | None = Field(
        None,
        alias="runtimeClassName",
        description='A RuntimeClass such as "gvisor" for a stronger boundary.',
    )
    timeout_seconds: int = Field(
        30,
        ge=1,
        le=600,
        alias="timeoutSeconds",
        description="Wall-clock limit of one code execution.",
    )
    keep_workspace: bool = Field(
        False,
        alias="keepWorkspace",
        description=(
            "Keep the files code writes from one task to the next. By default each task starts "
            "with an empty workspace, so nothing one task's code leaves behind reaches another."
        ),
    )
    resources: Resources = Field(
        default_factory=Resources, description="Sandbox container resources."
    )


class NamespaceSelector(Model):
    """Namespaces selected by their labels."""

    match_labels: Annotated[dict[LabelKey, LabelValue], Field(min_length=1, max_length=16)] = Field(
        alias="matchLabels", description="Labels a namespace must carry, all of them."
    )


class IngressPeer(Model):
    """Callers allowed to reach the runtime's API."""

    namespace_selector: NamespaceSelector = Field(alias="namespaceSelector")


CIDR_MESSAGE = (
    'must be a CIDR with no host bits set, such as "203.0.113.0/24" or "2001:db8::/32" '
    "(IPv4-mapped IPv6 ranges are not accepted: list the IPv4 range)"
)


class EgressRule(Model):
    """A destination the runtime may reach, for example a model API."""

    cidr: Annotated[str, StringConstraints(min_length=1, max_length=43)] = Field(
        description='An IP range in CIDR notation, for example "203.0.113.0/24".',
        json_schema_extra=schema_extra(
            # isCIDR is false for IPv4-mapped IPv6 ranges, so this refuses those too.
            cel(
                "isCIDR(self) && cidr(self) == cidr(self).masked()",
                CIDR_MESSAGE,
            ),
            cel(
                "!isCIDR(self) || !["
                + ", ".join(f"'{r}'" for r in NEVER_ALLOWED_RANGES)
                + "].exists(r, cidr(r).containsCIDR(self))",
                NEVER_ALLOWED_MESSAGE,
            ),
        ),
    )
    ports: Annotated[
        list[Annotated[int, Field(ge=1, le=65535)]], Field(min_length=1, max_length=16)
    ] = Field(
        description="TCP ports, each from 1 to 65535.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _cidr_is_valid(self) -> EgressRule:
        try:
            network = ipaddress.ip_network(self.cidr, strict=True)
        except ValueError as error:
            raise ValueError(f"cidr: {CIDR_MESSAGE} ({error})") from None
        if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped:
            raise ValueError(f"cidr: {CIDR_MESSAGE} (an IPv4-mapped range: list the IPv4 range)")
        if any(
            network.version == never.version and network.subnet_of(never)  # type: ignore[arg-type]
            for never in NEVER_ALLOWED_NETWORKS
        ):
            raise ValueError(NEVER_ALLOWED_MESSAGE)
        return self


class Network(Model):
    """Who may call the runtime, and where the runtime may connect. Everything else is denied."""

    ingress_from: Annotated[list[IngressPeer], Field(max_length=16)] = Field(
        default_factory=list,
        alias="ingressFrom",
        description="Namespaces whose pods may call the runtime API. None by default.",
    )
    egress: Annotated[list[EgressRule], Field(max_length=32)] = Field(
        default_factory=list,
        description="Destinations the runtime may reach besides DNS and its sandbox. The sandbox gets none.",
    )


RESERVED_SECRET_NAME = cel(
    "!(self.name in ["
    + ", ".join(f"'{n}'" for n in OPERATOR_CHILD_NAMES)
    + f"]) && !self.name.startsWith('{RESERVED_NAME_PREFIX}')",
    RESERVED_SECRET_NAME_MESSAGE,
    ".name",
)


class SecretRef(Model):
    """A Secret copied into the tenant namespace from the operator's secret-source namespace."""

    model_config = ConfigDict(json_schema_extra=schema_extra(RESERVED_SECRET_NAME))

    name: DnsSubdomain = Field(
        description=(
            "The Secret's name in the tenant namespace; not a name of the operator's own children "
            f"({', '.join(OPERATOR_CHILD_NAMES)}, or {RESERVED_NAME_PREFIX}*)."
        )
    )
    from_: DnsSubdomain = Field(
        alias="from",
        description=(
            "The Secret in the operator's secret-source namespace. It must list this tenant in its "
            "`tenantry.dev/allowed-tenants` annotation."
        ),
    )

    @model_validator(mode="after")
    def _name_is_not_reserved(self) -> SecretRef:
        if self.name in OPERATOR_CHILD_NAMES or self.name.startswith(RESERVED_NAME_PREFIX):
            raise ValueError(RESERVED_SECRET_NAME_MESSAGE)
        return self


class Quota(Model):
    """The tenant namespace's ResourceQuota."""

    cpu: Quantity = Field("4", description="Total CPU requests and limits.")
    memory: Quantity = Field("8Gi", description="Total memory requests and limits.")
    pods: int = Field(10, ge=1, le=1000, description="Number of pods.")


NAMESPACE_IMMUTABLE_MESSAGE = (
    "spec.namespace is immutable: create a new AgentTenant to move a tenant to another namespace"
)
# Two rules: a string comparison at the spec level is estimated far over the CEL cost budget,
# so the value is compared on the field and only its presence on the spec.
NAMESPACE_IMMUTABLE = cel(
    "has(self.namespace) == has(oldSelf.namespace)", NAMESPACE_IMMUTABLE_MESSAGE
)
NAMESPACE_VALUE_IMMUTABLE = cel("self == oldSelf", NAMESPACE_IMMUTABLE_MESSAGE)
NAMESPACE_NOT_RESERVED = cel(
    "!has(self.namespace) || (!self.namespace.startsWith('kube-') && self.namespace != 'default')",
    'spec.namespace must not be "default" or start with "kube-": choose a namespace of the tenant\'s own',
)
MODEL_SECRET_LISTED = cel(
    "!has(self.runtime) || !has(self.runtime.model) || (has(self.secrets) && "
    "self.secrets.exists(s, s.name == self.runtime.model.credentialsSecret))",
    "spec.runtime.model.credentialsSecret must name one of spec.secrets",
)
CODER_NEEDS_SANDBOX = cel(
    "!has(self.runtime) || !has(self.runtime.agents) || !self.runtime.agents.exists(a, a.kind == 'coder') || "
    "!has(self.sandbox) || !has(self.sandbox.enabled) || self.sandbox.enabled",
    "a coder agent needs the sandbox: set spec.sandbox.enabled to true or remove the coder agent",
)

# The built-in kinds that call the model; a platform team's kind that needs one is refused by the
# runtime instead (RuntimeConfigRefused), which alone knows its kinds.
ASSISTANT_NEEDS_MODEL = cel(
    "!has(self.runtime) || !has(self.runtime.agents) || "
    "!self.runtime.agents.exists(a, a.kind == 'assistant' || a.kind == 'team') || "
    "has(self.runtime.model)",
    "an assistant agent needs a model (so does a team): set spec.runtime.model or remove the agent",
)


class AgentTenantSpec(Model):
    """The desired state of one tenant."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            NAMESPACE_IMMUTABLE,
            NAMESPACE_NOT_RESERVED,
            MODEL_SECRET_LISTED,
            CODER_NEEDS_SANDBOX,
            ASSISTANT_NEEDS_MODEL,
        )
    )

    display_name: Annotated[str, StringConstraints(max_length=128, pattern=PRINTABLE)] | None = (
        Field(None, alias="displayName", description="A human name for the tenant.")
    )
    namespace: DnsLabel | None = Field(
        None,
        description='The tenant namespace; "<prefix>-<tenant name>" when empty. Immutable.',
        json_schema_extra=schema_extra(NAMESPACE_VALUE_IMMUTABLE),
    )
    runtime: Runtime = Field(
        default_factory=Runtime,
        json_schema_extra=DEFAULTED,
        description="The tenant's AutoGen runtime.",
    )
    sandbox: Sandbox = Field(
        default_factory=Sandbox,
        json_schema_extra=DEFAULTED,
        description="The tenant's sandboxed code executor.",
    )
    network: Network = Field(
        default_factory=Network,
        json_schema_extra=DEFAULTED,
        description="Network access; default deny.",
    )
    secrets: Annotated[list[SecretRef], Field(max_length=16)] = Field(
        default_factory=list,
        description="Secrets copied into the tenant namespace for the runtime.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    quota: Quota = Field(
        default_factory=Quota,
        json_schema_extra=DEFAULTED,
        description="The namespace's ResourceQuota.",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> AgentTenantSpec:
        # The same rules as the CEL ones above, for manifests read without an API server.
        if self.namespace and (self.namespace.startswith("kube-") or self.namespace == "default"):
            raise ValueError(NAMESPACE_NOT_RESERVED["message"])
        model = self.runtime.model
        if model and model.credentials_secret not in {s.name for s in self.secrets}:
            raise ValueError(MODEL_SECRET_LISTED["message"])
        if not self.sandbox.enabled and any(a.kind == CODER for a in self.runtime.agents):
            raise ValueError(CODER_NEEDS_SANDBOX["message"])
        agents = self.runtime.agents
        if not model and any(a.kind in (ASSISTANT, TEAM) for a in agents):
            raise ValueError(ASSISTANT_NEEDS_MODEL["message"])
        if len({a.name for a in agents}) != len(agents):
            raise ValueError("spec.runtime.agents: agent names must be unique")
        if len({a.topic_type for a in agents}) != len(agents):
            raise ValueError(AGENT_TOPICS_UNIQUE["message"])
        if sum(a.kind == CODER for a in agents) > 1:
            raise ValueError(ONE_CODER["message"])
        for index, agent in enumerate(agents):
            if agent.config is not None:
                try:
                    parse_agent_config(agent.config)
                except ValueError as error:
                    raise ValueError(
                        f"spec.runtime.agents[{index}].config: {error}: write the agent's config as "
                        "one JSON object"
                    ) from None
        secret_names = [s.name for s in self.secrets]
        if len(secret_names) != len(set(secret_names)):
            raise ValueError("spec.secrets: secret names must be unique")
        return self


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(Model):
    """A condition in the shape of the Kubernetes API conventions (metav1.Condition)."""

    type: str = Field(max_length=316)
    status: ConditionStatus
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field("", max_length=32768)
    last_transition_time: str = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(None, alias="observedGeneration", ge=0)


class AgentTenantStatus(Model):
    """The observed state of one tenant, written only by the operator."""

    observed_generation: int | None = Field(None, alias="observedGeneration")
    namespace: str | None = Field(None, description="The tenant namespace in use.")
    topic_source: str | None = Field(
        None, alias="topicSource", description="The TopicId source of every topic."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled and one per child group.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class Metadata(Model):
    """The parts of an object's metadata the operator reads."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=TENANT_NAME_MAX, pattern=DNS_LABEL)
    ]
    uid: str | None = None
    generation: int | None = None
    # What AgentTenantTemplates select tenants by, and hand their templates (render/templates.py).
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AgentTenant(Model):
    """One tenant: a namespace, an AutoGen runtime, a sandbox, policies, secrets and quota."""

    model_config = ConfigDict(
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        json_schema_extra=schema_extra(
            cel(
                f"self.metadata.name.size() <= {TENANT_NAME_MAX} && self.metadata.name.matches('{DNS_LABEL}')",
                f"metadata.name must be a DNS label of at most {TENANT_NAME_MAX} characters: "
                "lower-case letters, digits and '-', starting and ending with a letter or digit",
            )
        ),
    )

    api_version: Literal["tenantry.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["AgentTenant"] = KIND
    metadata: Metadata
    spec: AgentTenantSpec = Field(default_factory=AgentTenantSpec)
    status: AgentTenantStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name


# AgentTenantTemplate: the platform admin's extra children for the tenants it selects, as Jinja2
# text rendered by the operator (render/templates.py, docs/templates.md). Only cluster admins
# write it; what a tenant controls reaches a template only as quoted values.
TEMPLATE_KIND: Final = "AgentTenantTemplate"
TEMPLATE_PLURAL: Final = "agenttenanttemplates"
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_TEMPLATES = 32

SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class SelectorRequirement(Model):
    """One requirement of a label selector, as Kubernetes writes it."""

    model_config = ConfigDict(
        json_schema_extra=schema_extra(
            cel(
                "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                "matchExpressions[]: In and NotIn need values; Exists and DoesNotExist take none",
            )
        )
    )

    key: LabelKey = Field(description="The label key.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: Annotated[list[LabelValue], Field(max_length=64)] | None = Field(
        None, description="The values of In and NotIn."
    )

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> SelectorRequirement:
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError("In and NotIn need values; Exists and DoesNotExist take none")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        found = self.key in labels and labels[self.key] in (self.values or ())
        return found if self.operator == "In" else not found


class TenantSelector(Model):
    """Which tenants a template is for, by their labels; an empty selector selects every tenant."""

    match_labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        alias="matchLabels",
        description="Labels a tenant must have.",
    )
    match_expressions: Annotated[list[SelectorRequirement], Field(max_length=16)] = Field(
        default_factory=list,
        alias="matchExpressions",
        description="Requirements a tenant's labels must all meet.",
    )

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


class ChildTemplate(Model):
    """One Jinja2 template that renders exactly one manifest in each selected tenant's namespace."""

    name: DnsLabel = Field(description="What this template is called in messages and events.")
    template: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_BYTES)] = (
        Field(
            description="Jinja2 text that renders one YAML (or JSON) manifest. Every {{ value }} is "
            "written as a quoted JSON scalar, so no value can change the manifest's structure; the "
            "context is `tenant` and `operator` only (docs/templates.md)."
        )
    )


TEMPLATE_NAMES_UNIQUE = cel(
    "self.all(t, self.exists_one(u, u.name == t.name))",
    "spec.templates: give each template its own name",
)


class AgentTenantTemplateSpec(Model):
    """Extra children for the tenants the selector picks, owned and pruned like Tenantry's own."""

    # Required, even when empty: a template for every tenant is said so (`selector: {}`), never
    # the result of a forgotten field.
    selector: TenantSelector = Field(
        description="The tenants this template is for, by their labels; `{}` selects every tenant."
    )
    templates: Annotated[list[ChildTemplate], Field(min_length=1, max_length=MAX_TEMPLATES)] = (
        Field(
            description="Each renders one object in the tenant's namespace, of a kind the operator allows "
            "(--template-kinds).",
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                **schema_extra(TEMPLATE_NAMES_UNIQUE),
            },
        )
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> AgentTenantTemplateSpec:
        names = [template.name for template in self.templates]
        if len(set(names)) != len(names):
            raise ValueError(TEMPLATE_NAMES_UNIQUE["message"])
        return self


class TemplateMetadata(Model):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: DnsSubdomain
    uid: str | None = None
    generation: int | None = None


class AgentTenantTemplate(Model):
    """Objects Tenantry adds to every tenant it selects, written by cluster admins only."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    api_version: Literal["tenantry.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["AgentTenantTemplate"] = TEMPLATE_KIND
    metadata: TemplateMetadata
    spec: AgentTenantTemplateSpec

    @property
    def name(self) -> str:
        return self.metadata.name


@dataclass(frozen=True)
class BrokenTemplate:
    """An AgentTenantTemplate the models refuse (an older CRD let it in): kept as a refusal, so
    the tenants it may select stall saying why instead of losing its objects (found by review:
    dropped, a restarted operator pruned every object it had rendered)."""

    name: str
    problem: str
    selector: TenantSelector | None  # None: not even its selector can be read; it selects all

    @classmethod
    def of(cls, body: dict[str, Any], error: ValidationError) -> BrokenTemplate:
        try:
            selector: TenantSelector | None = TenantSelector.model_validate(
                (body.get("spec") or {}).get("selector")
            )
        except ValidationError:
            selector = None
        name = str((body.get("metadata") or {}).get("name", ""))
        return cls(name, "; ".join(human_errors(error)), selector)


def template_selects(
    template: AgentTenantTemplate | BrokenTemplate, labels: dict[str, str]
) -> bool:
    """Whether a template (or one that cannot be read) is for a tenant with these labels."""
    if isinstance(template, BrokenTemplate):
        return template.selector is None or template.selector.matches(labels)
    return template.spec.selector.matches(labels)
