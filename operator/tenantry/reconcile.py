"""The one level-based, idempotent reconcile of a tenant: read, render, plan, write, report.

`Reconciler.reconcile` is the orchestrator. It reads the cluster's facts about a tenant (or
stalls), renders its children (tenantry.render), decides what to write and prune
(tenantry.plan), carries the plan out (tenantry.writes) and reports the outcome
(tenantry.report). Every refusal is decided before the first write, so a tenant that is refused
(a namespace it does not own, a secret it may not copy) leaves every existing object exactly as
it was — except what it may no longer hold (see `_revoke`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace, Secret
from pydantic import ValidationError

from tenantry.children import ChildKey, LiveChild, child_key, child_path, describe_child, summarize
from tenantry.config import OperatorConfig
from tenantry.models import (
    RESERVED_NAMESPACES,
    AgentTenant,
    AgentTenantTemplate,
    BrokenTemplate,
    human_errors,
)
from tenantry.names import (
    ALLOWED_TENANTS,
    MANAGED_BY,
    OPERATOR,
    RUNTIME,
    SANDBOX,
    SANDBOX_TOKEN_SECRET,
)
from tenantry.plan import (
    Plan,
    Stall,
    Waiting,
    Write,
    check_found_namespace,
    check_namespace_name,
    check_uid_slot,
    namespace_conflict,
    ours,
    outcome,
    owns,
    pinned,
    plan,
)
from tenantry.pods import RuntimeRefusal
from tenantry.policy import violations
from tenantry.render import (
    ClusterFacts,
    DuplicateChild,
    TemplateRefused,
    is_templated,
    render,
    tenant_namespace,
    uid_slot,
)
from tenantry.report import StatusReporter, TenantGone, tenant_exists
from tenantry.status import GroupState, Observation, condition_of
from tenantry.transport import ApiClient
from tenantry.writes import Answer, ChildWriter, NotTheOneFound, Written, gather_all

logger = logging.getLogger("tenantry.reconcile")

# (name, creationTimestamp) of every tenant this operator knows whose name hashes to the uid
# slot given, for plan.check_uid_slot.
Neighbours = Callable[[int], Iterable[tuple[str, str]]]
# A source Secret by name (its annotations, data and type), None when there is none.
Sources = Callable[[str], Mapping[str, Any] | None]
# The base64 token of a namespace's token Secret, if owned by the uid given.
SeenToken = Callable[[str, str], str | None]
# Every AgentTenantTemplate this operator knows; the render picks those that select a tenant.
Templates = Callable[[], Sequence[AgentTenantTemplate | BrokenTemplate]]


def describe(error: ValidationError) -> str:
    """A pydantic error as a human reads it: the field path and what is wrong."""
    return "; ".join(human_errors(error))


class NamespaceUnread(Exception):
    """The create of a namespace the pass did not read first failed: one is there, or the
    create was refused. The pass starts again, reading the namespace first (Reconciler._converge)."""


@dataclass(frozen=True)
class SourceRefusal:
    """A Secret the tenant may not copy (any more), by its name in the tenant namespace."""

    name: str
    reason: str
    message: str


@dataclass(frozen=True)
class TenantFacts:
    """What the cluster says about one tenant, read before anything is decided."""

    namespace: str
    namespace_uid: str | None  # None: the namespace does not exist (yet)
    # The namespace's uid when it came from the cache, not from a read by this pass: that one
    # may be gone, or another may have its name, before the watch tells (_confirm_namespace).
    unconfirmed_uid: str | None
    live: Mapping[ChildKey, LiveChild]  # this tenant's children only (plan.ours)
    secret_data: dict[str, dict[str, str]]
    secret_types: dict[str, str]

    @property
    def namespace_exists(self) -> bool:
        return self.namespace_uid is not None


def allowed_tenants(annotation: str) -> frozenset[str]:
    """The tenants a source Secret's allowed-tenants annotation names."""
    return frozenset(name.strip() for name in annotation.split(","))


# The key under which a source Secret, as the controller keeps it, holds its allowed tenants.
ALLOWED_PARSED = "allowedTenants"


