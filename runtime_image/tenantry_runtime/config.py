"""Settings of both processes, parsed from the env and files the operator renders.

docs/runtime-contract.md is the source of truth for every name read here. Parsing is strict:
a key this module does not know is an error, because a typo that is silently ignored would
leave a tenant running with defaults nobody chose. Tenant-written config is only ever read
as data: agent kinds come from a fixed allowlist and nothing here imports a named module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGENT_KINDS = ("assistant", "coder")
"""The only agent kinds a config may name; agents.py maps each to the class that builds it."""

RESERVED_TOPIC_PREFIX = "tenantry."
"""Topic types starting with this are the runtime's own (task results)."""

DEFAULT_CONFIG_PATH = "/etc/tenantry/runtime.json"
DEFAULT_PORT = 8080
DEFAULT_MAX_TASKS_IN_FLIGHT = 64
DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."

# A tenant id is a DNS-1123 label, like the AgentTenant's name it comes from.
_TENANT_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Agent names become autogen agent types; no dot, so they never collide with internal types.
_AGENT_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
# A subset of what autogen accepts for topic types: no ':' so they never reach an agent's
# direct-message prefix subscription.
_TOPIC_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


class ConfigError(ValueError):
    """The process cannot start with this configuration; the message says what to fix."""


@dataclass(frozen=True)
class AgentConfig:
    name: str
    kind: str
    topic_type: str
    system_message: str = DEFAULT_SYSTEM_MESSAGE


@dataclass(frozen=True)
class ModelConfig:
    model: str
    base_url: str
    api_key_file: Path


@dataclass(frozen=True)
class SandboxClientConfig:
    url: str
    token_file: Path
    timeout_seconds: float


@dataclass(frozen=True)
class RuntimeConfig:
    tenant: str
    topic_types: tuple[str, ...]
    agents: tuple[AgentConfig, ...]
    model: ModelConfig | None
    sandbox: SandboxClientConfig | None
    task_timeout_seconds: float = 120.0

    def agents_of_kind(self, kind: str) -> tuple[AgentConfig, ...]:
        return tuple(agent for agent in self.agents if agent.kind == kind)

    @property
    def task_topic_types(self) -> frozenset[str]:
        """Topic types a task may be posted to: served, and with an assistant to answer."""
        answered = {agent.topic_type for agent in self.agents_of_kind("assistant")}
        return frozenset(answered.intersection(self.topic_types))


@dataclass(frozen=True)
class ServeSettings:
    """Everything `serve` reads from its environment."""

    config: RuntimeConfig
    audit_target: str
    host: str | None
    port: int
    max_tasks_in_flight: int = DEFAULT_MAX_TASKS_IN_FLIGHT
    """Tasks waiting for their result at once; POST /v1/tasks beyond it answers 429."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits of the sandbox. The defaults suit a pod with ~1 GiB of memory."""

    timeout_seconds: float = 30.0
    memory_bytes: int = 512 * 1024 * 1024
    max_processes: int = 64
    file_size_bytes: int = 64 * 1024 * 1024
    open_files: int = 256
    output_bytes: int = 64 * 1024
    code_bytes: int = 64 * 1024
    concurrency: int = 2


@dataclass(frozen=True)
class SandboxSettings:
    """Everything `sandbox` reads from its environment."""

    tenant: str
    token: str = field(repr=False)
    workdir: Path
    host: str | None
    port: int
    limits: SandboxLimits
    keep_workspace: bool = False
    """Files outlive their task (the tenant asked for it); by default each task's go with it."""
    wipe_ipc: bool = True
    """With the files, remove the IPC objects the sandbox's uid owns (/dev/shm, /dev/mqueue,
    System V). Off only to run a sandbox as a user who has other IPC objects (a developer)."""
    termination_log: Path | None = Path("/dev/termination-log")
    """The container's termination message file: the kubelet makes it writable by any user,
    so code could leave a note there for a later task. Emptied with the files ("" for none)."""


# --- environment -----------------------------------------------------------------------------


def tenant_from_env(env: Mapping[str, str]) -> str:
    tenant = env.get("TENANTRY_TENANT", "").strip()
    if not tenant:
        raise ConfigError(
            "TENANTRY_TENANT is not set: this process serves exactly one tenant and will not "
            "start without knowing which"
        )
    if not _TENANT_RE.fullmatch(tenant):
        raise ConfigError(f"TENANTRY_TENANT={tenant!r} is not a DNS-1123 label")
    return tenant


