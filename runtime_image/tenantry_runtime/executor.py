"""`SandboxCodeExecutor`: autogen-core's `CodeExecutor`, backed by the tenant's sandbox pod.

The runtime never runs code itself; it posts each block to the sandbox with the tenant's
token and gets back the exit code and output (the exchange is protocol.py's: this process
never loads the sandbox's server or runner). Blocks run in order and stop at the first
failure, like autogen's local command-line executor, so later blocks never run on top of a
broken earlier one.

Each run names its task (`taskId`), so the sandbox keeps one workspace per task: files last
from one run of a task to the next. `end_task` tells the sandbox a task is over, and its files
go (docs/runtime-contract.md); an end the sandbox did not get is sent again before the next run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock, CodeExecutor, CodeResult

from .audit import code_digest
from .protocol import (
    AUTHORIZATION,
    EXECUTE_PATH,
    HEALTHZ_PATH,
    WORKSPACES_PATH,
    ExecuteRequest,
    bearer,
    normalize_language,
)

# The sandbox enforces the time limit itself and then still has to answer; this is how much
# longer than the limit the runtime waits for that answer before giving up on it.
_ANSWER_GRACE_SECONDS = 10.0


class SandboxError(RuntimeError):
    """The sandbox could not run the code at all (unreachable, refused, busy)."""


@dataclass(frozen=True)
class SandboxRun:
    """One block as the sandbox ran it: what the audit log records."""

    language: str
    sha256: str
    exit_code: int
    duration_seconds: float
    timed_out: bool


@dataclass
class SandboxCodeResult(CodeResult):
    runs: list[SandboxRun] = field(default_factory=list)


class SandboxCodeExecutor(CodeExecutor):
    def __init__(self, url: str, token: str, timeout_seconds: float) -> None:
        self._url = url.rstrip("/")
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds + _ANSWER_GRACE_SECONDS)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[str] = set()  # tasks that ran code and have not ended
        self._unended: set[str] = set()  # ended tasks the sandbox has not heard of yet

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop, so start() stays optional.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={AUTHORIZATION: bearer(self._token)}, timeout=self._timeout
            )
        return self._session

    async def start(self) -> None:
        self._client()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def ping(self) -> bool:
        """Whether the sandbox answers its health check (for the runtime's /readyz)."""
        try:
            async with self._client().get(
                f"{self._url}{HEALTHZ_PATH}", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def end_task(self, task_id: str) -> None:
        """The task is over: the sandbox removes its files. Never raises; retried if it fails."""
        if task_id in self._tasks:
            self._tasks.discard(task_id)
            self._unended.add(task_id)
            await self._send_ends()

    async def _send_ends(self) -> None:
        for task_id in list(self._unended):
            try:
                async with self._client().delete(
                    f"{self._url}{WORKSPACES_PATH}/{task_id}",
                    timeout=aiohttp.ClientTimeout(total=_ANSWER_GRACE_SECONDS),
                ) as response:
                    if response.status == 204:
                        self._unended.discard(task_id)
            except (aiohttp.ClientError, TimeoutError):
                return  # the sandbox is not there now; the next run tries again

    async def _post(self, block: CodeBlock, task_id: str | None) -> dict[str, object]:
        payload: ExecuteRequest = {"language": block.language, "code": block.code}
        if task_id is not None:
            payload["taskId"] = task_id
            self._tasks.add(task_id)
        if self._unended:
            await self._send_ends()
        try:
            async with self._client().post(f"{self._url}{EXECUTE_PATH}", json=payload) as response:
                if response.status != 200:
                    detail = (await response.text())[:300]
                    raise SandboxError(f"the sandbox answered {response.status}: {detail}")
                body = await response.json()
        except aiohttp.ClientError as exc:
            raise SandboxError(f"the sandbox could not be reached: {exc}") from exc
        except ValueError as exc:
            raise SandboxError("the sandbox's answer is not JSON") from exc
        except TimeoutError as exc:
            raise SandboxError("the sandbox did not answer in time") from exc
        if not isinstance(body, dict):
            raise SandboxError("the sandbox answered something other than a JSON object")
        return body

    async def _run(self, block: CodeBlock, task_id: str | None) -> tuple[SandboxRun, str]:
        body = await self._post(block, task_id)
        try:
            run = SandboxRun(
                language=normalize_language(block.language) or block.language,
                sha256=code_digest(block.code),
                exit_code=int(str(body["exitCode"])),
                duration_seconds=float(str(body["durationSeconds"])),
                timed_out=body["timedOut"] is True,
            )
            return run, str(body["output"])
        except (KeyError, ValueError) as exc:
            raise SandboxError(f"the sandbox's answer is malformed ({exc!r})") from exc

    async def execute_code_blocks(
        self,
        code_blocks: list[CodeBlock],
        cancellation_token: CancellationToken,
        task_id: str | None = None,
    ) -> SandboxCodeResult:
        """Runs the blocks in `task_id`'s workspace (without a task, each in a fresh one)."""
        result = SandboxCodeResult(exit_code=0, output="")
        outputs: list[str] = []
        for block in code_blocks:
            if normalize_language(block.language) is None:
                # Refused here rather than by the sandbox: a reply naming some other language
                # is the model's mistake, reported back to it like any failed run.
                outputs.append(f"unsupported language {block.language!r}: use python, sh or bash")
                result.exit_code = 1
                break
            task = asyncio.ensure_future(self._run(block, task_id))
            cancellation_token.link_future(task)
            run, output = await task
            result.runs.append(run)
            outputs.append(output)
            result.exit_code = run.exit_code
            if run.exit_code != 0:
                break
        result.output = "\n".join(outputs)
        return result
