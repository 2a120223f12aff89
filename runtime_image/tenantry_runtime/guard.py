"""The tenant guard: no message that names another tenant ever enters the runtime's queue.

autogen-core's own hook for this, an intervention handler returning `DropMessage`, is not
usable: in 0.7.5 a message dropped there is never marked `task_done()` on the runtime's
queue, so `stop_when_idle()` waits forever after the first drop, and the generic handler
path costs ~13% per message. Instead `GuardedAgentRuntime` checks in `publish_message` and
`send_message`, *before* the envelope is queued. A dropped message never touches the queue,
so its accounting stays exact, and the check is two string comparisons.

Every agent reaches the runtime through these two methods (`BaseAgent.publish_message` and
`send_message` call them), and responses only follow sends that were admitted, so this is
the whole message path. It is a boundary for messages, not for code: anything running in
this process could call the base class directly, which is why each tenant gets its own
process and only allowlisted agent code runs in it.

The record of an admitted message may wait until just before a delivery (audit.py): the
runtime's two delivering methods, `_process_send` and `_process_publish`, write every held
record first, and deliver nothing if that write fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Literal

from autogen_core import AgentId, CancellationToken, SingleThreadedAgentRuntime, TopicId
from autogen_core._single_threaded_agent_runtime import (
    PublishMessageEnvelope,
    SendMessageEnvelope,
)
from autogen_core.exceptions import MessageDroppedException

from .audit import AuditLog

_log = logging.getLogger(__name__)


class TenantGuard:
    """Decides and records; pinned to one tenant for its whole life.

    Every message passes here, so the path is kept to few Python calls: a guarded message made
    about 20 more than a bare one, and each costs a frame (bench/findings.md, "Counted, not
    timed": the guard's instructions, counted by callgrind). So the sender's check is written
    out in each of the two methods, and the task id a task's guard puts on every record is an
    attribute, not a method."""

    __slots__ = ("audit", "delivered", "dropped", "task_id", "tenant")

    def __init__(self, tenant: str, audit: AuditLog) -> None:
        self.tenant = tenant
        self.audit = audit
        self.delivered = 0
        self.dropped = 0
        # The task id on every record, or None: each message's own (`audited_task_id`).
        self.task_id: str | None = None

    # The sender is caller-supplied and can be forged, so it grants nothing; but an agent of
    # ours always has the tenant as its key, so any other key is a message to refuse.
    # `hold`: the record of an admitted message may wait for its delivery (audit.py); only a
    # runtime that writes held records before it delivers anything may ask for it.
    def admit_publish(
        self, message: Any, topic_id: TopicId, sender: AgentId | None, *, hold: bool = False
    ) -> bool:
        if topic_id.source != self.tenant:
            reason: str | None = f"topic source {topic_id.source!r} is not the tenant"
        elif sender is not None and sender.key != self.tenant:
            reason = _foreign_sender(sender)
        else:
            reason = None
        return self._record("publish", message, str(topic_id), None, sender, reason, hold)

    def admit_send(
        self, message: Any, recipient: AgentId, sender: AgentId | None, *, hold: bool = False
    ) -> bool:
        if recipient.key != self.tenant:
            reason: str | None = f"recipient key {recipient.key!r} is not the tenant"
        elif sender is not None and sender.key != self.tenant:
            reason = _foreign_sender(sender)
        else:
            reason = None
        return self._record("send", message, None, str(recipient), sender, reason, hold)

    def _record(
        self,
        kind: Literal["publish", "send"],
        message: Any,
        topic: str | None,
        recipient: str | None,
        sender: AgentId | None,
        reason: str | None,
        hold: bool = False,
    ) -> bool:
        if reason is None:
            self.delivered += 1
        else:
            self.dropped += 1
        task_id = self.task_id
        self.audit.message(
            kind=kind,
            topic=topic,
            sender=None if sender is None else str(sender),
            recipient=recipient,
            message_type=type(message).__name__,
            decision="delivered" if reason is None else "dropped",
            task_id=audited_task_id(message) if task_id is None else task_id,
            reason=reason,
            until_delivery=hold,
        )
        return reason is None


def _foreign_sender(sender: AgentId) -> str:
    return f"sender key {sender.key!r} is not the tenant"


class TaskGuard(TenantGuard):
    """The guard of one task's own runtime (a team's: team_kind.py): the tenant's rules, the
    task's id on every record (the messages of a group chat carry none of their own), and
    nothing admitted once the task is over, whatever still runs for it."""

    __slots__ = ("_over",)

    def __init__(self, tenant: str, audit: AuditLog, task_id: str) -> None:
        super().__init__(tenant, audit)
        self.task_id = task_id
        self._over = False

    def end(self) -> None:
        self._over = True

    def admit_publish(
        self, message: Any, topic_id: TopicId, sender: AgentId | None, *, hold: bool = False
    ) -> bool:
        if self._over:
            return self._record("publish", message, str(topic_id), None, sender, _TASK_OVER)
        return super().admit_publish(message, topic_id, sender, hold=hold)

    def admit_send(
        self, message: Any, recipient: AgentId, sender: AgentId | None, *, hold: bool = False
    ) -> bool:
        if self._over:
            return self._record("send", message, None, str(recipient), sender, _TASK_OVER)
        return super().admit_send(message, recipient, sender, hold=hold)


_TASK_OVER = "the task is over"


_TASK_ID_CHARS = 128


def audited_task_id(message: Any) -> str | None:
    """A message's task id as the audit records it: text of a bounded length, whatever the
    message holds (a uuid.UUID, a huge string, a property that raises). The guard and its
    audit never fail on a message's contents: the message would be lost with them."""
    try:
        value = getattr(message, "task_id", None)
        return None if value is None else str(value)[:_TASK_ID_CHARS]
    except Exception:  # any error of the message's own code: audit without it
        return None


