"""What the operator knows of its tenants' runtime pods: only why one refused to start.

A runtime that refuses its runtime.json (an agent kind the image lacks, a config its kind
refuses) exits 2 and writes its one-line refusal as its termination message; the kubelet
puts it in the pod's status. The Deployment says only that no replica is available, so the
operator watches runtime pods (list and watch, never get: a label selector on the server) and
keeps, per tenant, nothing but these refusals. An event that changes no refusal queues no
reconcile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tenantry.names import COMPONENT_LABEL, CONFIG_HASH, RUNTIME, TENANT_LABEL
from tenantry.text import shown

# The runtime's exit status for a configuration it refuses (docs/runtime-contract.md).
REFUSED_EXIT_CODE = 2
# The runtime pods, as the watch filters them on the server and the resync lists them.
RUNTIME_POD_LABELS = {COMPONENT_LABEL: RUNTIME}
RUNTIME_PODS_SELECTOR = ",".join(f"{key}={value}" for key, value in RUNTIME_POD_LABELS.items())


@dataclass(frozen=True)
class RuntimeRefusal:
    """A runtime pod that refused its configuration, and which configuration that was."""

    namespace: str
    config_hash: str  # the pod template's tenantry.dev/config-hash
    image: str  # the runtime container's image: a config may be refused by one image only
    message: str


def runtime_refusal(body: Mapping[str, Any]) -> RuntimeRefusal | None:
    """The refusal a runtime pod's container left, now or on its last run; None if none."""
    meta = body.get("metadata") or {}
    if (meta.get("labels") or {}).get(COMPONENT_LABEL) != RUNTIME:
        return None
    images = {
        container.get("name"): container.get("image") or ""
        for container in (body.get("spec") or {}).get("containers") or []
    }
    for container in (body.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != RUNTIME:
            continue
        for state in (container.get("state"), container.get("lastState")):
            terminated = (state or {}).get("terminated") or {}
            message = terminated.get("message")
            if terminated.get("exitCode") != REFUSED_EXIT_CODE or not isinstance(message, str):
                continue
            if message.strip():
                return RuntimeRefusal(
                    meta.get("namespace") or "",
                    (meta.get("annotations") or {}).get(CONFIG_HASH, ""),
                    images.get(RUNTIME, ""),
                    shown(message),
                )
    return None


class PodCache:
    """The runtime refusals of every tenant, by pod, from watch events (and resync lists)."""

    def __init__(self) -> None:
        self._refusals: dict[str, dict[tuple[str, str], RuntimeRefusal]] = {}
        # While a resync lists: the pods events told of since it began, and their tenants.
        self._touched: dict[tuple[str, str], str] | None = None

    def observe(self, body: Mapping[str, Any], deleted: bool) -> str | None:
        """Record one pod event; return its tenant when that changed the tenant's refusals."""
        meta = body.get("metadata") or {}
        tenant = (meta.get("labels") or {}).get(TENANT_LABEL)
        if not isinstance(tenant, str) or not tenant:
            return None
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if self._touched is not None:
            self._touched[key] = tenant
        refusal = None if deleted else runtime_refusal(body)
        known = self._refusals.get(tenant, {})
        if known.get(key) == refusal:
            return None
        if refusal is None:
            known.pop(key, None)
        else:
            known[key] = refusal
        if known:
            self._refusals[tenant] = known
        else:
            self._refusals.pop(tenant, None)
        return tenant

    def of(self, tenant: str) -> tuple[RuntimeRefusal, ...]:
        return tuple(self._refusals.get(tenant, {}).values())

    def forget(self, tenant: str) -> None:
        self._refusals.pop(tenant, None)

    def begin_resync(self) -> None:
        """Note the pods events tell of from now on, until `replace`."""
        self._touched = {}

    def replace(self, fresh: PodCache) -> None:
        """Take over a fresh listing, but for the pods an event told of while it was read."""
        for key, tenant in (self._touched or {}).items():
            now = self._refusals.get(tenant, {}).get(key)
            listed = fresh._refusals.setdefault(tenant, {})
            if now is None:
                listed.pop(key, None)
            else:
                listed[key] = now
            if not listed:
                del fresh._refusals[tenant]
        self._refusals = fresh._refusals
        self._touched = None
