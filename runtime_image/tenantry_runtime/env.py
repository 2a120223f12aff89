"""Reading a process's environment and its mounted Secret files, strictly.

Shared by the settings of both processes (serve_settings.py, sandbox_settings.py).
docs/runtime-contract.md is the source of truth for every variable read: a value that does not
parse is refused (ConfigError), never silently replaced by a default nobody chose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from .refusals import DNS_LABEL_RE, ConfigError, pattern_refusal

DEFAULT_PORT = 8080


def tenant_from_env(env: Mapping[str, str]) -> str:
    tenant = env.get("TENANTRY_TENANT", "").strip()
    if not tenant:
        raise ConfigError(
            "TENANTRY_TENANT is not set: this process serves exactly one tenant and will not "
            "start without knowing which"
        )
    if not DNS_LABEL_RE.fullmatch(tenant):
        raise ConfigError(pattern_refusal("TENANTRY_TENANT", tenant, DNS_LABEL_RE))
    return tenant


def port_from_env(env: Mapping[str, str]) -> int:
    raw = env.get("TENANTRY_PORT", str(DEFAULT_PORT))
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"TENANTRY_PORT={raw!r} is not a TCP port")
    return int(raw)


def host_from_env(env: Mapping[str, str]) -> str | None:
    # None makes aiohttp listen on every interface, IPv4 and IPv6, as a pod needs.
    return env.get("TENANTRY_HOST") or None


def positive_int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive integer")
    return int(raw)


def positive_float_env(env: Mapping[str, str], name: str, default: float) -> float:
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


def bool_env(env: Mapping[str, str], name: str, default: bool) -> bool:
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
