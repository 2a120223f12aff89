"""Status conditions and events, from observations (pure)."""

from __future__ import annotations

from tenantry.children import apply_reason, deployment_health, summarize
from tenantry.names import APPLIED_HASH
from tenantry.status import (
    Correction,
    GroupState,
    Observation,
    build_status,
    comparable,
    events_for,
)

ALL_GOOD = {kind: GroupState(True, "Fine") for kind in ("SecretsReady", "RuntimeReady")}


def conditions(status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["type"]: c for c in status["conditions"]}  # type: ignore[attr-defined,index]


def test_ready_when_every_group_is() -> None:
    status = build_status(Observation(3, "ns", "acme", groups=ALL_GOOD), None, "T1")
    found = conditions(status)
    assert (
        found["Ready"]["status"],
        found["Reconciling"]["status"],
        found["Stalled"]["status"],
    ) == ("True", "False", "False")
    assert all(c["observedGeneration"] == 3 for c in found.values())
    assert (
        status["observedGeneration"] == 3
        and status["namespace"] == "ns"
        and status["topicSource"] == "acme"
    )


def test_progressing_names_what_it_waits_for() -> None:
    groups = {
        **ALL_GOOD,
        "RuntimeReady": GroupState(False, "RollingOut", "the runtime Deployment is rolling out"),
    }
    found = conditions(build_status(Observation(1, "ns", "acme", groups=groups), None, "T1"))
    assert found["Ready"]["status"] == "False" and found["Reconciling"]["status"] == "True"
    assert "RuntimeReady: the runtime Deployment is rolling out" in str(found["Ready"]["message"])


def test_stalled_keeps_group_conditions_and_says_why() -> None:
    before = build_status(Observation(1, "ns", "acme", groups=ALL_GOOD), None, "T1")
    stalled = build_status(
        Observation(2, None, "acme", stalled=("SecretNotFound", "fix it")), before, "T2"
    )
    found = conditions(stalled)
    assert found["Stalled"]["status"] == "True" and found["Stalled"]["message"] == "fix it"
    assert found["Ready"]["reason"] == "SecretNotFound"
    assert found["RuntimeReady"] == conditions(before)["RuntimeReady"]
    assert stalled["namespace"] == "ns"


def test_transition_times_move_only_with_the_status() -> None:
    first = build_status(Observation(1, "ns", "acme", groups=ALL_GOOD), None, "T1")
    again = build_status(Observation(1, "ns", "acme", groups=ALL_GOOD), first, "T2")
    assert again == first
    assert comparable(again) == comparable(first)
    broken = {**ALL_GOOD, "RuntimeReady": GroupState(False, "Unavailable", "0 of 1")}
    later = build_status(Observation(1, "ns", "acme", groups=broken), first, "T3")
    assert conditions(later)["Ready"]["lastTransitionTime"] == "T3"
    assert conditions(later)["SecretsReady"]["lastTransitionTime"] == "T1"


def test_events_for_transitions_only() -> None:
    observation = Observation(1, "ns", "acme", groups=ALL_GOOD)
    ready = build_status(observation, None, "T1")
    assert [e.reason for e in events_for(observation, None, ready)] == ["Ready"]
    assert events_for(observation, ready, ready) == []
    stall = Observation(2, None, "acme", stalled=("NamespaceConflict", "taken"))
    stalled = build_status(stall, ready, "T2")
    assert [(e.type, e.reason) for e in events_for(stall, ready, stalled)] == [
        ("Warning", "NamespaceConflict")
    ]
    corrected = Observation(
        1,
        "ns",
        "acme",
        groups=ALL_GOOD,
        corrected=(Correction("NetworkPolicy", "ns/default-deny", "missing"),),
    )
    assert [e.reason for e in events_for(corrected, ready, ready)] == ["DriftCorrected"]


def test_a_tenant_that_waits_is_reconciling_not_stalled_and_says_so_once() -> None:
    waiting = Observation(1, None, "acme", waiting=("NamespaceTerminating", "the old one goes"))
    status = build_status(waiting, None, "T1")
    found = {kind: (c["status"], c["reason"]) for kind, c in conditions(status).items()}
    assert found == {
        "Ready": ("False", "NamespaceTerminating"),
        "Reconciling": ("True", "NamespaceTerminating"),
        "Stalled": ("False", "NamespaceTerminating"),
    }
    assert conditions(status)["Reconciling"]["message"] == "the old one goes"
    assert "namespace" not in status  # not the tenant's yet
    assert not waiting.ready
    assert [(e.type, e.reason) for e in events_for(waiting, None, status)] == [
        ("Normal", "NamespaceTerminating")
    ]
    assert events_for(waiting, status, build_status(waiting, status, "T2")) == []
    # Whatever the groups were, none is said while the namespace they live in is not there.
    ready = build_status(Observation(1, "ns", "acme", groups=ALL_GOOD), None, "T0")
    assert conditions(build_status(waiting, ready, "T3")).keys() == found.keys()


