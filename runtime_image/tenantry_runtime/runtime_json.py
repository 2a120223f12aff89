"""The tenant's `runtime.json`: its models, and the strict parser that builds them.

docs/runtime-contract.md is the source of truth for every field read here. Parsing is strict:
a key this module does not know is an error, because a typo that is silently ignored would
leave a tenant running with defaults nobody chose. Tenant-written config is only ever read
as data: an agent's kind is a name looked up among the kinds installed in the image
(agent_kinds.py), never a module, and its `config` is validated by that kind's own model.
Every refusal names the field and says in words what it must be (refusals.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from . import agent_kinds
from .agent_kinds import AgentInfo, AgentKind
from .refusals import (
    AGENT_KIND_RE,
    AGENT_NAME_RE,
    TOPIC_TYPE_RE,
    ConfigError,
    pattern_refusal,
    shown,
    shown_name,
)

AGENT_KINDS = ("assistant", "coder", "team")
"""The kinds that ship with Tenantry (builtin_kinds.py, team_kind.py). A config may name any kind
installed in the image (agent_kinds.installed()): these, and whatever a platform team's package
adds."""

SECRET_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""A Secret's name as spec.secrets has it: a DNS-1123 subdomain, so one path component."""

RESERVED_TOPIC_PREFIX = "tenantry."
"""Topic types starting with this are the runtime's own (task results)."""

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."


@dataclass(frozen=True)
class AgentConfig:
    name: str
    kind: str
    topic_type: str
    system_message: str = DEFAULT_SYSTEM_MESSAGE
    spec: AgentKind | None = field(default=None, compare=False, repr=False)
    """The kind, loaded from its entry point; None only before parse_runtime_config resolved it."""
    settings: BaseModel | None = field(default=None, compare=False, repr=False)
    """The agent's `config`, validated by its kind's model."""

    @property
    def info(self) -> AgentInfo:
        return AgentInfo(self.name, self.kind, self.topic_type)


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
class SessionsConfig:
    directory: Path
    max_sessions: int
    max_idle_days: float
    max_session_bytes: int


@dataclass(frozen=True)
class RuntimeConfig:
    tenant: str
    topic_types: tuple[str, ...]
    agents: tuple[AgentConfig, ...]
    model: ModelConfig | None
    sandbox: SandboxClientConfig | None
    task_timeout_seconds: float = 120.0

    secrets_dir: Path | None = None
    """Where the tenant's Secrets are mounted, one directory each (by their spec.secrets name)."""
    sessions: SessionsConfig | None = None
    """Where and how long the tenant's sessions are kept; None when the tenant has none."""

    def agents_of_kind(self, kind: str) -> tuple[AgentConfig, ...]:
        return tuple(agent for agent in self.agents if agent.kind == kind)

    @property
    def task_topic_types(self) -> frozenset[str]:
        """Topic types a task may be posted to: served, and with an agent that answers tasks."""
        answered = {
            agent.topic_type for agent in self.agents if agent.spec and agent.spec.answers_tasks
        }
        return frozenset(answered.intersection(self.topic_types))

    @property
    def session_topic_types(self) -> frozenset[str]:
        """Topic types a session's task may be posted to: those whose agent keeps sessions."""
        if self.sessions is None:
            return frozenset()
        keeping = {
            agent.topic_type for agent in self.agents if agent.spec and agent.spec.keeps_sessions
        }
        return self.task_topic_types & keeping


class _Fields:
    """Typed, strict access to one JSON object; every error names where it is."""

    def __init__(self, data: object, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a JSON object")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            names = ", ".join(shown_name(str(name)) for name in unknown)
            raise ConfigError(f"{where}: unknown field(s) {names}; allowed: {', '.join(allowed)}")
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
            raise ConfigError(pattern_refusal(f"{self._where}.{key}", value, pattern))
        return value

    def url(self, key: str) -> str:
        value = self.text(key)
        if not value.startswith(("http://", "https://")):
            raise ConfigError(f"{self._where}.{key}={shown(value)} must be an http(s) URL")
        return value

    def seconds(self, key: str, default: float, unit: str = "seconds") -> float:
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{self._where}.{key} must be a positive number of {unit}")
        if not math.isfinite(value):
            raise ConfigError(f"{self._where}.{key} must be finite")
        return float(value)

    def count(self, key: str, default: int, most: int) -> int:
        value = self._data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise ConfigError(f"{self._where}.{key} must be a whole number from 1 to {most}")
        return value

    def items(self, key: str) -> list[object]:
        value = self._data.get(key)
        if not isinstance(value, list):
            raise ConfigError(f"{self._where}.{key} must be a list")
        return value


def _checked_topic_type(value: object, where: str) -> str:
    """`value` if it may be a tenant's topic type: a string of the pattern, not reserved."""
    if not isinstance(value, str) or not TOPIC_TYPE_RE.fullmatch(value):
        raise ConfigError(pattern_refusal(where, value, TOPIC_TYPE_RE))
    if value.startswith(RESERVED_TOPIC_PREFIX):
        raise ConfigError(f"{where}={value!r}: topic types starting with 'tenantry.' are reserved")
    return value


def _parse_agent(data: object, index: int, installed: Mapping[str, EntryPoint]) -> AgentConfig:
    where = f"agents[{index}]"
    if isinstance(data, dict) and isinstance(data.get("name"), str):
        where = f"agent {shown(data['name'])}"
    # The kind is checked before anything else so that a config written for another runtime
    # (or an attempt to name an arbitrary component) gets the clearest possible refusal.
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str) or not AGENT_KIND_RE.fullmatch(kind) or kind not in installed:
        raise ConfigError(
            f"{where}: kind {shown(kind)} is not allowed; allowed kinds: {', '.join(sorted(installed))} "
            "(the kinds installed in this image: `python -m tenantry_runtime kinds` lists them)"
        )
    fields = _Fields(data, where, ("name", "kind", "topicType", "systemMessage", "config"))
    name = fields.text("name", AGENT_NAME_RE)
    topic_type = _checked_topic_type(fields.text("topicType"), f"{where}.topicType")
    spec = agent_kinds.load(installed[kind])
    settings = _validated(spec, fields.raw("config"), f"{where}.config")
    # The operator renders systemMessage for every agent (null when unset).
    system_message = fields.text("systemMessage") if fields.has("systemMessage") else None
    return AgentConfig(
        name, kind, topic_type, system_message or DEFAULT_SYSTEM_MESSAGE, spec, settings
    )


