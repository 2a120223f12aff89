"""Helpers for the chart's tests: the tools built from Go modules, and rendering the chart.

The tools (helm, kubeconform, kube-score, kstatus, vapcheck) come from the per-user cache that
e2e/toolchain/build.sh fills; `make test` builds them before pytest starts.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.images import CACHE_ROOT, toolchain_versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tenantry"
BIN_DIR = CACHE_ROOT / "bin"
RELEASE = "tenantry"
RELEASE_NAMESPACE = "tenantry-system"


# Unstamped, helm assumes Kubernetes 1.20: every template and lint says which version it targets.
K8S_VERSION = toolchain_versions()["K8S_VERSION"]


def tool(name: str) -> str:
    path = BIN_DIR / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: build it with `make toolchain` (e2e/toolchain/build.sh tools)"
        )
    return str(path)


def run(
    *command: str,
    check: bool = True,
    input: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on an unexpected exit status, fail with its output."""
    result = subprocess.run(
        command,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm_env(kubeconfig: Path | None = None) -> dict[str, str]:
    """Helm's caches and configuration under .cache/helm, never the user's own."""
    home = REPO / ".cache" / "helm"
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return env


def helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run(tool("helm"), *args, check=check, env=helm_env(kubeconfig))


def set_flags(values: dict[str, str] | None) -> list[str]:
    return [flag for key, value in (values or {}).items() for flag in ("--set", f"{key}={value}")]


def template_text(
    values: dict[str, str] | None = None, include_crds: bool = False, check: bool = True
) -> subprocess.CompletedProcess[str]:
    args = [
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        K8S_VERSION,
        *set_flags(values),
    ]
    if include_crds:
        args.append("--include-crds")
    return helm(*args, check=check)


def template(
    values: dict[str, str] | None = None, include_crds: bool = False
) -> list[dict[str, Any]]:
    """The chart rendered as objects."""
    text = template_text(values, include_crds).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        doc
        for doc in documents
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(documents: list[dict[str, Any]]) -> list[str]:
    return sorted(doc["kind"] for doc in documents)


ARGOCD_HEALTH = CHART / "argocd" / "agenttenant-health.lua"
# Argo CD runs health checks in gopher-lua (Lua 5.1) with only the safe standard libraries.
UNSAFE_LUA_GLOBALS = ("os", "io", "debug", "package", "require", "dofile", "loadfile", "load")


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """Run the Argo CD health check on an object, as Argo CD does: `obj` global, result returned."""
    import lupa.lua51  # noqa: PLC0415 - only the health tests need Lua

    runtime = lupa.lua51.LuaRuntime()
    lua_globals = runtime.globals()
    for name in UNSAFE_LUA_GLOBALS:
        lua_globals[name] = None
    lua_globals.obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(script if script is not None else ARGOCD_HEALTH.read_text())
    return {"status": str(result["status"]), "message": str(result["message"])}
