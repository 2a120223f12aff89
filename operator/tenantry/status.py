"""Pure status logic: from what a reconcile observed to conditions, and to the events to post.

Conditions follow the Kubernetes API conventions and kstatus (Flux): `Ready` rolls up every
child group, `Reconciling` is True while converging, `Stalled` is True when only a human can
help, and every condition carries the generation it describes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
# One condition per child group that has a state of its own (plan.group_states), in the order a
# tenant converges. The namespace, quota, policies and accounts have none beyond being applied,
# which `Ready` (and `Stalled`, when they cannot be) already says.
GROUPS = ("SecretsReady", "RuntimeReady", "SandboxReady")


@dataclass(frozen=True)
class GroupState:
    ok: bool
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Correction:
    """A child restored after someone else changed or deleted it."""

    kind: str
    name: str  # "namespace/name", or the name of a cluster-scoped child
    reason: str  # "missing", or who changed it

    def __str__(self) -> str:
        return f"{self.kind} {self.name} ({self.reason})"


@dataclass(frozen=True)
class Observation:
    """What one reconcile found: either a stall, or the state of each child group."""

    generation: int
    namespace: str | None
    topic_source: str
    stalled: tuple[str, str] | None = None  # (reason, message a human can act on)
    # (reason, message): what it waits for, which goes away by itself (plan.Waiting)
    waiting: tuple[str, str] | None = None
    groups: Mapping[str, GroupState] = field(default_factory=dict)
    corrected: tuple[
        Correction, ...
    ] = ()  # children restored after someone changed or deleted them
    pruned: tuple[str, ...] = ()  # children deleted because the spec no longer wants them

    @property
    def ready(self) -> bool:
        """Every child group is in place (the `Ready` condition this observation reports)."""
        return (
            not self.stalled
            and not self.waiting
            and all(state.ok for state in self.groups.values())
        )


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


def condition(
    kind: str,
    ok: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    status = "True" if ok else "False"
    unchanged = previous is not None and previous.get("status") == status
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        # The transition time moves only when the status does.
        "lastTransitionTime": previous["lastTransitionTime"] if unchanged and previous else now,
    }


def build_status(
    observation: Observation, previous: Mapping[str, Any] | None, now: str
) -> dict[str, Any]:
    """The status to write for an observation, keeping transition times that did not change."""
    before = {c["type"]: c for c in (previous or {}).get("conditions", [])}
    generation = observation.generation

    def make(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
        return condition(kind, ok, reason, message, generation, before.get(kind), now)

    conditions: list[dict[str, Any]] = []
    if observation.stalled:
        reason, message = observation.stalled
        conditions += [
            make(READY, False, reason, message),
            make(
                RECONCILING, False, reason, "stalled: waiting for the spec or the cluster to change"
            ),
            make(STALLED, True, reason, message),
        ]
        # Group conditions keep what was last observed (a refused change touched nothing), but
        # for the groups the stall itself changed (a revoked Secret, and the runtime it stopped).
        conditions += [
            make(kind, state.ok, state.reason, state.message)
            for kind, state in observation.groups.items()
        ]
        conditions += [
            before[kind] for kind in GROUPS if kind in before and kind not in observation.groups
        ]
    elif observation.waiting:
        # Converging, and nobody need act: Reconciling says what for. No group condition: what
        # the tenant waits for is the namespace every group lives in.
        reason, message = observation.waiting
        conditions += [
            make(READY, False, reason, message),
            make(RECONCILING, True, reason, message),
            make(STALLED, False, reason),
        ]
    else:
        unready = [
            f"{kind}: {state.message or state.reason}"
            for kind, state in observation.groups.items()
            if not state.ok
        ]
        ready = observation.ready
        conditions += [
            make(
                READY,
                ready,
                "Ready" if ready else "Progressing",
                "all children are available" if ready else "; ".join(unready),
            ),
            make(
                RECONCILING,
                not ready,
                "Progressing" if not ready else "Converged",
                "; ".join(unready),
            ),
            make(STALLED, False, "Converged" if ready else "Progressing"),
        ]
        conditions += [
            make(kind, state.ok, state.reason, state.message)
            for kind, state in observation.groups.items()
        ]

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "topicSource": observation.topic_source,
        "conditions": conditions,
    }
    namespace = observation.namespace or (previous or {}).get("namespace")
    if namespace:
        status["namespace"] = namespace
    return status


def comparable(status: Mapping[str, Any] | None) -> Any:
    """A status without transition times, to decide whether anything worth writing changed."""
    if not status:
        return None
    conditions = sorted(
        (
            {k: v for k, v in c.items() if k != "lastTransitionTime"}
            for c in status.get("conditions", [])
        ),
        key=lambda c: str(c["type"]),
    )
    return {**{k: v for k, v in status.items() if k != "conditions"}, "conditions": conditions}


def condition_of(status: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    for item in (status or {}).get("conditions", []):
        if item.get("type") == kind:
            return dict(item)
    return {}


def events_for(
    observation: Observation, previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[Event]:
    """Events for the significant transitions between two statuses."""
    events: list[Event] = []
    was_ready = condition_of(previous, READY).get("status") == "True"
    is_ready = condition_of(current, READY).get("status") == "True"
    stalled_before = condition_of(previous, STALLED)
    stalled_now = condition_of(current, STALLED)
    if stalled_now.get("status") == "True" and (
        stalled_before.get("status") != "True"
        or stalled_before.get("message") != stalled_now.get("message")
    ):
        events.append(Event("Warning", str(stalled_now["reason"]), str(stalled_now["message"])))
    elif stalled_before.get("status") == "True" and stalled_now.get("status") != "True":
        events.append(Event("Normal", "Resumed", "the tenant is no longer stalled"))
    waits_for = observation.waiting
    if waits_for and condition_of(previous, RECONCILING).get("reason") != waits_for[0]:
        events.append(Event("Normal", *waits_for))
    if observation.corrected:
        events.append(
            Event(
                "Normal",
                "DriftCorrected",
                "restored " + ", ".join(str(item) for item in observation.corrected),
            )
        )
    if observation.pruned:
        events.append(Event("Normal", "Pruned", "deleted " + ", ".join(observation.pruned)))
    if is_ready and not was_ready:
        events.append(
            Event("Normal", "Ready", f"the tenant is ready in namespace {current.get('namespace')}")
        )
    elif was_ready and not is_ready and stalled_now.get("status") != "True":
        events.append(
            Event("Warning", "NotReady", str(condition_of(current, READY).get("message", "")))
        )
    return events
