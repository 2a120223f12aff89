"""`ModelClient`: autogen-core's `ChatCompletionClient` for an OpenAI-compatible endpoint, on the
aiohttp client the runtime already loads.

autogen-ext's `OpenAIChatCompletionClient` brought the `openai` package, its types and a second
HTTP stack: about 20 MiB of an idle runtime with a model, a third of it (docs/benchmarks.md).
What the runtime's kinds and AgentChat ask of a model client is one thing: send a chat, with
or without tools, and read back text or function calls. That is all this does, as one
`POST {baseUrl}/chat/completions`, never streamed.

The endpoint is outside the platform's control, so its answer is read as hostile: at most
`MAX_RESPONSE_BYTES`, never compressed, never redirected, every field type-checked, and its
error text cut short before it reaches a task's error. Nothing a model says is logged.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
import math
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiohttp
from autogen_core import CancellationToken, FunctionCall, Image
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FinishReasons,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,
    ModelFamily,
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel

MAX_RESPONSE_BYTES = 2 * 1024 * 1024
"""The largest answer read from the model's endpoint; a larger one fails the call. Above the
assistant's own limit on a reply (agents.MAX_REPLY_CHARS, 256 Ki characters, up to 6 bytes
each in JSON), so that limit is the one a task meets, with its own message, for any reply the
endpoint could sensibly send; low enough that parsing one (up to ~25 times its size in
objects, for JSON of empty objects) cannot take a runtime's memory with a few tasks."""
MAX_ERROR_BYTES = 64 * 1024
"""What is read of a failed call's answer: enough for any provider's error object."""
MAX_ERROR_CHARS = 500
"""How much of an endpoint's error message a failed call repeats."""
MAX_TOOL_CALLS = 64
"""The most function calls one reply may ask for. Each is answered (refused past the MCP
tools' own limit, and audited) and sent back to the model with its result: the bound of what
one reply makes the runtime write and send."""
MAX_CALL_ID_CHARS = 256
RETRY_DELAY_SECONDS = 0.5
MAX_RETRY_DELAY_SECONDS = 5.0
"""The longest `Retry-After` honoured before the one retry; a longer one is cut to this."""
RETRIED_STATUSES = frozenset({408, 409, 429})  # and every 5xx

# For model names autogen's table does not know (any OpenAI-compatible server's own models):
# claim nothing beyond plain chat.
PLAIN_CHAT_MODEL = ModelInfo(
    vision=False,
    function_calling=False,
    json_output=False,
    family=ModelFamily.UNKNOWN,
    structured_output=False,
)

_NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_FINISH_REASONS: dict[str, FinishReasons] = {
    "stop": "stop",
    "end_turn": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "function_calls",
    "function_calls": "function_calls",
    "content_filter": "content_filter",
}


class ModelCallError(RuntimeError):
    """The model's endpoint could not be used. Subclasses are named as the `openai` package
    named its errors, so a task's error reads as it did before this client."""


class APIConnectionError(ModelCallError):
    pass


class APITimeoutError(ModelCallError):
    pass


class APIStatusError(ModelCallError):
    pass


class BadReply(ModelCallError):
    """The endpoint answered 2xx with something that is not a chat completion."""


def known_model_info(model: str) -> ModelInfo | None:
    """What autogen's table says of a model name (OpenAI's, Anthropic's, Gemini's... models), or
    None for a name it does not know (any OpenAI-compatible server's own models)."""
    try:
        info: ModelInfo = _model_table().get_info(model)
    except ValueError:  # "model_info is required when model name is not a valid OpenAI model"
        return None
    return info


@functools.cache
def _model_table() -> Any:
    """autogen-ext's table of models, as its OpenAI client reads it: pinned with autogen-ext, so
    a name it knows claims here what it claimed there. The file imports only autogen-core, but
    its package imports the `openai` package, so it is loaded alone, from where autogen-ext
    keeps it."""
    models = importlib.util.find_spec("autogen_ext.models")
    locations = list(models.submodule_search_locations or []) if models else []
    path = Path(locations[0]) / "openai" / "_model_info.py" if locations else None
    spec = path and importlib.util.spec_from_file_location("tenantry_runtime._model_table", path)
    if not spec or spec.loader is None:
        raise ImportError("autogen-ext's table of models is not installed")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    return table


