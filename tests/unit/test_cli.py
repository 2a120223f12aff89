"""`tenantry render` and `tenantry crd` work offline, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TENANTRY = str(Path(sys.executable).parent / "tenantry")


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TENANTRY, *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
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


def test_run_refuses_unsound_lease_timings_before_touching_a_cluster() -> None:
    result = run(
        "run",
        "--leader-election",
        "--lease-duration",
        "10",
        "--lease-renew-deadline",
        "12",
        env={"KUBECONFIG": "/nonexistent"},
    )
    assert result.returncode != 0
    assert (
        "--lease-renew-deadline (12s) must be shorter than --lease-duration (10s)" in result.stderr
    )


def test_run_refuses_a_metrics_address_that_is_not_host_and_port() -> None:
    result = run("run", "--metrics-address", "9090", env={"KUBECONFIG": "/nonexistent"})
    assert result.returncode != 0
    assert "--metrics-address (env TENANTRY_METRICS_ADDRESS): '9090' is not HOST:PORT" in (
        result.stderr
    )


def test_leader_election_is_read_from_the_environment_too() -> None:
    result = run(
        "run",
        "--lease-retry-period",
        "0",
        env={"KUBECONFIG": "/nonexistent", "TENANTRY_LEADER_ELECTION": "true"},
    )
    assert result.returncode != 0
    assert "--lease-retry-period must be more than 0 seconds" in result.stderr
    result = run("run", env={"TENANTRY_LEADER_ELECTION": "maybe"})
    assert result.returncode == 2
    assert "argument --leader-election: 'maybe' is neither true nor false" in result.stderr


def test_render_explains_a_pattern_in_words_not_a_regular_expression() -> None:
    bad = "apiVersion: tenantry.dev/v1alpha1\nkind: AgentTenant\nmetadata: {name: Acme_Corp}\nspec: {quota: {memory: 8 gigs}}\n"
    result = run("render", "-", stdin=bad)
    assert result.returncode != 0
    assert "metadata.name: must be a DNS-1123 label: lowercase letters, digits and '-'" in (
        result.stderr
    )
    assert (
        "spec.quota.memory: must be a Kubernetes quantity such as 500m, 2 or 8Gi" in result.stderr
    )
    assert "should match pattern" not in result.stderr and "^[" not in result.stderr
