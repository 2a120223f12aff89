"""ACME's agent kinds: `faq` answers questions from the tenant's own FAQ, kept in a Secret.

The agent reads the Secret through a tool call that the runtime audits (the tool's name, a
digest of the question, how long it took, how it ended; never the question itself), and it
reads only the Secret its config names: the runtime hands it that directory and no other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from autogen_core import CancellationToken, RoutedAgent
from pydantic import BaseModel, ConfigDict, Field
from tenantry_runtime.agent_kinds import AgentContext, AgentKind, TaskAgent
from tenantry_runtime.messages import TaskRequest


class FaqConfig(BaseModel):
    """What a manifest's `config` says for an agent of kind `faq`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret: str = Field(
        description="The spec.secrets name of the Secret whose key `answers.json` holds the FAQ: "
        "a JSON object from question to answer."
    )
    fallback: str = Field(
        "I do not know that one yet.", description="The answer to a question the FAQ lacks."
    )


class FaqAgent(TaskAgent):
    def __init__(self, context: AgentContext, config: FaqConfig) -> None:
        super().__init__("Answers questions from the tenant's FAQ.")
        self._context = context
        self._answers_file = context.secret_dirs[config.secret] / "answers.json"
        self._fallback = config.fallback

    async def answer(self, task: TaskRequest, cancellation_token: CancellationToken) -> str:
        question = " ".join(task.content.lower().split())

        async def lookup() -> str | None:
            # Read in a thread: the runtime is one event loop, shared by every agent.
            text = await asyncio.to_thread(self._answers_file.read_text, encoding="utf-8")
            answers = json.loads(text)
            found = answers.get(question)
            return found if isinstance(found, str) else None

        found = await self._context.call_tool(
            "faq.lookup", {"question": question}, lookup, task_id=task.task_id
        )
        return found or self._fallback


def build(context: AgentContext, config: FaqConfig) -> Callable[[], RoutedAgent]:
    return lambda: FaqAgent(context, config)


FAQ = AgentKind(
    build=build,
    config_model=FaqConfig,
    description="Answers questions from the tenant's FAQ, kept in one of its Secrets.",
    answers_tasks=True,
    secrets=lambda config: [config.secret],
)
