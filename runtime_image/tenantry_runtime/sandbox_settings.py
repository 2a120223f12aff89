"""The sandbox process's settings: its limits and everything `sandbox` reads from its env.

docs/runtime-contract.md ("Sandbox pod") is the source of truth for every name read here.
The sandbox reads no runtime.json: that is the runtime's (runtime_json.py, serve_settings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .env import (
    bool_env,
    host_from_env,
    port_from_env,
    positive_float_env,
    positive_int_env,
    tenant_from_env,
)
from .protocol import MAX_CODE_BYTES
from .refusals import ConfigError

TOKEN_ENV = "TENANTRY_SANDBOX_TOKEN"  # noqa: S105 - the variable's name, not a token
DEFAULT_WORKDIR = "/workspace"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run limits of the sandbox. The defaults suit a pod with ~1 GiB of memory."""

    timeout_seconds: float = 30.0
    memory_bytes: int = 512 * 1024 * 1024
    max_processes: int = 64
    file_size_bytes: int = 64 * 1024 * 1024
    open_files: int = 256
    output_bytes: int = 64 * 1024
    code_bytes: int = MAX_CODE_BYTES
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
    termination_log: Path | None = Path(DEFAULT_TERMINATION_LOG)
    """The container's termination message file: the kubelet makes it writable by any user,
    so code could leave a note there for a later task. Emptied with the files ("" for none)."""


def load_sandbox_settings(env: Mapping[str, str]) -> SandboxSettings:
    tenant = tenant_from_env(env)
    if env.get("TENANTRY_SANDBOX_TOKEN_FILE"):
        # A file is readable by every process of the sandbox's uid, so by the code it runs
        # (the way to a run that outlives its own: docs/security.md).
        raise ConfigError(
            "TENANTRY_SANDBOX_TOKEN_FILE is not read any more: code the sandbox runs could read "
            "that file. Give the token in TENANTRY_SANDBOX_TOKEN instead (env valueFrom "
            "secretKeyRef: Secret sandbox-token, key token); the server keeps it from its runs"
        )
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(
            "TENANTRY_SANDBOX_TOKEN is not set: the sandbox only serves its tenant's runtime "
            "and needs the token it presents"
        )
    defaults = SandboxLimits()
    limits = SandboxLimits(
        timeout_seconds=positive_float_env(
            env, "TENANTRY_SANDBOX_TIMEOUT_SECONDS", defaults.timeout_seconds
        ),
        memory_bytes=positive_int_env(
            env, "TENANTRY_SANDBOX_MEMORY_MB", defaults.memory_bytes // 2**20
        )
        * 2**20,
        max_processes=positive_int_env(
            env, "TENANTRY_SANDBOX_MAX_PROCESSES", defaults.max_processes
        ),
        output_bytes=positive_int_env(
            env, "TENANTRY_SANDBOX_MAX_OUTPUT_BYTES", defaults.output_bytes
        ),
        concurrency=positive_int_env(env, "TENANTRY_SANDBOX_CONCURRENCY", defaults.concurrency),
    )
    workdir = Path(env.get("TENANTRY_SANDBOX_WORKDIR") or DEFAULT_WORKDIR)
    if not workdir.is_dir():
        raise ConfigError(f"TENANTRY_SANDBOX_WORKDIR {workdir} is not a directory")
    return SandboxSettings(
        tenant=tenant,
        token=token,
        workdir=workdir,
        host=host_from_env(env),
        port=port_from_env(env),
        limits=limits,
        keep_workspace=bool_env(env, "TENANTRY_SANDBOX_KEEP_WORKSPACE", False),
        wipe_ipc=bool_env(env, "TENANTRY_SANDBOX_WIPE_IPC", True),
        # The pod's terminationMessagePath, where it is not the default.
        termination_log=Path(path)
        if (path := env.get("TENANTRY_SANDBOX_TERMINATION_LOG", DEFAULT_TERMINATION_LOG))
        else None,
    )