def deployment(
    generation: int,
    observed: int,
    available: int,
    updated: int = 1,
    progressing: tuple[str, str] | None = None,
    failure: str | None = None,
) -> dict[str, object]:
    conditions = []
    if progressing:
        status, reason = progressing
        conditions.append(
            {"type": "Progressing", "status": status, "reason": reason, "message": reason}
        )
    if failure:
        conditions.append({"type": "ReplicaFailure", "status": "True", "message": failure})
    return {
        "kind": "Deployment",
        "metadata": {"generation": generation, "annotations": {APPLIED_HASH: "h"}},
        "spec": {"replicas": 1},
        "status": {
            "observedGeneration": observed,
            "availableReplicas": available,
            "updatedReplicas": updated,
            "conditions": conditions,
        },
    }


def test_deployment_health() -> None:
    assert deployment_health(deployment(2, 2, 1)) == (True, "")
    assert deployment_health(deployment(3, 2, 1))[0] is False
    assert deployment_health(deployment(2, 2, 0))[0] is False
    assert deployment_health(deployment(2, 2, 1, updated=0))[0] is False


def test_a_rollout_going_as_it_should_is_one_state_whatever_its_step() -> None:
    # Each step used to be a message of its own: a new summary, a pass and a status write each.
    steps = [
        {"kind": "Deployment", "metadata": {"generation": 1}, "spec": {"replicas": 1}},
        deployment(1, 1, 0, updated=0, progressing=("True", "NewReplicaSetCreated")),
        deployment(1, 1, 0, updated=1, progressing=("True", "ReplicaSetUpdated")),
        # A new spec: its conditions still describe the old one, a finished rollout.
        deployment(2, 1, 1, progressing=("True", "NewReplicaSetAvailable")),
        deployment(2, 1, 0, progressing=("False", "ProgressDeadlineExceeded")),
    ]
    assert [deployment_health(step) for step in steps] == [(False, "")] * len(steps)
    assert deployment_health(deployment(1, 1, 1, progressing=("True", "ReplicaSetUpdated"))) == (
        True,
        "",
    )


def test_a_rollout_with_old_replicas_left_is_not_over() -> None:
    # A surge: the new replica updated, the old one still running and counted as available.
    surge = deployment(2, 2, 1, progressing=("True", "ReplicaSetUpdated"))
    surge["status"]["replicas"] = 2  # type: ignore[index]
    assert deployment_health(surge) == (False, "")
    surge["status"]["availableReplicas"] = 2  # type: ignore[index]  # the new one ready too
    assert deployment_health(surge) == (False, "")
    surge["status"]["replicas"] = 1  # type: ignore[index]  # the old one gone
    assert deployment_health(surge) == (True, "")


def test_a_problem_is_said_in_one_line_of_bounded_length() -> None:
    long = deployment(1, 1, 0, updated=0, failure="forbidden:\n" + "x" * 40_000)
    ok, problem = deployment_health(long)
    assert not ok and len(problem) == 1024 and "\n" not in problem


def test_a_deployment_that_cannot_finish_its_rollout_says_why() -> None:
    stuck = deployment(1, 1, 0, progressing=("False", "ProgressDeadlineExceeded"))
    assert deployment_health(stuck) == (False, "ProgressDeadlineExceeded")
    refused = deployment(1, 1, 0, updated=0, failure='pods "runtime-x" is forbidden: quota')
    assert deployment_health(refused) == (False, 'pods "runtime-x" is forbidden: quota')
    lost = deployment(1, 1, 0, progressing=("True", "NewReplicaSetAvailable"))
    assert deployment_health(lost) == (False, "0 of 1 replicas available")


def test_apply_is_skipped_only_for_what_we_applied_and_nobody_changed() -> None:
    desired = {"kind": "ConfigMap", "metadata": {"name": "x", "annotations": {APPLIED_HASH: "h"}}}
    ours = {
        "metadata": {"annotations": {APPLIED_HASH: "h"}, "managedFields": [{"manager": "tenantry"}]}
    }
    assert apply_reason(desired, None) == "missing"
    assert apply_reason(desired, summarize(ours)) is None
    edited = {
        "metadata": {
            **ours["metadata"],
            "managedFields": [{"manager": "tenantry"}, {"manager": "kubectl-edit"}],
        }
    }
    assert apply_reason(desired, summarize(edited)) == "changed by kubectl-edit"
    status_only = {
        "metadata": {
            **ours["metadata"],
            "managedFields": [{"manager": "someone", "subresource": "status"}],
        }
    }
    assert apply_reason(desired, summarize(status_only)) is None
    stale = {"metadata": {"annotations": {APPLIED_HASH: "old"}}}
    assert apply_reason(desired, summarize(stale)) == "changed"
