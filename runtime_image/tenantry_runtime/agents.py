"""The agent kinds a tenant may declare, and how they are wired into the runtime.

A config names a kind, found among the kinds installed in the image (agent_kinds.py; the two
built-in kinds are in builtin_kinds.py, their agents here). No config value ever reaches
autogen's `load_component` (which imports whatever module a config names) or a `FunctionTool`
(whose config runs `exec`).

Every agent is registered by type and subscribed with a `TypeSubscription`, so the runtime
creates one instance per topic source: `AgentId(<name>, key=<tenant>)`. Agents address each
other by topic type only and take the source from their own key, so they never need (and
cannot pick) a tenant.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from autogen_core import (
    CancellationToken,
    MessageContext,
    RoutedAgent,
    TopicId,
    TypeSubscription,
    event,
)
from autogen_core.code_executor import CodeBlock
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    LLMMessage,
    ModelInfo,
    SystemMessage,
    UserMessage,
)

from .agent_kinds import AgentContext
from .audit import AuditLog
from .executor import SandboxCodeExecutor, SandboxError
from .guard import GuardedAgentRuntime
from .mcp_tools import McpTools, McpUnavailable
from .messages import RESULT_TOPIC_TYPE, CodeOutput, CodeRequest, TaskRequest, TaskResult
from .model_client import PLAIN_CHAT_MODEL, ModelClient, known_model_info
from .protocol import normalize_language
from .runtime_json import AgentConfig, ModelConfig, RuntimeConfig
from .sessions import SessionError, SessionStore

log = logging.getLogger(__name__)

MAX_CODE_RUNS = 5
"""Code blocks run per task, however many each reply holds; once they are spent, the model's
next reply is the answer, code or not. With the sandbox's cap on a run's output (64 KiB by
default), this bounds what code adds to the history the model is sent: every block of a reply
was run before, so one reply of MAX_REPLY_CHARS could ask for some 20,000 runs."""

COLLECTOR_TYPE = "tenantry.collector"

_CODE_HINT = (
    "To run code, reply with one fenced ```python or ```sh block; you will be sent its output "
    "and exit code. Reply without a code block to give your final answer."
)
MAX_REPLY_CHARS = 256 * 1024
"""The longest model reply a task takes; a longer one ends the task with an error (502).

It bounds what one reply costs: parsing it, keeping it in the task's history and sending that
history back to the model on every later turn."""

# A fence line: ``` and a language tag opens a block; ``` alone (spaces and tabs aside) closes it.
_OPENING_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]+)[ \t]*")
_CLOSING_FENCE_RE = re.compile(r"```[ \t]*")


def _fenced_blocks(text: str) -> Iterator[tuple[str, str]]:
    """(language tag, code) of each fenced block, in one pass over the lines of `text`.

    A block opens on a line that is an opening fence followed by a newline, and ends at the
    first closing-fence line after it (a block never closed is no block). This is what the
    regex `^```[ \t]*(tag)[ \t]*\n(.*?)^```[ \t]*$` (multiline, dotall) matched, in linear
    time: that regex searched to the end of the text from every opening fence, so a reply of
    many fences that never close took quadratic time on the event loop.
    """
    tag: str | None = None  # the open block's tag; None between blocks
    code_start = line_start = 0
    while True:
        newline = text.find("\n", line_start)
        line = text[line_start:] if newline < 0 else text[line_start:newline]
        if line.startswith("```"):
            if tag is None:
                opening = _OPENING_FENCE_RE.fullmatch(line)
                if opening is not None and newline >= 0:
                    tag, code_start = opening.group(1), newline + 1
            elif _CLOSING_FENCE_RE.fullmatch(line):
                yield tag, text[code_start:line_start]
                tag = None
        if newline < 0:
            return
        line_start = newline + 1


def extract_code_blocks(text: str) -> list[CodeBlock]:
    """The fenced python and sh/bash blocks of a reply, in order; other fences are prose."""
    blocks = []
    for tag, code in _fenced_blocks(text):
        language = normalize_language(tag)
        if language is not None:
            blocks.append(CodeBlock(code=code, language=language))
    return blocks


def format_code_output(output: CodeOutput) -> str:
    """How a run's result is put to the model."""
    return f"Output of the code (exit code {output.exit_code}):\n{output.output}"


