"""What the operator knows of the children it applied, kept from watch events.

`summarize` reduces a child object to the few facts the reconcile needs (is it what we applied,
did anyone else change it, is it available); `ChildCache` keeps them per tenant, so a reconcile
of an unchanged tenant reads nothing from the API server and writes nothing to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from tenantry.kinds import BY_KIND, row
from tenantry.names import APPLIED_HASH, MANAGED_BY, OPERATOR, SANDBOX_TOKEN_SECRET, TENANT_LABEL
from tenantry.render import Manifest
from tenantry.text import shown

FIELD_MANAGER = "tenantry"
# Managers that legitimately write to our children: the Deployment controller stamps a revision
# annotation, the volume binder binds a claim; the scheduler picks a claim's node when its class
# waits for the first consumer. Any other manager writing to a child means someone changed it: drift.
SYSTEM_MANAGERS = frozenset({FIELD_MANAGER, "kube-controller-manager", "kube-scheduler"})
# The reason of a Deployment's Progressing condition once its latest rollout has finished.
ROLLED_OUT = "NewReplicaSetAvailable"

ChildKey = tuple[str, str, str]  # (kind, namespace or "", name)
# A field as managedFields name it, from the object's root: ("f:metadata", "f:labels", "f:team").
FieldPath = tuple[str, ...]


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace") or "", meta["name"])


def tenant_of(body: Mapping[str, Any]) -> str:
    """The tenant a child's label names ("" when none does): anyone may set it, see plan.ours."""
    return str((body.get("metadata", {}).get("labels") or {}).get(TENANT_LABEL, ""))


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
    # Kinds never replaced only (kinds.ChildKind.replaceable): the fields our own entries in
    # managedFields own; drift there is a field we set that they no longer own (`taken_fields`).
    owned: OwnedFields | None = None
    # The object's resourceVersion, read as a number (0 when it is not one): which of two
    # accounts of it is the newer. Not a fact about it: two summaries that differ only here
    # are the same to the reconcile.
    version: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True)
class OwnedFields:
    """The fields Tenantry's entries in an object's managedFields own."""

    fields: frozenset[FieldPath]  # every field they name, and each one's parents
    # Fields an Apply entry names with nothing under them: a value, or a list or struct the API
    # server files as one field (a claim's accessModes, its selector). What lies inside such a
    # field is ours too. (Only an Apply entry tells: it names exactly what we applied, whereas a
    # create's entry names maps whole, and a map whose every key was taken looks the same.)
    whole: frozenset[FieldPath]

    def own(self, path: FieldPath) -> bool:
        return path in self.fields or any(path[:n] in self.whole for n in range(1, len(path)))


