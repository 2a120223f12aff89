"""`echo`: answers a task with its own text. Importing it leaves a mark (the file named by
OTHER_AGENTS_IMPORTED, when set): the tests check a tenant that does not name it never does."""

from __future__ import annotations

import os
from pathlib import Path

from autogen_core import CancellationToken
from tenantry_runtime.agent_kinds import AgentKind, TaskAgent
from tenantry_runtime.messages import TaskRequest

if os.environ.get("OTHER_AGENTS_IMPORTED"):
    Path(os.environ["OTHER_AGENTS_IMPORTED"]).write_text("other_agents.echo was imported\n")


class Echo(TaskAgent):
    async def answer(self, task: TaskRequest, cancellation_token: CancellationToken) -> str:
        return task.content


ECHO = AgentKind(build=lambda context, config: lambda: Echo("echo"), answers_tasks=True)
