"""The one level-based, idempotent reconcile of a tenant: check, render, apply, prune, report.

Every refusal is decided before the first write, so a tenant that is refused (a namespace it
does not own, a secret it may not copy) leaves every existing object exactly as it was.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import (
    Event as KubeEvent,
)
from lightkube.resources.core_v1 import (
    Namespace,
    Secret,
)
from lightkube.types import PatchType
from pydantic import ValidationError

from tenantry.children import (
    FIELD_MANAGER,
    SYSTEM_MANAGERS,
    ChildKey,
    LiveChild,
    apply_reason,
    child_key,
    summarize,
)
from tenantry.config import OperatorConfig
from tenantry.kinds import apply_phase
from tenantry.live import APPLIED_KINDS, AgentTenantResource
from tenantry.models import (
    API_VERSION,
    KIND,
    RESERVED_NAMESPACES,
    AgentTenant,
    human_errors,
)
from tenantry.names import (
    ALLOWED_TENANTS,
    MANAGED_BY,
    OPERATOR,
    RUNTIME,
    SANDBOX,
    SANDBOX_TOKEN_SECRET,
    TENANT_LABEL,
)
from tenantry.policy import violations
from tenantry.render import (
    ClusterFacts,
    DuplicateChild,
    Manifest,
    render,
    tenant_namespace,
    uid_slot,
)
from tenantry.status import (
    Correction,
    GroupState,
    Observation,
    build_status,
    comparable,
    condition_of,
    events_for,
)

logger = logging.getLogger("tenantry.reconcile")


class TenantGone(Exception):
    """The AgentTenant no longer exists (its status could not be written)."""


class Stall(Exception):
    """The tenant cannot converge until a human changes something; nothing was written, unless
    the stall revoked what the tenant may no longer hold (`revoked`, the groups it changed)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.revoked: tuple[str, ...] = ()
        self.groups: dict[str, GroupState] = {}


@dataclass(frozen=True)
class SourceRefusal:
    """A Secret the tenant may not copy (any more), by its name in the tenant namespace."""

    name: str
    reason: str
    message: str


def ours(key: ChildKey, child: LiveChild, uid: str, namespace: str) -> bool:
    """A child of this tenant: owned by its uid, and in its namespace (or that namespace itself).

    Labels alone never decide it: anyone who may label an object could otherwise file one under
    another tenant, have it pruned on that tenant's behalf, or hide a tampered child from it.
    """
    kind, child_namespace, name = key
    where = name if kind == "Namespace" else child_namespace
    return uid in child.owner_uids and where == namespace


def kube_time(moment: datetime | None) -> str:
    """A timestamp as the API server writes it in a body, so that two compare as strings."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def now() -> str:
    return kube_time(datetime.now(UTC))


def describe(error: ValidationError) -> str:
    """A pydantic error as a human reads it: the field path and what is wrong."""
    return "; ".join(human_errors(error))


def owns(namespace: Mapping[str, Any], tenant: AgentTenant, uid: str) -> bool:
    meta = namespace.get("metadata", {})
    owned = any(
        ref.get("kind") == KIND and ref.get("uid") == uid
        for ref in meta.get("ownerReferences") or []
    )
    return owned and (meta.get("labels") or {}).get(TENANT_LABEL) == tenant.name


# (name, creationTimestamp) of every tenant this operator knows, for check_uid_slot.
Neighbours = Callable[[], Iterable[tuple[str, str]]]


def check_uid_slot(name: str, created: str, neighbours: Iterable[tuple[str, str]]) -> None:
    """Refuse a tenant whose pods would run as the users of an older tenant's pods."""
    slot = uid_slot(name)
    for other, other_created in neighbours:
        if other != name and uid_slot(other) == slot and (other_created, other) < (created, name):
            raise Stall(
                "UserIdCollision",
                f"metadata.name: tenant {name!r} would run as the same users as tenant {other!r} "
                "(their names hash to one uid slot, see docs/security.md): choose another name",
            )


def place(key: ChildKey) -> str:
    _, namespace, name = key
    return f"{namespace}/{name}" if namespace else name


def label(key: ChildKey) -> str:
    return f"{key[0]} {place(key)}"