def deployment_health(body: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a Deployment has rolled out its current spec with every replica available, and
    if not, what is wrong: "" while a rollout goes as it should.

    A rollout's steps (the controller seeing the spec, the replicas updated, then available)
    are one state, not one each: each step that changed the message changed the child's
    summary, which queued a pass, which wrote the new message into the tenant's status (five
    to seven status writes for a new tenant instead of three; bench/findings.md). What `Ready` waits
    for is said by `plan.group_states` ("rolling out"); a message here is a problem: a replica
    the controller cannot create, a rollout past its progress deadline, or a replica lost after
    the rollout finished.
    """
    spec, status = body.get("spec") or {}, body.get("status") or {}
    wanted = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < (body.get("metadata") or {}).get("generation", 0):
        return False, ""  # its conditions describe an older spec
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    failure = conditions.get("ReplicaFailure") or {}
    if failure.get("status") == "True":  # the API server's refusal of a pod
        return False, shown(str(failure.get("message") or "replicas cannot be created"))
    progressing = conditions.get("Progressing") or {}
    if progressing.get("status") == "False":  # ProgressDeadlineExceeded
        return False, shown(str(progressing.get("message") or "the rollout stopped progressing"))
    updated, available = status.get("updatedReplicas", 0), status.get("availableReplicas", 0)
    # Old replicas still running (a surge: `replicas` counts every ReplicaSet's) mean the
    # rollout is not over, though as many replicas as wanted are available, the old ones among
    # them: `kubectl rollout status` waits for them to go too.
    if updated >= wanted and available >= wanted and status.get("replicas", 0) <= updated:
        return True, ""
    if updated >= wanted and progressing.get("reason") == ROLLED_OUT:
        return False, f"{available} of {wanted} replicas available"
    return False, ""


def summarize(body: Mapping[str, Any]) -> LiveChild:
    meta = body.get("metadata", {})
    entries = meta.get("managedFields") or []
    if row(body.get("kind", "")).replaceable:
        owned = None
        foreign = sorted(
            {
                entry.get("manager", "")
                for entry in entries
                # Status is the controllers' to write; any other subresource (a `scale`) is a change.
                if entry.get("subresource") != "status"
                and entry.get("manager") not in SYSTEM_MANAGERS
            }
        )
    else:  # who else wrote to it decides nothing, see `taken_fields`
        owned, foreign = owned_fields(entries), []
    available, problem = deployment_health(body) if body.get("kind") == "Deployment" else (None, "")
    return LiveChild(
        applied_hash=(meta.get("annotations") or {}).get(APPLIED_HASH),
        foreign_managers=tuple(foreign),
        uid=meta.get("uid", ""),
        owner_uids=tuple(ref.get("uid", "") for ref in meta.get("ownerReferences") or []),
        available=available,
        problem=problem,
        owned=owned,
        version=resource_version(body),
    )


def resource_version(body: Mapping[str, Any]) -> int:
    """A child's resourceVersion as a number, to tell which of two accounts of it is the newer;
    0 (never compared: every account is news, as before versions were read) for a templated
    kind, which an aggregated API server may serve with versions of its own, or a version that
    is not a number.

    The API calls it opaque; every kube-apiserver over etcd serves the etcd revision of the
    object's last write (of its deletion, in a DELETED event), which grows with every write."""
    if body.get("kind") not in BY_KIND:
        return 0
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


# The reference to the tenant in metadata.ownerReferences. The API server names it by the
# tenant's uid; our entries never own another reference (a namespace with another owner is
# never written, plan.owns), and the uid is checked where it matters (plan.ours). Named alike
# for every tenant, children of one shape own the same fields: see `owned_fields`.
TENANT_REFERENCE = "k:tenant"
OWNER_REFERENCES = ("f:metadata", "f:ownerReferences")
# One copy of each set of owned fields: a thousand tenants' namespaces would otherwise hold
# 5 MB of the same paths. The shapes are few (the namespace's, the claim's, each template's,
# and what people take from them); should they not be, the copies are only shared less.
_SHAPES: dict[OwnedFields, OwnedFields] = {}
SHAPES_KEPT = 1000


def replacement(manifest: Manifest, live: Mapping[str, Any]) -> Manifest:
    """The object a replace of `live` sends: what we render, at the live object's version.

    It drops what other managers added; the managedFields it sends keep only our own entries and
    the system managers' (and the status writers'), so the others' entries go too. Clearing
    managedFields outright would not do: the next apply would file every field it does not set
    (the API server's defaults) under "before-first-apply", a manager of nobody's, and the child
    would look tampered with forever. The labels and annotations a system manager wrote stay:
    the Deployment controller's revision annotation dropped moves a Deployment's generation (it
    counts annotations), a rollout of nothing that turned its tenant NotReady for a moment.
    """
    live_meta = live["metadata"]
    kept = [
        entry
        for entry in live_meta.get("managedFields") or []
        if entry.get("manager") in SYSTEM_MANAGERS or entry.get("subresource") == "status"
    ]
    meta = {
        **manifest["metadata"],
        "resourceVersion": live_meta["resourceVersion"],
        "managedFields": kept or [{}],
    }
    for field in ("labels", "annotations"):
        theirs = {
            key: value
            for key, value in (live_meta.get(field) or {}).items()
            if any(
                f"f:{key}" in entry.get("fieldsV1", {}).get("f:metadata", {}).get(f"f:{field}", {})
                for entry in kept
                # The revision annotation comes with a write of the Deployment's status.
                if entry.get("manager") in SYSTEM_MANAGERS - {FIELD_MANAGER}
            )
        }
        if theirs:
            meta[field] = {**theirs, **(manifest["metadata"].get(field) or {})}
    return {**manifest, "metadata": meta}