class ModelClient(ChatCompletionClient):
    """A chat client for one model behind an OpenAI-compatible `/chat/completions`."""

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key: str,
        timeout_seconds: float,
        model_info: ModelInfo,
    ) -> None:
        self._model = model
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._info = model_info
        self._session: aiohttp.ClientSession | None = None
        self._total = RequestUsage(prompt_tokens=0, completion_tokens=0)
        self._actual = RequestUsage(prompt_tokens=0, completion_tokens=0)

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop (the client is built before it).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self._api_key}",
                    "Accept-Encoding": "identity",
                },
                timeout=self._timeout,
                auto_decompress=False,
            )
        return self._session

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        body = request_body(self._model, messages, tools, tool_choice, json_output)
        body.update({k: v for k, v in extra_create_args.items() if k not in body})
        call = asyncio.ensure_future(self._exchange(body))
        if cancellation_token is not None:
            cancellation_token.link_future(call)
        result = await call
        self._total = add_usage(self._total, result.usage)
        self._actual = add_usage(self._actual, result.usage)
        return result

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = [],
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """The whole reply as one chunk, then the result: the endpoint is never streamed from."""
        result = await self.create(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        )
        if isinstance(result.content, str) and result.content:
            yield result.content
        yield result

    async def _exchange(self, body: dict[str, Any]) -> CreateResult:
        """One POST, and one retry when the endpoint could not be reached or asked for it."""
        for attempt in (1, 2):
            try:
                return await self._post(body)
            except _Retryable as retry:
                if attempt == 2:
                    raise retry.error from None
                await asyncio.sleep(retry.delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post(self, body: dict[str, Any]) -> CreateResult:
        try:
            async with self._client().post(self._url, json=body, allow_redirects=False) as answer:
                status = answer.status
                failed = status >= 300
                data = await _read_at_most(
                    answer, MAX_ERROR_BYTES if failed else MAX_RESPONSE_BYTES
                )
                retry_after = answer.headers.get("Retry-After", "")
        except TimeoutError:
            raise APITimeoutError("Request timed out.") from None
        except aiohttp.ClientError:
            raise _Retryable(APIConnectionError("Connection error."), RETRY_DELAY_SECONDS) from None
        if failed:
            error = APIStatusError(
                f"Error code: {status} - {error_message(data[:MAX_ERROR_BYTES])}"
            )
            if status in RETRIED_STATUSES or status >= 500:
                raise _Retryable(error, retry_delay(retry_after))
            raise error
        if len(data) > MAX_RESPONSE_BYTES:
            raise BadReply(f"the model's endpoint answered more than {MAX_RESPONSE_BYTES} bytes")
        return read_completion(data)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def actual_usage(self) -> RequestUsage:
        return self._actual

    def total_usage(self) -> RequestUsage:
        return self._total

    def count_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """An estimate (four characters a token): this client has no tokenizer."""
        text = json.dumps([*chat(messages), *(tool_dict(tool) for tool in tools)])
        return len(text) // 4

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = []
    ) -> int:
        """An estimate against a context of 128,000 tokens, whatever the model's is."""
        return max(0, 128_000 - self.count_tokens(messages, tools=tools))

    @property
    def capabilities(self) -> ModelCapabilities:
        return ModelCapabilities(
            vision=self._info["vision"],
            function_calling=self._info["function_calling"],
            json_output=self._info["json_output"],
        )

    @property
    def model_info(self) -> ModelInfo:
        return self._info


class _Retryable(Exception):
    def __init__(self, error: ModelCallError, delay: float) -> None:
        super().__init__(str(error))
        self.error, self.delay = error, delay


async def _read_at_most(answer: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's body, never inflated, read no further than `limit` + 1 bytes (one more than
    the caller takes tells it the body was longer)."""
    encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise BadReply(
            f"the model's endpoint answered in {encoding[:40]!r}, which was not asked for"
        )
    data = bytearray()
    async for chunk in answer.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            break
    return bytes(data[: limit + 1])


def retry_delay(retry_after: str) -> float:
    """How long to wait before the retry: what `Retry-After` asks (in seconds), within bounds."""
    try:
        asked = float(retry_after)
    except ValueError:
        return RETRY_DELAY_SECONDS
    if math.isnan(asked) or asked < 0:
        return RETRY_DELAY_SECONDS
    return min(asked, MAX_RETRY_DELAY_SECONDS)


def add_usage(total: RequestUsage, usage: RequestUsage) -> RequestUsage:
    return RequestUsage(
        prompt_tokens=total.prompt_tokens + usage.prompt_tokens,
        completion_tokens=total.completion_tokens + usage.completion_tokens,
    )


def request_body(
    model: str,
    messages: Sequence[LLMMessage],
    tools: Sequence[Tool | ToolSchema],
    tool_choice: Tool | Literal["auto", "required", "none"],
    json_output: bool | type[BaseModel] | None,
) -> dict[str, Any]:
    """The JSON of one chat completion request."""
    body: dict[str, Any] = {"model": model, "stream": False, "messages": chat(messages)}
    if tools:
        body["tools"] = [tool_dict(tool) for tool in tools]
        if isinstance(tool_choice, str):
            body["tool_choice"] = tool_choice
        else:
            body["tool_choice"] = {"type": "function", "function": {"name": tool_choice.name}}
    if json_output is True:
        body["response_format"] = {"type": "json_object"}
    elif isinstance(json_output, type) and issubclass(json_output, BaseModel):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": json_output.__name__,
                "schema": json_output.model_json_schema(),
                "strict": False,
            },
        }
    return body


def chat(messages: Sequence[LLMMessage]) -> list[dict[str, Any]]:
    """The messages as the endpoint takes them: each function's result one message, system
    messages next to each other one (some endpoints refuse two)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, FunctionExecutionResultMessage):
            out.extend(
                {"role": "tool", "content": result.content, "tool_call_id": result.call_id}
                for result in message.content
            )
        elif isinstance(message, SystemMessage):
            if out and out[-1]["role"] == "system":
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n{message.content}"}
            else:
                out.append({"role": "system", "content": message.content})
        else:
            out.append(message_dict(message))
    return out