@contextmanager
def refusals_stall(key: ChildKey) -> Iterator[None]:
    """An API server that refuses a child as invalid (400, 422) stalls the tenant: a retry
    would be refused the same way until a human changes the spec."""
    try:
        yield
    except ApiError as error:
        if error.status.code in (400, 422):
            raise Stall(
                "Rejected", f"the API server rejected {label(key)}: {error.status.message}"
            ) from None
        raise


async def gather_all(writes: Iterable[Awaitable[None]]) -> None:
    """Await every write, even when one fails, then raise the first failure.

    asyncio.gather would return at the first failure and leave the other writes running
    unawaited past the end of the reconcile.
    """
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def check_namespace_name(namespace: str, reserved: frozenset[str]) -> None:
    """Refuse namespaces no tenant may have, whatever the manifest or the prefix says."""
    if namespace in reserved or namespace.startswith("kube-"):
        raise Stall(
            "ReservedNamespace",
            f"namespace {namespace!r} is reserved for the cluster or the operator: set spec.namespace "
            "to a namespace of the tenant's own",
        )
    if len(namespace) > 63:
        raise Stall(
            "InvalidNamespace",
            f"the default namespace {namespace!r} is longer than 63 characters: set spec.namespace, "
            "or use a shorter tenant name",
        )