def owned_fields(entries: list[Mapping[str, Any]]) -> OwnedFields:
    """What Tenantry's own entries (the namespace's create, every apply) own."""
    fields: set[FieldPath] = set()
    whole: set[FieldPath] = set()
    for entry in entries:
        if entry.get("manager") == FIELD_MANAGER and not entry.get("subresource"):
            for path, leaf in _named(entry.get("fieldsV1") or {}, ()):
                fields.add(path)
                if leaf and entry.get("operation") == "Apply":
                    whole.add(path)
    owned = OwnedFields(frozenset(fields), frozenset(whole))
    if len(_SHAPES) >= SHAPES_KEPT:
        _SHAPES.clear()
    return _SHAPES.setdefault(owned, owned)


def _named(tree: Mapping[str, Any], parent: FieldPath) -> Iterator[tuple[FieldPath, bool]]:
    """Each field of a fieldsV1 tree, and whether it names nothing under it."""
    for step, under in tree.items():
        if step != ".":  # the field above, itself
            path = (*parent, TENANT_REFERENCE if parent == OWNER_REFERENCES else step)
            yield path, not under
            yield from _named(under, path)


def rendered_fields(manifest: Mapping[str, Any]) -> Iterator[FieldPath]:
    """The fields a manifest sets, named as managedFields name them: each value, each list
    whole (the API server files the lists we set as one field), but ownerReferences, filed by
    reference. Empty maps and nulls set nothing."""
    meta = manifest.get("metadata") or {}
    kept = ("labels", "annotations", "ownerReferences")  # name and namespace are no fields
    body = {key: value for key, value in manifest.items() if key not in ("apiVersion", "kind")}
    yield from _set({**body, "metadata": {key: meta[key] for key in kept if key in meta}}, ())


def _set(value: Any, path: FieldPath) -> Iterator[FieldPath]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _set(item, (*path, f"f:{key}"))
    elif path == OWNER_REFERENCES:  # filed by reference, each reference one field
        yield from ((*path, TENANT_REFERENCE) for _ in value)
    elif value is not None:
        yield path


def taken_fields(desired: Manifest, owned: OwnedFields) -> list[str]:
    """The fields we set that our entries no longer own, as a human reads them.

    For the children never replaced, this alone is drift. A field leaves our entries only when
    someone else changes its value (an update, or an apply forced over ours) or removes it;
    whoever applies the same value shares it, and a field we do not set was never ours. So a
    manager that owns only fields of its own (an admin's `kubectl label namespace`) is no
    drift, and a forced apply could never make it go; a `kubectl label --overwrite` of the
    Pod Security label, or its removal, takes the field from us, and the next pass takes it
    back. Decided from the live object alone: a restart, which lists every child afresh,
    finds nothing to write either.
    """
    return [readable(path) for path in rendered_fields(desired) if not owned.own(path)]


def readable(path: FieldPath) -> str:
    """("f:metadata", "f:labels", "f:a.b/c") as metadata.labels[a.b/c]."""
    text = ""
    for step in path:
        name = step[2:]
        if name.replace("_", "").isalnum() and not step.startswith("k:"):
            text += f".{name}" if text else name
        else:
            text += f"[{name}]"
    return text


