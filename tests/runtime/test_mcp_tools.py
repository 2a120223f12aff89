"""The assistant's MCP tools, as real processes: a tenant's MCP server (tests/support/mcp_server.py,
the `mcp` package's FastMCP, checking the bearer token), a runtime process whose runtime.json
gives the assistant that server with a credential from a Secret directory, and a scripted model
that calls tools.

The task's content is the model's script: a JSON object whose `calls` are the function calls
(name, arguments as the model writes them: text) of the model's first reply. Once the last
message is a tool result, the model answers with the tool results it got. `rounds` makes it
call the same tools that many times before answering (-1: forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from tenantry_runtime.mcp_tools import MAX_RESULT_CHARS, checked_url

from tests.support.ports import free_port, served, served_raw
from tests.support.processes import stop
from tests.support.runtime_services import (
    REPO,
    TENANT,
    Service,
    base_env,
    json_lines,
    refused_serve,
    start_serve,
)

session_loop = pytest.mark.asyncio(loop_scope="session")  # the scripted model's loop

TOKEN = "acme-mcp-token-5b1e"
CANARY = "canary-argument-9f27c1"
PATHS = {"streamable_http": "/mcp", "sse": "/sse"}


# -- the scripted model --------------------------------------------------------------------------


def _reply(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-tools",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


@dataclass
class ToolModel:
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        messages = body["messages"]
        user = next(m for m in messages if m["role"] == "user")
        script = json.loads(user["content"]) if user["content"].startswith("{") else {}
        rounds_done = sum(1 for m in messages if m["role"] == "assistant" and m.get("tool_calls"))
        wanted = script.get("rounds", 1)
        if script.get("calls") and (wanted < 0 or rounds_done < wanted):
            calls = [
                {
                    "id": f"call_{rounds_done}_{i}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for i, (name, arguments) in enumerate(script["calls"])
            ]
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            return web.json_response(_reply(message, "tool_calls"))
        results = [m["content"] for m in messages if m["role"] == "tool"]
        content = "tool results: " + " | ".join(results) if results else "no tools needed"
        return web.json_response(_reply({"role": "assistant", "content": content}, "stop"))


@pytest_asyncio.fixture(loop_scope="session")
async def tool_model() -> AsyncIterator[ToolModel]:
    scripted = ToolModel()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", scripted.complete)
    async with served(app) as scripted.url:
        yield scripted


def script(*calls: tuple[str, Any], rounds: int = 1) -> str:
    """A task whose model calls these tools (arguments: a dict, or text as the model wrote it)."""
    written = [(name, a if isinstance(a, str) else json.dumps(a)) for name, a in calls]
    return json.dumps({"calls": written, "rounds": rounds})


# -- the tenant's MCP server -------------------------------------------------------------------


@dataclass
class McpServer:
    url: str
    home: Path
    proc: subprocess.Popen[bytes]

    def requests(self) -> list[str]:
        log = self.home / "requests.log"
        return log.read_text().splitlines() if log.exists() else []

    def calls(self) -> list[str]:
        log = self.home / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


def _wait_listening(port: int, proc: subprocess.Popen[bytes], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the MCP server exited:\n{logs.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    pytest.fail("the MCP server does not listen")


StartMcp = Callable[..., McpServer]


@pytest.fixture
def start_mcp(tmp_path: Path) -> Iterator[StartMcp]:
    started: list[McpServer] = []

    def start(transport: str = "streamable_http", listing: str = "normal") -> McpServer:
        home = tmp_path / f"mcp-{len(started)}"
        home.mkdir()
        (home / "token").write_text(TOKEN + "\n")
        port = free_port()
        logs = home / "server.log"
        argv = [str(port), str(home / "token"), transport, listing]
        with logs.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.mcp_server", *argv],
                env=base_env(PYTHONPATH=str(REPO)),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        server = McpServer(f"http://127.0.0.1:{port}{PATHS[transport]}", home, proc)
        started.append(server)
        _wait_listening(port, proc, logs)
        return server

    yield start
    for server in started:
        stop(server.proc, timeout=10)


# -- the runtime ---------------------------------------------------------------------------------


def runtime_json(
    model_url: str, key_file: Path, secrets_dir: Path, mcp: dict[str, Any] | None, **changes: Any
) -> dict[str, Any]:
    agent: dict[str, Any] = {"name": "assistant", "kind": "assistant", "topicType": "default"}
    if mcp is not None:
        agent["config"] = {"mcp": mcp}
    return {
        "tenant": TENANT,
        "topicTypes": ["default"],
        "agents": [agent],
        "model": {"model": "scripted", "baseUrl": f"{model_url}/v1", "apiKeyFile": str(key_file)},
        "sandbox": None,
        "taskTimeoutSeconds": 60,
        "secretsDir": str(secrets_dir),
        **changes,
    }


@dataclass
class Runtime:
    service: Service
    audit: Path

    def tool_calls(self) -> list[dict[str, Any]]:
        return [r for r in json_lines(self.audit) if r["event"] == "tool_call"]


StartRuntime = Callable[..., Runtime]


def write_secret(secrets_dir: Path, name: str, key: str, value: str) -> None:
    (secrets_dir / name).mkdir(parents=True, exist_ok=True)
    (secrets_dir / name / key).write_text(value)


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets"
    write_secret(secrets, "acme-tools", "token", TOKEN + "\n")
    write_secret(secrets, "model-credentials", "api-key", "sk-model\n")
    return secrets


@pytest.fixture
def start_runtime(
    tmp_path: Path, secrets_dir: Path, tool_model: ToolModel
) -> Iterator[StartRuntime]:
    started: list[Service] = []

    def start(mcp: dict[str, Any] | None, bootstrap: str | None = None, **changes: Any) -> Runtime:
        key_file = secrets_dir / "model-credentials" / "api-key"
        config = runtime_json(tool_model.url, key_file, secrets_dir, mcp, **changes)
        service = start_serve(config, tmp_path / f"runtime-{len(started)}", bootstrap)
        started.append(service)
        return Runtime(service, service.extra["audit"])

    yield start
    for service in started:
        service.stop()


def mcp_config(server: McpServer, **more: Any) -> dict[str, Any]:
    transport = "sse" if server.url.endswith("/sse") else "streamable_http"
    return {"url": server.url, "transport": transport, "credentialSecret": "acme-tools", **more}


async def post_task(runtime: Runtime, content: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(
            f"{runtime.service.url}/v1/tasks", json={"topicType": "default", "content": content}
        ) as response,
    ):
        return response.status, await response.json()


def digest(arguments: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()


def offered(request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {tool["function"]["name"]: tool["function"] for tool in request.get("tools", [])}


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
@session_loop
async def test_a_tool_call_uses_the_tenants_secret_and_is_audited_without_its_arguments(
    transport: str, start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    server = start_mcp(transport)
    runtime = start_runtime(mcp_config(server))
    lookup, echo = {"key": "opening hours"}, {"text": CANARY}

    status, body = await post_task(runtime, script(("lookup", lookup), ("echo", echo)))

    assert status == 200, (body, runtime.service.logs())
    assert body["result"] == f"tool results: Monday to Friday, 9 to 5. | echo: {CANARY}"
    # The model was offered the server's tools with their schemas, and read their results.
    first, second = tool_model.requests[-2:]
    tools = offered(first)
    assert set(tools) == {"lookup", "echo", "huge", "fail", "hang"}
    assert tools["lookup"]["parameters"]["properties"]["key"]["type"] == "string"
    assert tools["lookup"]["description"] == "Look a key up in ACME's table."
    assert [m["content"] for m in second["messages"] if m["role"] == "tool"] == [
        "Monday to Friday, 9 to 5.",
        f"echo: {CANARY}",
    ]
    # The server saw the tenant's token from its Secret file on every request, and both calls.
    assert server.requests() and all(line.endswith(" ok") for line in server.requests())
    assert server.calls() == ["lookup", "echo"]
    # Audited: the listing and each call, with the digest of the arguments, never them.
    calls = runtime.tool_calls()
    assert [(c["tool"], c["outcome"], c["argumentsSha256"]) for c in calls] == [
        ("tools/list", "ok", digest({})),
        ("lookup", "ok", digest(lookup)),
        ("echo", "ok", digest(echo)),
    ]
    assert all(c["taskId"] == body["taskId"] and c["actor"] == f"assistant/{TENANT}" for c in calls)
    for written in (runtime.audit, runtime.service.stderr, runtime.service.stdout):
        assert CANARY not in written.read_text(), written
        assert TOKEN not in written.read_text(), written


@session_loop
async def test_a_wrong_token_fails_the_call_and_the_audit_says_error(
    start_mcp: StartMcp, start_runtime: StartRuntime, secrets_dir: Path
) -> None:
    server = start_mcp()
    write_secret(secrets_dir, "other-tools", "api-token", "not-the-token\n")
    runtime = start_runtime(
        mcp_config(server, credentialSecret="other-tools", credentialKey="api-token")
    )

    status, body = await post_task(runtime, script(("echo", {"text": CANARY})))

    assert status == 502, body
    assert "the MCP server could not be used" in body["error"] and "401" in body["error"]
    assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()] == [("tools/list", "error")]
    assert server.requests() and all(line.endswith(" 401") for line in server.requests())
    assert server.calls() == []
    assert "not-the-token" not in runtime.service.stderr.read_text()


@session_loop
async def test_tools_the_server_does_not_list_or_the_allowlist_excludes_are_refused_never_called(
    start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    server = start_mcp()
    runtime = start_runtime(mcp_config(server, tools=["lookup"]))
    calls = [
        ("echo", {"text": CANARY}),  # listed by the server, not allowed by the config
        ("delete_everything", {}),  # listed nowhere
        ("lookup", "{not json"),
        ("lookup", "[1, 2]"),
        ("lookup", {"key": "returns"}),
    ]

    status, body = await post_task(runtime, script(*calls))

    assert status == 200, (body, runtime.service.logs())
    assert set(offered(tool_model.requests[-2])) == {"lookup"}
    results = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert results[0].startswith("refused, not called: there is no tool 'echo'")
    assert results[1].startswith("refused, not called: there is no tool 'delete_everything'")
    assert results[2] == "refused, not called: the arguments are not JSON"
    assert results[3] == "refused, not called: the arguments are not a JSON object"
    assert results[4] == "Within 30 days."
    assert server.calls() == ["lookup"]
    outcomes = [(c["tool"], c["outcome"]) for c in runtime.tool_calls()]
    assert outcomes == [
        ("tools/list", "ok"),
        ("echo", "refused"),
        ("delete_everything", "refused"),
        ("lookup", "refused"),
        ("lookup", "refused"),
        ("lookup", "ok"),
    ]
    assert CANARY not in runtime.audit.read_text()


@pytest.mark.parametrize("listing", ["twins", "odd-names", "huge-schema"])
@session_loop
async def test_a_hostile_tool_list_offers_only_the_sound_tools(
    listing: str, start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    """Twins (which one would a call reach?), names that are no identifiers, a megabyte schema:
    none is offered to the model; `echo`, listed beside them, works."""
    server = start_mcp(listing=listing)
    runtime = start_runtime(mcp_config(server))

    status, body = await post_task(runtime, script(("lookup", {"key": "returns"})))

    assert status == 200, (body, runtime.service.logs())
    assert set(offered(tool_model.requests[-2])) == {"echo"}
    assert body["result"].startswith("tool results: refused, not called: there is no tool 'lookup'")
    assert server.calls() == []


@session_loop
async def test_a_server_listing_too_many_tools_needs_an_allowlist(
    start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    server = start_mcp(listing="many")
    runtime = start_runtime(mcp_config(server))
    status, body = await post_task(runtime, script(("tool_1", {})))
    assert status == 502, body
    assert "lists 500 tools, more than 64: name the ones" in body["error"]
    assert "config.mcp.tools" in body["error"]

    allowed = start_runtime(mcp_config(server, tools=["tool_7"]))
    status, body = await post_task(allowed, "hello")
    assert (status, body.get("result")) == (200, "no tools needed"), body
    assert set(offered(tool_model.requests[-1])) == {"tool_7"}


@session_loop
async def test_a_huge_tool_result_is_cut_before_the_model_reads_it(
    start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    server = start_mcp()
    runtime = start_runtime(mcp_config(server, timeoutSeconds=5))

    status, body = await post_task(runtime, script(("huge", {"size": 1_000_000})))

    assert status == 200, (body, runtime.service.logs())
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result.startswith("x" * MAX_RESULT_CHARS + "\n[tenantry: the tool's result was cut at ")
    assert len(result) < MAX_RESULT_CHARS + 100


@session_loop
async def test_a_response_beyond_the_byte_limit_is_never_read_whole(
    start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    """8 MiB in one response, twice the limit: the runtime stops reading it, the call fails
    (at its timeout) and the model is told; the runtime is fine."""
    server = start_mcp()
    runtime = start_runtime(mcp_config(server, timeoutSeconds=3))

    status, body = await post_task(runtime, script(("huge", {"size": 8 * 1024 * 1024})))

    assert status == 200, (body, runtime.service.logs())
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result.startswith("the tool call failed: McpError: Timed out"), result
    assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()][-1] == ("huge", "error")


@session_loop
async def test_a_tool_error_and_a_call_that_never_returns_are_tool_errors_the_model_reads(
    start_mcp: StartMcp, start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    server = start_mcp()
    runtime = start_runtime(mcp_config(server, timeoutSeconds=2))

    status, body = await post_task(runtime, script(("fail", {}), ("hang", {})))

    assert status == 200, (body, runtime.service.logs())
    results = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert results[0] == "the tool failed: Error executing tool fail: the backend is down"
    assert results[1].startswith("the tool call failed: McpError: Timed out")
    outcomes = [(c["tool"], c["outcome"]) for c in runtime.tool_calls()]
    assert outcomes == [("tools/list", "ok"), ("fail", "error"), ("hang", "error")]


@session_loop
async def test_a_model_that_keeps_calling_tools_is_stopped(
    start_mcp: StartMcp, start_runtime: StartRuntime
) -> None:
    server = start_mcp()
    runtime = start_runtime(mcp_config(server))
    calls = [("echo", {"text": str(i)}) for i in range(12)]

    status, body = await post_task(runtime, script(*calls, rounds=-1))

    assert status == 502, body
    assert "the model still called tools after 5 rounds of tool calls" in body["error"]
    outcomes = [c["outcome"] for c in runtime.tool_calls() if c["tool"] != "tools/list"]
    # Five rounds; in each, eight calls made and the rest refused unread.
    assert outcomes == (["ok"] * 8 + ["refused"] * 4) * 5
    assert len(server.calls()) == 40


@dataclass
class SilentServer:
    """Accepts connections and never answers; counts the ones its peer has closed."""

    url: str = ""
    accepted: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        while await reader.read(65536):
            pass  # read the request, answer nothing
        self.closed.set()
        writer.close()


@session_loop
async def test_a_server_that_never_answers_is_ended_with_the_task(
    start_runtime: StartRuntime,
) -> None:
    silent = SilentServer()
    async with served_raw(silent.handle) as base_url:
        mcp = {"url": f"{base_url}/mcp", "credentialSecret": "acme-tools"}
        runtime = start_runtime({**mcp, "timeoutSeconds": 600}, taskTimeoutSeconds=3)

        status, body = await post_task(runtime, script(("echo", {"text": "x"})))

        assert status == 504, body
        assert silent.accepted >= 1
        await asyncio.wait_for(silent.closed.wait(), 30)  # the runtime hung up
        # The cancelled turn writes its record as it unwinds, after the 504 went out.
        deadline = time.monotonic() + 30
        while not runtime.tool_calls() and time.monotonic() < deadline:  # noqa: ASYNC110 - a file
            await asyncio.sleep(0.05)
        assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()] == [
            ("tools/list", "error")
        ]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{runtime.service.url}/healthz") as response,
        ):
            assert response.status == 200


@dataclass
class MalformedServer:
    """An MCP server over streamable HTTP, written by hand, whose answer to each method of
    ANSWERS is the one given, whatever MCP's types say of it."""

    answers: dict[str, dict[str, Any]]

    def result(self, method: str) -> dict[str, Any]:
        if method in self.answers:
            return self.answers[method]
        if method == "initialize":
            return {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "malformed", "version": "1"},
            }
        schema = {"type": "object", "properties": {"text": {"type": "string"}}}
        return {"tools": [{"name": "echo", "inputSchema": schema}]}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405)
        message = await request.json()
        if "id" not in message:  # a notification
            return web.Response(status=202)
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": self.result(message["method"])}
        return web.json_response(answer)


