"""The agent kinds that ship with Tenantry, registered like any platform team's (pyproject.toml's
`tenantry.agent_kinds` entry points): `assistant` answers tasks with the model, `coder` runs the
code an assistant's reply holds in the tenant's sandbox."""

from __future__ import annotations

from collections.abc import Callable

from autogen_core import RoutedAgent

from .agent_kinds import AgentContext, AgentKind, NoConfig
from .agents import Assistant, Coder


def _assistant(context: AgentContext, _config: NoConfig) -> Callable[[], RoutedAgent]:
    coders = [agent for agent in context.agents if agent.kind == "coder"]
    code_topic = coders[0].topic_type if coders else None
    model = context.model
    assert model is not None  # the runtime refuses an assistant without a model
    sessions = context.sessions
    return lambda: Assistant(model, context.system_message, code_topic, sessions)


def _coder(context: AgentContext, _config: NoConfig) -> Callable[[], RoutedAgent]:
    executor = context.executor
    assert executor is not None  # the runtime refuses a coder without a sandbox
    return lambda: Coder(executor, context.audit)


ASSISTANT = AgentKind(
    build=_assistant,
    description="Answers tasks with the tenant's model; sends the code of a reply to the coder.",
    answers_tasks=True,
    needs_model=True,
    keeps_sessions=True,
)
CODER = AgentKind(
    build=_coder,
    description="Runs the code blocks it is sent in the tenant's sandbox.",
    needs_sandbox=True,
)
