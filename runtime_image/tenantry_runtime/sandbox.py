"""The sandbox server: runs a tenant's code for that tenant's runtime, and no one else.

`POST /v1/execute {"language", "code", "taskId"?}` with `Authorization: Bearer <tenant token>`
runs the code once through `Runner` (runner.py: limits, time limit, killing whatever the run
left, reaping) in its task's workspace (workspace.py) and answers `{"exitCode", "output",
"timedOut", "truncated", "durationSeconds"}`. `DELETE /v1/workspaces/<taskId>` says a task
has ended, and its files go (and, once no task is live, the IPC objects code left: ipc.py);
`DELETE /v1/workspaces` ends every task. The token is compared
in constant time; anything else gets 401 before the body is read. At most `concurrency` runs
go at once and more are refused with 429 rather than queued, so a busy sandbox says so at
once instead of letting its callers time out. `GET /healthz` is open, for probes. Paths,
header and bodies are protocol.py's, shared with the runtime's client (executor.py).

Should a process a run left resist being killed (runner.py), the sandbox fails closed: that
run is answered 500, later runs 503 without running, and `/healthz` 503 (so the kubelet
restarts the container, which ends every process in it), until a sweep finds it gone.

The server holds no model credentials and runs code with an environment built from nothing.
What it cannot contain on its own (rlimits are per process, RLIMIT_NPROC per user, the
pod's /tmp) is left to the pod around it: its own container, uid, PID and memory limits, no
network. See docs/runtime.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from .audit import AuditLog, code_digest
from .protocol import (
    AUTHORIZATION,
    BEARER,
    EXECUTE_PATH,
    HEALTHZ_PATH,
    TASK_ID_RE,
    WORKSPACES_PATH,
    ExecuteResponse,
    normalize_language,
)
from .refusals import pattern_refusal
from .runner import ProcessesSurvived, Runner, RunOutcome
from .sandbox_settings import SandboxLimits, SandboxSettings
from .workspace import TaskEnded, Workspaces

log = logging.getLogger(__name__)

_SWEEP_SECONDS = 1.0

_SETTINGS = web.AppKey("settings", SandboxSettings)
_RUNNER = web.AppKey("runner", Runner)
_SLOTS = web.AppKey("slots", asyncio.Semaphore)
_AUDIT = web.AppKey("audit", AuditLog)
_WORKSPACES = web.AppKey("workspaces", Workspaces)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, presented = request.headers.get(AUTHORIZATION, "").partition(" ")
    # Compare bytes: compare_digest refuses non-ASCII str, and a header may hold any byte
    # (aiohttp keeps undecodable ones as surrogates).
    return scheme.lower() == BEARER.lower() and hmac.compare_digest(
        presented.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


async def _healthz(request: web.Request) -> web.Response:
    survivors = request.app[_RUNNER].survivors
    if survivors:
        # Not healthy: the kubelet restarts the container, and every process in it ends.
        error = f"{len(survivors)} process(es) left by runs could not be killed"
        return web.json_response({"status": "unclean", "error": error}, status=503)
    return web.json_response({"status": "ok"})


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class _Run:
    language: str  # normalized
    code: str
    task_id: str | None


async def _read_run(request: web.Request, limits: SandboxLimits) -> _Run:
    """The run a request asks for, or _Refused saying what is wrong."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _Refused(400, "the body must be a JSON object")
    code, language, task_id = body.get("code"), body.get("language"), body.get("taskId")
    if not isinstance(code, str) or not isinstance(language, str):
        raise _Refused(400, "'code' and 'language' must be strings")
    if task_id is not None and not (isinstance(task_id, str) and TASK_ID_RE.fullmatch(task_id)):
        raise _Refused(400, pattern_refusal("taskId", task_id, TASK_ID_RE))
    normalized = normalize_language(language)
    if normalized is None:
        raise _Refused(400, f"language {language!r} is not supported: python, sh or bash")
    if "\x00" in code:
        raise _Refused(400, "code must not contain NUL characters")
    if len(code.encode("utf-8")) > limits.code_bytes:
        raise _Refused(413, f"code is longer than {limits.code_bytes} bytes")
    return _Run(normalized, code, task_id)


async def _execute(request: web.Request) -> web.Response:
    settings = request.app[_SETTINGS]
    if not _authorized(request, settings.token):
        return _error(401, "missing or wrong bearer token")
    try:
        run = await _read_run(request, settings.limits)
        outcome, failure = await _run_in_its_task(request.app, run)
    except _Refused as refusal:
        return _error(refusal.status, str(refusal))
    _audit(request, run, outcome)
    if failure is not None:
        return _error(500, f"the run is over, but {failure}")
    answer: ExecuteResponse = {
        "exitCode": outcome.exit_code,
        "output": outcome.output,
        "timedOut": outcome.timed_out,
        "truncated": outcome.truncated,
        "durationSeconds": round(outcome.duration_seconds, 3),
    }
    return web.json_response(answer)