def apply_reason(desired: Manifest, live: LiveChild | None) -> str | None:
    """Why a child must be applied, or None when the live object is what we applied."""
    if live is None:
        return "missing"
    if live.applied_hash != desired["metadata"]["annotations"][APPLIED_HASH]:
        return "changed"
    if live.owned is not None:
        taken = taken_fields(desired, live.owned)
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        return f"someone changed {', '.join(taken[:3])}{more}" if taken else None
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
        # While a resync lists: the children an event (or a write's answer) told of since it
        # began, and their tenants. What the list read of them may be older (see `replace`).
        self._touched: dict[ChildKey, str] | None = None

    def observe(self, body: Mapping[str, Any], deleted: bool) -> str | None:
        """Record one watch event; return the tenant it belongs to, if it is one of ours and the
        event changed what the reconcile knows of it (an event that changes nothing it reads,
        such as a watch's replay after a restart, wakes nobody)."""
        labels = body.get("metadata", {}).get("labels") or {}
        tenant: str | None = labels.get(TENANT_LABEL)
        if labels.get(MANAGED_BY) != OPERATOR or not tenant:
            return None
        key = child_key(body)
        if self._touched is not None:
            self._touched[key] = tenant
        children = self._children.setdefault(tenant, {})
        before = children.get(key)
        if deleted:
            children.pop(key, None)
            if key[0] == "Secret" and key[2] == SANDBOX_TOKEN_SECRET:
                self._tokens.pop(key[1], None)
            return tenant if before is not None else None
        summary = summarize(body)
        if before is not None and 0 < summary.version < before.version:
            # Older than what is known (a write's answer read after the watch told of a later
            # change, or another's change from before a write whose answer came first): keep
            # the newer account, but wake the tenant as that change did.
            return tenant if summary != before else None
        children[key] = summary
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
        before = self._children.get(tenant_of(body), {}).get(child_key(body))
        if before is None:
            return True
        return not before.available and not 0 < resource_version(body) < before.version

    def sandbox_token(self, namespace: str, uid: str) -> str | None:
        """The base64 token of the namespace's token Secret as the watch saw it, if owned by uid."""
        owners, token = self._tokens.get(namespace, ((), ""))
        return token if uid in owners else None

    def of(self, tenant: str) -> dict[ChildKey, LiveChild]:
        return dict(self._children.get(tenant, {}))

    def forget(self, tenant: str) -> None:
        self._children.pop(tenant, None)

    def drop_namespace(self, tenant: str, namespace: str) -> None:
        """Forget a tenant's namespace and every child in it, as their deletion events would: the
        namespace is not the one the cache held (writes.NotTheOneFound), and what was in that one
        went with it. A resync listing now does not put them back."""
        children = self._children.get(tenant, {})
        gone = [
            key for key in children if key[1] == namespace or key == ("Namespace", "", namespace)
        ]
        for key in gone:
            del children[key]
            if self._touched is not None:
                self._touched[key] = tenant
        self._tokens.pop(namespace, None)

    def written(self, body: Mapping[str, Any]) -> LiveChild | None:
        """Record the API server's answer to one of our own writes, before its watch event, and
        return what the cache now holds of the child.

        A pass that came next (the drift timer's, another child's event) would otherwise plan
        from what the child was before the write, write it again and post DriftCorrected a
        second time. Its watch event then changes nothing and wakes nobody."""
        self.observe(body, deleted=False)
        return self._children.get(tenant_of(body), {}).get(child_key(body))

    def begin_resync(self) -> None:
        """Note the children events tell of from now on, until `replace`."""
        self._touched = {}

    def replace(self, fresh: ChildCache) -> None:
        """Take over what a fresh listing found (see Controller.resync), but for the children an
        event told of while it was being read: the list may have read them before that event
        (an apply's own echo, say), and would undo it until the next event or resync."""
        for key, tenant in (self._touched or {}).items():
            now = self._children.get(tenant, {}).get(key)
            if now is None:
                fresh._children.get(tenant, {}).pop(key, None)
            else:
                fresh._children.setdefault(tenant, {})[key] = now
            if key[0] == "Secret" and key[2] == SANDBOX_TOKEN_SECRET:
                token = self._tokens.get(key[1])
                if token is None:
                    fresh._tokens.pop(key[1], None)
                else:
                    fresh._tokens[key[1]] = token
        self._children = fresh._children
        self._tokens = fresh._tokens
        self._touched = None