@dataclass
class Reconciler:
    """Applies tenants with one client, one field manager and the operator's configuration."""

    client: AsyncClient
    config: OperatorConfig
    operator_namespace: str | None = None
    neighbours: Neighbours = tuple
    # Sandbox tokens by tenant uid: generated once, then read back from the tenant's Secret.
    _tokens: dict[str, str] = field(default_factory=dict)
    # The status last written, by tenant uid. The operator is the only writer of status, and a
    # reconcile may run on a tenant body older than its own last write (child events arrive
    # first), so this, not the body, is what a new status is compared with.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def reconcile(
        self, body: Mapping[str, Any], live: Mapping[ChildKey, LiveChild]
    ) -> Observation:
        """Converge one tenant, write its status when it changed, and post events."""
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = self._written.get(meta["uid"], body.get("status"))
        try:
            tenant = AgentTenant.model_validate(body)
            observation = await self._converge(
                tenant, meta["uid"], meta.get("creationTimestamp") or "", generation, live, previous
            )
        except ValidationError as error:
            observation = self._stalled(body, generation, "InvalidSpec", describe(error))
        except Stall as stall:
            observation = self._stalled(body, generation, stall.reason, stall.message)
            if stall.revoked:
                observation = replace(observation, pruned=stall.revoked, groups=stall.groups)
        await self._report(body, previous, observation)
        return observation

    def _stalled(
        self, body: Mapping[str, Any], generation: int, reason: str, message: str
    ) -> Observation:
        name = body["metadata"]["name"]
        logger.warning("stalled: %s: %s", reason, message, extra={"tenant": name})
        return Observation(generation, None, name, stalled=(reason, message))

    async def _converge(
        self,
        tenant: AgentTenant,
        uid: str,
        created: str,
        generation: int,
        live: Mapping[ChildKey, LiveChild],
        previous: Mapping[str, Any] | None,
    ) -> Observation:
        namespace = tenant_namespace(tenant, self.config)
        check_namespace_name(namespace, self._reserved_namespaces())
        live = {key: child for key, child in live.items() if ours(key, child, uid, namespace)}
        if ("Namespace", "", namespace) in live:
            namespace_exists = True  # ours, as the watch last saw it: no need to read it
        else:
            existing = await self._get(Namespace, namespace)
            if existing is not None and not owns(existing, tenant, uid):
                raise Stall(
                    "NamespaceConflict",
                    f"namespace {namespace!r} already exists and does not belong to this tenant; Tenantry "
                    "never adopts a namespace: set spec.namespace to a namespace that does not exist yet",
                )
            namespace_exists = existing is not None
        if self.config.scoped_secrets and namespace_exists:
            # No cluster-wide watch of Secrets then (see handlers.watched_children): list this
            # tenant's, through the RoleBinding it got with its namespace.
            live = {**live, **await self._live_secrets(namespace, uid)}
        # Grants first: a revoked Secret is taken back even from a tenant that another check
        # below stalls (a manifest must not keep its copy by breaking a rule on purpose).
        secret_data, secret_types = await self._read_secret_sources(
            tenant, namespace, live if namespace_exists else {}
        )
        check_uid_slot(tenant.name, created, self.neighbours())
        problems = violations(tenant, self.config)
        if problems:
            raise Stall("NotAllowed", "; ".join(f"{path}: {problem}" for path, problem in problems))
        token = (
            await self._sandbox_token(uid, namespace, namespace_exists)
            if tenant.spec.sandbox.enabled
            else None
        )
        try:
            desired = render(
                tenant, self.config, ClusterFacts(uid, secret_data, secret_types, token)
            )
        except DuplicateChild as error:
            raise Stall("DuplicateChild", str(error)) from None

        was_ready = condition_of(previous, "Ready").get("status") == "True"
        stale = {
            child_key(m): (m, reason)
            for m in desired
            if (reason := apply_reason(m, live.get(child_key(m)))) is not None
        }

        async def write(key: ChildKey) -> None:
            manifest, reason = stale[key]
            if key[0] == "Namespace" and not namespace_exists:
                await self._create_namespace(manifest, tenant, uid)
            elif key[0] != "Namespace" and key in live and live[key].foreign_managers:
                await self._replace(manifest)
            else:
                await self._apply(manifest)
            logger.info("applied %s (%s)", label(key), reason, extra={"tenant": tenant.name})

        # One request per child, but not one after another: every child of a phase at once.
        for phase in sorted({apply_phase(key[0]) for key in stale}):
            await gather_all(write(key) for key in stale if apply_phase(key[0]) == phase)
        applied = set(stale)
        corrected = [
            Correction(key[0], place(key), reason)
            for key, (_, reason) in stale.items()
            if was_ready and reason != "changed"
        ]
        pruned = await self._prune({child_key(m) for m in desired}, live, tenant.name)
        return Observation(
            generation=generation,
            namespace=namespace,
            topic_source=tenant.name,
            groups=self._groups(tenant, namespace, applied, live),
            corrected=tuple(corrected),
            pruned=tuple(pruned),
        )

    def _reserved_namespaces(self) -> frozenset[str]:
        reserved = RESERVED_NAMESPACES | {self.config.secret_source_namespace}
        return reserved | {self.operator_namespace} if self.operator_namespace else reserved

    async def _read_secret_sources(
        self, tenant: AgentTenant, namespace: str, live: Mapping[ChildKey, LiveChild]
    ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        source_namespace = self.config.secret_source_namespace
        data: dict[str, dict[str, str]] = {}
        types: dict[str, str] = {}
        refused: list[SourceRefusal] = []
        for index, ref in enumerate(tenant.spec.secrets):
            field_path = f"spec.secrets[{index}].from"
            source = await self._get(Secret, ref.from_, source_namespace)
            if source is None:
                refused.append(
                    SourceRefusal(
                        ref.name,
                        "SecretNotFound",
                        f"{field_path}: Secret {ref.from_!r} does not exist in namespace {source_namespace!r}: "
                        "create it there, or correct the name",
                    )
                )
                continue
            annotations = source.get("metadata", {}).get("annotations") or {}
            allowed = {name.strip() for name in annotations.get(ALLOWED_TENANTS, "").split(",")}
            if tenant.name not in allowed:
                refused.append(
                    SourceRefusal(
                        ref.name,
                        "SecretNotAllowed",
                        f"{field_path}: Secret {source_namespace}/{ref.from_} does not allow tenant {tenant.name!r}: "
                        f"add it to the Secret's {ALLOWED_TENANTS} annotation (a comma-separated list of tenants)",
                    )
                )
                continue
            data[ref.name] = dict(source.get("data") or {})
            types[ref.name] = source.get("type") or "Opaque"
        if refused:
            await self._revoke(refused, namespace, live, tenant.name)
        model = tenant.spec.runtime.model
        if model and model.credentials_key not in data.get(model.credentials_secret, {}):
            raise Stall(
                "SecretKeyMissing",
                f"spec.runtime.model.credentialsKey: the Secret copied as {model.credentials_secret!r} has no key "
                f"{model.credentials_key!r}: add it to the source Secret, or set credentialsKey",
            )
        return data, types

    async def _revoke(
        self,
        refused: list[SourceRefusal],
        namespace: str,
        live: Mapping[ChildKey, LiveChild],
        tenant: str,
    ) -> None:
        """Stall on the first refused Secret, first deleting the copies the tenant may no longer
        hold, and the runtime that mounts them: a running pod keeps a deleted Secret's files, and
        a rollout would keep the old pod until a new one (which cannot start) is ready."""
        first = refused[0]
        stall = Stall(first.reason, first.message)
        copies = []
        for refusal in refused:
            key = ("Secret", namespace, refusal.name)
            # A copy not known as ours (someone stripped its owner reference) is there all the
            # same, in a namespace of ours (`live` is empty for a namespace that is not).
            if key in live or (live and await self._get(Secret, refusal.name, namespace)):
                copies.append(key)
        if copies:
            runtime = ("Deployment", namespace, RUNTIME)
            for key in [*copies, runtime]:
                await self._delete(key)
                logger.warning("deleted %s: %s", label(key), first.reason, extra={"tenant": tenant})
            stall.revoked = tuple(label(key) for key in [*copies, runtime])
            # The stall's message stays the refusal alone, the same on every pass; what was
            # revoked is told by the group conditions (kept by later passes) and a Pruned event.
            gone = ", ".join(place(key) for key in copies)
            stall.groups = {
                "SecretsReady": GroupState(
                    False, "Revoked", f"deleted {gone} until this is resolved: {first.message}"
                ),
                "RuntimeReady": GroupState(
                    False, "Stopped", f"the runtime was deleted with {gone}, which it mounted"
                ),
            }
        raise stall

    async def _delete(self, key: ChildKey) -> None:
        kind, namespace, name = key
        try:
            await self.client.delete(APPLIED_KINDS[kind], name, namespace=namespace or None)
        except ApiError as error:
            if error.status.code != 404:
                raise

    async def _sandbox_token(self, uid: str, namespace: str, namespace_exists: bool) -> str:
        if uid in self._tokens:
            return self._tokens[uid]
        token = None
        if namespace_exists:
            secret = await self._get(Secret, SANDBOX_TOKEN_SECRET, namespace)
            encoded = ((secret or {}).get("data") or {}).get("token")
            try:
                token = base64.b64decode(encoded, validate=True).decode() if encoded else None
            except (binascii.Error, UnicodeDecodeError):
                token = None  # a tampered token is replaced; runtime and sandbox restart together
        self._tokens[uid] = token or secrets.token_urlsafe(32)
        return self._tokens[uid]

    async def _live_secrets(self, namespace: str, uid: str) -> dict[ChildKey, LiveChild]:
        found = {}
        async for secret in self.client.list(
            Secret, namespace=namespace, labels={MANAGED_BY: OPERATOR}
        ):
            body = {**secret.to_dict(), "kind": "Secret"}
            key, child = child_key(body), summarize(body)
            if ours(key, child, uid, namespace):
                found[key] = child
        return found

    async def _create_namespace(self, manifest: Manifest, tenant: AgentTenant, uid: str) -> None:
        # Created, never applied, the first time: a server-side apply would silently take over a
        # namespace that appeared since we looked; a create fails instead.
        try:
            await self.client.create(Namespace.from_dict(manifest), field_manager=FIELD_MANAGER)  # type: ignore[call-overload]
        except ApiError as error:
            if error.status.code != 409:
                raise
            existing = await self._get(Namespace, manifest["metadata"]["name"])
            if existing is None or not owns(existing, tenant, uid):
                raise Stall(
                    "NamespaceConflict",
                    f"namespace {manifest['metadata']['name']!r} was created by someone else: set spec.namespace "
                    "to a namespace that does not exist yet",
                ) from None
            await self._apply(manifest)

    async def _apply(self, manifest: Manifest) -> None:
        kind, namespace, name = child_key(manifest)
        with refusals_stall((kind, namespace, name)):
            await self.client.patch(
                APPLIED_KINDS[kind],
                name,
                manifest,
                namespace=namespace or None,
                patch_type=PatchType.APPLY,
                field_manager=FIELD_MANAGER,
                force=True,
            )

    async def _replace(self, manifest: Manifest) -> None:
        """Make a child exactly what we render, dropping what others added to it.

        A forced apply takes back the fields we own, but leaves fields another manager added (a
        label added to a policy's podSelector narrows it to nothing). A replace drops them; the
        managedFields it sends keep only our own entries (and the status writers'), so their
        managers go too. Clearing managedFields outright would not do: the next apply would file
        every field it does not set (the API server's defaults) under "before-first-apply", a
        manager of nobody's, and the child would look tampered with forever.
        """
        kind, namespace, name = child_key(manifest)
        live = await self._get(APPLIED_KINDS[kind], name, namespace or None)
        if live is None:
            await self._apply(manifest)  # deleted meanwhile: put it back
            return
        entries = [
            entry
            for entry in live["metadata"].get("managedFields") or []
            if entry.get("manager") in SYSTEM_MANAGERS or entry.get("subresource") == "status"
        ]
        meta = {
            **manifest["metadata"],
            "resourceVersion": live["metadata"]["resourceVersion"],
            "managedFields": entries or [{}],
        }
        # A 404 or 409 (changed meanwhile) is raised as it is: the queue's retry looks again.
        with refusals_stall((kind, namespace, name)):
            await self.client.replace(
                APPLIED_KINDS[kind].from_dict({**manifest, "metadata": meta}),
                field_manager=FIELD_MANAGER,
            )

    async def _prune(
        self, wanted: set[ChildKey], live: Mapping[ChildKey, LiveChild], tenant: str
    ) -> list[str]:
        pruned = []
        for key in sorted(set(live) - wanted):
            if key[0] == "Namespace":
                continue  # a tenant's namespace goes only with the tenant, by garbage collection
            await self._delete(key)
            pruned.append(label(key))
            logger.info("deleted %s: no longer in the spec", label(key), extra={"tenant": tenant})
        return pruned

    def _groups(
        self,
        tenant: AgentTenant,
        namespace: str,
        applied: set[ChildKey],
        live: Mapping[ChildKey, LiveChild],
    ) -> dict[str, GroupState]:
        def workload(component: str) -> GroupState:
            key = ("Deployment", namespace, component)
            child = live.get(key)
            if key in applied or child is None:
                return GroupState(False, "RollingOut", f"the {component} Deployment is rolling out")
            if not child.available:
                return GroupState(False, "Unavailable", f"{component}: {child.problem}")
            return GroupState(True, "Available")

        count = len(tenant.spec.secrets)
        return {
            "NamespaceReady": GroupState(
                True, "Owned", f"namespace {namespace} is owned by this tenant"
            ),
            "PoliciesReady": GroupState(
                True, "Applied", "quota, limits, network policies and service accounts applied"
            ),
            "SecretsReady": GroupState(True, "Copied", f"{count} secret(s) copied"),
            "RuntimeReady": workload(RUNTIME),
            "SandboxReady": workload(SANDBOX)
            if tenant.spec.sandbox.enabled
            else GroupState(True, "Disabled", "the sandbox is disabled"),
        }

    async def _get(
        self, resource: Any, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            obj = await self.client.get(resource, name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        result: dict[str, Any] = obj.to_dict()
        return result

    def forget(self, uid: str) -> None:
        self._tokens.pop(uid, None)
        self._written.pop(uid, None)

    async def _report(
        self, body: Mapping[str, Any], previous: Mapping[str, Any] | None, observation: Observation
    ) -> None:
        status = build_status(observation, previous, now())
        if comparable(status) != comparable(previous):
            try:
                await self.client.patch(
                    AgentTenantResource.Status,
                    body["metadata"]["name"],
                    {"status": status},
                    patch_type=PatchType.MERGE,
                )
            except ApiError as error:
                if error.status.code == 404:
                    raise TenantGone(body["metadata"]["name"]) from None
                raise
            self._written[body["metadata"]["uid"]] = status
        for event in events_for(observation, previous, status):
            await self._post_event(body, event.type, event.reason, event.message)

    async def _post_event(
        self, body: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        meta = body["metadata"]
        timestamp = datetime.now(UTC)
        event = KubeEvent(
            metadata=ObjectMeta(
                name=f"{meta['name']}.{uuid.uuid4().hex[:12]}", namespace="default"
            ),
            involvedObject=ObjectReference(
                apiVersion=API_VERSION, kind=KIND, name=meta["name"], uid=meta["uid"]
            ),
            reason=reason,
            message=message[:1024],
            type=kind,
            source=EventSource(component="tenantry"),
            firstTimestamp=timestamp,
            lastTimestamp=timestamp,
            count=1,
        )
        try:
            await self.client.create(event)
        except ApiError as error:  # events are best effort: never fail a reconcile for one
            logger.warning(
                "could not post event %s: %s",
                reason,
                error.status.message,
                extra={"tenant": meta["name"]},
            )
        logger.info("event %s %s: %s", kind, reason, message, extra={"tenant": meta["name"]})