async def task_against(
    server: MalformedServer, start_runtime: StartRuntime, **mcp: Any
) -> tuple[Runtime, int, dict[str, Any]]:
    app = web.Application()
    app.router.add_route("*", "/mcp", server.handle)
    async with served(app) as base_url:
        config = {"url": f"{base_url}/mcp", "credentialSecret": "acme-tools", **mcp}
        runtime = start_runtime(config)
        status, body = await post_task(runtime, script(("echo", {"text": "x"})))
    return runtime, status, body


def longest_log_line(runtime: Runtime) -> int:
    return max(map(len, runtime.service.logs().splitlines()), default=0)


# Items the mcp package's types refuse, each in as many ways as there are kinds of content or
# fields of a tool; its refusal listed every one with the item (300 KB answered made some 50 MB of
# error text, logged and sent back; at the 4 MiB limit, 1.8 GB to refuse before any text).
MALFORMED_ITEMS = 20_000


@session_loop
async def test_a_tool_result_of_malformed_items_is_read_item_by_item(
    start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    answer = {"content": [{"type": "x"}] * MALFORMED_ITEMS}
    runtime, status, body = await task_against(
        MalformedServer({"tools/call": answer}), start_runtime
    )

    assert status == 200, str(body)[:2000]
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result.startswith("[unknown content omitted]\n[unknown content omitted]\n"), result
    assert len(result) < MAX_RESULT_CHARS + 100
    assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()][-1] == ("echo", "ok")
    assert longest_log_line(runtime) < 4096


