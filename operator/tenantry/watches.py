"""The operator's own watches: of its children, its runtime pods and the source Secrets.

Kopf watches tenants and templates. The children and pods were Kopf's too, and that cost the
operator more than anything of ours: Kopf runs each event through its per-object machinery (a
worker task per object, a body and a patch, handler matching), about a quarter of the operator's
CPU while it provisioned tenants, for some forty child events a tenant (bench/findings.md); and
at every start it listed each kind again after the resync had, and replayed every child as an
event. A watch here hands each event to the controller as a plain dict, and starts where the
resync's list of its kind ended: a start replays nothing.

lightkube runs the watch: it reconnects from the last version seen when the server ends it (a
watch's timeout) or its answer breaks, and from scratch when that version is too old (410 Gone:
every object comes again as ADDED, as a fresh watch replays, and the drift resync takes the
deletions it missed). It does not retry a reconnect whose request fails (the API server still
away): that starts the watch over here, after a backoff, from the last version seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.types import OnErrorAction, OnErrorResult

from tenantry import metrics
from tenantry.transport import status_code

logger = logging.getLogger("tenantry.watches")

# The longest wait before a failed watch reconnects, seconds (Kopf's, and client-go's, order).
MAX_BACKOFF = 30.0

# Told every event of a watch: its type (ADDED, MODIFIED, DELETED) and the object as lightkube
# read it.
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
    its backoff.
    """
    version, attempt = since, 0

    def on_error(error: Exception, count: int) -> OnErrorResult:
        metrics.api_error("watch", error)
        if refused_for_good(error):
            return OnErrorResult(OnErrorAction.RAISE)
        logger.warning("watch of %s failed (attempt %d): %s", what, count, error)
        return OnErrorResult(OnErrorAction.RETRY, sleep=backoff(count))

    where: dict[str, Any] = {} if namespace is None else {"namespace": namespace}
    while True:
        stream = client.watch(
            resource,
            labels=dict(labels) if labels else None,
            resource_version=version,
            on_error=on_error,
            **where,
        )
        try:
            async for change, obj in stream:
                attempt = 0
                version = obj.metadata.resourceVersion if obj.metadata else version
                seen(change, obj)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            attempt += 1
            if refused_for_good(error):
                logger.warning("cannot watch %s: %s", what, error)
                await asyncio.sleep(refused_wait)
                continue
            metrics.api_error("watch", error)
            logger.warning("watch of %s failed (attempt %d): %s", what, attempt, error)
            await asyncio.sleep(backoff(attempt))
