"""The runtime process's settings: everything `serve` reads from its env, and its secrets.

docs/runtime-contract.md ("Runtime pod") is the source of truth for every name read here.
The tenant's runtime.json is parsed by runtime_json.py; this module finds it, reads it, and
reads the Secret files it names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .env import host_from_env, port_from_env, positive_int_env, read_secret, tenant_from_env
from .refusals import ConfigError
from .runtime_json import RuntimeConfig, parse_runtime_config

DEFAULT_CONFIG_PATH = "/etc/tenantry/runtime.json"
DEFAULT_MAX_TASKS_IN_FLIGHT = 64


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
        host=host_from_env(env),
        port=port_from_env(env),
        max_tasks_in_flight=positive_int_env(
            env, "TENANTRY_MAX_TASKS_IN_FLIGHT", DEFAULT_MAX_TASKS_IN_FLIGHT
        ),
    )