def build_model_client(
    model: ModelConfig, api_key: str, timeout_seconds: float, *, function_calling: bool = False
) -> ChatCompletionClient:
    """The tenant's model client (model_client.py). `function_calling`: an agent offers the
    model tools (an assistant with MCP tools), so a model name autogen does not know is taken to
    call functions (autogen refuses tools to a model that does not claim it)."""
    info = known_model_info(model.model) or ModelInfo(
        **{**PLAIN_CHAT_MODEL, "function_calling": function_calling}
    )
    return ModelClient(model.model, model.base_url, api_key, timeout_seconds, info)


class PendingTasks:
    """Tasks whose HTTP request is waiting: their result futures and cancellation tokens.

    A task's token travels with every message of the task (each agent publishes with the
    token of the message it handles), so cancelling it stops the task's model and sandbox
    calls wherever they are, and lets agents drop the task's state.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[asyncio.Future[TaskResult], CancellationToken]] = {}

    def __len__(self) -> int:
        """Tasks in flight: expected and not yet forgotten."""
        return len(self._waiting)

    def expect(self, task_id: str, token: CancellationToken) -> asyncio.Future[TaskResult]:
        future: asyncio.Future[TaskResult] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = (future, token)
        return future

    def forget(self, task_id: str) -> None:
        """Nobody waits for this task any more: whatever still runs for it is cancelled."""
        entry = self._waiting.pop(task_id, None)
        if entry is not None:
            entry[1].cancel()

    def cancel_all(self) -> None:
        for task_id in list(self._waiting):
            self.forget(task_id)

    def resolve(self, result: TaskResult) -> None:
        # A result that comes after its request gave up finds nobody here, and is dropped.
        entry = self._waiting.get(result.task_id)
        if entry is not None and not entry[0].done():
            entry[0].set_result(result)


class ResultCollector(RoutedAgent):
    """Receives every TaskResult of the tenant and hands it to the waiting request."""

    def __init__(self, pending: PendingTasks) -> None:
        super().__init__("Hands task results back to the HTTP API.")
        self._pending = pending

    @event
    async def on_result(self, message: TaskResult, ctx: MessageContext) -> None:
        self._pending.resolve(message)


@dataclass
class _Conversation:
    history: list[LLMMessage]
    topic_type: str
    """Where the task came in, and where the coder sends its output back."""
    token: CancellationToken
    code_runs: int = 0  # blocks run so far (MAX_CODE_RUNS)
    sent: int = 0  # blocks of the request in flight
    not_run: int = 0  # blocks of the last reply with code left out for the budget
    session_id: str | None = None
    past: list[LLMMessage] | None = None
    """The session's stored history when the task began: what the answer is appended to."""


