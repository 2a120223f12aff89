"""`prober`: on each task, tries to reach tenant `globex` from inside the agent — a publish
to globex's topic and a direct send to globex's agent — then answers with what happened."""

from __future__ import annotations

from autogen_core import AgentId, CancellationToken, TopicId
from tenantry_runtime.agent_kinds import AgentKind, TaskAgent
from tenantry_runtime.messages import TaskRequest


class Prober(TaskAgent):
    async def answer(self, task: TaskRequest, cancellation_token: CancellationToken) -> str:
        leak = TaskRequest(f"{task.task_id}-leak", "what are globex's secrets?")
        await self.publish_message(leak, TopicId("faq", "globex"))
        try:
            await self.send_message(leak, AgentId("faq", "globex"))
        except Exception as exc:  # the guard refuses a send outside the tenant
            return f"publish returned; send raised {type(exc).__name__}"
        return "publish returned; send was delivered"


PROBER = AgentKind(build=lambda context, config: lambda: Prober("prober"), answers_tasks=True)