def _validated(spec: AgentKind, data: object, where: str) -> BaseModel:
    """An agent's `config` as its kind's model reads it; refused in the model's own words."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object")
    try:
        return spec.config_model.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{where}.{'.'.join(shown_name(str(part)) for part in error['loc'])}: {_words(error)}"
            if error["loc"]
            else f"{where}: {_words(error)}"
            for error in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(problems) from None


def _words(error: ErrorDetails) -> str:
    """A kind's own refusal in its own words, without pydantic's "Value error, " before them."""
    message = error["msg"]
    return message.removeprefix("Value error, ") if error["type"] == "value_error" else message


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


def _parse_sessions(data: object) -> SessionsConfig | None:
    if data is None:
        return None
    fields = _Fields(data, "sessions", ("dir", "maxSessions", "maxIdleDays", "maxSessionBytes"))
    directory = Path(fields.text("dir"))
    if not directory.is_absolute() or not directory.is_dir():
        raise ConfigError(
            f"sessions.dir={shown(str(directory))} is not a directory: the sessions volume "
            "must be mounted there"
        )
    return SessionsConfig(
        directory=directory,
        max_sessions=fields.count("maxSessions", 1000, 100_000),
        max_idle_days=fields.seconds("maxIdleDays", 30.0, unit="days"),
        max_session_bytes=fields.count("maxSessionBytes", 256 * 1024, 2 * 1024 * 1024),
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
        assert agent.spec is not None and agent.settings is not None  # resolved by _parse_agent
        if agent.spec.needs_model and config.model is None:
            raise ConfigError(
                f"agent {agent.name!r} of kind {agent.kind} needs a model, but model is null"
            )
        if agent.spec.needs_sandbox and config.sandbox is None:
            raise ConfigError(
                f"agent {agent.name!r} of kind {agent.kind} needs a sandbox, but sandbox is null"
            )
        for secret in agent.spec.secrets(agent.settings):
            # A name from spec.secrets is one path component: never "", ".", ".." or a path,
            # which would hand the agent the whole directory, the sandbox token's, or /etc.
            if not isinstance(secret, str) or not SECRET_NAME_RE.fullmatch(secret):
                raise ConfigError(
                    f"agent {agent.name!r}: its config names Secret {shown(secret)}, which is not "
                    "the name of one of spec.secrets"
                )
            if config.secrets_dir is None or not (config.secrets_dir / secret).is_dir():
                raise ConfigError(
                    f"agent {agent.name!r}: its config names Secret {secret!r}, which is not mounted "
                    f"(under secretsDir {config.secrets_dir}): add it to spec.secrets"
                )
    coders = config.agents_of_kind("coder")
    if len(coders) > 1:
        names = ", ".join(repr(agent.name) for agent in coders)
        raise ConfigError(f"at most one agent of kind coder is allowed, found {names}")


def parse_runtime_config(
    data: object, tenant: str, installed: Mapping[str, EntryPoint] | None = None
) -> RuntimeConfig:
    """Validate runtime.json for `tenant` (the process's TENANTRY_TENANT), with the agent kinds
    `installed` in this image (agent_kinds.installed(), read when not given)."""
    installed = agent_kinds.installed() if installed is None else installed
    fields = _Fields(
        data,
        "runtime.json",
        (
            "tenant",
            "topicTypes",
            "agents",
            "model",
            "sandbox",
            "taskTimeoutSeconds",
            "secretsDir",
            "sessions",
        ),
    )
    named = fields.text("tenant")
    if named != tenant:
        raise ConfigError(
            f"runtime.json is for tenant {shown(named)} but TENANTRY_TENANT is {tenant!r}; refusing "
            "to serve one tenant with another's configuration"
        )
    topic_types = tuple(
        _checked_topic_type(item, f"topicTypes[{i}]")
        for i, item in enumerate(fields.items("topicTypes"))
    )
    if not topic_types:
        raise ConfigError("runtime.json.topicTypes must name at least one topic type")
    config = RuntimeConfig(
        tenant=tenant,
        topic_types=topic_types,
        agents=tuple(
            _parse_agent(item, i, installed) for i, item in enumerate(fields.items("agents"))
        ),
        model=_parse_model(fields.raw("model")),
        sandbox=_parse_sandbox(fields.raw("sandbox")),
        task_timeout_seconds=fields.seconds("taskTimeoutSeconds", 120.0),
        secrets_dir=Path(fields.text("secretsDir")) if fields.has("secretsDir") else None,
        sessions=_parse_sessions(fields.raw("sessions")),
    )
    _check_agents(config)
    return config
