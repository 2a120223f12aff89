"""What the operator keeps of runtime pods: only why a runtime refused its configuration."""

from __future__ import annotations

from typing import Any

from tenantry.pods import PodCache, runtime_refusal

REFUSAL = "tenantry_runtime serve: refusing to start: agent 'x': kind 'search' is not allowed"


def pod(
    name: str = "runtime-1",
    namespace: str = "tenant-acme",
    tenant: str = "acme",
    component: str = "runtime",
    terminated: dict[str, Any] | None = None,
    where: str = "lastState",
) -> dict[str, Any]:
    status = {"name": "runtime", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
    if terminated is not None:
        status[where] = {"terminated": terminated}
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"tenantry.dev/tenant": tenant, "tenantry.dev/component": component},
            "annotations": {"tenantry.dev/config-hash": "h1"},
        },
        "spec": {"containers": [{"name": "runtime", "image": "runtime:1"}]},
        "status": {"containerStatuses": [status]},
    }


def test_a_runtime_that_exited_2_with_a_message_refused_its_configuration() -> None:
    for where in ("state", "lastState"):
        found = runtime_refusal(pod(terminated={"exitCode": 2, "message": REFUSAL}, where=where))
        assert found is not None
        assert (found.namespace, found.config_hash, found.image, found.message) == (
            "tenant-acme",
            "h1",
            "runtime:1",
            REFUSAL,
        )


def test_other_ends_are_no_refusal() -> None:
    assert runtime_refusal(pod()) is None
    assert runtime_refusal(pod(terminated={"exitCode": 1, "message": "oom"})) is None
    assert runtime_refusal(pod(terminated={"exitCode": 2, "message": "  "})) is None
    assert runtime_refusal(pod(terminated={"exitCode": 2})) is None
    sandbox = pod(component="sandbox", terminated={"exitCode": 2, "message": REFUSAL})
    assert runtime_refusal(sandbox) is None


def test_a_hostile_message_is_one_printable_line_of_bounded_length() -> None:
    """The runtime image may be the tenant's own: its last words are data for a status."""
    hostile = "refusing\n\x1b[31mto start\r\n" + "x" * 5000
    found = runtime_refusal(pod(terminated={"exitCode": 2, "message": hostile}))
    assert found is not None
    assert found.message.startswith("refusing [31mto start x")
    assert found.message.isprintable() and len(found.message) == 1024


def test_only_a_change_of_refusal_wakes_the_tenant() -> None:
    cache = PodCache()
    assert cache.observe(pod(), deleted=False) is None  # running, nothing to tell
    refused = pod(terminated={"exitCode": 2, "message": REFUSAL})
    assert cache.observe(refused, deleted=False) == "acme"
    assert cache.observe(refused, deleted=False) is None  # the same again: no reconcile
    assert [r.message for r in cache.of("acme")] == [REFUSAL]
    assert cache.observe(refused, deleted=True) == "acme"
    assert cache.of("acme") == ()
    assert cache.observe({"metadata": {"name": "x", "labels": {}}}, deleted=False) is None