class Assistant(RoutedAgent):
    """Answers a task with the model, running the reply's code through the coder if any."""

    def __init__(
        self,
        model: ChatCompletionClient,
        system_message: str,
        code_topic_type: str | None,
        sessions: SessionStore | None = None,
        tools: McpTools | None = None,
    ) -> None:
        super().__init__("Answers tasks with a language model.")
        self._model = model
        self._sessions = sessions
        self._tools = tools
        self._code_topic_type = code_topic_type
        prompt = f"{system_message}\n\n{_CODE_HINT}" if code_topic_type else system_message
        self._system = SystemMessage(content=prompt)
        self._tasks: dict[str, _Conversation] = {}

    @event
    async def on_task(self, message: TaskRequest, ctx: MessageContext) -> None:
        assert ctx.topic_id is not None
        task_id, token = message.task_id, ctx.cancellation_token
        session_id, past = message.session_id, None
        if session_id is not None:
            if self._sessions is None:  # the server refuses these first
                await self._publish_result(
                    TaskResult(task_id, "", "sessions are not enabled"), token
                )
                return
            try:
                past = await self._sessions.load(session_id)
            except SessionError as exc:
                await self._publish_result(TaskResult(task_id, "", str(exc)), token)
                return
            if token.is_cancelled():  # its caller gave up while the history was read
                self._sessions.release(session_id)
                return
        # The session's own history, and nothing of any other: each task builds its history
        # from its session's file alone, never from anything this (shared) agent keeps.
        self._tasks[task_id] = _Conversation(
            history=[
                self._system,
                *(past or ()),
                UserMessage(content=message.content, source="user"),
            ],
            topic_type=ctx.topic_id.type,
            token=token,
            session_id=session_id,
            past=past,
        )

        def forget() -> None:
            # A cancelled task (its caller timed out or went away) leaves no state behind.
            self._end(self._tasks.pop(task_id, None))

        token.add_callback(forget)
        await self._next_turn(task_id)

    @event
    async def on_code_output(self, message: CodeOutput, ctx: MessageContext) -> None:
        conversation = self._tasks.get(message.task_id)
        if conversation is None:
            return
        if message.error is not None:
            await self._finish(message.task_id, "", error=f"code execution failed: {message.error}")
            return
        # Only the blocks that ran count: the coder stops at the first that fails.
        ran = conversation.sent if message.runs is None else min(message.runs, conversation.sent)
        conversation.code_runs += ran
        content = format_code_output(message)
        if conversation.not_run:
            content += (
                f"\n[tenantry: {conversation.not_run} more code block(s) of the reply were not "
                f"run: at most {MAX_CODE_RUNS} code runs per task]"
            )
        conversation.history.append(UserMessage(content=content, source="coder"))
        await self._next_turn(message.task_id)

    async def _next_turn(self, task_id: str) -> None:
        conversation = self._tasks[task_id]
        history, token = conversation.history, conversation.token
        try:
            if self._tools is None:
                created = await self._model.create(history, cancellation_token=token)
            else:  # the model's function calls are run (and audited) before it answers
                created = await self._tools.complete(self._model, history, task_id, token)
        except asyncio.CancelledError:
            if not conversation.token.is_cancelled():
                raise
            return  # the task was cancelled (see on_task), not this handler: end quietly
        except McpUnavailable as exc:
            log.warning("the MCP tools of task %s failed: %s", task_id, exc)
            await self._finish(task_id, "", error=str(exc))
            return
        except Exception as exc:  # any model failure ends the task with a readable error
            log.warning("model call for task %s failed: %s", task_id, exc)
            await self._finish(task_id, "", error=f"the model call failed: {exc}")
            return
        reply = created.content
        if not isinstance(reply, str):
            await self._finish(task_id, "", error="the model replied with a tool call")
            return
        if len(reply) > MAX_REPLY_CHARS:
            error = (
                f"the model's reply has {len(reply)} characters, more than the runtime takes "
                f"({MAX_REPLY_CHARS}); the task is refused"
            )
            await self._finish(task_id, "", error=error)
            return
        conversation.history.append(AssistantMessage(content=reply, source=self.id.type))
        blocks = extract_code_blocks(reply)
        left = MAX_CODE_RUNS - conversation.code_runs
        if not blocks or self._code_topic_type is None or left <= 0:
            await self._finish(task_id, reply)
            return
        conversation.sent = min(len(blocks), left)
        conversation.not_run = max(0, len(blocks) - left)
        request = CodeRequest(task_id, blocks[:left], reply_topic_type=conversation.topic_type)
        topic = TopicId(self._code_topic_type, self.id.key)
        await self.publish_message(request, topic, cancellation_token=conversation.token)

    async def _finish(self, task_id: str, content: str, error: str | None = None) -> None:
        conversation = self._tasks.pop(task_id, None)
        if conversation is None:
            return
        try:
            if error is None and conversation.session_id is not None:
                # Saved before the result is published: an answer the caller gets is on disk.
                # A turn nobody waits for any more (timed out, cancelled) is not saved.
                assert self._sessions is not None and conversation.past is not None
                exchange = [conversation.history[len(conversation.past) + 1]]  # the task
                exchange.append(AssistantMessage(content=content, source=self.id.type))
                messages = conversation.past + exchange
                try:
                    saved = await self._sessions.save(
                        conversation.session_id, messages, conversation.token.is_cancelled
                    )
                except SessionError as exc:
                    content, error = "", str(exc)
                else:
                    if not saved:
                        return
        finally:
            self._end(conversation)
        await self._publish_result(TaskResult(task_id, content, error), conversation.token)

    def _end(self, conversation: _Conversation | None) -> None:
        """A task's conversation is over: whoever took it from `_tasks` ends it, once."""
        if conversation is not None and conversation.session_id is not None:
            assert self._sessions is not None
            self._sessions.release(conversation.session_id)

    async def _publish_result(self, result: TaskResult, token: CancellationToken) -> None:
        topic = TopicId(RESULT_TOPIC_TYPE, self.id.key)
        await self.publish_message(result, topic, cancellation_token=token)


