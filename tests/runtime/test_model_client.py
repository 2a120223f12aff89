"""The runtime's model client (model_client.py) against a real HTTP endpoint on loopback: what it
sends, what it takes back, and what it refuses of an endpoint that answers like an attacker
(the endpoint is the tenant's or a provider's; its answer reaches the runtime's memory and a
task's error)."""

from __future__ import annotations

import contextlib
import gzip
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import ToolSchema
from tenantry_runtime.agents import build_model_client
from tenantry_runtime.model_client import (
    MAX_CALL_ID_CHARS,
    MAX_ERROR_CHARS,
    MAX_RESPONSE_BYTES,
    MAX_RETRY_DELAY_SECONDS,
    MAX_TOOL_CALLS,
    APIStatusError,
    BadReply,
    ModelClient,
    retry_delay,
)
from tenantry_runtime.runtime_json import ModelConfig

from e2e.model_server import completion
from tests.support.ports import served

# The endpoint's server runs on the session's loop (its fixture's): so do the tests.
session_loop = pytest.mark.asyncio(loop_scope="session")

Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Endpoint:
    url: str = ""
    answers: list[Answer] = field(default_factory=list)  # one per request, the last repeated
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read() or b"null")
        self.requests.append((request.path, dict(request.headers), body))
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return await answer(request)

    def client(self, model: str = "my-local-llama") -> ModelClient:
        config = ModelConfig(model, f"{self.url}/v1", Path("/unused"))
        client = build_model_client(config, "sk-test", 10)
        assert isinstance(client, ModelClient)
        return client


@pytest_asyncio.fixture(loop_scope="session")
async def endpoint() -> AsyncIterator[Endpoint]:
    endpoint = Endpoint()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", endpoint.handle)
    async with served(app) as endpoint.url:
        yield endpoint


def replying(body: Any, status: int = 200, **headers: str) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return web.Response(body=data, status=status, headers=headers)

    return answer


ASK = [SystemMessage(content="be brief"), UserMessage(content="hello", source="user")]


@session_loop
async def test_a_chat_goes_as_one_plain_request_and_its_text_comes_back(
    endpoint: Endpoint,
) -> None:
    endpoint.answers = [replying(completion("my-local-llama", "hi there"))]
    client = endpoint.client()
    history = [
        SystemMessage(content="be brief"),
        SystemMessage(content="and kind"),
        UserMessage(content="hello", source="user"),
        UserMessage(content="a name no endpoint takes", source="the coder!"),
        AssistantMessage(
            content=[FunctionCall(id="c1", name="lookup", arguments='{"q": 1}')],
            source="assistant",
        ),
        FunctionExecutionResultMessage(
            content=[FunctionExecutionResult(call_id="c1", content="42", name="lookup")]
        ),
    ]
    tool = ToolSchema(name="lookup", description="look up", parameters={"type": "object"})
    result = await client.create(history, tools=[tool])
    await client.close()

    assert (result.content, result.finish_reason) == ("hi there", "stop")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (10, 10)
    assert client.total_usage().prompt_tokens == 10
    path, headers, body = endpoint.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert headers["Accept-Encoding"] == "identity"  # nothing to decompress, see below
    assert body["model"] == "my-local-llama"
    assert body["stream"] is False
    assert body["messages"] == [
        {"role": "system", "content": "be brief\nand kind"},
        {"role": "user", "content": "hello", "name": "user"},
        {"role": "user", "content": "a name no endpoint takes"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": 1}'},
                }
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "look up",
                "parameters": {"type": "object"},
                "strict": False,
            },
        }
    ]
    assert body["tool_choice"] == "auto"


@session_loop
async def test_function_calls_come_back_with_names_an_endpoint_takes(endpoint: Endpoint) -> None:
    reply = completion("m", "")
    reply["choices"][0]["message"] = {
        "role": "assistant",
        "content": "thinking aloud",
        "tool_calls": [
            {
                "id": "a",
                "type": "function",
                "function": {"name": "bad.name/x", "arguments": {"k": 1}},
            }
        ],
    }
    reply["choices"][0]["finish_reason"] = "tool_calls"
    endpoint.answers = [replying(reply)]
    client = endpoint.client()
    result = await client.create(ASK)
    await client.close()
    assert result.content == [FunctionCall(id="a", name="bad_name_x", arguments='{"k": 1}')]
    assert (result.finish_reason, result.thought) == ("function_calls", "thinking aloud")


