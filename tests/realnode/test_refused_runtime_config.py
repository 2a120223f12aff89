"""A runtime that refuses its configuration (an unknown kind, then a config its kind refuses), on
the real node: its one-line refusal reaches the tenant's status (Stalled, reason RuntimeConfigRefused), `kubectl get agenttenants` shows the
reason without anyone reading a log, and fixing the manifest makes the tenant Ready."""

from __future__ import annotations

from typing import Any

from realnode.nodekit import Chart, apply, get, kubectl, wait_until

NAME = "refuser"


def manifest(agents: list[dict[str, Any]], sandbox: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "tenantry.dev/v1alpha1",
        "kind": "AgentTenant",
        "metadata": {"name": NAME},
        "spec": {
            "runtime": {"topicTypes": ["default"], "agents": agents},
            "sandbox": {"enabled": sandbox},
        },
    }


def condition(kind: str) -> dict[str, Any]:
    tenant = get("agenttenant", NAME)
    found = [c for c in (tenant.get("status") or {}).get("conditions", []) if c["type"] == kind]
    return found[0] if found else {}


def test_a_refused_runtime_config_is_shown_on_the_tenant(chart_operator: Chart) -> None:
    apply(manifest([{"name": "finder", "kind": "search", "topicType": "default"}]))
    try:
        wait_until(
            lambda: condition("Stalled").get("reason") == "RuntimeConfigRefused",
            "the tenant to stall on its runtime's refusal",
            timeout=240,
        )
        stalled = condition("Stalled")
        assert stalled["status"] == "True"
        assert stalled["message"].startswith(
            "tenantry_runtime serve: refusing to start: agent 'finder': kind 'search' is not "
            "allowed; allowed kinds: assistant, coder, team"
        ), stalled
        runtime = condition("RuntimeReady")
        assert (runtime["status"], runtime["reason"]) == ("False", "RuntimeConfigRefused")
        assert condition("Ready")["reason"] == "RuntimeConfigRefused"
        listed = kubectl("get", "agenttenants", NAME)
        assert "RuntimeConfigRefused" in listed, listed
        events = kubectl(
            "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={NAME}"
        )
        assert "RuntimeConfigRefused" in events, events

        # A kind the image has, with a config that kind refuses: its own words reach the status.
        coder = {
            "name": "runner",
            "kind": "coder",
            "topicType": "default",
            "config": '{"workers": 4}',
        }
        apply(manifest([coder], sandbox=True))
        wait_until(
            lambda: "config.workers" in condition("Stalled").get("message", ""),
            "the tenant to stall on its runtime's refusal of the agent's config",
            timeout=240,
        )
        stalled = condition("Stalled")
        assert stalled["reason"] == "RuntimeConfigRefused", stalled
        assert (
            "agent 'runner'.config.workers: Extra inputs are not permitted" in stalled["message"]
        ), stalled

        # Fixed in the manifest: the new runtime starts, the tenant is Ready, the stall is over.
        apply(manifest([]))
        wait_until(
            lambda: condition("Ready").get("status") == "True",
            "the tenant to be Ready once its runtime takes the configuration",
            timeout=240,
        )
        assert condition("Stalled")["status"] == "False"
        assert condition("RuntimeReady")["reason"] == "Available"
    finally:
        kubectl("delete", "agenttenant", NAME, "--wait=false", check=False)
