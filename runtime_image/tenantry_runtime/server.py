"""The runtime's HTTP API and the lifecycle of its one agent runtime.

`POST /v1/tasks {"topicType", "content"}` publishes a TaskRequest to the tenant's topic of
that type and waits (at most taskTimeoutSeconds) for the TaskResult with the same task id.
`POST /v1/sessions/{id}/tasks` does the same for a task that continues session `id` (when the
tenant has sessions), one task per session at a time; `DELETE /v1/sessions/{id}` forgets it.
At most TENANTRY_MAX_TASKS_IN_FLIGHT tasks wait at once; one more is refused with 429 at once,
rather than piling up work (model calls, histories) that nobody bounds.
A request names a topic type and content and nothing else: the tenant is the process's, so
there is no field, header or path through which a caller could choose another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from autogen_core import CancellationToken
from autogen_core.models import ChatCompletionClient

from .agents import Dependencies, PendingTasks, build_model_client, register_agents
from .audit import AuditLog
from .executor import SandboxCodeExecutor
from .guard import GuardedAgentRuntime, TenantGuard
from .mcp_tools import offers_tools
from .messages import TaskRequest
from .runtime_json import RuntimeConfig
from .serve_settings import DEFAULT_MAX_TASKS_IN_FLIGHT, Secrets, ServeSettings
from .sessions import SESSION_ID_RE, SessionStore

log = logging.getLogger(__name__)

_TASK_FIELDS = ("topicType", "content")
_MAX_BODY_BYTES = 1024 * 1024


@dataclass
class _Running:
    runtime: GuardedAgentRuntime
    pending: PendingTasks
    executor: SandboxCodeExecutor | None
    sessions: SessionStore | None
    busy_sessions: set[str] = field(default_factory=set)
    """Sessions with a task in flight: a second one would race the first for the history."""


@dataclass
class _State:
    """Set while the agent runtime runs (an app's own keys are frozen once it starts)."""

    running: _Running | None = None


_CONFIG = web.AppKey("config", RuntimeConfig)
_MAX_TASKS = web.AppKey("max_tasks_in_flight", int)
_AUDIT = web.AppKey("audit", AuditLog)
_SECRETS = web.AppKey("secrets", Secrets)
_STATE = web.AppKey("state", _State)
_SESSIONS: web.AppKey[SessionStore | None] = web.AppKey("sessions")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _runtime_context(app: web.Application) -> AsyncIterator[None]:
    """Builds, starts and finally stops the tenant's agent runtime with the HTTP server."""
    config, secrets, audit = app[_CONFIG], app[_SECRETS], app[_AUDIT]
    model: ChatCompletionClient | None = None
    executor: SandboxCodeExecutor | None = None
    if config.model is not None and secrets.model_api_key is not None:
        model = build_model_client(
            config.model,
            secrets.model_api_key,
            config.task_timeout_seconds,
            function_calling=offers_tools(config.agents),
        )
    if config.sandbox is not None and secrets.sandbox_token is not None:
        executor = SandboxCodeExecutor(
            config.sandbox.url, secrets.sandbox_token, config.sandbox.timeout_seconds
        )
    sessions = app[_SESSIONS]
    runtime = GuardedAgentRuntime(TenantGuard(config.tenant, audit))
    pending = PendingTasks()
    deps = Dependencies(audit, pending, model, executor, sessions)
    await register_agents(runtime, config, deps)
    runtime.start()
    state = app[_STATE]
    state.running = _Running(runtime, pending, executor, sessions)
    log.info(
        "runtime for tenant %s: agents %s",
        config.tenant,
        ", ".join(f"{a.name} ({a.kind}) on {a.topic_type}" for a in config.agents) or "none",
    )
    unanswered = sorted(set(config.topic_types) - config.task_topic_types)
    if unanswered:
        log.warning("no assistant answers tasks on topic type(s) %s", ", ".join(unanswered))
    yield
    state.running = None
    # By now aiohttp has finished (or cancelled) every request, and each cancelled the
    # token of its task; whatever those tasks still had in flight unwinds at once.
    pending.cancel_all()
    await runtime.stop_when_idle()
    if executor is not None:
        await executor.stop()
    if model is not None:
        await model.close()


async def _healthz(request: web.Request) -> web.Response:
    body: dict[str, Any] = {"status": "ok", "tenant": request.app[_CONFIG].tenant}
    running = request.app[_STATE].running
    if running is not None:
        guard = running.runtime.guard
        body["messages"] = {"delivered": guard.delivered, "dropped": guard.dropped}
    return web.json_response(body)


async def _readyz(request: web.Request) -> web.Response:
    running = request.app[_STATE].running
    if running is None:
        return _error(503, "the agent runtime is not running")
    if running.executor is not None and not await running.executor.ping():
        return _error(503, "the sandbox does not answer")
    return web.json_response({"status": "ready"})


def _over_limits(running: _Running, limit: int, session_id: str | None) -> web.Response | None:
    if len(running.pending) >= limit:
        return _error(
            429,
            f"the runtime already has {limit} tasks in flight, its limit "
            "(TENANTRY_MAX_TASKS_IN_FLIGHT); retry later",
        )
    if session_id is not None and session_id in running.busy_sessions:
        return _error(409, f"session {session_id} already has a task in flight; retry when it ends")
    return None


def _task_fields(
    body: object, config: RuntimeConfig, session_id: str | None
) -> tuple[str, str] | web.Response:
    if not isinstance(body, dict):
        return _error(400, 'the body must be a JSON object {"topicType": ..., "content": ...}')
    unknown = sorted(set(body) - set(_TASK_FIELDS))
    if unknown:
        return _error(
            400,
            f"unknown field(s) {', '.join(unknown)}: a task has only topicType and content "
            f"(this runtime serves tenant {config.tenant!r} and no other)",
        )
    topic_type, content = body.get("topicType"), body.get("content")
    if not isinstance(topic_type, str) or not isinstance(content, str) or not content.strip():
        return _error(400, "topicType and content must be strings, content not empty")
    if topic_type not in config.task_topic_types:
        served = ", ".join(sorted(config.task_topic_types)) or "none"
        return _error(400, f"topic type {topic_type!r} is not served here; served: {served}")
    if session_id is not None:
        return _session_task_refusal(topic_type, content, config) or (topic_type, content)
    return topic_type, content


def _session_task_refusal(
    topic_type: str, content: str, config: RuntimeConfig
) -> web.Response | None:
    if topic_type not in config.session_topic_types:
        kept = ", ".join(sorted(config.session_topic_types)) or "none"
        return _error(
            400, f"no agent on topic type {topic_type!r} continues sessions; those that do: {kept}"
        )
    assert config.sessions is not None  # session_topic_types is empty without
    most = config.sessions.max_session_bytes // 2
    # In UTF-8, a lone surrogate (JSON lets one through: "\ud800") as three bytes. The history
    # keeps text escaped, so a turn of many escapes may still be refused when it is saved.
    if len(content.encode("utf-8", "surrogatepass")) > most:
        return _error(
            413,
            f"a task of a session may have at most {most} bytes (half of maxSessionBytes: the "
            "answer is kept with it); post it to /v1/tasks, or raise "
            "spec.runtime.sessions.retention.maxSessionBytes",
        )
    return None


async def _post_task(request: web.Request) -> web.Response:
    return await _run_task(request, None)


async def _post_session_task(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    if isinstance(session_id, web.Response):
        return session_id
    return await _run_task(request, session_id)


async def _delete_session(request: web.Request) -> web.Response:
    session_id = _session_id(request)
    if isinstance(session_id, web.Response):
        return session_id
    running = request.app[_STATE].running
    assert running is not None and running.sessions is not None  # _session_id checked both
    if session_id in running.busy_sessions:
        return _error(409, f"session {session_id} has a task in flight; delete it when it ends")
    if not await running.sessions.forget(session_id):
        return _error(404, f"session {session_id} has no history here")
    return web.Response(status=204)


def _session_id(request: web.Request) -> str | web.Response:
    """The path's session id, when this tenant has sessions and the id is one."""
    config, running = request.app[_CONFIG], request.app[_STATE].running
    if config.sessions is None:
        return _error(
            404,
            f"tenant {config.tenant!r} keeps no sessions: enable spec.runtime.sessions, or post "
            "the task to /v1/tasks",
        )
    if running is None:
        return _error(503, "the agent runtime is not running")
    session_id = request.match_info["session_id"]
    if not SESSION_ID_RE.fullmatch(session_id):
        return _error(
            400,
            f"{session_id[:80]!r} is not a session id: 1 to 64 letters, digits, '-' and '_', "
            "starting with a letter or digit",
        )
    return session_id


async def _run_task(request: web.Request, session_id: str | None) -> web.Response:
    config, running = request.app[_CONFIG], request.app[_STATE].running
    if running is None:
        return _error(503, "the agent runtime is not running")
    # Read as UTF-8 whatever charset the request names: aiohttp decodes with that one, and an
    # unknown one raised (500), "punycode" took seconds of the event loop per 100 KB.
    try:
        body = json.loads((await request.read()).decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to parse
        body = None
    fields = _task_fields(body, config, session_id)
    if isinstance(fields, web.Response):
        return fields
    topic_type, content = fields
    # Checked, and the task counted by expect(), with no await in between: no burst gets past.
    refused = _over_limits(running, request.app[_MAX_TASKS], session_id)
    if refused is not None:
        return refused
    if session_id is not None:
        running.busy_sessions.add(session_id)
    task_id, token = uuid.uuid4().hex, CancellationToken()
    # Expect the result before publishing, so even an instant answer finds its waiter.
    future = running.pending.expect(task_id, token)
    try:
        await running.runtime.publish_message(
            TaskRequest(task_id, content, session_id),
            running.runtime.topic(topic_type),
            cancellation_token=token,
        )
        result = await asyncio.wait_for(future, config.task_timeout_seconds)
    except TimeoutError:
        return _error(
            504,
            f"task {task_id} got no result within {config.task_timeout_seconds:g} s "
            "(taskTimeoutSeconds); the model or the sandbox may be slow or unreachable",
            taskId=task_id,
        )
    finally:
        # Done, timed out or the server is stopping: nothing more runs for this task, and
        # the files its code left in the sandbox go.
        running.pending.forget(task_id)
        if session_id is not None:
            running.busy_sessions.discard(session_id)
        if running.executor is not None:
            await running.executor.end_task(task_id)
    if result.error is not None:
        return _error(502, result.error, taskId=task_id)
    answer = {"taskId": task_id, "topicType": topic_type, "result": result.content}
    if session_id is not None:
        answer["sessionId"] = session_id
    return web.json_response(answer)


def build_app(
    config: RuntimeConfig,
    secrets: Secrets,
    audit: AuditLog,
    max_tasks_in_flight: int = DEFAULT_MAX_TASKS_IN_FLIGHT,
    sessions: SessionStore | None = None,
) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[_CONFIG] = config
    app[_MAX_TASKS] = max_tasks_in_flight
    app[_SECRETS] = secrets
    app[_AUDIT] = audit
    app[_STATE] = _State()
    app[_SESSIONS] = sessions
    app.cleanup_ctx.append(_runtime_context)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_post("/v1/tasks", _post_task)
    app.router.add_post("/v1/sessions/{session_id}/tasks", _post_session_task)
    app.router.add_delete("/v1/sessions/{session_id}", _delete_session)
    return app


def serve(settings: ServeSettings, secrets: Secrets) -> None:
    audit = AuditLog.open(settings.config.tenant, settings.audit_target)
    try:
        config = settings.config
        # Before the server starts: a volume still held by the runtime this one replaces is
        # waited for, one that is another tenant's refused (ConfigError: exit 2).
        sessions = (
            None
            if config.sessions is None
            else SessionStore.open(config.sessions, config.tenant, audit)
        )
        app = build_app(config, secrets, audit, settings.max_tasks_in_flight, sessions)
        # Shorter than a pod's default 30 s grace period: requests still running then are
        # cancelled, and with them their tasks, rather than killed mid-write.
        web.run_app(app, host=settings.host, port=settings.port, print=None, shutdown_timeout=20)
    finally:
        audit.close()