async def _run_in_its_task(
    app: web.Application, run: _Run
) -> tuple[RunOutcome, ProcessesSurvived | None]:
    """The run's outcome, and whether it left processes that could not be killed; or
    _Refused (nothing was run)."""
    slots, workspaces, runner = app[_SLOTS], app[_WORKSPACES], app[_RUNNER]
    if runner.survivors:
        # Fail closed: they could read this run's code and files.
        raise _Refused(503, str(ProcessesSurvived(runner.survivors)))
    # Checked and taken with no await in between, so the check cannot go stale.
    if slots.locked():
        concurrency = app[_SETTINGS].limits.concurrency
        raise _Refused(429, f"the sandbox is already running {concurrency} run(s)")
    # A run without a task is a task of its own, over when the run is.
    task_id = run.task_id or uuid.uuid4().hex
    async with slots:
        try:
            workdir = workspaces.enter(task_id)
        except TaskEnded:
            raise _Refused(409, f"task {task_id!r} has ended; its workspace is gone") from None
        try:
            return await runner.run(run.language, run.code, workdir), None
        except ProcessesSurvived as survived:
            if survived.outcome is None:  # (checked above too): nothing ran
                raise _Refused(503, str(survived)) from None
            return survived.outcome, survived
        finally:
            await workspaces.leave(task_id)
            if run.task_id is None:
                await workspaces.end(task_id)


def _audit(request: web.Request, run: _Run, outcome: RunOutcome) -> None:
    request.app[_AUDIT].code_execution(
        actor="sandbox",
        language=run.language,
        sha256=code_digest(run.code),
        exit_code=outcome.exit_code,
        duration_seconds=outcome.duration_seconds,
        timed_out=outcome.timed_out,
        task_id=run.task_id,
    )


async def _end_tasks(request: web.Request) -> web.Response:
    """DELETE /v1/workspaces[/<taskId>]: the task (or every task) has ended."""
    if not _authorized(request, request.app[_SETTINGS].token):
        return _error(401, "missing or wrong bearer token")
    workspaces = request.app[_WORKSPACES]
    task_id = request.match_info.get("task_id")
    if task_id is None:
        await workspaces.end_all()
    elif TASK_ID_RE.fullmatch(task_id):
        await workspaces.end(task_id)
    else:
        return _error(400, pattern_refusal("taskId", task_id, TASK_ID_RE))
    return web.Response(status=204)


async def _housekeeping(app: web.Application) -> AsyncIterator[None]:
    """Empties the workspace at start; reaps, now and then, what runs left (see runner.py)."""
    runner = app[_RUNNER]
    await app[_WORKSPACES].wipe()
    if not runner.become_subreaper():
        log.warning("could not become a child subreaper; orphans of runs go to PID 1")

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            await runner.sweep()

    task = asyncio.create_task(sweep_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_sandbox_app(settings: SandboxSettings, audit: AuditLog) -> web.Application:
    # Bodies are bounded before they are parsed; the code limit is checked again after.
    app = web.Application(client_max_size=settings.limits.code_bytes * 2 + 4096)
    app[_SETTINGS] = settings
    app[_RUNNER] = Runner(settings.limits)
    app[_SLOTS] = asyncio.Semaphore(settings.limits.concurrency)
    app[_AUDIT] = audit
    # Never as root: root's IPC objects outside a container are every root process's.
    wipe_ipc = settings.wipe_ipc and os.geteuid() != 0
    app[_WORKSPACES] = Workspaces(
        settings.workdir,
        keep=settings.keep_workspace,
        ipc=wipe_ipc,
        termination_log=settings.termination_log,
    )
    app.cleanup_ctx.append(_housekeeping)
    app.router.add_get(HEALTHZ_PATH, _healthz)
    app.router.add_post(EXECUTE_PATH, _execute)
    app.router.add_delete(WORKSPACES_PATH, _end_tasks)
    app.router.add_delete(WORKSPACES_PATH + "/{task_id}", _end_tasks)
    return app


def serve_sandbox(settings: SandboxSettings) -> None:
    if os.geteuid() == 0:
        log.warning(
            "running as root: RLIMIT_NPROC does not bind root, and IPC objects code leaves "
            "are not removed; run as a non-root user"
        )
    audit = AuditLog.open(settings.tenant, "-")
    log.info("sandbox for tenant %s on port %d", settings.tenant, settings.port)
    web.run_app(
        build_sandbox_app(settings, audit), host=settings.host, port=settings.port, print=None
    )
