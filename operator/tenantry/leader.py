"""Leader election through a coordination.k8s.io/v1 Lease, so that `replicas: 2` is safe.

Only the holder of the Lease `tenantry-leader` reconciles; the others wait and take it over when
the holder stops renewing it. The protocol is client-go's (tools/leaderelection), kept small:

- A candidate judges expiry by its own clock: the Lease is free when it has not changed for
  `leaseDurationSeconds` since this process last saw it change, or when nobody holds it. The
  times written in the Lease are never compared with local time, so clock skew between nodes
  cannot make two leaders.
- Every write is a replace carrying the resourceVersion that was read: of two candidates that
  both saw a free Lease, the API server lets exactly one write; the other gets a conflict (409)
  and keeps waiting.
- The leader renews every retry period and steps down when it could not renew for the renew
  deadline, which is shorter than the lease duration: it stops before anyone else may start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from tenantry import metrics

LEASE_NAME = "tenantry-leader"

logger = logging.getLogger("tenantry.leader")


@dataclass(frozen=True)
class Timings:
    """How long a Lease lasts unrenewed, how long the leader tries to renew, how often anyone tries."""

    lease_duration: int = 15
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        """What is wrong with these timings, each naming the flag and the fix."""
        found = []
        if self.retry_period <= 0:
            found.append("--lease-retry-period must be more than 0 seconds")
        if self.lease_duration <= self.renew_deadline:
            found.append(
                f"--lease-renew-deadline ({self.renew_deadline:g}s) must be shorter than "
                f"--lease-duration ({self.lease_duration}s): a leader that cannot renew must stop "
                "before another may take over"
            )
        if self.renew_deadline <= self.retry_period:
            found.append(
                f"--lease-retry-period ({self.retry_period:g}s) must be shorter than "
                f"--lease-renew-deadline ({self.renew_deadline:g}s): the leader needs several "
                "tries to renew before it gives up"
            )
        return found


@dataclass(frozen=True)
class Record:
    """What a Lease says about its holder."""

    holder: str  # "" when nobody holds it (never taken, or released)
    duration: int  # leaseDurationSeconds
    transitions: int
    acquired: datetime | None


def record_of(lease: Lease) -> Record:
    spec = lease.spec or LeaseSpec()
    return Record(
        holder=spec.holderIdentity or "",
        duration=spec.leaseDurationSeconds or 0,
        transitions=spec.leaseTransitions or 0,
        acquired=spec.acquireTime,
    )


def expired(record: Record, changed_at: float, now: float) -> bool:
    """Whether the holder let the Lease lapse: unchanged for its duration, by our own clock.

    `changed_at` and `now` are readings of this process's monotonic clock: when the Lease was
    last seen to change, and now.
    """
    return now - changed_at >= record.duration


def may_take(record: Record, identity: str, changed_at: float, now: float) -> bool:
    """Whether `identity` may write itself into the Lease: it holds it, nobody does, or it lapsed."""
    return record.holder in ("", identity) or expired(record, changed_at, now)


def must_step_down(renewed_at: float, now: float, timings: Timings) -> bool:
    """Whether a leader that last renewed at `renewed_at` must stop: the renew deadline passed."""
    return now - renewed_at >= timings.renew_deadline


def lease_time(moment: datetime) -> datetime:
    """`moment`, never on a whole second.

    The API server parses a Lease's times as MicroTime, which must have six fractional digits,
    and lightkube writes a datetime without any when its microseconds are 0: such a write is
    refused. One microsecond later is as good a time.
    """
    return moment if moment.microsecond else moment.replace(microsecond=1)


def default_identity() -> str:
    """The pod's name (POD_NAME, else the hostname) and a random suffix.

    The suffix makes a restarted process a new candidate: it never mistakes the Lease its
    previous life held for its own.
    """
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{secrets.token_hex(3)}"


class LeaderElector:
    """Acquires, renews and releases the leader Lease in one namespace."""

    def __init__(
        self, client: AsyncClient, namespace: str, identity: str, timings: Timings
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.identity = identity
        self.timings = timings
        self.holder = ""  # the holder as last seen
        # The resourceVersion last seen, and when (monotonic) it was first seen: any write to the
        # Lease, a renewal included, changes it.
        self._seen_version: str | None = None
        self._changed_at = 0.0

    @property
    def where(self) -> str:
        return f"{self.namespace}/{LEASE_NAME}"

    async def try_acquire_or_renew(self) -> bool:
        """One attempt to hold the Lease; True when this process holds it afterwards."""
        now = time.monotonic()
        try:
            lease = await self.client.get(Lease, LEASE_NAME, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            return await self._create()
        record = record_of(lease)
        assert lease.metadata is not None
        if lease.metadata.resourceVersion != self._seen_version:
            self._seen_version, self._changed_at = lease.metadata.resourceVersion, now
        self._observe(record.holder)
        if not may_take(record, self.identity, self._changed_at, now):
            return False
        moment = lease_time(datetime.now(UTC))
        ours = record.holder == self.identity
        lease.spec = LeaseSpec(
            holderIdentity=self.identity,
            leaseDurationSeconds=self.timings.lease_duration,
            acquireTime=record.acquired if ours and record.acquired else moment,
            renewTime=moment,
            leaseTransitions=record.transitions if ours else record.transitions + 1,
        )
        try:
            # The resourceVersion read above travels with it: a write in between is a conflict.
            written = await self.client.replace(lease)
        except ApiError as error:
            if error.status.code == 409:
                return False  # another candidate wrote first: it won
            raise
        self._held(written)
        return True

    async def _create(self) -> bool:
        moment = lease_time(datetime.now(UTC))
        lease = Lease(
            metadata=ObjectMeta(name=LEASE_NAME, namespace=self.namespace),
            spec=LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=self.timings.lease_duration,
                acquireTime=moment,
                renewTime=moment,
                leaseTransitions=0,
            ),
        )
        try:
            created = await self.client.create(lease)
        except ApiError as error:
            if error.status.code == 409:
                return False  # another candidate created it first
            raise
        self._held(created)
        return True

    def _held(self, lease: Lease) -> None:
        assert lease.metadata is not None
        self._seen_version, self._changed_at = lease.metadata.resourceVersion, time.monotonic()
        self._observe(self.identity)

    def _observe(self, holder: str) -> None:
        # A standby says whom it waits for; a leader that sees another holder says why it exits.
        if holder not in (self.holder, self.identity) and self.holder != self.identity:
            logger.info(
                "waiting for the leader Lease %s, held by %s",
                self.where,
                holder or "nobody (released)",
            )
        self.holder = holder

    async def acquire(self) -> bool:
        """Wait, retrying, until this process holds the Lease; then return True."""
        logger.info("waiting for the leader Lease %s as %s", self.where, self.identity)
        while True:
            try:
                if await self._attempt(self.timings.retry_period):
                    break
            except Exception as error:
                metrics.api_error("lease", error)
                logger.warning("could not read or write the leader Lease %s: %s", self.where, error)
            # Jittered, as client-go does, so candidates do not knock in step.
            await asyncio.sleep(self.timings.retry_period * random.uniform(1.0, 1.2))  # noqa: S311
        logger.info("leading as %s: this process reconciles now", self.identity)
        return True

    async def hold(self) -> str:
        """Renew the Lease until it is lost; return why it was lost."""
        renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(self.timings.retry_period)
            remaining = renewed_at + self.timings.renew_deadline - time.monotonic()
            try:
                # A hung request must not outlive the deadline: past it, another may lead.
                if await self._attempt(max(remaining, 0.0)):
                    renewed_at = time.monotonic()
                    continue
            except Exception as error:
                metrics.api_error("lease", error)
                logger.warning("could not renew the leader Lease %s: %s", self.where, error)
            if self.holder not in ("", self.identity):
                return f"the leader Lease {self.where} is now held by {self.holder}"
            if must_step_down(renewed_at, time.monotonic(), self.timings):
                return (
                    f"the leader Lease {self.where} could not be renewed for "
                    f"{self.timings.renew_deadline:g}s (--lease-renew-deadline)"
                )

    async def _attempt(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                return await self.try_acquire_or_renew()
        except TimeoutError:
            logger.warning("no answer about the leader Lease %s in %.1fs", self.where, seconds)
            return False

    async def release(self) -> None:
        """Give the Lease up, so a standby takes over at its next try, not a lease duration later."""
        try:
            async with asyncio.timeout(self.timings.renew_deadline):
                lease = await self.client.get(Lease, LEASE_NAME, namespace=self.namespace)
                record = record_of(lease)
                if record.holder != self.identity:
                    return
                moment = lease_time(datetime.now(UTC))
                # As client-go releases: no holder, a one-second duration, the transitions kept.
                lease.spec = LeaseSpec(
                    leaseDurationSeconds=1,
                    acquireTime=moment,
                    renewTime=moment,
                    leaseTransitions=record.transitions,
                )
                await self.client.replace(lease)
        except Exception as error:  # best effort: the Lease expires by itself anyway
            logger.warning(
                "could not release the leader Lease %s; a standby takes over once it expires: %s",
                self.where,
                error,
            )
        else:
            logger.info("released the leader Lease %s", self.where)