class Coder(RoutedAgent):
    """Runs the code blocks it is sent in the tenant's sandbox and publishes the outcome."""

    def __init__(self, executor: SandboxCodeExecutor, audit: AuditLog) -> None:
        super().__init__("Runs code blocks in the tenant's sandbox.")
        self._executor = executor
        self._audit = audit

    @event
    async def on_code_request(self, message: CodeRequest, ctx: MessageContext) -> None:
        try:
            result = await self._executor.execute_code_blocks(
                message.code_blocks, ctx.cancellation_token, task_id=message.task_id
            )
        except asyncio.CancelledError:
            if not ctx.cancellation_token.is_cancelled():
                raise
            return  # the task was cancelled, and the sandbox call with it
        except SandboxError as exc:
            reply = CodeOutput(message.task_id, exit_code=-1, output="", error=str(exc))
        else:
            for run in result.runs:
                self._audit.code_execution(
                    actor=str(self.id),
                    language=run.language,
                    sha256=run.sha256,
                    exit_code=run.exit_code,
                    duration_seconds=run.duration_seconds,
                    timed_out=run.timed_out,
                    task_id=message.task_id,
                )
            reply = CodeOutput(
                message.task_id, result.exit_code, result.output, runs=len(result.runs)
            )
        topic = TopicId(message.reply_topic_type, self.id.key)
        await self.publish_message(reply, topic, cancellation_token=ctx.cancellation_token)


@dataclass(frozen=True)
class Dependencies:
    """What agents may be given: built once by the server from config and secrets."""

    audit: AuditLog
    pending: PendingTasks
    model: ChatCompletionClient | None = None
    executor: SandboxCodeExecutor | None = None
    sessions: SessionStore | None = None


def agent_context(agent: AgentConfig, config: RuntimeConfig, deps: Dependencies) -> AgentContext:
    """What one agent's kind is handed: read-only facts, the clients it needs, and the
    directories of the Secrets its own config names (only those)."""
    assert agent.spec is not None and agent.settings is not None  # parse_runtime_config did
    named = tuple(agent.spec.secrets(agent.settings))
    secrets_dir = config.secrets_dir
    return AgentContext(
        tenant=config.tenant,
        name=agent.name,
        topic_type=agent.topic_type,
        agents=tuple(other.info for other in config.agents),
        topic_types=config.topic_types,
        system_message=agent.system_message,
        model=deps.model if agent.spec.needs_model else None,
        executor=deps.executor if agent.spec.needs_sandbox else None,
        secret_dirs={name: secrets_dir / name for name in named} if secrets_dir else {},
        audit=deps.audit,
        sessions=deps.sessions if agent.spec.keeps_sessions else None,
    )


async def _register(
    runtime: GuardedAgentRuntime,
    agent_type: str,
    topic_type: str,
    factory: Callable[[], RoutedAgent],
) -> None:
    # Registered without autogen's class and direct-message subscriptions: the one way to
    # reach an agent is the tenant's topic of its type. Registered through the base class on
    # purpose: no message serializers get added, so autogen's per-message event logging
    # (which serializes eagerly, even when nothing listens) stays cheap and never copies
    # task content into log payloads.
    await RoutedAgent.register(
        runtime,
        agent_type,
        factory,
        skip_class_subscriptions=True,
        skip_direct_message_subscription=True,
    )
    await runtime.add_subscription(TypeSubscription(topic_type, agent_type))


async def register_agents(
    runtime: GuardedAgentRuntime, config: RuntimeConfig, deps: Dependencies
) -> None:
    pending = deps.pending
    await _register(runtime, COLLECTOR_TYPE, RESULT_TOPIC_TYPE, lambda: ResultCollector(pending))
    for agent in config.agents:
        assert agent.spec is not None and agent.settings is not None  # parse_runtime_config did
        factory = agent.spec.build(agent_context(agent, config, deps), agent.settings)
        await _register(runtime, agent.name, agent.topic_type, factory)


__all__ = [
    "MAX_REPLY_CHARS",
    "Assistant",
    "Coder",
    "Dependencies",
    "PendingTasks",
    "ResultCollector",
    "build_model_client",
    "extract_code_blocks",
    "register_agents",
]
