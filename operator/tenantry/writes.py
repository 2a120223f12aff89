"""The operator's reads and writes of children, each as the API asks: one client, one field manager.

Which child to write and how is decided by tenantry.plan; this module only carries it out, and
turns the API server's answers into what the reconcile acts on (a refusal as invalid stalls the
tenant, a 404 on a read is None, a 404 on a delete is done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace

from tenantry.children import FIELD_MANAGER, ChildKey, child_key, describe_child, replacement
from tenantry.kinds import BY_KIND, resource_of
from tenantry.plan import Stall
from tenantry.render import Manifest
from tenantry.text import shown
from tenantry.transport import ApiClient, api_path, status_code


@contextmanager
def refusals_stall(key: ChildKey) -> Iterator[None]:
    """An API server that refuses a child as invalid (400, 422) stalls the tenant: a retry
    would be refused the same way until a human changes the spec. So does one that does not
    serve a templated child's kind at all (its CustomResourceDefinition is not installed)."""
    templated = key[0] not in BY_KIND
    try:
        yield
    except httpx2.HTTPStatusError as error:  # an ApiError, or a refusal in plain text
        code = status_code(error)
        said = error.status.message if isinstance(error, ApiError) else shown(error.response.text)
        if code in (400, 422):
            message = f"the API server rejected {describe_child(key)}: {said}"
        elif code == 404 and templated:
            message = (
                f"the API server does not serve {key[0]} in a namespace ({said}): install its "
                "CustomResourceDefinition; a cluster-scoped kind is never a template's: remove it "
                "from the operator's --template-kinds"
            )
        elif code == 403 and templated:
            message = (
                f"the operator may not write {describe_child(key)} ({said}): grant it in the "
                "operator's ClusterRole (the chart's templates.kinds does)"
            )
        else:
            raise
        raise Stall("Rejected", message) from None


class NotTheOneFound(Exception):
    """The namespace the pass found (KEY) is gone, or another of its name took its place: a
    write bound to its uid was refused (plan.pinned), or a read found so before anything was
    written (Reconciler._confirm_namespace). The controller forgets what it knew of it, and
    the next pass looks again."""

    def __init__(self, key: ChildKey, message: str) -> None:
        super().__init__(message)
        self.key = key


@contextmanager
def bound_to_the_one_found(key: ChildKey, manifest: Manifest) -> Iterator[None]:
    """Turn the API server's refusal of a write for its uid into NotTheOneFound. Entered inside
    `refusals_stall`, which would take the 422 for an invalid child and stall the tenant."""
    uid = manifest["metadata"].get("uid")
    try:
        yield
    except ApiError as error:
        if not uid or not refused_for_its_uid(error):
            raise
        raise NotTheOneFound(
            key,
            f"{describe_child(key)} is not the one this pass found (uid {uid}): it is gone, or "
            f"another took its name; the next pass looks again ({error.status.message})",
        ) from None


# How the API server words the 409 for an apply that carries a uid when no object of that name
# exists (k8s.io/apiserver endpoints/handlers/patch.go, the same from v0.35 to v0.37).
UID_MISMATCH = "uid mismatch"


def refused_for_its_uid(error: ApiError) -> bool:
    """A write refused only because its uid is not the live object's: a 409 saying so (no
    object of that name exists), or a 422 on `metadata.uid` alone (another object has it)."""
    status = error.status
    if status.code == 409:
        return UID_MISMATCH in (status.message or "")
    causes = (status.details.causes if status.details else None) or []
    return (
        status.code == 422
        and bool(causes)
        and all(cause.field == "metadata.uid" for cause in causes)
    )


async def gather_all(writes: Iterable[Awaitable[None]]) -> None:
    """Await every write, even when one fails, then raise the first failure.

    asyncio.gather would return at the first failure and leave the other writes running
    unawaited past the end of the reconcile.
    """
    results = await asyncio.gather(*writes, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# Told each child as the API server answered a write of it: what the child is now, before the
# watch event of that write arrives (children.ChildCache.written).
Written = Callable[[Mapping[str, Any]], None]
# The API server's answer to a write: the child as it is after it.
Answer = dict[str, Any]


@dataclass
class ChildWriter:
    client: ApiClient
    # The operator's --template-kinds: the classes of templated children (tenantry.kinds).
    template_kinds: tuple[str, ...] = ()
    written: Written | None = None

    def _answered(self, kind: str, answer: Answer) -> Answer:
        answer.setdefault("kind", kind)  # the API server's answers carry it: only in case
        if self.written is not None:
            self.written(answer)
        return answer

    def resource(self, kind: str) -> Any:
        return resource_of(kind, self.template_kinds)

    async def get(
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

    async def create_namespace(self, manifest: Manifest) -> Answer | None:
        """Create the tenant's namespace; None when one of that name appeared meanwhile (the
        caller decides whether it is the tenant's, see plan.owns)."""
        try:
            created = await self.client.send_json(
                "POST", api_path(Namespace, fieldManager=FIELD_MANAGER), manifest
            )
        except ApiError as error:
            # Only "already exists": a 409 of anything else (an admission webhook's) is raised,
            # not taken for a namespace that is there.
            if error.status.code != 409 or error.status.reason != "AlreadyExists":
                raise
            return None
        return self._answered("Namespace", created)

    async def apply(self, manifest: Manifest) -> Answer:
        kind, namespace, name = key = child_key(manifest)
        with refusals_stall(key), bound_to_the_one_found(key, manifest):
            applied = await self.client.send_json(
                "PATCH",
                api_path(
                    self.resource(kind),
                    namespace or None,
                    name,
                    fieldManager=FIELD_MANAGER,
                    force="true",
                ),
                manifest,
                "application/apply-patch+yaml",  # server-side apply (JSON is YAML)
            )
        return self._answered(kind, applied)

    async def replace(self, manifest: Manifest) -> Answer:
        """Make a child exactly what we render, dropping what others added to it
        (children.replacement). A forced apply takes back the fields we own, but leaves fields
        another manager added (a label added to a policy's podSelector narrows it to nothing)."""
        kind, namespace, name = key = child_key(manifest)
        resource = self.resource(kind)
        live = await self.get(resource, name, namespace or None)
        if live is None:
            return await self.apply(manifest)  # deleted meanwhile: put it back
        # A 404 or 409 (changed meanwhile) is raised as it is: the queue's retry looks again.
        with refusals_stall(key):
            replaced = await self.client.replace(
                resource.from_dict(replacement(manifest, live)), field_manager=FIELD_MANAGER
            )
        return self._answered(kind, replaced.to_dict())

    async def delete(self, key: ChildKey) -> None:
        kind, namespace, name = key
        try:
            await self.client.delete(self.resource(kind), name, namespace=namespace or None)
        except ApiError as error:
            if error.status.code != 404:
                raise
