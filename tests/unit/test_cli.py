"""`tenantry render` and `tenantry crd` work offline, as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TENANTRY = str(Path(sys.executable).parent / "tenantry")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TENANTRY, *args], input=stdin, capture_output=True, text=True, check=False, timeout=60
    )


def test_render_prints_every_child_of_every_tenant() -> None:
    result = run("render", str(REPO / "examples" / "acme.yaml"), "--namespace-prefix", "agents")
    assert result.returncode == 0, result.stderr
    manifests = list(yaml.safe_load_all(result.stdout))
    assert manifests[0]["kind"] == "Namespace" and manifests[0]["metadata"]["name"] == "agents-acme"
    assert {m["kind"] for m in manifests} >= {
        "Deployment",
        "NetworkPolicy",
        "Secret",
        "ResourceQuota",
    }


def test_render_names_the_field_and_the_problem() -> None:
    bad = "apiVersion: tenantry.dev/v1alpha1\nkind: AgentTenant\nmetadata: {name: acme}\nspec:\n  sandbox: {timeoutSeconds: 0}\n"
    result = run("render", "-", stdin=bad)
    assert result.returncode != 0
    assert (
        "spec.sandbox.timeoutSeconds: Input should be greater than or equal to 1" in result.stderr
    )


def test_crd_prints_the_crd() -> None:
    result = run("crd")
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["metadata"]["name"] == "agenttenants.tenantry.dev"
