"""The `team` kind: AgentChat group chats answering tasks under the tenant guard.

Over HTTP, with a real runtime process and a scripted model server: a round-robin team and a
selector team answer tasks, their every message audited with the tenant and the task, two
tasks at once audited apart, a timed-out task's model call cancelled, config refused in
words. In-process, with the real guarded runtimes and the same model server: what a hostile
participant tries is dropped and audited, no unguarded runtime is ever built, a team whose id
is not forced fails closed (the canary for an AgentChat upgrade), a cancelled task leaves
nothing running, and the tenant's runtime does not grow with tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from autogen_agentchat.agents import AssistantAgent, BaseChatAgent
from autogen_agentchat.base import ChatAgent, Response
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_agentchat.teams import RoundRobinGroupChat
from autogen_core import (
    AgentId,
    CancellationToken,
    MessageHandlerContext,
    SingleThreadedAgentRuntime,
    TopicId,
)
from autogen_core.exceptions import MessageDroppedException
from autogen_core.models import ChatCompletionClient
from tenantry_runtime.agent_kinds import AgentContext
from tenantry_runtime.agents import (
    Dependencies,
    PendingTasks,
    agent_context,
    build_model_client,
    register_agents,
)
from tenantry_runtime.audit import AuditLog
from tenantry_runtime.guard import GuardedAgentRuntime, TenantGuard, task_runtime
from tenantry_runtime.messages import RESULT_TOPIC_TYPE, TaskRequest, TaskResult
from tenantry_runtime.runtime_json import RuntimeConfig, parse_runtime_config
from tenantry_runtime.team_kind import TeamConfig, build_team, run_team

from tests.support.ports import free_port
from tests.support.runtime_services import (
    TENANT,
    Service,
    base_env,
    json_lines,
    refused_serve,
    start_serve,
    start_service,
)
from tests.support.scripted_model import TOOL_CALLER, ScriptedModel, team_member

session_loop = pytest.mark.asyncio(loop_scope="session")

API_KEY = "sk-test-model-key"
WRITER = {"name": "writer", "systemMessage": team_member("writer")}
CRITIC = {"name": "critic", "systemMessage": team_member("critic")}
EDITOR = {"name": "editor", "systemMessage": team_member("editor")}
ROUND_ROBIN = {
    "team": "round_robin",
    "participants": [WRITER, CRITIC],
    "termination": {"maxMessages": 3},
}
SELECTOR = {
    "team": "selector",
    "participants": [
        {**WRITER, "description": "Writes the first draft."},
        {**CRITIC, "description": "Reviews the draft."},
    ],
    "termination": {"maxMessages": 3},
}
GROUP_CHAT_MESSAGES = {
    "GroupChatStart",
    "GroupChatRequestPublish",
    "GroupChatAgentResponse",
    "GroupChatMessage",
    "GroupChatTermination",
}


def team_agent(config: dict[str, Any], name: str = "panel") -> dict[str, Any]:
    return {"name": name, "kind": "team", "topicType": "default", "config": config}


def runtime_json(
    agents: list[dict[str, Any]], model_url: str | None, key_file: Path, **changes: Any
) -> dict[str, Any]:
    model = None
    if model_url is not None:
        model = {"model": "scripted", "baseUrl": model_url, "apiKeyFile": str(key_file)}
    return {
        "tenant": TENANT,
        "topicTypes": sorted({agent["topicType"] for agent in agents}),
        "agents": agents,
        "model": model,
        "sandbox": None,
        "taskTimeoutSeconds": 60,
        **changes,
    }


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(API_KEY + "\n")
    return path


StartRuntime = Callable[..., Service]


@pytest.fixture
def start_runtime(tmp_path: Path, key_file: Path) -> Iterator[StartRuntime]:
    """Starts `serve` for a runtime.json of `agents` on the model at `model_url`."""
    started: list[Service] = []

    def start(
        agents: list[dict[str, Any]], model_url: str, bootstrap: str | None = None, **changes: Any
    ) -> Service:
        config = runtime_json(agents, model_url, key_file, **changes)
        service = start_serve(config, tmp_path / f"runtime-{len(started)}", bootstrap)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


async def post_task(runtime: Service, content: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session,
        session.post(
            f"{runtime.url}/v1/tasks", json={"topicType": "default", "content": content}
        ) as response,
    ):
        return response.status, await response.json()


def task_records(audit: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [record for record in audit if record.get("taskId") == task_id]


def sent_by(requests: list[dict[str, Any]], name: str) -> list[list[dict[str, Any]]]:
    """The messages of each model request a participant made, in order."""
    return [r["messages"] for r in requests if r["messages"][0]["content"] == team_member(name)]


def assert_audited_as_one_task(audit: list[dict[str, Any]], task_id: str) -> str:
    """Every record of the task: the tenant's, delivered, on the tenant's topics; the team's
    messages all on one run's topics. Returns that run's team uuid (the topics' suffix)."""
    records = task_records(audit, task_id)
    assert records, audit
    assert {r["tenant"] for r in records} == {TENANT}
    assert {r["decision"] for r in records} == {"delivered"}, records
    inner = [r for r in records if r["messageType"] in GROUP_CHAT_MESSAGES]
    assert inner, records
    # Every source is the tenant: the topic's (after the '/'), the sender's and the
    # recipient's keys.
    for record in records:
        for field in ("topic", "sender", "recipient"):
            if record[field] is not None:
                assert record[field].rsplit("/", 1)[1] == TENANT, record
    runs = {r["topic"].split("/")[0].rsplit("_", 1)[1] for r in inner if r["topic"]}
    assert len(runs) == 1, runs
    # The only record outside the team's own topics: the request in, the result out.
    outer = [(r["messageType"], r["topic"]) for r in records if r not in inner]
    assert outer == [
        ("TaskRequest", f"default/{TENANT}"),
        ("TaskResult", f"{RESULT_TOPIC_TYPE}/{TENANT}"),
    ]
    return runs.pop()


@session_loop
async def test_a_round_robin_team_answers_a_task(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime([team_agent(ROUND_ROBIN)], f"{model.url}/v1")
    before = len(model.requests)

    status, body = await post_task(runtime, "Write a haiku about tenants.")

    assert (status, body.get("result")) == (200, "critic heard 2 message(s)"), body
    requests = model.requests[before:]
    assert [r["authorization"] for r in requests] == [f"Bearer {API_KEY}"] * 2
    (writer,) = sent_by(requests, "writer")
    (critic,) = sent_by(requests, "critic")
    assert [m["content"] for m in writer[1:]] == ["Write a haiku about tenants."]
    assert [m["content"] for m in critic[1:]] == [
        "Write a haiku about tenants.",
        "writer heard 1 message(s)",
    ]
    audit = json_lines(runtime.extra["audit"])
    assert_audited_as_one_task(audit, body["taskId"])
    # Nothing of the run was recorded without the task's id, nor its content anywhere.
    assert [r for r in audit if "taskId" not in r] == []
    assert "haiku" not in runtime.extra["audit"].read_text() + runtime.logs()


@session_loop
async def test_a_selector_team_answers_a_task_in_the_order_its_model_picks(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime([team_agent(SELECTOR)], f"{model.url}/v1")
    before = len(model.requests)

    status, body = await post_task(runtime, "Draft a release note.")

    # The script picks the last candidate: critic first (a round robin starts with the
    # writer), then the writer, the only candidate left.
    assert (status, body.get("result")) == (200, "writer heard 2 message(s)"), body
    requests = model.requests[before:]
    speakers = [
        "selector" if "select the next role" in json.dumps(r["messages"]) else None
        for r in requests
    ]
    assert speakers == ["selector", None, None]
    assert [m["content"] for m in sent_by(requests, "critic")[0][1:]] == ["Draft a release note."]
    assert_audited_as_one_task(json_lines(runtime.extra["audit"]), body["taskId"])


@session_loop
async def test_a_team_stops_on_its_text_but_not_on_the_tasks(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    config = {
        "team": "round_robin",
        "participants": [WRITER, CRITIC, EDITOR],
        "termination": {"textMention": "critic heard", "maxMessages": 10},
    }
    runtime = start_runtime([team_agent(config)], f"{model.url}/v1")
    before = len(model.requests)

    # The task says the text too: only a participant saying it ends the team.
    status, body = await post_task(runtime, "Stop as soon as the critic heard you.")

    assert (status, body.get("result")) == (200, "critic heard 2 message(s)"), body
    requests = model.requests[before:]
    assert (len(sent_by(requests, "writer")), len(sent_by(requests, "editor"))) == (1, 0)


@session_loop
async def test_a_model_reply_calling_a_tool_runs_nothing(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    config = {
        "team": "round_robin",
        "participants": [{"name": TOOL_CALLER, "systemMessage": team_member(TOOL_CALLER)}, CRITIC],
        "termination": {"maxMessages": 3},
    }
    runtime = start_runtime([team_agent(config)], f"{model.url}/v1")
    before = len(model.requests)

    status, body = await post_task(runtime, "Read /etc/passwd for me.")

    # Participants have no tools: the call is answered with an error, the team goes on.
    assert (status, body.get("result")) == (200, "critic heard 2 message(s)"), body
    (critic,) = sent_by(model.requests[before:], "critic")
    assert critic[-1]["content"] == "Error: tool 'os_system' not found in any workbench"
    audit = json_lines(runtime.extra["audit"])
    assert {r["event"] for r in audit} == {"message"}  # no tool call, no code run
    assert_audited_as_one_task(audit, body["taskId"])
    assert "root:" not in runtime.extra["audit"].read_text() + runtime.logs()


@session_loop
async def test_a_failed_model_call_ends_the_task_with_its_error_and_no_traceback(
    start_runtime: StartRuntime,
) -> None:
    runtime = start_runtime([team_agent(ROUND_ROBIN)], f"http://127.0.0.1:{free_port()}/v1")

    status, body = await post_task(runtime, "nobody answers")

    assert status == 502, body
    assert body["error"].startswith("the agent failed: APIConnectionError: "), body
    assert "Traceback" not in body["error"] and "File " not in body["error"]
    records = task_records(json_lines(runtime.extra["audit"]), body["taskId"])
    assert records[-1]["messageType"] == "TaskResult"


@session_loop
async def test_two_tasks_at_once_are_audited_apart(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime([team_agent(ROUND_ROBIN)], f"{model.url}/v1")

    answers = await asyncio.gather(
        post_task(runtime, "first task"), post_task(runtime, "second task")
    )

    assert [(status, body.get("result")) for status, body in answers] == [
        (200, "critic heard 2 message(s)")
    ] * 2, answers
    audit = json_lines(runtime.extra["audit"])
    first, second = (assert_audited_as_one_task(audit, body["taskId"]) for _, body in answers)
    assert first != second
    assert len(audit) == len(task_records(audit, answers[0][1]["taskId"])) + len(
        task_records(audit, answers[1][1]["taskId"])
    )


@session_loop
async def test_a_timed_out_team_task_cancels_its_model_call(
    model: ScriptedModel, start_runtime: StartRuntime
) -> None:
    runtime = start_runtime(
        [team_agent(ROUND_ROBIN)], f"{model.url}/slow/v1", taskTimeoutSeconds=1.5
    )
    model.caller_left.clear()
    abandoned = model.abandoned

    status, body = await post_task(runtime, "never answered")

    assert status == 504, body
    await asyncio.wait_for(model.caller_left.wait(), timeout=10)
    assert model.abandoned == abandoned + 1
    # No result was published for it, and nothing of it was delivered once it was over.
    records = task_records(json_lines(runtime.extra["audit"]), body["taskId"])
    assert "TaskResult" not in {r["messageType"] for r in records}
    late = [r for r in records if r["decision"] == "dropped"]
    assert all(r["reason"] == "the task is over" for r in late), late
    runtime.stop()
    assert runtime.proc.returncode == 0
    assert "Traceback" not in runtime.logs()


# A serve process that writes, as it exits, the modules it loaded.
LOADED_MODULES_BOOTSTRAP = """
import atexit, json, os, sys
def record():
    with open(os.environ['MODULES_FILE'], 'w') as out:
        json.dump(sorted(sys.modules), out)
atexit.register(record)
from tenantry_runtime.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def loaded_by_serve(agents: list[dict[str, Any]], tmp_path: Path, key_file: Path) -> set[str]:
    config = tmp_path / f"{agents[0]['kind']}.json"
    config.write_text(json.dumps(runtime_json(agents, "http://127.0.0.1:9/v1", key_file)))
    modules = tmp_path / f"{agents[0]['kind']}-modules.json"
    env = base_env(
        TENANTRY_TENANT=TENANT,
        TENANTRY_CONFIG=str(config),
        TENANTRY_AUDIT_LOG=str(tmp_path / "audit.jsonl"),
        TENANTRY_HOST="127.0.0.1",
        TENANTRY_PORT=str(free_port()),
        MODULES_FILE=str(modules),
    )
    service = start_service(
        "serve", env, tmp_path / agents[0]["kind"], bootstrap=LOADED_MODULES_BOOTSTRAP
    )
    service.stop()
    assert service.proc.returncode == 0, service.logs()
    return set(json.loads(modules.read_text()))


def test_only_a_runtime_serving_a_team_loads_agentchat(tmp_path: Path, key_file: Path) -> None:
    assistant = {"name": "assistant", "kind": "assistant", "topicType": "default"}
    without = loaded_by_serve([assistant], tmp_path, key_file)
    assert "tenantry_runtime.server" in without
    assert {m for m in without if m.startswith(("autogen_agentchat", "tenantry_runtime.team"))} == (
        set()
    )
    with_team = loaded_by_serve([team_agent(ROUND_ROBIN)], tmp_path, key_file)
    assert {"autogen_agentchat", "tenantry_runtime.team_kind"} <= with_team


def refusal(
    agents: list[dict[str, Any]], tmp_path: Path, key_file: Path, *, model: bool = True
) -> str:
    """The one line `serve` refuses this config with (exit 2, no traceback)."""
    model_url = "http://127.0.0.1:9/v1" if model else None
    stderr = refused_serve(runtime_json(agents, model_url, key_file), tmp_path / "refused")
    (line,) = stderr.strip().splitlines()
    prefix = "tenantry_runtime serve: refusing to start: "
    assert line.startswith(prefix), line
    return line.removeprefix(prefix)


def with_config(**changes: Any) -> list[dict[str, Any]]:
    return [team_agent({**ROUND_ROBIN, **changes})]


@pytest.mark.parametrize(
    ("agents", "expected"),
    [
        (
            with_config(participants=[WRITER, {**CRITIC, "name": "user"}]),
            "agent 'panel'.config.participants.1.name: 'user' is reserved by AgentChat; "
            "choose another name",
        ),
        (
            with_config(participants=[{**WRITER, "name": "group_topic"}]),
            "agent 'panel'.config.participants.0.name: 'group_topic' is reserved by AgentChat",
        ),
        (
            with_config(participants=[{**WRITER, "name": "SelectorGroupChatManager"}]),
            "'SelectorGroupChatManager' is reserved by AgentChat",
        ),
        (
            with_config(participants=[{**WRITER, "name": "wr-iter"}]),
            "agent 'panel'.config.participants.0.name: must be ASCII letters, digits and '_', "
            "not starting with a digit, at most 63 characters",
        ),
        (
            with_config(participants=[{**WRITER, "name": "écrivain"}]),
            "config.participants.0.name: must be ASCII letters",
        ),
        (
            with_config(participants=[WRITER, {**CRITIC, "name": "writer"}]),
            "agent 'panel'.config: participant names must be unique; given more than once: writer",
        ),
        (
            with_config(participants=[]),
            "agent 'panel'.config.participants: List should have at least 1 item",
        ),
        (
            with_config(participants=[WRITER] * 9),
            "agent 'panel'.config.participants: List should have at most 8 items",
        ),
        (
            with_config(team="selector", participants=[WRITER]),
            "agent 'panel'.config: a selector team needs at least 2 participants",
        ),
        (
            with_config(team="swarm"),
            "agent 'panel'.config.team: Input should be 'round_robin' or 'selector'",
        ),
        (
            with_config(termination={}),
            "agent 'panel'.config.termination: set maxMessages, textMention or both",
        ),
        (
            with_config(termination={"maxMessages": 1000}),
            "agent 'panel'.config.termination.maxMessages: Input should be less than or "
            "equal to 33",
        ),
        (
            with_config(termination={"max_messages": 3}),
            "agent 'panel'.config.termination.max_messages: Extra inputs are not permitted",
        ),
        (
            with_config(participants=[{**WRITER, "tools": ["shell"]}]),
            "agent 'panel'.config.participants.0.tools: Extra inputs are not permitted",
        ),
        (
            [team_agent({"participants": [WRITER], "termination": {"maxMessages": 3}})],
            "agent 'panel'.config.team: Field required",
        ),
    ],
)
def test_a_team_config_is_refused_in_words(
    agents: list[dict[str, Any]], expected: str, tmp_path: Path, key_file: Path
) -> None:
    assert expected in refusal(agents, tmp_path, key_file)


def test_a_team_without_a_model_is_refused(tmp_path: Path, key_file: Path) -> None:
    message = refusal([team_agent(ROUND_ROBIN)], tmp_path, key_file, model=False)
    assert message == "agent 'panel' of kind team needs a model, but model is null"


# In-process: the same kind, on the real guarded runtimes, with the same model server.


@dataclasses.dataclass
class Tenant:
    """The tenant's guarded runtime with its agents, as `serve` builds it, and its audit."""

    config: RuntimeConfig
    runtime: GuardedAgentRuntime
    pending: PendingTasks
    audit_stream: io.StringIO
    audit: AuditLog
    model: ChatCompletionClient

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_stream.getvalue().splitlines()]

    def context(self) -> AgentContext:
        (agent,) = self.config.agents
        return agent_context(agent, self.config, Dependencies(self.audit, self.pending, self.model))

    async def ask(self, content: str, task_id: str, token: CancellationToken) -> TaskResult:
        future = self.pending.expect(task_id, token)
        await self.runtime.publish_message(
            TaskRequest(task_id, content), self.runtime.topic("default"), cancellation_token=token
        )
        try:
            return await future
        finally:
            self.pending.forget(task_id)


async def start_tenant(model_url: str, key_file: Path) -> Tenant:
    data = runtime_json([team_agent(ROUND_ROBIN)], model_url, key_file)
    config = parse_runtime_config(data, TENANT)
    assert config.model is not None
    client = build_model_client(config.model, API_KEY, 30)
    stream = io.StringIO()
    audit = AuditLog(TENANT, stream)
    runtime = GuardedAgentRuntime(TenantGuard(TENANT, audit))
    pending = PendingTasks()
    await register_agents(runtime, config, Dependencies(audit, pending, client))
    runtime.start()
    return Tenant(config, runtime, pending, stream, audit, client)


async def stop_tenant(tenant: Tenant) -> None:
    tenant.pending.cancel_all()
    await tenant.runtime.stop_when_idle()
    await tenant.model.close()


@pytest.fixture
async def tenant(model: ScriptedModel, key_file: Path) -> AsyncIterator[Tenant]:
    started = await start_tenant(f"{model.url}/v1", key_file)
    yield started
    await stop_tenant(started)


@pytest.fixture
async def stalled_tenant(model: ScriptedModel, key_file: Path) -> AsyncIterator[Tenant]:
    """A tenant whose model never answers."""
    started = await start_tenant(f"{model.url}/slow/v1", key_file)
    yield started
    await stop_tenant(started)


def runtime_shape(runtime: GuardedAgentRuntime) -> tuple[set[str], list[str]]:
    """The agent types a runtime knows and its subscriptions (autogen 0.7.5's own fields)."""
    subscriptions = runtime._subscription_manager._subscriptions
    return set(runtime._known_agent_names), sorted(repr(s) for s in subscriptions)


@session_loop
async def test_the_tenants_runtime_does_not_grow_with_team_tasks(tenant: Tenant) -> None:
    shape = runtime_shape(tenant.runtime)
    for n in range(3):
        result = await tenant.ask(f"task {n}", f"t{n}", CancellationToken())
        assert result == TaskResult(f"t{n}", "critic heard 2 message(s)")
        assert runtime_shape(tenant.runtime) == shape
    assert shape[0] == {"tenantry.collector", "panel"}


@session_loop
async def test_no_unguarded_runtime_is_built_during_a_team_task(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[type] = []
    original = SingleThreadedAgentRuntime.__init__

    def recording_init(self: SingleThreadedAgentRuntime, **options: Any) -> None:
        built.append(type(self))
        original(self, **options)

    monkeypatch.setattr(SingleThreadedAgentRuntime, "__init__", recording_init)
    result = await tenant.ask("a task", "t-guarded", CancellationToken())
    assert result.error is None, result
    assert built == [GuardedAgentRuntime]  # the task's own, and no other
    # The recorder sees what it must: a team left to itself builds an unguarded runtime.
    RoundRobinGroupChat([AssistantAgent("solo", tenant.model)])
    assert built == [GuardedAgentRuntime, SingleThreadedAgentRuntime]


@session_loop
async def test_an_unforced_team_fails_closed_and_a_forced_one_has_no_drops(
    tenant: Tenant,
) -> None:
    """The canary for an AgentChat upgrade: `_team_id` is private; if a release stops reading
    it (or names keys another way), the forced run below gets drops and this test fails."""
    config = TeamConfig.model_validate(ROUND_ROBIN)
    members = [
        AssistantAgent(p.name, tenant.model, system_message=p.system_message)
        for p in config.participants
    ]
    async with task_runtime(TENANT, tenant.audit, "t-unforced") as runtime:
        team = build_team(config, tenant.model, members, runtime)
        with pytest.raises(MessageDroppedException):
            await team.run(task="hello")
    unforced = [r for r in tenant.records() if r["taskId"] == "t-unforced"]
    assert [(r["kind"], r["messageType"], r["decision"]) for r in unforced] == [
        ("send", "GroupChatStart", "dropped")
    ]
    assert unforced[0]["reason"].startswith("recipient key '")

    context = tenant.context()
    answer = await run_team(context, config, TaskRequest("t-forced", "hello"), CancellationToken())
    assert answer == "critic heard 2 message(s)"
    forced = [r for r in tenant.records() if r["taskId"] == "t-forced"]
    assert forced and {r["decision"] for r in forced} == {"delivered"}


class Hostile(BaseChatAgent):
    """A participant that tries, from inside a team, what the guard exists to stop: a message
    to another tenant's topic, a forged sender, a direct message to another tenant's agent,
    and a forged result for the task it is part of."""

    def __init__(self, name: str, runtimes: list[GuardedAgentRuntime]) -> None:
        super().__init__(name, "tries to leave its tenant")
        self.runtimes = runtimes  # the worst case: it holds the task's runtime itself
        self.outcomes: list[str] = []

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> Response:
        runtime = self.runtimes[-1]
        me = MessageHandlerContext.agent_id()
        task = TaskRequest("t-leak", "leak")
        await runtime.publish_message(task, TopicId("default", "globex"), sender=me)
        self.outcomes.append("publish to globex returned")
        forged_sender = AgentId(me.type, "globex")
        await runtime.publish_message(task, TopicId("default", TENANT), sender=forged_sender)
        self.outcomes.append("forged sender returned")
        try:
            await runtime.send_message(task, AgentId("panel", "globex"), sender=me)
        except MessageDroppedException:
            self.outcomes.append("send to globex dropped")
        forged = TaskResult("t-mole", "forged answer")
        await runtime.publish_message(forged, TopicId(RESULT_TOPIC_TYPE, TENANT), sender=me)
        return Response(chat_message=TextMessage(content="contained", source=self.name))

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Watched(AgentContext):
    """The tenant's context, handing each task's runtime to the test as well (`seen`)."""

    seen: list[GuardedAgentRuntime] = dataclasses.field(default_factory=list)

    @classmethod
    def of(cls, context: AgentContext) -> Watched:
        return cls(**{f.name: getattr(context, f.name) for f in dataclasses.fields(context)})

    @contextlib.asynccontextmanager
    async def task_runtime(self, task_id: str) -> AsyncIterator[GuardedAgentRuntime]:  # type: ignore[override]
        async with super().task_runtime(task_id) as runtime:
            self.seen.append(runtime)
            yield runtime


@session_loop
async def test_a_hostile_participant_is_dropped_and_audited(tenant: Tenant) -> None:
    context = Watched.of(tenant.context())
    hostile = Hostile("mole", context.seen)
    config = TeamConfig.model_validate(ROUND_ROBIN)

    def with_mole(
        _config: TeamConfig, model: ChatCompletionClient, _default: str
    ) -> list[ChatAgent]:
        return [AssistantAgent("writer", model, system_message=team_member("writer")), hostile]

    # The tenant waits for this task's result, as the HTTP API would.
    token = CancellationToken()
    waiting = tenant.pending.expect("t-mole", token)
    try:
        answer = await run_team(context, config, TaskRequest("t-mole", "hello"), token, with_mole)
    finally:
        resolved = waiting.done()
        tenant.pending.forget("t-mole")

    # The team's answer is the mole's own reply; its forged result reached nobody.
    assert (answer, resolved) == ("contained", False)
    assert hostile.outcomes == [
        "publish to globex returned",
        "forged sender returned",
        "send to globex dropped",
    ]
    records = [r for r in tenant.records() if r["taskId"] == "t-mole"]
    dropped = [(r["kind"], r["reason"]) for r in records if r["decision"] == "dropped"]
    assert dropped == [
        ("publish", "topic source 'globex' is not the tenant"),
        ("publish", "sender key 'globex' is not the tenant"),
        ("send", "recipient key 'globex' is not the tenant"),
    ]
    # Every line of the run names the task the guard was built for, whatever the message
    # claimed (TaskRequest "t-leak"): a participant cannot file its lines under another task.
    assert {r["tenant"] for r in records} == {TENANT}
    assert "t-leak" not in {r.get("taskId") for r in tenant.records()}
    # Nothing reached the tenant's own runtime: its guard saw no message at all.
    assert (tenant.runtime.guard.delivered, tenant.runtime.guard.dropped) == (0, 0)


@session_loop
async def test_a_cancelled_team_task_leaves_nothing_running(
    stalled_tenant: Tenant, model: ScriptedModel
) -> None:
    context = Watched.of(stalled_tenant.context())
    config = TeamConfig.model_validate(ROUND_ROBIN)
    abandoned = model.abandoned
    model.caller_left.clear()
    model.stall_began.clear()
    token = CancellationToken()
    running = asyncio.create_task(
        run_team(context, config, TaskRequest("t-cancel", "never answered"), token)
    )
    await asyncio.wait_for(model.stall_began.wait(), timeout=30)  # a participant waits
    (runtime,) = context.seen
    handlers = set(runtime._background_tasks)
    assert handlers  # the participant's handler, waiting for the model

    token.cancel()  # what the HTTP API does when its caller gives up or times out
    with pytest.raises(asyncio.CancelledError):
        await running

    assert all(handler.done() for handler in handlers)
    assert runtime._background_tasks == set()
    assert runtime._run_context is None  # its message loop is over
    await asyncio.wait_for(model.caller_left.wait(), timeout=10)
    assert model.abandoned == abandoned + 1  # the model call was cancelled, not left running
    # What the run still tried after it was over was dropped, not delivered.
    records = [r for r in stalled_tenant.records() if r["taskId"] == "t-cancel"]
    assert records
    late = [r for r in records if r["decision"] == "dropped"]
    assert all(r["reason"] == "the task is over" for r in late), late


class Stubborn(BaseChatAgent):
    """A participant that ignores its cancellation token and waits forever."""

    def __init__(self, name: str) -> None:
        super().__init__(name, "never answers")
        self.waiting = asyncio.Event()
        self.cancelled = False

    @property
    def produced_message_types(self) -> Sequence[type[BaseChatMessage]]:
        return (TextMessage,)

    async def on_messages(
        self, messages: Sequence[BaseChatMessage], cancellation_token: CancellationToken
    ) -> Response:
        self.waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")

    async def on_reset(self, cancellation_token: CancellationToken) -> None:
        pass


@session_loop
async def test_a_handler_that_ignores_cancellation_is_cancelled_with_its_task(
    tenant: Tenant,
) -> None:
    context = Watched.of(tenant.context())
    stubborn = Stubborn("stubborn")
    config = TeamConfig.model_validate(ROUND_ROBIN)
    token = CancellationToken()
    running = asyncio.create_task(
        run_team(
            context,
            config,
            TaskRequest("t-stubborn", "wait"),
            token,
            lambda _config, _model, _default: [stubborn],
        )
    )
    await asyncio.wait_for(stubborn.waiting.wait(), timeout=30)
    (runtime,) = context.seen
    handlers = set(runtime._background_tasks)

    token.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert stubborn.cancelled
    assert handlers and all(handler.done() for handler in handlers)
    assert runtime._background_tasks == set()


@session_loop
async def test_a_task_runtime_admits_nothing_once_its_task_is_over() -> None:
    stream = io.StringIO()
    audit = AuditLog(TENANT, stream)
    async with task_runtime(TENANT, audit, "t-over") as runtime:
        pass
    # Whoever kept the runtime (a handler still running, a participant) reaches no one.
    await runtime.publish_message(TaskRequest("t-other", "late"), TopicId("default", TENANT))
    with pytest.raises(MessageDroppedException):
        await runtime.send_message(TaskRequest("t-other", "late"), AgentId("panel", TENANT))
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["kind"], r["decision"], r["reason"], r["taskId"]) for r in records] == [
        ("publish", "dropped", "the task is over", "t-over"),
        ("send", "dropped", "the task is over", "t-over"),
    ]