class GuardedAgentRuntime(SingleThreadedAgentRuntime):
    """A `SingleThreadedAgentRuntime` whose every publish and send passes `guard` first.

    A dropped publish returns silently (as autogen's own drop does: a publisher learns
    nothing about topics it may not use); a dropped send raises `MessageDroppedException`
    at the caller, again as autogen does.
    """

    def __init__(self, guard: TenantGuard, **options: Any) -> None:
        # The stock runtime's options (tracer_provider, intervention_handlers,
        # ignore_unhandled_exceptions) pass through. Intervention handlers run only on what the
        # guard admitted, since the guard judges before a message is queued (module docstring).
        super().__init__(**options)
        self.guard = guard

    @property
    def tenant(self) -> str:
        return self.guard.tenant

    # autogen-core 0.7.5 delivers a queued message only in the coroutines of these two methods,
    # each called as the message leaves the queue and run as a task of its own. They are not
    # coroutines here: held records are written at that call, before the stock coroutine is
    # made, so a delivery costs no coroutine more than the bare runtime's (bench/runtime.py).
    # Whether any record is held is read from the audit log's own state, not asked by a call:
    # of a burst's deliveries only the first finds any. A failed write is accounted as autogen
    # accounts a handler's failure (the queue's task_done, the sender's future unless its
    # caller gave up), so neither stop_when_idle() nor the sender waits for it; and it never
    # escapes, since it would end the message loop.
    def _process_send(self, message_envelope: SendMessageEnvelope) -> Coroutine[Any, Any, None]:
        audit = self.guard.audit
        if audit._held or audit._unwritten:
            try:
                audit.write_held()
            except Exception as error:
                try:
                    if not message_envelope.future.done():  # a cancelled caller's is
                        message_envelope.future.set_exception(error)
                finally:
                    self._message_queue.task_done()
                return _nothing()
        return super()._process_send(message_envelope)

    def _process_publish(
        self, message_envelope: PublishMessageEnvelope
    ) -> Coroutine[Any, Any, None]:
        audit = self.guard.audit
        if audit._held or audit._unwritten:
            try:
                audit.write_held()
            except Exception as error:
                try:
                    _log.error("a published message was not delivered: %s", error)
                    if not self._ignore_unhandled_handler_exceptions:
                        self._background_exception = error
                finally:
                    self._message_queue.task_done()
                return _nothing()
        return super()._process_publish(message_envelope)

    async def cancel_handlers(self) -> None:
        """Cancel every message handler running and wait for each to end, until none is left
        (the loop may start one for a message queued before; nothing new is queued once the
        guard admits nothing). `stop()` alone only ends the message loop: handlers run on."""
        while running := list(self._background_tasks):
            for handler in running:
                handler.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def topic(self, topic_type: str) -> TopicId:
        """The tenant's topic of `topic_type`: the only kind of topic this runtime carries."""
        return TopicId(topic_type, self.guard.tenant)

    async def publish_message(
        self,
        message: Any,
        topic_id: TopicId,
        *,
        sender: AgentId | None = None,
        cancellation_token: CancellationToken | None = None,
        message_id: str | None = None,
    ) -> None:
        # Judged when awaited, not when called: a publish made before its task ended and
        # awaited after is refused (TaskGuard), as its message would reach no one in time.
        # Its record may wait for its delivery unless an intervention handler would see the
        # message first, as it leaves the queue (asked at every message, so a handler added
        # to the runtime's list later counts too).
        hold = not self._intervention_handlers
        if self.guard.admit_publish(message, topic_id, sender, hold=hold):
            await super().publish_message(
                message,
                topic_id,
                sender=sender,
                cancellation_token=cancellation_token,
                message_id=message_id,
            )

    async def send_message(
        self,
        message: Any,
        recipient: AgentId,
        *,
        sender: AgentId | None = None,
        cancellation_token: CancellationToken | None = None,
        message_id: str | None = None,
    ) -> Any:
        hold = not self._intervention_handlers  # as publish_message says
        if not self.guard.admit_send(message, recipient, sender, hold=hold):
            raise MessageDroppedException(f"recipient {recipient} is outside tenant {self.tenant}")
        return await super().send_message(
            message,
            recipient,
            sender=sender,
            cancellation_token=cancellation_token,
            message_id=message_id,
        )


