"""The `team` kind: an AgentChat group chat of assistants answers each task, inside the guard.

Only this module imports autogen-agentchat, and the runtime imports it only when a tenant's
runtime.json names a `team` agent (agent kinds are loaded by name: agent_kinds.py).

An AgentChat team names every agent key and topic source after its own id, a uuid it draws
when it is built, so on the tenant's guarded runtime its very first message is dropped
(docs/design/agentchat-teams.md has the evidence). Each task therefore gets, here:

- a fresh team of fresh `AssistantAgent`s on the tenant's model client, with no tools, memory
  or nested team (a team as participant would build a runtime of its own, unguarded);
- the team's id set to the tenant before its first run, so every key and source it uses is the
  tenant's (its topic types keep the uuid, which tells runs apart in the audit);
- a runtime of the task's own (`AgentContext.task_runtime`): guarded for the tenant, every
  audit line naming the task, and stopped with nothing left running once the run is over;
- the last participant's text as the task's answer, published as the `TaskResult` on the
  tenant's runtime by `TaskAgent`, through the tenant's guard. Nothing else leaves the team.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal, Self

from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import ChatAgent, TerminationCondition
from autogen_agentchat.conditions import MaxMessageTermination, TextMentionTermination
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, StopMessage
from autogen_agentchat.teams import BaseGroupChat, RoundRobinGroupChat, SelectorGroupChat
from autogen_core import AgentRuntime, CancellationToken, RoutedAgent
from autogen_core.models import ChatCompletionClient
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .agent_kinds import AgentContext, AgentKind, TaskAgent
from .messages import TaskRequest

log = logging.getLogger(__name__)

MAX_PARTICIPANTS = 8
MAX_TURNS = 32
"""Replies of participants per task, whatever the config says: a team whose termination never
comes (a text no model says) still ends, and its model calls are bounded."""
MAX_NAME_CHARS = 63
MAX_TEXT_CHARS = 32 * 1024
"""The longest system message or description a participant takes."""

RESERVED_NAMES = frozenset(
    {
        # The source of the task's own message: a participant of that name would be taken for
        # the caller (by the selector's transcript, and by the answer this kind returns).
        "user",
        # A group chat derives its topic types as "<name>_<team id>": a participant named
        # group_topic or output_topic gets the team's broadcast or output topic as its own
        # (refused at start, or silently misrouted), one named like a manager gets its type.
        "group_topic",
        "output_topic",
        "RoundRobinGroupChatManager",
        "SelectorGroupChatManager",
    }
)


def _is_name(value: str) -> bool:
    # A Python identifier (AgentChat refuses others), ASCII only: a name becomes a topic type,
    # an agent type and the `name` of the model's messages, which each allow less than Python.
    return len(value) <= MAX_NAME_CHARS and value.isascii() and value.isidentifier()


class _Strict(BaseModel):
    # Fields are camelCase in the manifest, as every other field of it is.
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel)


class ParticipantConfig(_Strict):
    name: str = Field(
        description="The participant's name, unique in the team: ASCII letters, digits and '_', "
        f"not starting with a digit, at most {MAX_NAME_CHARS} characters; not one of "
        f"{', '.join(sorted(RESERVED_NAMES))}."
    )
    system_message: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="The participant's system message; the agent's systemMessage when unset.",
    )
    description: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="What the participant does: what a selector team's model picks speakers by.",
    )

    @field_validator("name")
    @classmethod
    def _usable_name(cls, name: str) -> str:
        if not _is_name(name):
            raise PydanticCustomError(
                "participant_name",
                "must be ASCII letters, digits and '_', not starting with a digit, "
                "at most {limit} characters",
                {"limit": MAX_NAME_CHARS},
            )
        if name in RESERVED_NAMES:
            raise PydanticCustomError(
                "reserved_participant_name",
                "'{name}' is reserved by AgentChat; choose another name",
                {"name": name},
            )
        return name


class TerminationConfig(_Strict):
    max_messages: int | None = Field(
        None,
        ge=2,
        le=MAX_TURNS + 1,
        description="Stop once the conversation has this many messages, the task included.",
    )
    text_mention: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Stop once a participant's reply contains this text.",
    )

    @model_validator(mode="after")
    def _some_condition(self) -> Self:
        if self.max_messages is None and self.text_mention is None:
            raise PydanticCustomError(
                "no_termination", "set maxMessages, textMention or both: a team needs a way to end"
            )
        return self


class TeamConfig(_Strict):
    """What a manifest's `config` says for an agent of kind `team`."""

    team: Literal["round_robin", "selector"] = Field(
        description="round_robin: participants speak in turn; selector: the tenant's model "
        "picks the next speaker by the participants' descriptions."
    )
    participants: list[ParticipantConfig] = Field(
        min_length=1, max_length=MAX_PARTICIPANTS, description="The team's assistants."
    )
    termination: TerminationConfig = Field(
        description=f"When the team stops (at most {MAX_TURNS} replies in any case)."
    )

    @model_validator(mode="after")
    def _a_usable_team(self) -> Self:
        names = [participant.name for participant in self.participants]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise PydanticCustomError(
                "duplicate_participants",
                "participant names must be unique; given more than once: {names}",
                {"names": ", ".join(twice)},
            )
        if self.team == "selector" and len(names) < 2:
            raise PydanticCustomError(
                "selector_too_small", "a selector team needs at least 2 participants"
            )
        return self


