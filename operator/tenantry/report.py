"""Telling what a reconcile observed: the tenant's status, written only when it changed, and the
events for its transitions (both computed by tenantry.status; this module writes them)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Event as KubeEvent

from tenantry.models import API_VERSION, KIND
from tenantry.resources import AgentTenantResource
from tenantry.status import Observation, build_status, comparable, events_for
from tenantry.transport import ApiClient, api_path

logger = logging.getLogger("tenantry.report")


class TenantGone(Exception):
    """The AgentTenant no longer exists (its status could not be written), or another of its
    name has taken its place."""


async def tenant_exists(client: AsyncClient, name: str, uid: str) -> bool:
    """Whether the tenant NAME is there with UID, and not being deleted. A list by name, not a
    GET: the chart grants list and watch on tenants, nothing more. A tenant deleted in the
    foreground (`--cascade=foreground`) is still listed, with a deletionTimestamp, until its
    namespace is gone: that counts as gone too."""
    found = [t async for t in client.list(AgentTenantResource, fields={"metadata.name": name})]
    return any(
        t.metadata and t.metadata.uid == uid and t.metadata.deletionTimestamp is None for t in found
    )


def kube_time(moment: datetime | None) -> str:
    """A timestamp as the API server writes it in a body, so that two compare as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def now() -> str:
    return kube_time(datetime.now(UTC))


@dataclass
class StatusReporter:
    client: ApiClient
    # The status last written, by tenant uid. The operator is the only writer of status, and a
    # reconcile may run on a tenant body older than its own last write (child events arrive
    # first), so this, not the body, is what a new status is compared with.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)

    def previous(self, body: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The status this tenant has now, as far as this operator knows."""
        written = self._written.get(body["metadata"]["uid"])
        return written if written is not None else body.get("status")

    def forget(self, uid: str) -> None:
        self._written.pop(uid, None)

    async def report(
        self, body: Mapping[str, Any], previous: Mapping[str, Any] | None, observation: Observation
    ) -> None:
        status = build_status(observation, previous, now())
        if comparable(status) != comparable(previous):
            meta = body["metadata"]
            # Written only to the tenant of the body's uid: a pass that began before its tenant
            # was deleted and made again under the same name (its watch events not read yet)
            # would otherwise write its status, Ready perhaps, onto the new one. A status
            # subresource ignores a uid in the body, so a JSON patch tests it.
            try:
                await self.client.send_json(
                    "PATCH",
                    api_path(AgentTenantResource.Status, name=meta["name"]),
                    [
                        {"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
                        {"op": "add", "path": "/status", "value": status},
                    ],
                    "application/json-patch+json",
                )
            except ApiError as error:
                gone = error.status.code == 404 or (
                    # A failed test is a 422, as a refused status is: the list tells which.
                    error.status.code == 422
                    and not await tenant_exists(self.client, meta["name"], meta["uid"])
                )
                if gone:
                    raise TenantGone(meta["name"]) from None
                raise
            self._written[meta["uid"]] = status
        for event in events_for(observation, previous, status):
            await self.post_event(body, event.type, event.reason, event.message)

    async def post_event(
        self, body: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        meta = body["metadata"]
        timestamp = now()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": "default"},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "tenantry"},
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        try:
            await self.client.send_json("POST", api_path(KubeEvent, "default"), event)
        except ApiError as error:  # events are best effort: never fail a reconcile for one
            logger.warning(
                "could not post event %s: %s",
                reason,
                error.status.message,
                extra={"tenant": meta["name"]},
            )
        logger.info("event %s %s: %s", kind, reason, message, extra={"tenant": meta["name"]})