def _port_from_env(env: Mapping[str, str]) -> int:
    raw = env.get("TENANTRY_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"TENANTRY_PORT={raw!r} is not a TCP port")
    return int(raw)


def _host_from_env(env: Mapping[str, str]) -> str | None:
    # None makes aiohttp listen on every interface, IPv4 and IPv6, as a pod needs.
    return env.get("TENANTRY_HOST") or None


def _positive_int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive integer")
    return int(raw)


def _positive_float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={raw!r} must be a positive number")
    return value


def _bool_env(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw not in ("true", "false"):
        raise ConfigError(f"{name}={raw!r} must be true or false")
    return raw == "true"


def read_secret(path: Path, what: str) -> str:
    """The stripped content of a mounted Secret file; an empty secret is an error."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from exc
    if not secret:
        raise ConfigError(f"{what} {path} is empty")
    return secret


@dataclass(frozen=True)
class Secrets:
    """The runtime's credentials, read from the files runtime.json names."""

    model_api_key: str | None = field(default=None, repr=False)
    sandbox_token: str | None = field(default=None, repr=False)


def load_secrets(config: RuntimeConfig) -> Secrets:
    return Secrets(
        model_api_key=None
        if config.model is None
        else read_secret(config.model.api_key_file, "model.apiKeyFile"),
        sandbox_token=None
        if config.sandbox is None
        else read_secret(config.sandbox.token_file, "sandbox.tokenFile"),
    )


def load_serve_settings(env: Mapping[str, str]) -> ServeSettings:
    tenant = tenant_from_env(env)
    path = Path(env.get("TENANTRY_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"TENANTRY_CONFIG {path}: cannot read it ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TENANTRY_CONFIG {path}: not valid JSON ({exc})") from exc
    return ServeSettings(
        config=parse_runtime_config(data, tenant),
        audit_target=env.get("TENANTRY_AUDIT_LOG") or "-",
        host=_host_from_env(env),
        port=_port_from_env(env),
        max_tasks_in_flight=_positive_int_env(
            env, "TENANTRY_MAX_TASKS_IN_FLIGHT", DEFAULT_MAX_TASKS_IN_FLIGHT
        ),
    )


def load_sandbox_settings(env: Mapping[str, str]) -> SandboxSettings:
    tenant = tenant_from_env(env)
    token_file = env.get("TENANTRY_SANDBOX_TOKEN_FILE")
    if not token_file:
        raise ConfigError(
            "TENANTRY_SANDBOX_TOKEN_FILE is not set: the sandbox only serves its tenant's "
            "runtime and needs the token it presents"
        )
    defaults = SandboxLimits()
    limits = SandboxLimits(
        timeout_seconds=_positive_float_env(
            env, "TENANTRY_SANDBOX_TIMEOUT_SECONDS", defaults.timeout_seconds
        ),
        memory_bytes=_positive_int_env(
            env, "TENANTRY_SANDBOX_MEMORY_MB", defaults.memory_bytes // 2**20
        )
        * 2**20,
        max_processes=_positive_int_env(
            env, "TENANTRY_SANDBOX_MAX_PROCESSES", defaults.max_processes
        ),
        output_bytes=_positive_int_env(
            env, "TENANTRY_SANDBOX_MAX_OUTPUT_BYTES", defaults.output_bytes
        ),
        concurrency=_positive_int_env(env, "TENANTRY_SANDBOX_CONCURRENCY", defaults.concurrency),
    )
    workdir = Path(env.get("TENANTRY_SANDBOX_WORKDIR") or "/workspace")
    if not workdir.is_dir():
        raise ConfigError(f"TENANTRY_SANDBOX_WORKDIR {workdir} is not a directory")
    return SandboxSettings(
        tenant=tenant,
        token=read_secret(Path(token_file), "TENANTRY_SANDBOX_TOKEN_FILE"),
        workdir=workdir,
        host=_host_from_env(env),
        port=_port_from_env(env),
        limits=limits,
        keep_workspace=_bool_env(env, "TENANTRY_SANDBOX_KEEP_WORKSPACE", False),
        wipe_ipc=_bool_env(env, "TENANTRY_SANDBOX_WIPE_IPC", True),
        # The pod's terminationMessagePath, where it is not the default.
        termination_log=Path(path)
        if (path := env.get("TENANTRY_SANDBOX_TERMINATION_LOG", "/dev/termination-log"))
        else None,
    )


# --- runtime.json ----------------------------------------------------------------------------


class _Fields:
    """Typed, strict access to one JSON object; every error names where it is."""

    def __init__(self, data: object, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a JSON object")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        self._data: dict[str, Any] = data
        self._where = where

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def text(self, key: str, pattern: re.Pattern[str] | None = None) -> str:
        value = self._data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{self._where}.{key} must be a non-empty string")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(
                f"{self._where}.{key}={value!r} is not allowed (must match {pattern.pattern})"
            )
        return value

    def url(self, key: str) -> str:
        value = self.text(key)
        if not value.startswith(("http://", "https://")):
            raise ConfigError(f"{self._where}.{key}={value!r} must be an http(s) URL")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{self._where}.{key} must be a positive number of seconds")
        if not math.isfinite(value):
            raise ConfigError(f"{self._where}.{key} must be finite")
        return float(value)

    def items(self, key: str) -> list[object]:
        value = self._data.get(key)
        if not isinstance(value, list):
            raise ConfigError(f"{self._where}.{key} must be a list")
        return value


def _topic_type(value: str, where: str) -> str:
    if value.startswith(RESERVED_TOPIC_PREFIX):
        raise ConfigError(f"{where}={value!r}: topic types starting with 'tenantry.' are reserved")
    return value


def _parse_agent(data: object, index: int) -> AgentConfig:
    where = f"agents[{index}]"
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        where = f"agent {data['name']!r}"
    # The kind is checked before anything else so that a config written for another runtime
    # (or an attempt to name an arbitrary component) gets the clearest possible refusal.
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in AGENT_KINDS:
        raise ConfigError(
            f"{where}: kind {kind!r} is not allowed; allowed kinds: {', '.join(AGENT_KINDS)}"
        )
    fields = _Fields(data, where, ("name", "kind", "topicType", "systemMessage"))
    name = fields.text("name", _AGENT_NAME_RE)
    topic_type = _topic_type(fields.text("topicType", _TOPIC_TYPE_RE), f"{where}.topicType")
    # The operator renders systemMessage for every agent (null when unset); only an
    # assistant has a use for it.
    if fields.has("systemMessage"):
        system_message = fields.text("systemMessage")
        if kind == "assistant":
            return AgentConfig(name, kind, topic_type, system_message)
    return AgentConfig(name, kind, topic_type)


def _parse_model(data: object) -> ModelConfig | None:
    if data is None:
        return None
    fields = _Fields(data, "model", ("model", "baseUrl", "apiKeyFile"))
    return ModelConfig(fields.text("model"), fields.url("baseUrl"), Path(fields.text("apiKeyFile")))


def _parse_sandbox(data: object) -> SandboxClientConfig | None:
    if data is None:
        return None
    fields = _Fields(data, "sandbox", ("url", "tokenFile", "timeoutSeconds"))
    return SandboxClientConfig(
        fields.url("url").rstrip("/"),
        Path(fields.text("tokenFile")),
        fields.seconds("timeoutSeconds", 30.0),
    )


def _check_agents(config: RuntimeConfig) -> None:
    seen_names: set[str] = set()
    by_topic: dict[str, str] = {}
    for agent in config.agents:
        if agent.name in seen_names:
            raise ConfigError(f"agent {agent.name!r} is declared twice")
        seen_names.add(agent.name)
        # One agent per topic type keeps every task's path deterministic: a publish has exactly
        # one subscriber, so there is one answer and one code run per request.
        if agent.topic_type in by_topic:
            raise ConfigError(
                f"agents {by_topic[agent.topic_type]!r} and {agent.name!r} both subscribe to "
                f"topic type {agent.topic_type!r}; give each agent its own topic type"
            )
        by_topic[agent.topic_type] = agent.name
        if agent.kind == "assistant" and config.model is None:
            raise ConfigError(
                f"agent {agent.name!r} of kind assistant needs a model, but model is null"
            )
        if agent.kind == "coder" and config.sandbox is None:
            raise ConfigError(
                f"agent {agent.name!r} of kind coder needs a sandbox, but sandbox is null"
            )
    coders = config.agents_of_kind("coder")
    if len(coders) > 1:
        names = ", ".join(repr(agent.name) for agent in coders)
        raise ConfigError(f"at most one agent of kind coder is allowed, found {names}")


def parse_runtime_config(data: object, tenant: str) -> RuntimeConfig:
    """Validate runtime.json for `tenant` (the process's TENANTRY_TENANT)."""
    fields = _Fields(
        data,
        "runtime.json",
        ("tenant", "topicTypes", "agents", "model", "sandbox", "taskTimeoutSeconds"),
    )
    named = fields.text("tenant")
    if named != tenant:
        raise ConfigError(
            f"runtime.json is for tenant {named!r} but TENANTRY_TENANT is {tenant!r}; refusing "
            "to serve one tenant with another's configuration"
        )
    topic_types = tuple(
        _topic_type(_text_item(item, f"topicTypes[{i}]"), f"topicTypes[{i}]")
        for i, item in enumerate(fields.items("topicTypes"))
    )
    if not topic_types:
        raise ConfigError("runtime.json.topicTypes must name at least one topic type")
    config = RuntimeConfig(
        tenant=tenant,
        topic_types=topic_types,
        agents=tuple(_parse_agent(item, i) for i, item in enumerate(fields.items("agents"))),
        model=_parse_model(fields.raw("model")),
        sandbox=_parse_sandbox(fields.raw("sandbox")),
        task_timeout_seconds=fields.seconds("taskTimeoutSeconds", 120.0),
    )
    _check_agents(config)
    return config


def _text_item(value: object, where: str) -> str:
    if not isinstance(value, str) or not _TOPIC_TYPE_RE.fullmatch(value):
        raise ConfigError(f"{where}={value!r} is not a valid topic type")
    return value