@session_loop
async def test_a_tool_result_that_is_no_result_is_a_short_tool_error_the_model_reads(
    start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    runtime, status, body = await task_against(
        MalformedServer({"tools/call": {"content": "x" * 100_000}}), start_runtime
    )

    assert status == 200, str(body)[:2000]
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result == "the tool's answer could not be read: ValidationError: 1 validation error(s)"
    assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()][-1] == ("echo", "error")


@session_loop
async def test_a_tool_list_of_malformed_items_offers_none_of_them(
    start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    answer = {"tools": [{"name": 7, "inputSchema": 7}] * MALFORMED_ITEMS}
    runtime, status, body = await task_against(
        MalformedServer({"tools/list": answer}), start_runtime
    )

    assert status == 200, str(body)[:2000]
    assert offered(tool_model.requests[0]) == {}
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result.startswith("refused, not called: there is no tool 'echo'"), result
    assert f"{MALFORMED_ITEMS} tool(s) of the MCP server are not offered" in runtime.service.logs()
    assert longest_log_line(runtime) < 4096


@session_loop
async def test_names_and_kinds_that_are_not_text_are_dropped_not_looked_up(
    start_runtime: StartRuntime, tool_model: ToolModel
) -> None:
    """A list or an object where a tool's name or a content item's type goes cannot be looked
    up in a set: such a tool is dropped and such an item named unknown, the rest served (an
    allowlist set). Found by review: the lookup failed the task, as the model's failure."""
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    tools = [
        {"name": {}, "inputSchema": schema},
        {"name": []},
        {"name": "echo", "inputSchema": schema},
    ]
    content = [{"type": []}, {"type": {}}, {"type": "text", "text": "echoed"}]
    server = MalformedServer({"tools/list": {"tools": tools}, "tools/call": {"content": content}})
    runtime, status, body = await task_against(server, start_runtime, tools=["echo"])

    assert status == 200, str(body)[:2000]
    assert list(offered(tool_model.requests[0])) == ["echo"]
    (result,) = [m["content"] for m in tool_model.requests[-1]["messages"] if m["role"] == "tool"]
    assert result == "[unknown content omitted]\n[unknown content omitted]\nechoed"
    assert "2 tool(s) of the MCP server are not offered" in runtime.service.logs()


@session_loop
async def test_a_tool_list_that_is_no_list_ends_the_task_with_a_short_error(
    start_runtime: StartRuntime,
) -> None:
    runtime, status, body = await task_against(
        MalformedServer({"tools/list": {"tools": "x" * 100_000}}), start_runtime
    )

    assert status == 502, str(body)[:2000]
    assert body["error"] == (
        "the MCP server's list of tools could not be read: ValidationError: 1 validation error(s)"
    )
    assert [(c["tool"], c["outcome"]) for c in runtime.tool_calls()] == [("tools/list", "error")]


LOADED_MODULES = """
import json, sys
from tenantry_runtime.__main__ import main
code = main(sys.argv[1:])
with open({marker!r}, "w") as file:
    json.dump(sorted(sys.modules), file)
sys.exit(code)
"""


@session_loop
async def test_a_runtime_without_mcp_config_never_imports_mcp(
    start_mcp: StartMcp, start_runtime: StartRuntime, tmp_path: Path
) -> None:
    plain_marker = tmp_path / "modules-plain.json"
    plain = start_runtime(None, bootstrap=LOADED_MODULES.format(marker=str(plain_marker)))
    status, body = await post_task(plain, "hello")
    assert (status, body.get("result")) == (200, "no tools needed"), body
    plain.service.stop()

    server = start_mcp()
    tools_marker = tmp_path / "modules-tools.json"
    tools = start_runtime(
        mcp_config(server), bootstrap=LOADED_MODULES.format(marker=str(tools_marker))
    )
    status, body = await post_task(tools, "hello")
    assert (status, body.get("result")) == (200, "no tools needed"), body
    tools.service.stop()

    def top_level(marker: Path) -> set[str]:
        return {name.split(".")[0] for name in json.loads(marker.read_text())}

    assert "mcp" not in top_level(plain_marker)
    assert "mcp" in top_level(tools_marker)  # the check can see it


# -- refused at start-up -------------------------------------------------------------------------


def refusal(tmp_path: Path, secrets_dir: Path, mcp: dict[str, Any]) -> str:
    key_file = secrets_dir / "model-credentials" / "api-key"
    config = runtime_json("http://127.0.0.1:9", key_file, secrets_dir, mcp)
    stderr = refused_serve(config, tmp_path / "refused")
    (line,) = [line for line in stderr.splitlines() if "refusing to start" in line]
    return line


URL = "https://tools.acme.example/mcp"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://tools.acme.example/mcp", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("https://user:secret@tools.acme.example/mcp", "holds a user or password"),
        ("https://tools.acme.example/mcp\r\nX-Injected: 1", "without spaces or control characters"),
        ("https://tools.acme.example:99999/mcp", "is not a URL"),
        ("https:///mcp", "names no host"),
        ("https://tools.acme.example/" + "a" * 3000, "must be at most 2048 characters"),
    ],
)
def test_a_bad_url_is_refused_at_start_naming_config_mcp_url(
    url: str, why: str, tmp_path: Path, secrets_dir: Path
) -> None:
    line = refusal(tmp_path, secrets_dir, {"url": url, "credentialSecret": "acme-tools"})
    assert "agent 'assistant'.config.mcp.url: " in line and why in line, line
    assert "secret" not in line  # a password in the URL is never shown