def first_message(message: Any) -> dict[str, Any]:
    return {"choices": [{"message": message, "finish_reason": "stop"}]}


CALL = {"id": "c", "type": "function", "function": {"name": "t", "arguments": "{}"}}

HOSTILE = {
    "no JSON": (b"<html>hello</html>", "no JSON chat completion"),
    "JSON nested past the recursion limit": (b"[" * 200_000 + b"]" * 200_000, "no JSON"),
    "a list": ([1, 2], "no message"),
    "no choices": ({"choices": []}, "no message"),
    "content that is no text": (first_message({"content": {"a": 1}}), "not text"),
    "tool calls that are no list": (first_message({"tool_calls": {"a": 1}}), "not a list"),
    "a tool call without a function": (first_message({"tool_calls": [{"id": "a"}]}), "no function"),
    "a tool call without an id": (
        first_message({"tool_calls": [{"function": {"name": "x", "arguments": "{}"}}]}),
        "no id or name",
    ),
    # Review: each call is answered (the MCP tools refuse and audit those past their limit)
    # and sent back with its result; a reply of 2 MiB held about 30,000.
    "more tool calls than a reply may ask for": (
        first_message({"tool_calls": [CALL] * (MAX_TOOL_CALLS + 1)}),
        f"more than {MAX_TOOL_CALLS} tool calls",
    ),
    "a tool call id past its length": (
        first_message({"tool_calls": [{**CALL, "id": "i" * (MAX_CALL_ID_CHARS + 1)}]}),
        f"longer than {MAX_CALL_ID_CHARS} characters",
    ),
}


@session_loop
@pytest.mark.parametrize("case", HOSTILE)
async def test_an_answer_that_is_no_chat_completion_fails_the_call_saying_so(
    endpoint: Endpoint, case: str
) -> None:
    body, said = HOSTILE[case]
    endpoint.answers = [replying(body)]
    client = endpoint.client()
    with pytest.raises(BadReply, match=said):
        await client.create(ASK)
    await client.close()
    assert len(endpoint.requests) >= 1


