"""The Argo CD health check of AgentTenant, run in Lua 5.1 (as Argo CD runs it) on statuses.

tests/integration/test_chart_install.py runs the same check on statuses the operator wrote.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.support.chartkit import ARGOCD_HEALTH, CHART, argocd_health


def tenant(generation: int = 1, status: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenant",
        "metadata": {"name": "acme", "generation": generation},
        "spec": {},
    }
    if status is not None:
        body["status"] = status
    return body


def conditions(observed: int = 1, **states: tuple[str, str, str]) -> dict[str, Any]:
    """A status with conditions given as type=(status, reason, message)."""
    return {
        "observedGeneration": observed,
        "conditions": [
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": observed,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
            for kind, (status, reason, message) in states.items()
        ],
    }


READY = ("True", "Ready", "all children are available")
NOT_STALLED = ("False", "Converged", "")
CONVERGED = ("False", "Converged", "")
STALLED = ("True", "SecretNotFound", "spec.secrets[0].from: Secret 'x' does not exist")
WAITING = "RuntimeReady: the runtime Deployment is rolling out"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (tenant(), "Progressing", "Waiting for the operator to report a status"),
        (tenant(status={}), "Progressing", "Waiting for the operator to report a status"),
        (
            tenant(2, conditions(1, Ready=READY, Reconciling=CONVERGED, Stalled=NOT_STALLED)),
            "Progressing",
            "Waiting for the operator to observe generation 2",
        ),
        (
            tenant(1, conditions(Ready=READY, Reconciling=CONVERGED, Stalled=NOT_STALLED)),
            "Healthy",
            "all children are available",
        ),
        (
            tenant(
                1,
                conditions(
                    Ready=("False", "Progressing", WAITING),
                    Reconciling=("True", "Progressing", WAITING),
                    Stalled=("False", "Progressing", ""),
                ),
            ),
            "Progressing",
            WAITING,
        ),
        (
            tenant(
                3,
                conditions(
                    3,
                    Ready=("False", "SecretNotFound", STALLED[2]),
                    Reconciling=("False", "SecretNotFound", "stalled"),
                    Stalled=STALLED,
                ),
            ),
            "Degraded",
            f"SecretNotFound: {STALLED[2]}",
        ),
        # A stall reported for an older generation says nothing about the current spec.
        (
            tenant(4, conditions(3, Stalled=STALLED)),
            "Progressing",
            "Waiting for the operator to observe generation 4",
        ),
        # Not ready, not converging, not stalled: wait, and say what Ready says.
        (
            tenant(
                1, conditions(Ready=("False", "Unavailable", "runtime: 0 of 1 replicas available"))
            ),
            "Progressing",
            "runtime: 0 of 1 replicas available",
        ),
    ],
)
def test_health(body: dict[str, Any], status: str, message: str) -> None:
    assert argocd_health(body) == {"status": status, "message": message}


def test_a_check_that_breaks_the_sandbox_fails() -> None:
    # The runner really is Argo CD's sandbox: a script reaching for `os` cannot run.
    with pytest.raises(Exception, match="os"):
        argocd_health(tenant(), "return {status = os.getenv('HOME'), message = ''}")


def test_the_readme_installs_exactly_this_check() -> None:
    readme = (CHART / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "argocd-cm" in b]
    config = yaml.safe_load(block)
    assert config["kind"] == "ConfigMap" and config["metadata"]["name"] == "argocd-cm"
    key = "resource.customizations.health.tenantry.dev_AgentTenant"
    assert config["data"][key] == ARGOCD_HEALTH.read_text()