def message_dict(message: UserMessage | AssistantMessage) -> dict[str, Any]:
    if isinstance(message, UserMessage):
        item: dict[str, Any] = {"role": "user", "content": user_content(message.content)}
        if _NAME_RE.fullmatch(message.source):  # a name the endpoint takes; else none
            item["name"] = message.source
        return item
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    return {
        "role": "assistant",
        "content": message.thought,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.content
        ],
    }


def user_content(content: str | list[str | Image]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [
        {"type": "text", "text": part} if isinstance(part, str) else part.to_openai_format()
        for part in content
    ]


def tool_dict(tool: Tool | ToolSchema) -> dict[str, Any]:
    schema: Mapping[str, Any] = tool.schema if isinstance(tool, Tool) else tool
    function: dict[str, Any] = {
        "name": schema["name"],
        "description": schema.get("description", ""),
        "parameters": schema.get("parameters", {"type": "object", "properties": {}}),
        "strict": schema.get("strict", False),
    }
    return {"type": "function", "function": function}


def error_message(data: bytes) -> str:
    """The endpoint's own message for a failed call (`{"error": {"message"}}`), cut short."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    said = error.get("message") if isinstance(error, dict) else error
    text = said if isinstance(said, str) else data.decode("utf-8", "replace")
    flat = " ".join(text.split())  # of at most MAX_ERROR_BYTES read
    # It reaches a task's error and the pod's log: no escape sequence, NUL or bidi override.
    shown = "".join(char if char.isprintable() else "\ufffd" for char in flat[:MAX_ERROR_CHARS])
    return shown + ("…" if len(flat) > MAX_ERROR_CHARS else "")


def read_completion(data: bytes) -> CreateResult:
    """The first choice of a chat completion: its text, or the function calls it asks for."""
    try:
        parsed = json.loads(data)
    except (ValueError, RecursionError):
        raise BadReply("the model's endpoint answered with no JSON chat completion") from None
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadReply("the model's endpoint answered with no message in its first choice")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadReply("the model's message has content that is not text")
    reasoning = message.get("reasoning_content")
    thought = reasoning if isinstance(reasoning, str) and reasoning else None
    calls = message.get("tool_calls")
    reason = choice.get("finish_reason")  # type: ignore[union-attr]
    finish: FinishReasons = (
        _FINISH_REASONS.get(reason, "unknown") if isinstance(reason, str) else "unknown"
    )
    usage = parsed.get("usage")
    result_usage = RequestUsage(
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
    )
    if calls:
        asked = _list(calls)
        if len(asked) > MAX_TOOL_CALLS:
            raise BadReply(f"the model asked for more than {MAX_TOOL_CALLS} tool calls at once")
        return CreateResult(
            finish_reason="function_calls",
            content=[function_call(call) for call in asked],
            usage=result_usage,
            cached=False,
            thought=content or thought,
        )
    return CreateResult(
        finish_reason=finish,
        content=content or "",
        usage=result_usage,
        cached=False,
        thought=thought,
    )


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise BadReply("the model's tool_calls are not a list")
    return value


def function_call(call: Any) -> FunctionCall:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise BadReply("a tool call of the model names no function")
    call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise BadReply("a tool call of the model has no id or name")
    if len(call_id) > MAX_CALL_ID_CHARS:
        raise BadReply(f"a tool call's id is longer than {MAX_CALL_ID_CHARS} characters")
    if not isinstance(arguments, str):
        try:
            arguments = json.dumps(arguments)
        except RecursionError:
            raise BadReply("a tool call's arguments nest too deeply") from None
    # As autogen-ext's client does: a name the endpoint would refuse back is made one it takes.
    name = re.sub(r"[^a-zA-Z0-9_-]", "_", name)[:64]
    return FunctionCall(id=call_id, name=name, arguments=arguments)


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
        return value
    return 0  # a count no model spends