@dataclass
class Reconciler:
    """Applies tenants with one client, one field manager and the operator's configuration."""

    client: ApiClient
    config: OperatorConfig
    operator_namespace: str | None = None
    neighbours: Neighbours = lambda _slot: ()
    templates: Templates = tuple
    # The source Secrets and the sandbox tokens as the controller's watches saw them; without
    # them (a Reconciler of its own), each is read from the API server.
    sources: Sources | None = None
    seen_token: SeenToken | None = None
    written: Written | None = None
    # Sandbox tokens by tenant uid: generated once, then read back from the tenant's Secret.
    _tokens: dict[str, str] = field(default_factory=dict)
    # The templated children each tenant's last pass rendered, by uid: one a template renders
    # for the first time is new, not drift (unknown after a start: then it counts as drift).
    _templated: dict[str, frozenset[ChildKey]] = field(default_factory=dict)
    # The tenants (by uid) this process has tried a pass of: only the very first try of a new
    # tenant creates its namespace without asking whether the tenant still exists (see
    # _create_namespace).
    _tried: set[str] = field(default_factory=set)
    writer: ChildWriter = field(init=False)
    reporter: StatusReporter = field(init=False)

    def __post_init__(self) -> None:
        self.writer = ChildWriter(self.client, self.config.template_kinds, self.written)
        self.reporter = StatusReporter(self.client)

    async def reconcile(
        self,
        body: Mapping[str, Any],
        live: Mapping[ChildKey, LiveChild],
        refusals: Iterable[RuntimeRefusal] = (),
    ) -> Observation:
        """Converge one tenant, write its status when it changed, and post events. `refusals`
        are what its runtime pods said when they refused their configuration (pods.PodCache)."""
        meta = body["metadata"]
        generation = int(meta.get("generation") or 0)
        previous = self.reporter.previous(body)
        try:
            tenant = AgentTenant.model_validate(body)
            observation = await self._converge(
                tenant,
                meta["uid"],
                meta.get("creationTimestamp") or "",
                generation,
                live,
                previous,
                tuple(refusals),
            )
        except ValidationError as error:
            observation = self._stalled(body, generation, "InvalidSpec", describe(error))
        except RecursionError:  # a spec no human wrote: say so rather than retry forever
            observation = self._stalled(
                body, generation, "InvalidSpec", "the spec nests too deeply to be read"
            )
        except Stall as stall:
            observation = self._stalled(body, generation, stall.reason, stall.message)
            if stall.revoked:
                observation = replace(observation, pruned=stall.revoked, groups=stall.groups)
        except Waiting as wait:
            logger.info(
                "waiting: %s: %s", wait.reason, wait.message, extra={"tenant": meta["name"]}
            )
            # No namespace in its status: it is not the tenant's yet (and what `home` names wakes
            # the tenant for its every event, which its owner could then drive).
            observation = Observation(
                generation, None, meta["name"], waiting=(wait.reason, wait.message)
            )
        await self.reporter.report(body, previous, observation)
        return observation

    def forget(self, uid: str) -> None:
        self._tried.discard(uid)
        self._tokens.pop(uid, None)
        self._templated.pop(uid, None)
        self.reporter.forget(uid)

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
        refusals: tuple[RuntimeRefusal, ...],
    ) -> Observation:
        # A tenant with no status yet and nothing in the cache (a new one) creates its namespace
        # without reading it first; when that create fails, the pass is done again with the
        # read. A sandbox token made while the namespace was taken for absent is kept only by a
        # pass that got through: after any failure the read finds the token there, if any.
        once = partial(
            self._converge_once, tenant, uid, created, generation, live, previous, refusals
        )
        read_first = bool(previous) or bool(live)
        known_token = uid in self._tokens
        first_try = uid not in self._tried
        self._tried.add(uid)
        try:
            return await once(read=read_first, first_try=first_try)
        except BaseException as error:
            if not read_first and not known_token:
                self._tokens.pop(uid, None)
            if not isinstance(error, NamespaceUnread):
                raise
        return await once(read=True, first_try=False)

    async def _converge_once(
        self,
        tenant: AgentTenant,
        uid: str,
        created: str,
        generation: int,
        live: Mapping[ChildKey, LiveChild],
        previous: Mapping[str, Any] | None,
        refusals: tuple[RuntimeRefusal, ...],
        *,
        read: bool,
        first_try: bool,
    ) -> Observation:
        facts = await self._read_facts(tenant, uid, created, live, read=read)
        problems = violations(tenant, self.config)
        if problems:
            raise Stall("NotAllowed", "; ".join(f"{path}: {problem}" for path, problem in problems))
        token = (
            await self._sandbox_token(uid, facts.namespace, facts.namespace_exists)
            if tenant.spec.sandbox.enabled
            else None
        )
        try:
            desired = render(
                tenant,
                self.config,
                ClusterFacts(uid, facts.secret_data, facts.secret_types, token),
                self.templates(),
            )
        except DuplicateChild as error:
            raise Stall("DuplicateChild", str(error)) from None
        except TemplateRefused as error:
            raise Stall("TemplateRefused", str(error)) from None
        was_ready = condition_of(previous, "Ready").get("status") == "True"
        templated = frozenset(child_key(m) for m in desired if is_templated(m))
        decided = plan(
            tenant,
            facts.namespace,
            desired,
            facts.live,
            facts.namespace_uid,
            was_ready,
            templated - self._templated.get(uid, templated),
        )
        # Anything to write or delete in a namespace known from the cache alone waits for a read
        # of it; a write of the namespace itself is bound to its uid instead (plan.pinned).
        home = ("Namespace", "", facts.namespace)
        writes_home = any(write.key == home for write in decided.writes)
        unconfirmed = facts.unconfirmed_uid
        if unconfirmed is not None and not writes_home and (decided.writes or decided.prune):
            await self._confirm_namespace(facts.namespace, unconfirmed)
        # Taken for absent without a read (a new tenant): a failed create has the pass redone.
        unread = facts.namespace_uid is None and not read
        answers = await self._carry_out(
            decided, tenant, uid, unread=unread, just_seen=unread and first_try
        )
        self._templated[uid] = templated
        groups, stalled = outcome(tenant, facts.namespace, desired, facts.live, answers, refusals)
        return Observation(
            generation=generation,
            namespace=facts.namespace,
            topic_source=tenant.name,
            groups=groups,
            stalled=stalled,
            corrected=decided.corrected,
            pruned=tuple(describe_child(key) for key in decided.prune),
        )

    async def _carry_out(
        self, decided: Plan, tenant: AgentTenant, uid: str, *, unread: bool, just_seen: bool
    ) -> dict[ChildKey, Answer]:
        """Write and prune what the plan says; the API server's answers to the writes (but the
        namespace's creation), by child."""
        answers: dict[ChildKey, Answer] = {}
        applied: list[str] = []

        async def write(item: Write) -> None:
            if item.method == "create":
                await self._create_namespace(
                    item.manifest, tenant, uid, unread=unread, just_seen=just_seen
                )
            elif item.method == "replace":
                answers[item.key] = await self.writer.replace(item.manifest)
            else:
                answers[item.key] = await self.writer.apply(item.manifest)
            applied.append(f"{describe_child(item.key)} ({item.reason})")

        # One request per child, but not one after another: every child of a phase at once.
        try:
            for phase in decided.phases:
                await gather_all(write(item) for item in phase)
        finally:
            # One line for the pass, naming every child written, those of a pass that failed
            # part way too: a line per child was 3 % of the operator's samples (py-spy) while it
            # provisioned tenants (bench/findings.md).
            if applied:
                logger.info(
                    "applied %d %s: %s",
                    len(applied),
                    "child" if len(applied) == 1 else "children",
                    ", ".join(applied),
                    extra={"tenant": tenant.name},
                )
        for key in decided.prune:
            await self.writer.delete(key)
            logger.info(
                "deleted %s: no longer in the spec",
                describe_child(key),
                extra={"tenant": tenant.name},
            )
        return answers

    async def _read_facts(
        self,
        tenant: AgentTenant,
        uid: str,
        created: str,
        live: Mapping[ChildKey, LiveChild],
        *,
        read: bool,
    ) -> TenantFacts:
        namespace = tenant_namespace(tenant, self.config)
        check_namespace_name(namespace, self._reserved_namespaces())
        live = {key: child for key, child in live.items() if ours(key, child, uid, namespace)}
        cached = live.get(("Namespace", "", namespace))
        unconfirmed_uid = cached.uid if cached is not None and cached.uid else None
        if unconfirmed_uid is not None:
            namespace_uid: str | None = unconfirmed_uid  # ours, as the watch last saw it: no read
        elif not read:
            # A new tenant (_converge): the pass creates its namespace, and a create that fails
            # (409 when one is there, or refused) has the pass done again with the read. One
            # request less for every tenant provisioned.
            namespace_uid = None
        else:
            existing = await self.writer.get(Namespace, namespace)
            if existing is not None:
                check_found_namespace(existing, tenant, uid, created, datetime.now(UTC))
            namespace_uid = existing["metadata"]["uid"] if existing is not None else None
        if self.config.scoped_secrets and namespace_uid is not None:
            # No cluster-wide watch of Secrets then (see handlers.watched_children): list this
            # tenant's, through the RoleBinding it got with its namespace.
            try:
                live = {**live, **await self._live_secrets(namespace, uid)}
            except ApiError as error:
                # Refused in a namespace known from the cache alone: is it still ours?
                if unconfirmed_uid is not None and error.status.code in (403, 404):
                    await self._confirm_namespace(namespace, unconfirmed_uid)
                raise
        # A tenant whose users are an older tenant's stops running, and a revoked Secret is taken
        # back, whatever else stalls it: a manifest must not keep either by breaking a rule on
        # purpose. The grants' stall, if any, is the one reported.
        live_there = live if namespace_uid is not None else {}
        collision = await self._check_uid_slot(
            tenant, created, namespace, live_there, unconfirmed_uid
        )
        try:
            secret_data, secret_types = await self._read_secret_sources(
                tenant, namespace, live_there, unconfirmed_uid
            )
        except Stall as stall:
            if collision is not None:
                stall.revoked = tuple(dict.fromkeys((*collision.revoked, *stall.revoked)))
                stall.groups = {**collision.groups, **stall.groups}
            raise
        if collision is not None:
            raise collision
        return TenantFacts(
            namespace, namespace_uid, unconfirmed_uid, live, secret_data, secret_types
        )

    async def _check_uid_slot(
        self,
        tenant: AgentTenant,
        created: str,
        namespace: str,
        live: Mapping[ChildKey, LiveChild],
        unconfirmed_uid: str | None,
    ) -> Stall | None:
        """The stall of a tenant whose users are an older tenant's (their names share a uid slot),
        once its runtime and sandbox Deployments are gone with their pods: it may have been made
        before the older one was known (created in the same second, or seen first), and a stall
        alone writes nothing. None when its users are its own."""
        try:
            check_uid_slot(tenant.name, created, self.neighbours(uid_slot(tenant.name)))
        except Stall as stall:
            groups = {RUNTIME: "RuntimeReady", SANDBOX: "SandboxReady"}
            deployments = [("Deployment", namespace, component) for component in groups]
            running = [key for key in deployments if key in live]
            if running:
                stall.revoked = await self._take_back(
                    running, stall.reason, namespace, unconfirmed_uid, tenant.name
                )
            stall.groups = {
                groups[key[2]]: GroupState(
                    False, "Stopped", f"the {key[2]} was deleted until this is resolved"
                )
                for key in running
                if key[2] == RUNTIME or tenant.spec.sandbox.enabled  # else its group says Disabled
            }
            return stall
        return None

    async def _take_back(
        self,
        keys: list[ChildKey],
        reason: str,
        namespace: str,
        unconfirmed_uid: str | None,
        tenant: str,
    ) -> tuple[str, ...]:
        """Delete children a stalled tenant may no longer hold or run (`reason`), in its namespace
        once confirmed to be the one the cache holds; what was deleted, as a Pruned event says it."""
        if unconfirmed_uid is not None:
            await self._confirm_namespace(namespace, unconfirmed_uid)
        for key in keys:
            await self.writer.delete(key)
            logger.warning("deleted %s: %s", describe_child(key), reason, extra={"tenant": tenant})
        return tuple(describe_child(key) for key in keys)

    async def _confirm_namespace(self, namespace: str, uid: str) -> None:
        """Make sure the namespace the cache holds is still the one of that name, before this
        pass writes or deletes anything in it: a read, where the pass read nothing yet. (A write
        of the namespace itself carries its uid instead, plan.pinned.)"""
        found = await self.writer.get(Namespace, namespace)
        if found is None or found["metadata"].get("uid") != uid:
            raise NotTheOneFound(
                ("Namespace", "", namespace),
                f"namespace {namespace!r} is not the one the cache holds (uid {uid}): it is gone, "
                "or another took its name; the next pass looks again",
            )

    def _reserved_namespaces(self) -> frozenset[str]:
        reserved = RESERVED_NAMESPACES | {self.config.secret_source_namespace}
        return reserved | {self.operator_namespace} if self.operator_namespace else reserved

    async def _read_secret_sources(
        self,
        tenant: AgentTenant,
        namespace: str,
        live: Mapping[ChildKey, LiveChild],
        unconfirmed_uid: str | None = None,
    ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        source_namespace = self.config.secret_source_namespace
        data: dict[str, dict[str, str]] = {}
        types: dict[str, str] = {}
        refused: list[SourceRefusal] = []
        for index, ref in enumerate(tenant.spec.secrets):
            field_path = f"spec.secrets[{index}].from"
            source = (
                self.sources(ref.from_)
                if self.sources
                else await self.writer.get(Secret, ref.from_, source_namespace)
            )
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
            allowed = source.get(ALLOWED_PARSED)
            if allowed is None:  # read from the API server (a Reconciler without the watch)
                allowed = allowed_tenants(annotations.get(ALLOWED_TENANTS, ""))
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
            await self._revoke(refused, namespace, live, tenant.name, unconfirmed_uid)
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
        unconfirmed_uid: str | None = None,
    ) -> None:
        """Stall on the first refused Secret, first deleting the copies the tenant may no longer
        hold, and the runtime that mounts them: a running pod keeps a deleted Secret's files, and
        a rollout would keep the old pod until a new one (which cannot start) is ready.
        `unconfirmed_uid`: the namespace's uid as the cache holds it, confirmed before a deletion."""
        first = refused[0]
        stall = Stall(first.reason, first.message)
        copies = []
        for refusal in refused:
            key = ("Secret", namespace, refusal.name)
            # A copy not known as ours (someone stripped its owner reference) is there all the
            # same, in a namespace of ours (`live` is empty for a namespace that is not).
            if key in live or (live and await self.writer.get(Secret, refusal.name, namespace)):
                copies.append(key)
        if copies:
            runtime = ("Deployment", namespace, RUNTIME)
            stall.revoked = await self._take_back(
                [*copies, runtime], first.reason, namespace, unconfirmed_uid, tenant
            )
            # The stall's message stays the refusal alone, the same on every pass; what was
            # revoked is told by the group conditions (kept by later passes) and a Pruned event.
            gone = ", ".join(child_path(key) for key in copies)
            stall.groups = {
                "SecretsReady": GroupState(
                    False, "Revoked", f"deleted {gone} until this is resolved: {first.message}"
                ),
                "RuntimeReady": GroupState(
                    False, "Stopped", f"the runtime was deleted with {gone}, which it mounted"
                ),
            }
        raise stall

    async def _sandbox_token(self, uid: str, namespace: str, namespace_exists: bool) -> str:
        if uid in self._tokens:
            return self._tokens[uid]
        token = None
        if namespace_exists:
            encoded = self.seen_token(namespace, uid) if self.seen_token else None
            if encoded is None:  # not seen by a watch (scoped Secrets), or not there yet
                secret = await self.writer.get(Secret, SANDBOX_TOKEN_SECRET, namespace)
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

    async def _create_namespace(
        self,
        manifest: dict[str, Any],
        tenant: AgentTenant,
        uid: str,
        *,
        unread: bool,
        just_seen: bool,
    ) -> None:
        # Created, never applied, the first time: a server-side apply would silently take over a
        # namespace that appeared since we looked; a create fails instead. And only for a tenant
        # that still exists: a retried pass once made a namespace again after garbage collection
        # took the first, its tenant's deletion not yet read from a busy watch (seen by the
        # fault tests on a loaded machine). The first try in this process of a tenant with no
        # status and nothing cached skips that read (one request less for every tenant
        # provisioned): its watch event said the tenant exists, and a deletion read since then
        # ends the pass before it starts (Controller.reconcile finds no body). A deletion the
        # watch has not delivered yet gets the tenant's namespace and children made, until
        # garbage collection takes them (their owner reference), and its status is refused
        # (StatusReporter.report tests the uid); any later try reads the tenant first.
        if not just_seen and not await tenant_exists(self.client, tenant.name, uid):
            raise TenantGone(tenant.name)
        try:
            if await self.writer.create_namespace(manifest):
                return
        except ApiError:
            if unread:  # refused, maybe for one that is there (a webhook): read it, then decide
                raise NamespaceUnread from None
            raise
        if unread:
            raise NamespaceUnread
        key = child_key(manifest)
        existing = await self.writer.get(Namespace, manifest["metadata"]["name"])
        if existing is None:  # there when created, gone when read: a Terminating one ended
            raise NotTheOneFound(
                key, f"{describe_child(key)} was there, then gone: the next pass looks again"
            )
        if not owns(existing, tenant, uid):
            # Made since this pass found none: never an earlier tenant's, which only goes.
            raise namespace_conflict(manifest["metadata"]["name"])
        # Bound to the one just read (plan.pinned): gone by now, it is not made again here.
        await self.writer.apply(pinned(manifest, key, existing["metadata"]["uid"]))