async def _nothing() -> None:
    """A delivery given up before it started: nothing to run."""


class _QuietCancellation(logging.Filter):
    """autogen logs every handler that ends with an exception as an error, with its traceback,
    cancellation included; a task runtime cancels its handlers on purpose whenever a task is
    given up (a timeout, a caller gone), which is no error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None or not isinstance(record.exc_info[1], asyncio.CancelledError)


logging.getLogger("autogen_core").addFilter(_QuietCancellation())


@asynccontextmanager
async def task_runtime(
    tenant: str, audit: AuditLog, task_id: str
) -> AsyncIterator[GuardedAgentRuntime]:
    """A runtime of one task's own, started, guarded for `tenant` and audited to `audit` with
    `task_id` on every line; when the block is left (done, failed or cancelled) nothing more
    is admitted, its message loop stops and every handler still running is cancelled and
    awaited: nothing of the task outlives it.

    Handler errors do not stop the loop (`ignore_unhandled_exceptions`): whoever runs on it
    learns of them from its own messages (a group chat's error event), as on the tenant's."""
    guard = TaskGuard(tenant, audit, task_id)
    runtime = GuardedAgentRuntime(guard, ignore_unhandled_exceptions=True)
    runtime.start()
    try:
        yield runtime
    finally:
        guard.end()
        # Handlers first, while the queue they account to is still the loop's (stop() swaps
        # it for a new one, on which their ending would count a message twice).
        await runtime.cancel_handlers()
        await runtime.stop()
