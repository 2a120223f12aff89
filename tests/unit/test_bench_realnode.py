"""The real-node benchmark's reading of a pod: which of its milestones it has reached."""

from __future__ import annotations

from typing import Any

from bench.realnode import milestones


def pod(
    node: str | None = None, state: str = "waiting", ready: str | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"containerStatuses": [{"name": "runtime", "state": {state: {}}}]}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    return {"spec": {"nodeName": node} if node else {}, "status": status}


def test_a_pod_reaches_its_milestones_in_turn() -> None:
    assert milestones({"spec": {}}) == []  # just created: no status yet
    assert milestones(pod()) == []
    assert milestones(pod("tenantry-node")) == ["scheduled"]
    assert milestones(pod("tenantry-node", "running", "False")) == ["scheduled", "running"]
    assert milestones(pod("tenantry-node", "running", "True")) == ["scheduled", "running", "ready"]
