"""The agent kinds that ship with Tenantry, registered like any platform team's (pyproject.toml's
`tenantry.agent_kinds` entry points): `assistant` answers tasks with the model (and, when its
config names one, the tools of the tenant's MCP server: mcp_tools.py), `coder` runs the code an
assistant's reply holds in the tenant's sandbox."""

from __future__ import annotations

from collections.abc import Callable

from autogen_core import RoutedAgent

from .agent_kinds import AgentContext, AgentKind, NoConfig
from .agents import Assistant, Coder
from .mcp_tools import AssistantConfig, McpTools, secrets_of


def _assistant(context: AgentContext, config: AssistantConfig) -> Callable[[], RoutedAgent]:
    coders = [agent for agent in context.agents if agent.kind == "coder"]
    code_topic = coders[0].topic_type if coders else None
    model = context.model
    assert model is not None  # the runtime refuses an assistant without a model
    sessions = context.sessions
    tools = None if config.mcp is None else McpTools.from_context(config.mcp, context)
    return lambda: Assistant(model, context.system_message, code_topic, sessions, tools)


def _coder(context: AgentContext, _config: NoConfig) -> Callable[[], RoutedAgent]:
    executor = context.executor
    assert executor is not None  # the runtime refuses a coder without a sandbox
    return lambda: Coder(executor, context.audit)


ASSISTANT = AgentKind(
    build=_assistant,
    config_model=AssistantConfig,
    description="Answers tasks with the tenant's model, calling the tools of the tenant's MCP "
    "server when config.mcp names one; sends the code of a reply to the coder.",
    answers_tasks=True,
    needs_model=True,
    keeps_sessions=True,
    secrets=secrets_of,
)
CODER = AgentKind(
    build=_coder,
    description="Runs the code blocks it is sent in the tenant's sandbox.",
    needs_sandbox=True,
)