@session_loop
async def test_an_answer_larger_than_the_cap_is_not_read_to_its_end(endpoint: Endpoint) -> None:
    endpoint.answers = [replying(b'{"a": "' + b"x" * (MAX_RESPONSE_BYTES + 1) + b'"}')]
    client = endpoint.client()
    with pytest.raises(BadReply, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
        await client.create(ASK)
    await client.close()


@session_loop
async def test_a_compressed_answer_is_refused_not_inflated(endpoint: Endpoint) -> None:
    """A few kilobytes of gzip inflate to gigabytes: the client asks for none and takes none."""
    bomb = gzip.compress(json.dumps(completion("m", "x" * 1_000_000)).encode())
    endpoint.answers = [replying(bomb, **{"Content-Encoding": "gzip"})]
    client = endpoint.client()
    with pytest.raises(BadReply, match="'gzip', which was not asked for"):
        await client.create(ASK)
    await client.close()


@session_loop
async def test_a_redirect_is_not_followed(endpoint: Endpoint) -> None:
    """The key goes only to the configured endpoint: a redirect elsewhere (here to a path of the
    same stand-in, so the test would see the request) is an error, not a second request."""
    endpoint.requests.clear()

    async def redirect(request: web.Request) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": f"{endpoint.url}/elsewhere"})

    endpoint.answers = [redirect]
    client = endpoint.client()
    with pytest.raises(APIStatusError, match="Error code: 307"):
        await client.create(ASK)
    await client.close()
    assert [path for path, _, _ in endpoint.requests] == ["/v1/chat/completions"]


@session_loop
async def test_an_error_is_retried_once_and_its_text_cut_short(endpoint: Endpoint) -> None:
    endpoint.requests.clear()
    endpoint.answers = [replying({"error": {"message": "overloaded " * 1000}}, status=503)]
    client = endpoint.client()
    with pytest.raises(APIStatusError) as failed:
        await client.create(ASK)
    await client.close()
    assert len(endpoint.requests) == 2
    text = str(failed.value)
    assert text.startswith("Error code: 503 - overloaded overloaded")
    assert len(text) <= len("Error code: 503 - ") + MAX_ERROR_CHARS + 1


@session_loop
async def test_a_retry_that_succeeds_is_the_answer(endpoint: Endpoint) -> None:
    endpoint.requests.clear()
    endpoint.answers = [
        replying({"error": "slow down"}, status=429, **{"Retry-After": "0"}),
        replying(completion("m", "second time lucky")),
    ]
    client = endpoint.client()
    result = await client.create(ASK)
    await client.close()
    assert result.content == "second time lucky"
    assert len(endpoint.requests) == 2


def test_an_endpoint_cannot_hold_a_call_with_retry_after() -> None:
    assert retry_delay("3600") == MAX_RETRY_DELAY_SECONDS
    assert retry_delay("nan") == retry_delay("-1") == retry_delay("soon") == 0.5
    assert retry_delay("1.5") == 1.5


@session_loop
async def test_a_stream_is_the_whole_answer_then_the_result(endpoint: Endpoint) -> None:
    """AgentChat's streaming agents take a client's stream; this one has a single chunk."""
    endpoint.answers = [replying(completion("m", "all at once"))]
    client = endpoint.client()
    chunks = [chunk async for chunk in client.create_stream(ASK)]
    await client.close()
    assert chunks[0] == "all at once"
    assert getattr(chunks[1], "content", None) == "all at once"


@session_loop
async def test_an_error_is_shown_as_one_printable_line(endpoint: Endpoint) -> None:
    """Review: an endpoint's error text reaches the task's error and the pod's plain-text log."""
    said = "\x1b[2J\x1b[1;31mFAKE\nLOG LINE\x00\u202eevil\x07"
    endpoint.answers = [replying({"error": {"message": said}}, status=400)]
    client = endpoint.client()
    with pytest.raises(APIStatusError) as failed:
        await client.create(ASK)
    await client.close()
    assert str(failed.value).isprintable()
    assert "FAKE LOG LINE" in str(failed.value)


@session_loop
@pytest.mark.parametrize("status", [400, 200])
async def test_no_answer_makes_the_client_hold_many_times_the_cap(
    endpoint: Endpoint, status: int
) -> None:
    """Review: an error body as large as the cap was split into millions of strings (183 MiB
    of Python objects), and JSON of empty objects under an 8 MiB cap parsed into 210 MiB. An
    error is read to 64 KiB now and the cap is 2 MiB (about 50 MiB at worst): a bound on what
    one answer makes this process allocate (tracemalloc counts allocations, not time)."""
    if status == 400:
        body = b"ab " * (MAX_RESPONSE_BYTES // 3)
    else:
        pad = b"{}," * ((MAX_RESPONSE_BYTES - 100) // 3 - 1) + b"{}"
        body = b'{"choices":[{"message":{"content":"ok"}}],"pad":[' + pad + b"]}"
    endpoint.answers = [replying(body, status=status)]
    client = endpoint.client()
    tracemalloc.start()
    try:
        with contextlib.suppress(APIStatusError):
            await client.create(ASK)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await client.close()
    mib = 1024 * 1024
    # A runtime's memory limit is 1 GiB by default, shared by up to 64 tasks in flight.
    assert peak < (8 * mib if status == 400 else 64 * mib), peak


@session_loop
async def test_usage_no_model_spends_counts_nothing(endpoint: Endpoint) -> None:
    reply = completion("m", "ok")
    reply["usage"] = {"prompt_tokens": int("9" * 4000), "completion_tokens": -3}
    endpoint.answers = [replying(reply)]
    client = endpoint.client()
    result = await client.create(ASK)
    await client.close()
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (0, 0)
