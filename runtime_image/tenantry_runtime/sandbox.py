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
header and bodies are protocol.py's, shared with the runtime's client (executor.py); the HTTP
server under the handlers, and what it holds against, is sandbox_http.py's.

On SIGTERM (the kubelet stopping the pod) the server takes no more requests (503) and waits
for the runs in flight to end, each by its time limit at the latest, and answers and audits
them before it exits: a run cut short would go unaudited. The pod's grace period, rendered by
the operator from the same time limit, outlasts that wait (docs/runtime-contract.md).

Should a process a run left resist being killed (runner.py), the sandbox fails closed: that
run is answered 500, later runs 503 without running, and `/healthz` 503 (so the kubelet
restarts the container, which ends every process in it), until a sweep finds it gone.

The server holds no model credentials and runs code with an environment built from nothing.
Its token, the one secret it holds, reaches it in its environment (never a file: runs have the
server's uid and could read one) and the server makes itself undumpable before any run, so no
run reads it from /proc either; with it, code could ask for runs of its own that no run owns.
What it cannot contain on its own (rlimits are per process, RLIMIT_NPROC per user, the
pod's /tmp) is left to the pod around it: its own container, uid, PID and memory limits, no
network. See docs/runtime.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

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
from .refusals import ConfigError, pattern_refusal
from .runner import ProcessesSurvived, Runner, RunOutcome
from .sandbox_http import (
    Handler,
    HTTPServer,
    Refused,
    Request,
    Response,
    error_response,
    json_response,
)
from .sandbox_settings import TOKEN_ENV, SandboxLimits, SandboxSettings
from .workspace import TaskEnded, Workspaces

log = logging.getLogger(__name__)

_SWEEP_SECONDS = 1.0
STOP_MARGIN_SECONDS = 30.0
"""How long beyond the run time limit a stopping server waits for the requests in flight: the
rest of a run's request (its body within sandbox_http.REQUEST_SECONDS of its first byte), the
kill and sweep of what the run left and the drain of its output (runner.py: 5 s, then 2 s),
then its answer, taken within REQUEST_SECONDS. Its audit line is written before the answer.
The operator gives the pod this, the limit and a moment to exit as its grace period."""


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")[1:])


_HEALTHZ, _EXECUTE, _WORKSPACES = map(_segments, (HEALTHZ_PATH, EXECUTE_PATH, WORKSPACES_PATH))


def body_limit(limits: SandboxLimits) -> int:
    """The longest body of a request: the code twice over (JSON escapes) and the rest of the
    object. What aiohttp's `client_max_size` was set to; the code limit is checked again after."""
    return limits.code_bytes * 2 + 4096


def _authorized(request: Request, token: str) -> bool:
    scheme, _, presented = (request.header(AUTHORIZATION.lower().encode()) or b"").partition(b" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a header may hold any byte.
    return scheme.lower() == BEARER.lower().encode() and hmac.compare_digest(
        presented.strip(), token.encode()
    )


@dataclass(frozen=True)
class _Run:
    language: str  # normalized
    code: str
    task_id: str | None


def _parse_run(raw: bytes, limits: SandboxLimits) -> _Run:
    """The run a request's body asks for, or Refused saying what is wrong."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to parse
        body = None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    code, language, task_id = body.get("code"), body.get("language"), body.get("taskId")
    if not isinstance(code, str) or not isinstance(language, str):
        raise Refused(400, "'code' and 'language' must be strings")
    if task_id is not None and not (isinstance(task_id, str) and TASK_ID_RE.fullmatch(task_id)):
        raise Refused(400, pattern_refusal("taskId", task_id, TASK_ID_RE))
    normalized = normalize_language(language)
    if normalized is None:
        raise Refused(400, f"language {language!r} is not supported: python, sh or bash")
    if "\x00" in code:
        raise Refused(400, "code must not contain NUL characters")
    try:
        encoded = code.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800"): valid JSON, but no text
        raise Refused(400, "code must be valid Unicode (no lone surrogates)") from None
    if len(encoded) > limits.code_bytes:
        raise Refused(413, f"code is longer than {limits.code_bytes} bytes")
    return _Run(normalized, code, task_id)


_UNAUTHORIZED = error_response(401, "missing or wrong bearer token")


@dataclass
class _Sandbox:
    """The server's state, and its handlers: plain functions of a request."""

    settings: SandboxSettings
    audit: AuditLog
    runner: Runner
    workspaces: Workspaces
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.settings.limits.concurrency)

    def route(self, path: tuple[str, ...]) -> Mapping[str, Handler] | None:
        if path == _HEALTHZ:
            return {"GET": self.healthz, "HEAD": self.healthz}
        if path == _EXECUTE:
            return {"POST": self.execute}
        if path == _WORKSPACES or (path[:-1] == _WORKSPACES and path[-1]):
            return {"DELETE": self.end_tasks}
        return None

    async def healthz(self, request: Request) -> Response:
        survivors = self.runner.survivors
        if survivors:
            # Not healthy: the kubelet restarts the container, and every process in it ends.
            error = f"{len(survivors)} process(es) left by runs could not be killed"
            return json_response({"status": "unclean", "error": error}, 503)
        return json_response({"status": "ok"})

    async def execute(self, request: Request) -> Response:
        if not _authorized(request, self.settings.token):
            return _UNAUTHORIZED  # before reading the body
        limits = self.settings.limits
        run = _parse_run(await request.body(body_limit(limits)), limits)
        outcome, failure = await self._run_in_its_task(run)
        self._audit(run, outcome)
        if failure is not None:
            return error_response(500, f"the run is over, but {failure}")
        answer: ExecuteResponse = {
            "exitCode": outcome.exit_code,
            "output": outcome.output,
            "timedOut": outcome.timed_out,
            "truncated": outcome.truncated,
            "durationSeconds": round(outcome.duration_seconds, 3),
        }
        return json_response(answer)

    async def _run_in_its_task(self, run: _Run) -> tuple[RunOutcome, ProcessesSurvived | None]:
        """The run's outcome, and whether it left processes that could not be killed; or
        Refused (nothing was run)."""
        slots, workspaces, runner = self.slots, self.workspaces, self.runner
        if runner.survivors:
            # Fail closed: they could read this run's code and files.
            raise Refused(503, str(ProcessesSurvived(runner.survivors)))
        # Checked and taken with no await in between, so the check cannot go stale.
        if slots.locked():
            concurrency = self.settings.limits.concurrency
            raise Refused(429, f"the sandbox is already running {concurrency} run(s)")
        # A run without a task is a task of its own, over when the run is.
        task_id = run.task_id or uuid.uuid4().hex
        async with slots:
            try:
                workdir = workspaces.enter(task_id)
            except TaskEnded:
                raise Refused(409, f"task {task_id!r} has ended; its workspace is gone") from None
            try:
                return await runner.run(run.language, run.code, workdir), None
            except ProcessesSurvived as survived:
                if survived.outcome is None:  # (checked above too): nothing ran
                    raise Refused(503, str(survived)) from None
                return survived.outcome, survived
            finally:
                await workspaces.leave(task_id)
                if run.task_id is None:
                    await workspaces.end(task_id)

    def _audit(self, run: _Run, outcome: RunOutcome) -> None:
        self.audit.code_execution(
            actor="sandbox",
            language=run.language,
            sha256=code_digest(run.code),
            exit_code=outcome.exit_code,
            duration_seconds=outcome.duration_seconds,
            timed_out=outcome.timed_out,
            task_id=run.task_id,
        )

    async def end_tasks(self, request: Request) -> Response:
        """DELETE /v1/workspaces[/<taskId>]: the task (or every task) has ended."""
        if not _authorized(request, self.settings.token):
            return _UNAUTHORIZED
        if request.path == _WORKSPACES:
            await self.workspaces.end_all()
        elif TASK_ID_RE.fullmatch(task_id := request.path[-1]):
            await self.workspaces.end(task_id)
        else:
            return error_response(400, pattern_refusal("taskId", task_id, TASK_ID_RE))
        return Response(204)


@contextlib.asynccontextmanager
async def _housekeeping(sandbox: _Sandbox) -> AsyncIterator[None]:
    """Empties the workspace at start; reaps, now and then, what runs left (see runner.py)."""
    runner = sandbox.runner
    await sandbox.workspaces.wipe()
    if not runner.become_subreaper():
        log.warning("could not become a child subreaper; orphans of runs go to PID 1")

    async def sweep_forever() -> None:
        while True:
            await asyncio.sleep(_SWEEP_SECONDS)
            await runner.sweep()

    task = asyncio.create_task(sweep_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _serve(settings: SandboxSettings, audit: AuditLog) -> None:
    # Never as root: root's IPC objects outside a container are every root process's.
    wipe_ipc = settings.wipe_ipc and os.geteuid() != 0
    workspaces = Workspaces(
        settings.workdir,
        keep=settings.keep_workspace,
        ipc=wipe_ipc,
        termination_log=settings.termination_log,
    )
    sandbox = _Sandbox(settings, audit, Runner(settings.limits), workspaces)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the kubelet's stop, and ^C
        loop.add_signal_handler(signum, stop.set)
    async with _housekeeping(sandbox):
        await HTTPServer(sandbox.route).serve(
            settings.host,
            settings.port,
            stop,
            shutdown_seconds=settings.limits.timeout_seconds + STOP_MARGIN_SECONDS,
        )


def serve_sandbox(settings: SandboxSettings) -> None:
    # Before any run: the token must be out of their reach (docs/security.md). The kubelet put
    # it in this process's environment, which /proc shows to every process of its uid.
    if not Runner.close_to_runs():
        raise ConfigError(
            "cannot make the sandbox server undumpable (prctl PR_SET_DUMPABLE): its runs could "
            "read its token; the sandbox needs Linux"
        )
    os.environ.pop(TOKEN_ENV, None)
    if os.geteuid() == 0:
        log.warning(
            "running as root: RLIMIT_NPROC does not bind root, and IPC objects code leaves "
            "are not removed; run as a non-root user"
        )
    audit = AuditLog.open(settings.tenant, "-")
    log.info("sandbox for tenant %s on port %d", settings.tenant, settings.port)
    asyncio.run(_serve(settings, audit))