@pytest.mark.parametrize(
    "credential",
    [f"{TOKEN}\r\nX-Injected: yes", f"{TOKEN}\nHost: evil.example", f"{TOKEN}\x00", "tökén"],
)
def test_a_credential_that_could_inject_a_header_is_refused_and_never_shown(
    credential: str, tmp_path: Path, secrets_dir: Path
) -> None:
    write_secret(secrets_dir, "acme-tools", "token", credential)
    line = refusal(tmp_path, secrets_dir, {"url": URL, "credentialSecret": "acme-tools"})
    assert (
        "config.mcp credential" in line and "a bearer token is printable ASCII on one line" in line
    )
    assert "Injected" not in line and "evil" not in line and TOKEN not in line


@pytest.mark.parametrize(
    ("mcp", "why"),
    [
        (
            {"url": URL, "credentialSecret": "globex-tools"},
            "its config names Secret 'globex-tools', which is not mounted",
        ),
        (
            {"url": URL, "credentialSecret": "../model-credentials"},
            "which is not the name of one of spec.secrets",
        ),
        (
            {"url": URL, "credentialSecret": "acme-tools", "credentialKey": ".."},
            "config.mcp.credentialKey: '..' is not a key of a Secret",
        ),
        (
            {"url": URL, "credentialSecret": "acme-tools", "credentialKey": "missing"},
            "cannot read it",
        ),
        ({"url": URL, "credentialKey": "token"}, "credentialKey needs credentialSecret"),
        (
            {"url": URL, "tools": ["rm -rf"]},
            "config.mcp.tools: 'rm -rf' is not a tool name",
        ),
        (
            {"url": URL, "transport": "stdio"},
            "config.mcp.transport: Input should be 'streamable_http' or 'sse'",
        ),
        ({"url": URL, "command": "sh"}, "config.mcp.command: Extra inputs are not permitted"),
    ],
)
def test_a_bad_mcp_config_is_refused_at_start_in_one_line(
    mcp: dict[str, Any], why: str, tmp_path: Path, secrets_dir: Path
) -> None:
    assert why in refusal(tmp_path, secrets_dir, mcp)


def test_checked_url_accepts_the_urls_a_tenant_writes() -> None:
    for url in (
        URL,
        "http://mcp.tools.svc.cluster.local:8000/mcp",
        "https://[2001:db8::1]:8443/sse",
    ):
        assert checked_url(url) == url
