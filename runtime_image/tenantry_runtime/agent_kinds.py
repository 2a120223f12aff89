"""Agent kinds: what `spec.runtime.agents[].kind` names, found through package entry points.

A platform team's package, installed in an image built `FROM` the runtime image, registers
its kinds in one entry-point group (docs/agents.md walks through it):

    [project.entry-points."tenantry.agent_kinds"]
    lookup = "acme_agents:LOOKUP"

Each entry point names an `AgentKind`; its name is the kind's name. The kinds installed in the
image are the allowlist: a manifest picks a kind by name, never names a module, and only the
kinds a tenant's runtime.json names are loaded. Two packages registering one name make the
runtime refuse to start (which one would run is not a manifest's to decide).

A kind validates its own `config` with a pydantic model, and is handed an `AgentContext`:
the tenant (read-only), its agents and topic types, the model client, the sandbox executor,
the directories of the Secrets its config names, an audited way to call tools, and a runtime of
one task's own for agents of its own making (a team's) — never the tenant's runtime itself.
Its agents are registered by the runtime on the tenant's guarded runtime, subscribed to the
agent's one topic type; whatever they publish passes the tenant guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from autogen_core import CancellationToken, MessageContext, RoutedAgent, TopicId, event
from pydantic import BaseModel, ConfigDict

from .guard import task_runtime
from .messages import RESULT_TOPIC_TYPE, TaskRequest, TaskResult
from .refusals import ConfigError

if TYPE_CHECKING:
    from autogen_core.models import ChatCompletionClient

    from .audit import AuditLog
    from .executor import SandboxCodeExecutor
    from .guard import GuardedAgentRuntime
    from .sessions import SessionStore

ENTRY_POINT_GROUP = "tenantry.agent_kinds"

log = logging.getLogger(__name__)

T = TypeVar("T")


class NoConfig(BaseModel):
    """The config of a kind that takes none: an empty object, or none at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class AgentInfo:
    """One agent of the tenant, as every kind may see it: no config, no secrets."""

    name: str
    kind: str
    topic_type: str


@dataclass(frozen=True)
class AgentContext:
    """What the runtime hands a kind to build one agent with, and nothing more."""

    tenant: str
    name: str
    """This agent's name: its agent type, and its `AgentId`'s type."""
    topic_type: str
    """The one topic type this agent is subscribed to (the source is always the tenant)."""
    agents: tuple[AgentInfo, ...]
    """Every agent of the tenant, this one included."""
    topic_types: tuple[str, ...]
    system_message: str
    """The agent's `systemMessage` from the manifest (a default when it has none)."""
    model: ChatCompletionClient | None
    executor: SandboxCodeExecutor | None
    secret_dirs: Mapping[str, Path]
    """The directory of each Secret this agent's config names (by its name in spec.secrets)."""
    audit: AuditLog = field(repr=False)
    sessions: SessionStore | None = field(default=None, repr=False)
    """The tenant's session histories, for a kind that `keeps_sessions`, when the tenant has
    sessions; a `TaskRequest.session_id` names the one a task continues."""

    async def call_tool(
        self,
        tool: str,
        arguments: Mapping[str, Any],
        call: Callable[[], Awaitable[T]],
        task_id: str,
    ) -> T:
        """Run one tool call and audit it like a code run: the tool's name, a digest of the
        arguments (never the arguments), how long it took and how it ended."""
        digest = arguments_digest(arguments)
        started = time.monotonic()
        outcome: Literal["ok", "error"] = "error"
        try:
            result = await call()
            outcome = "ok"
            return result
        finally:
            self.record_tool_call(tool, digest, started, outcome, task_id)

    def record_tool_call(
        self,
        tool: str,
        digest: str,
        started: float,
        outcome: Literal["ok", "error", "refused"],
        task_id: str,
    ) -> None:
        """The audit record of one tool call of this agent (started: its time.monotonic())."""
        self.audit.tool_call(
            actor=f"{self.name}/{self.tenant}",
            tool=tool,
            arguments_sha256=digest,
            duration_seconds=time.monotonic() - started,
            outcome=outcome,
            task_id=task_id,
        )

    def task_runtime(self, task_id: str) -> AbstractAsyncContextManager[GuardedAgentRuntime]:
        """A fresh runtime for one task's own agents (`async with`), guarded for the tenant
        like the tenant's, every audit line naming `task_id`; once the block is left nothing
        of it runs or delivers any more (guard.task_runtime). What it hands back to the
        tenant goes through this agent's own publish, on the tenant's runtime."""
        return task_runtime(self.tenant, self.audit, task_id)


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """What a tool call's record holds of its arguments: the SHA-256 of their JSON, never the
    arguments. Arguments that are not plain JSON (keys of mixed types, cycles, objects) get the
    digest of a fixed marker: the call is still made, and still audited."""
    try:
        text = json.dumps(arguments, sort_keys=True)
    except (TypeError, ValueError, RecursionError):
        text = "<arguments that are not JSON>"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class AgentKind:
    """A kind of agent a manifest may name.

    `build` returns the factory the runtime registers the agent with (called once per topic
    source, that is once: the tenant). `secrets` tells which of the tenant's Secrets a config
    names; only those reach the agent. A kind that `answers_tasks` receives `TaskRequest`s
    posted to its topic type and publishes one `TaskResult` per task (see `TaskAgent`).
    """

    build: Callable[[AgentContext, Any], Callable[[], RoutedAgent]]
    config_model: type[BaseModel] = NoConfig
    description: str = ""
    answers_tasks: bool = False
    needs_model: bool = False
    needs_sandbox: bool = False
    keeps_sessions: bool = False
    """Whether its agents continue sessions (POST /v1/sessions/{id}/tasks reaches them only then)."""
    secrets: Callable[[Any], Iterable[str]] = field(default=lambda _config: ())


