"""The operator's own watches: of its children, its runtime pods and the source Secrets.

Kopf watches tenants and templates. The children and pods were Kopf's too, and that cost the
operator more than anything of ours: Kopf runs each event through its per-object machinery (a
worker task per object, a body and a patch, handler matching), about a quarter of the operator's
CPU while it provisioned tenants, for some forty child events a tenant (bench/findings.md); and
at every start it listed each kind again after the resync had, and replayed every child as an
event. A watch here hands each event to the controller as a plain dict, and starts where the
resync's list of its kind ended: a start replays nothing.

lightkube builds and sends each watch's request; its events are read here as plain dicts. The
watch asks for bookmarks, so the
version it resumes from stays fresh on a kind with no events of ours for hours. A watch silent
for longer than the API server's bookmarks allow is taken for a dead connection (a peer gone
without a reset) and reconnected; one the server ends (its timeout), whose answer breaks or
whose reconnect fails resumes from the last version seen, after a backoff when it failed; one
whose version the server no longer has (410 Gone) starts from scratch: every object comes again
as ADDED, and the drift resync takes the deletions it missed. This is what Kopf's watches did
(bookmarks, a 70 s inactivity timeout), less its list and replay of every object at each
reconnect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.selector import build_selector
from lightkube.models.meta_v1 import Status

from tenantry import metrics
from tenantry.transport import status_code

logger = logging.getLogger("tenantry.watches")

# The longest wait before a failed watch reconnects, seconds (Kopf's, and client-go's, order).
MAX_BACKOFF = 30.0
# Seconds a watch may stay silent before it is taken for dead: the API server sends a bookmark
# about every minute to a watch that asks for them (Kopf's figure).
INACTIVITY_SECONDS = 70.0
GONE = 410

# Told every event of a watch: its type (ADDED, MODIFIED, DELETED) and the object, as the API
# server sent it.
Seen = Callable[[str, Any], None]


def backoff(attempt: int) -> float:
    """Seconds to wait before the ATTEMPT-th reconnect in a row: 2, 4, … up to 30."""
    return min(MAX_BACKOFF, 2.0 ** min(attempt, 5))


def refused_for_good(error: BaseException) -> bool:
    """A watch the API server will refuse again the same way: the kind is not served (a
    templated kind whose CustomResourceDefinition is missing) or not granted."""
    return status_code(error) in (403, 404)


async def watch(
    client: AsyncClient,
    resource: Any,
    seen: Seen,
    *,
    what: str,
    since: str | None = None,
    namespace: str | None = None,
    labels: Mapping[str, str] | None = None,
    refused_wait: float = MAX_BACKOFF,
) -> None:
    """Tell `seen` of every change to the objects of RESOURCE (in NAMESPACE, "*" for all, with
    LABELS) after version SINCE, for ever. WHAT names the watch in logs.

    Never returns and never raises but when cancelled: a watch that ended would leave the
    caches it feeds to the drift resync alone. A refusal for good (`refused_for_good`) waits
    REFUSED_WAIT before it asks again (a CRD may be installed later); any other failure waits
    its backoff. An error of `seen` is logged and the watch goes on.
    """
    version, attempt = since, 0
    while True:
        try:
            async for change, body in events(client, resource, version, namespace, labels):
                attempt = 0
                version = (body.get("metadata") or {}).get("resourceVersion") or version
                if change != "BOOKMARK":
                    told(seen, change, body, what)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            logger.info("watch of %s silent for %.0f s: reconnecting", what, INACTIVITY_SECONDS)
        except Exception as error:
            if status_code(error) == GONE:  # the version is too old: afresh, every object again
                version = None
                continue
            attempt += 1
            metrics.api_error("watch", error)
            if refused_for_good(error):
                logger.warning("cannot watch %s: %s", what, error)
                await asyncio.sleep(refused_wait)
                continue
            logger.warning("watch of %s failed (attempt %d): %s", what, attempt, error)
            await asyncio.sleep(backoff(attempt))


async def events(
    client: AsyncClient,
    resource: Any,
    version: str | None,
    namespace: str | None,
    labels: Mapping[str, str] | None,
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """One watch request's events, as (type, object) with the object as sent, until the server
    ends it; an ERROR event is raised as an ApiError, and a silence past INACTIVITY_SECONDS as
    TimeoutError.

    lightkube's watch() cannot ask for bookmarks, and decodes every event into the kind's model,
    which a bookmark (metadata alone) fails for a kind with required fields (a Deployment's
    selector): the request is made as watch() makes it, and its lines are read here.
    """
    generic: Any = client._client  # lightkube's request building, credentials and transport
    request = generic.prepare_request(
        "list",
        res=resource,
        namespace=namespace,
        watch=True,
        params={
            "resourceVersion": version,
            "labelSelector": build_selector(dict(labels)) if labels else None,
            "allowWatchBookmarks": "true",
        },
    )
    built = generic._client.build_request(
        request.method, request.url, params=request.params, timeout=generic._watch_timeout
    )
    response = await generic.send(built, stream=True)
    try:
        generic.raise_for_status(response)
        async for line in lines(response.aiter_bytes()):
            event = msgspec.json.decode(line)
            if event.get("type") == "ERROR":
                raise ApiError(status=Status.from_dict(event.get("object") or {}))  # type: ignore[arg-type]
            yield event.get("type", ""), event.get("object") or {}
    finally:
        await response.aclose()


async def lines(
    chunks: AsyncIterator[bytes], silence: float = INACTIVITY_SECONDS
) -> AsyncIterator[bytes]:
    """The lines of a stream of CHUNKS, without their ends, blank ones left out; a last line
    without an end too. Raises TimeoutError when no chunk comes for SILENCE seconds.

    Read as bytes, a whole chunk at a time: httpx's text lines cost a decode to str, a split and
    a timer per event, for events msgspec reads from bytes (bench/findings.md). And only a
    newline byte ends a line: httpx's lines end at U+0085 too, which the API server's JSON
    leaves unescaped inside a value (docs/security.md, the operator's watches)."""
    parts: list[bytes] = []  # of a line not ended yet
    while True:
        async with asyncio.timeout(silence):
            chunk = await anext(chunks, None)
        if chunk is None:  # the server ended the watch (its timeout)
            if (last := b"".join(parts)).strip():
                yield last
            return
        parts.append(chunk)
        if b"\n" not in chunk:
            continue
        *ended, rest = b"".join(parts).split(b"\n")
        parts = [rest] if rest else []
        for line in ended:
            if line.strip():
                yield line


def told(seen: Seen, change: str, obj: Any, what: str) -> None:
    """Tell `seen` of one event; a fault of its own is logged, and loses this event only."""
    try:
        seen(change, obj)
    except Exception:
        logger.exception("an event of %s could not be handled", what)