Participants = Callable[[TeamConfig, ChatCompletionClient, str], Sequence[ChatAgent]]
"""Builds a task's participants from the config, the model and the default system message."""


def assistants(
    config: TeamConfig, model: ChatCompletionClient, system_message: str
) -> list[ChatAgent]:
    """The team's participants for one task: new assistants, each with a context of its own,
    and no tools, memory or workbench (nothing they could call but the model)."""
    return [
        AssistantAgent(
            participant.name,
            model_client=model,
            system_message=participant.system_message or system_message,
            description=participant.description or f"The participant {participant.name}.",
        )
        for participant in config.participants
    ]


def _termination(config: TerminationConfig, names: list[str]) -> TerminationCondition:
    conditions: list[TerminationCondition] = []
    if config.max_messages is not None:
        conditions.append(MaxMessageTermination(config.max_messages))
    if config.text_mention is not None:
        # Participants' replies only: a caller writing the text in a task does not end it.
        conditions.append(TextMentionTermination(config.text_mention, sources=names))
    condition = conditions[0]
    for other in conditions[1:]:
        condition = condition | other
    return condition


def build_team(
    config: TeamConfig,
    model: ChatCompletionClient,
    participants: Sequence[ChatAgent],
    runtime: AgentRuntime,
) -> BaseGroupChat:
    names = [participant.name for participant in participants]
    termination = _termination(config.termination, names)
    members = list(participants)
    if config.team == "selector":
        return SelectorGroupChat(
            members,  # type: ignore[arg-type]  # a list of ChatAgent is a list of ChatAgent | Team
            model_client=model,
            termination_condition=termination,
            max_turns=MAX_TURNS,
            runtime=runtime,
        )
    return RoundRobinGroupChat(
        members,  # type: ignore[arg-type]
        termination_condition=termination,
        max_turns=MAX_TURNS,
        runtime=runtime,
    )


def last_answer(messages: Sequence[BaseAgentEvent | BaseChatMessage], names: set[str]) -> str:
    """The text of the last message a participant said: the task's answer."""
    for message in reversed(messages):
        if (
            isinstance(message, BaseChatMessage)
            and not isinstance(message, StopMessage)
            and message.source in names
        ):
            return message.to_text()
    raise TeamFailed("the team stopped before any participant replied")


class TeamFailed(RuntimeError):
    """The run ended with an error, or without an answer."""


async def run_team(
    context: AgentContext,
    config: TeamConfig,
    task: TaskRequest,
    token: CancellationToken,
    participants: Participants = assistants,
) -> str:
    """Run one task with a fresh team on a runtime of the task's own; its answer."""
    model = context.model
    assert model is not None  # the runtime refuses a team without a model (needs_model)
    members = participants(config, model, context.system_message)
    async with context.task_runtime(task.task_id) as runtime:
        team = build_team(config, model, members, runtime)
        # The team id is the key of every agent the team registers and the source of every
        # topic it publishes to: the tenant's, so the guard admits them. A private attribute
        # of AgentChat 0.7.5, read by its first run only (when it registers its agents):
        # tests/runtime/test_teams.py fails if an upgrade stops honouring it.
        if team._initialized:  # never: the team is new (a check that survives python -O)
            raise TeamFailed("the team was initialised before its id was set")
        team._team_id = context.tenant
        try:
            result = await team.run(task=task.content, cancellation_token=token)
        except RuntimeError as exc:
            # AgentChat re-raises a participant's error as text with its traceback appended:
            # the caller gets the error, the traceback stays out of the answer.
            raise TeamFailed(str(exc).split("\nTraceback:", 1)[0]) from None
    return last_answer(result.messages, {member.name for member in members})


class TeamAgent(TaskAgent):
    """Answers each task it receives with a team of its own for that task (run_team)."""

    def __init__(self, context: AgentContext, config: TeamConfig) -> None:
        super().__init__(f"Answers tasks with a {config.team} team of assistants.")
        self._context = context
        self._config = config

    async def answer(self, task: TaskRequest, cancellation_token: CancellationToken) -> str:
        return await run_team(self._context, self._config, task, cancellation_token)


def _build(context: AgentContext, config: TeamConfig) -> Callable[[], RoutedAgent]:
    return lambda: TeamAgent(context, config)


TEAM = AgentKind(
    build=_build,
    config_model=TeamConfig,
    description="Answers tasks with an AgentChat team (round robin or selector) of assistants "
    "on the tenant's model, each task on a guarded runtime of its own.",
    answers_tasks=True,
    needs_model=True,
)