def installed() -> dict[str, EntryPoint]:
    """The kinds installed in this image, by name; refuses a name two packages register."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        other = found.get(point.name)
        if other is not None and other.value != point.value:
            raise ConfigError(
                f"agent kind {point.name!r} is registered twice in this image "
                f"({_origin(other)} and {_origin(point)}): uninstall one of the packages"
            )
        found[point.name] = point
    return found


def _origin(point: EntryPoint) -> str:
    package = point.dist.name if point.dist is not None else "an unknown package"
    return f"{point.value} from {package}"


def load(point: EntryPoint) -> AgentKind:
    """Import one kind's module (only when a tenant names it) and check what it registered."""
    try:
        kind = point.load()
    except Exception as exc:  # a broken package is the image's fault: say which
        raise ConfigError(
            f"agent kind {point.name!r} ({_origin(point)}) cannot be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(kind, AgentKind):
        raise ConfigError(
            f"agent kind {point.name!r} ({_origin(point)}) is a {type(kind).__name__}, "
            "not a tenantry_runtime.agent_kinds.AgentKind"
        )
    return kind


def describe(points: Mapping[str, EntryPoint]) -> list[dict[str, Any]]:
    """What `python -m tenantry_runtime kinds` prints: each kind, its package, its config's
    JSON schema, so that a platform team can check an image before a manifest names it."""
    described = []
    for name, point in sorted(points.items()):
        kind = load(point)
        described.append(
            {
                "kind": name,
                "package": point.dist.name if point.dist is not None else None,
                "entryPoint": point.value,
                "description": kind.description,
                "answersTasks": kind.answers_tasks,
                "needsModel": kind.needs_model,
                "needsSandbox": kind.needs_sandbox,
                "keepsSessions": kind.keeps_sessions,
                "configSchema": kind.config_model.model_json_schema(),
            }
        )
    return described


class TaskAgent(RoutedAgent):
    """The base of an agent that answers tasks: implement `answer`.

    It receives each `TaskRequest` posted to its topic type and publishes the answer (or the
    error) as the task's `TaskResult`, on the tenant's own result topic: where the waiting
    HTTP request finds it. A cancelled task (its caller gave up) publishes nothing.
    """

    @event
    async def on_task(self, message: TaskRequest, ctx: MessageContext) -> None:
        token = ctx.cancellation_token
        try:
            result = TaskResult(message.task_id, await self.answer(message, token))
        except asyncio.CancelledError:
            if not token.is_cancelled():
                raise
            return
        except Exception as exc:  # the task ends with an error its caller can read
            log.warning("agent %s failed task %s: %r", self.id.type, message.task_id, exc)
            result = TaskResult(message.task_id, "", error=f"the agent failed: {exc}"[:1024])
        topic = TopicId(RESULT_TOPIC_TYPE, self.id.key)
        await self.publish_message(result, topic, cancellation_token=token)

    async def answer(self, task: TaskRequest, cancellation_token: CancellationToken) -> str:
        raise NotImplementedError
