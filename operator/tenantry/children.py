"""What the operator knows of the children it applied, kept from watch events.

`summarize` reduces a child object to the few facts the reconcile needs (is it what we applied,
did anyone else change it, is it available); `ChildCache` keeps them per tenant, so a reconcile
of an unchanged tenant reads nothing from the API server and writes nothing to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenantry.names import APPLIED_HASH, MANAGED_BY, OPERATOR, SANDBOX_TOKEN_SECRET, TENANT_LABEL
from tenantry.render import Manifest

FIELD_MANAGER = "tenantry"
# Managers that legitimately write to our children: the Deployment controller stamps a revision
# annotation, the volume binder binds a claim; the scheduler picks a claim's node when its class
# waits for the first consumer. Any other manager writing to a child means someone changed it: drift.
SYSTEM_MANAGERS = frozenset({FIELD_MANAGER, "kube-controller-manager", "kube-scheduler"})

ChildKey = tuple[str, str, str]  # (kind, namespace or "", name)


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace") or "", meta["name"])


def child_path(key: ChildKey) -> str:
    """ "namespace/name", or the name of a cluster-scoped child: where it is, for messages."""
    _, namespace, name = key
    return f"{namespace}/{name}" if namespace else name


def describe_child(key: ChildKey) -> str:
    """ "Kind namespace/name", as logs, events and Stalled messages name a child."""
    return f"{key[0]} {child_path(key)}"


@dataclass(frozen=True)
class LiveChild:
    """The facts about one child object that the reconcile needs."""

    applied_hash: str | None
    foreign_managers: tuple[str, ...]
    uid: str
    owner_uids: tuple[str, ...] = ()
    available: bool | None = None  # Deployments only
    problem: str = ""  # why a Deployment is not available, from its conditions


def deployment_health(body: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment has rolled out its current spec and has every replica available."""
    spec, status = body.get("spec", {}), body.get("status", {})
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < body.get("metadata", {}).get("generation", 0):
        return False, "the Deployment controller has not seen the latest spec yet"
    for condition in status.get("conditions", []):
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            return False, condition.get("message", "replicas cannot be created")
    if status.get("updatedReplicas", 0) < wanted:
        return False, f"{status.get('updatedReplicas', 0)} of {wanted} replicas updated"
    if status.get("availableReplicas", 0) < wanted:
        return False, f"{status.get('availableReplicas', 0)} of {wanted} replicas available"
    return True, ""


def summarize(body: Mapping[str, Any]) -> LiveChild:
    meta = body.get("metadata", {})
    foreign = sorted(
        {
            entry.get("manager", "")
            for entry in meta.get("managedFields") or []
            # Status is the controllers' to write; any other subresource (a `scale`) is a change.
            if entry.get("subresource") != "status" and entry.get("manager") not in SYSTEM_MANAGERS
        }
    )
    available, problem = deployment_health(body) if body.get("kind") == "Deployment" else (None, "")
    return LiveChild(
        applied_hash=(meta.get("annotations") or {}).get(APPLIED_HASH),
        foreign_managers=tuple(foreign),
        uid=meta.get("uid", ""),
        owner_uids=tuple(ref.get("uid", "") for ref in meta.get("ownerReferences") or []),
        available=available,
        problem=problem,
    )


def apply_reason(desired: Manifest, live: LiveChild | None) -> str | None:
    """Why a child must be applied, or None when the live object is what we applied."""
    if live is None:
        return "missing"
    if live.applied_hash != desired["metadata"]["annotations"][APPLIED_HASH]:
        return "changed"
    if live.foreign_managers:
        return f"changed by {', '.join(live.foreign_managers)}"
    return None


class ChildCache:
    """The live children of every tenant, from watch events on the kinds the operator applies,
    and the sandbox tokens those events carried (so a restarted operator reads none back)."""

    def __init__(self) -> None:
        self._children: dict[str, dict[ChildKey, LiveChild]] = {}
        # The token Secret of each namespace, as (owner uids, base64 token), for
        # reconcile.Reconciler._sandbox_token: never the truth about the token once it is known.
        self._tokens: dict[str, tuple[tuple[str, ...], str]] = {}

    def observe(self, body: Mapping[str, Any], deleted: bool) -> str | None:
        """Record one watch event; return the tenant it belongs to, if it is one of ours and the
        event changed what the reconcile knows of it (an event that changes nothing it reads,
        such as a watch's replay after a restart, wakes nobody)."""
        labels = body.get("metadata", {}).get("labels") or {}
        tenant: str | None = labels.get(TENANT_LABEL)
        if labels.get(MANAGED_BY) != OPERATOR or not tenant:
            return None
        key = child_key(body)
        children = self._children.setdefault(tenant, {})
        before = children.get(key)
        if deleted:
            children.pop(key, None)
            if key[0] == "Secret" and key[2] == SANDBOX_TOKEN_SECRET:
                self._tokens.pop(key[1], None)
            return tenant if before is not None else None
        children[key] = summary = summarize(body)
        if key[0] == "Secret" and key[2] == SANDBOX_TOKEN_SECRET:
            token = (body.get("data") or {}).get("token")
            if isinstance(token, str):
                self._tokens[key[1]] = (summary.owner_uids, token)
        return tenant if summary != before else None

    def makes_available(self, body: Mapping[str, Any]) -> bool:
        """Whether this event turns a Deployment available that the cache knew as not (or did
        not know): the change a tenant's Ready waits for."""
        if body.get("kind") != "Deployment" or not deployment_health(body)[0]:
            return False
        tenant = (body.get("metadata", {}).get("labels") or {}).get(TENANT_LABEL, "")
        before = self._children.get(tenant, {}).get(child_key(body))
        return not (before is not None and before.available)

    def sandbox_token(self, namespace: str, uid: str) -> str | None:
        """The base64 token of the namespace's token Secret as the watch saw it, if owned by uid."""
        owners, token = self._tokens.get(namespace, ((), ""))
        return token if uid in owners else None

    def of(self, tenant: str) -> dict[ChildKey, LiveChild]:
        return dict(self._children.get(tenant, {}))

    def forget(self, tenant: str) -> None:
        self._children.pop(tenant, None)

    def replace(self, fresh: ChildCache) -> None:
        """Take over what a fresh listing found (see Controller.resync)."""
        self._children = fresh._children
        self._tokens = fresh._tokens