@dataclass
class _Pass:
    """What PassEchoes keeps of one running pass."""

    answers: dict[ChildKey, set[int]] = dataclass_field(default_factory=dict)
    held: list[tuple[ChildKey, int, bool]] = dataclass_field(default_factory=list)
    gone: dict[ChildKey, int] = dataclass_field(default_factory=dict)  # deletions, by version
    unsettled: bool = False  # an answer showed others' writes that only a later pass replaces


class PassEchoes:
    """The child events that would wake a tenant while its own pass runs, held until it ends,
    so that the echoes of the pass's own writes wake nobody.

    A pass's write and its watch event race: the answer, when read first, goes into the cache
    (`ChildCache.written`) and the event after it changes nothing; the event, when read first,
    changed the cache and queued the tenant again, for a pass that found nothing to do (about
    one new tenant in eight, bench/findings.md). An event of exactly the version of one of the
    pass's answers for that child is that write's echo. Any other wakes the tenant when its
    pass ends, as it did at once (the tenant could not run again before then): a change after
    the write or just before it (the pass planned without it), or to a child the pass did not
    write. So does an answer that shows others' writes to a kind the operator replaces when
    others write to it (`LiveChild.foreign_managers`): the write kept them, and only the next
    pass's replace takes them away, which their own event, were it read first, asked for.

    A deletion is never held (so a child the pass prunes costs a pass more), and an answer
    that may be older than a deletion the pass read is not recorded: the child would be in the
    cache but gone until the next resync.
    """

    def __init__(self) -> None:
        self._passes: dict[str, _Pass] = {}

    def begin(self, tenant: str) -> None:
        self._passes[tenant] = _Pass()

    def hold(self, tenant: str, body: Mapping[str, Any], follow_up: bool) -> bool:
        """Hold the event of `body` if its tenant's pass runs and its version can be compared."""
        running, version = self._passes.get(tenant), resource_version(body)
        if running is None or not version:
            return False
        running.held.append((child_key(body), version, follow_up))
        return True

    def deleted(self, body: Mapping[str, Any]) -> str | None:
        """Note a child's deletion; return its tenant if that tenant's pass runs (to wake it,
        though the cache may not have known the child yet: the pass's answer had not come)."""
        tenant = tenant_of(body)
        running = self._passes.get(tenant)
        if running is None:
            return None
        key = child_key(body)
        running.gone[key] = max(running.gone.get(key, 0), resource_version(body))
        return tenant

    def outdated(self, body: Mapping[str, Any]) -> bool:
        """Whether a write's answer may be older than a deletion of that child its pass read:
        unless the answer is known to be the newer (a child made again after the deletion),
        it is. Taking it would keep a child gone in the cache; not taking a newer one costs the
        pass the deletion asked for one apply that changes nothing."""
        running = self._passes.get(tenant_of(body))
        key = child_key(body)
        if running is None or key not in running.gone:
            return False
        return not 0 < running.gone[key] < resource_version(body)

    def answered(self, body: Mapping[str, Any], live: LiveChild | None) -> None:
        """Note the API server's answer to one of a running pass's writes, and what the cache
        now holds of that child."""
        running = self._passes.get(tenant_of(body))
        if running is None:
            return
        version = resource_version(body)
        if version:
            running.answers.setdefault(child_key(body), set()).add(version)
        if live is not None and live.foreign_managers:
            running.unsettled = True

    def end(self, tenant: str) -> bool | None:
        """End the tenant's pass: None when nothing but echoes came, else whether the pass that
        follows goes ahead of first passes (see queue.ReconcileQueue)."""
        running = self._passes.pop(tenant, None) or _Pass()
        woken = [
            follow_up
            for key, version, follow_up in running.held
            if version not in running.answers.get(key, ())
        ]
        if running.unsettled:
            woken.append(False)
        return any(woken) if woken else None
