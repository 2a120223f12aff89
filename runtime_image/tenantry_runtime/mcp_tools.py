"""The tools of a tenant's MCP server, for the built-in assistant: its optional `mcp` config, and
the model loop that runs the model's function calls through that server, each one audited.

    {"mcp": {"url": "https://tools.acme.example/mcp", "transport": "streamable_http",
             "credentialSecret": "acme-tools", "credentialKey": "token", "tools": ["lookup"]}}

The credential is read once, at start-up, from the one Secret the config names (the runtime
mounts it; the sandbox never does) and sent as `Authorization: Bearer <it>`. Each turn of a task
that reaches the model opens one MCP session (autogen-ext's server parameters, the `mcp`
package's transports and client session), lists the server's tools, offers the model the ones it
may call, and closes the session when the model answers in text. Nothing of `mcp` is imported
until a turn needs it: a runtime whose assistant has no `mcp` config never loads it.

Why not autogen-ext's `McpWorkbench` or tool adapters: the workbench keeps its session in a task
of its own that a cancelled task cannot stop (a server that never answers the handshake makes
its `stop()` wait forever, and an actor that failed once is never restarted); the adapters build
pydantic models from the server's input schemas and re-validate the model's arguments with
them; its session helper takes no HTTP client, so a response could not be bounded; and the mcp
client's `call_tool` validates results against the server's output schemas with `jsonschema`,
whose regular expressions a hostile server chooses. Here the session lives in the task's own
coroutine (cancelled with the task), every HTTP response is bounded, and tool calls are sent as
plain `tools/call` requests. Their answers, and the listing's, are read by types of this module
that take each item as it is (`_ToolAnswer`, `_ToolList`), not by the mcp package's: those check
every item against every kind it could be and keep every failure, so a 4 MiB answer of malformed
items took 1.8 GB and 3.6 s to refuse, more than the runtime's memory.

What the server controls is treated as hostile: the listing is cut to MAX_TOOLS tools with
names that are identifiers (duplicates and others dropped), bounded descriptions and schemas;
a result is cut to MAX_RESULT_CHARS; every request has a timeout; a name the model invents, or
arguments that are not a JSON object, are refused without a call. Each call is audited like a
code run (`tool_call`: the tool, a digest of the arguments, duration, outcome, task id), and
nothing here logs arguments or results.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import string
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import urlsplit

from autogen_core import CancellationToken, FunctionCall
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    LLMMessage,
)
from autogen_core.tools import ParametersSchema, ToolSchema
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .agent_kinds import AgentContext, arguments_digest
from .refusals import ConfigError, shown

if TYPE_CHECKING:
    import httpx
    from mcp import ClientSession

    from .runtime_json import AgentConfig

log = logging.getLogger(__name__)

MAX_TOOL_ROUNDS = 5
"""Replies with function calls per turn; a model that still calls tools after that ends the task."""
MAX_CALLS_PER_REPLY = 8
"""Function calls run from one reply; the rest are refused (as tool errors the model reads)."""
MAX_TOOLS = 64
"""Tools offered to the model; a server listing more (after the allowlist) fails the turn."""
MAX_RESULT_CHARS = 16 * 1024
"""What the model reads of one tool result; the rest is cut, with a note saying so."""
MAX_ARGUMENT_CHARS = 64 * 1024
MAX_DESCRIPTION_CHARS = 1024
MAX_SCHEMA_CHARS = 16 * 1024
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
"""The most one HTTP response from the MCP server may carry (over SSE: one turn's stream)."""
MAX_URL_CHARS = 2048
MAX_CREDENTIAL_CHARS = 8 * 1024

TOOL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""A tool name the model may be offered: what OpenAI-style function names allow, starting with a
letter or '_' (never a name that could be taken for a path, a URL or a command)."""
SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
"""A key of a Secret, hence a file name in its directory ("." and ".." refused separately)."""
_HEADER_SAFE = frozenset(string.ascii_letters + string.digits + string.punctuation + " ")
LIST_TOOLS = "tools/list"
"""The audit's name for listing the server's tools (never a tool's: a '/' is in no tool name)."""


class McpConfig(BaseModel):
    """`config.mcp` of an assistant: the tenant's MCP server and how to reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    url: str = Field(description="The server's endpoint: http(s), no user or password in it.")
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    credential_secret: str | None = Field(
        default=None,
        alias="credentialSecret",
        description="The name (in spec.secrets) of the Secret holding the bearer token.",
    )
    credential_key: str | None = Field(
        default=None,
        alias="credentialKey",
        description="The key of that Secret holding the token (default: token).",
    )
    tools: tuple[str, ...] | None = Field(
        default=None,
        max_length=MAX_TOOLS,
        description="The only tools the model may call (default: every tool the server lists).",
    )
    timeout_seconds: float = Field(
        default=30.0,
        alias="timeoutSeconds",
        gt=0,
        le=600,
        description="How long one request to the server may take.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return checked_url(url)

    @field_validator("credential_key")
    @classmethod
    def _key(cls, key: str | None) -> str | None:
        if key is not None and (not SECRET_KEY_RE.fullmatch(key) or key in (".", "..")):
            raise ValueError(
                f"{shown(key)} is not a key of a Secret: letters, digits, '-', '_' and '.'"
            )
        return key

    @field_validator("tools")
    @classmethod
    def _tools(cls, tools: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in tools or ():
            if not TOOL_NAME_RE.fullmatch(name):
                raise ValueError(
                    f"{shown(name)} is not a tool name: letters, digits, '_' and '-', starting "
                    "with a letter or '_', at most 64 characters"
                )
        return tools

    @model_validator(mode="after")
    def _key_needs_a_secret(self) -> McpConfig:
        if self.credential_key is not None and self.credential_secret is None:
            raise ValueError("credentialKey needs credentialSecret (the Secret it is a key of)")
        return self


class AssistantConfig(BaseModel):
    """The built-in assistant's config: nothing, or the MCP server whose tools it may call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mcp: McpConfig | None = None


def checked_url(url: str) -> str:
    """`url` if the runtime may send the tenant's credential there, else a ValueError saying why."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"must be at most {MAX_URL_CHARS} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise ValueError(f"{shown(url)} must be ASCII without spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        raise ValueError(f"{shown(url)} is not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{shown(url)} must be an http:// or https:// URL")
    if "@" in parts.netloc:
        # Not shown: the password would land in the log, the termination message, the status.
        raise ValueError(
            "holds a user or password (the URL is not shown): name the credential with "
            "credentialSecret instead"
        )
    if not parts.hostname:
        raise ValueError(f"{shown(url)} names no host")
    return url


def read_credential(path: Path, where: str) -> str:
    """The bearer token in `path`, refused (never shown) unless it can be a header value."""
    try:
        credential = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"{where} {path}: cannot read it ({reason})") from exc
    if not credential:
        raise ConfigError(f"{where} {path} is empty")
    if len(credential) > MAX_CREDENTIAL_CHARS:
        raise ConfigError(f"{where} {path} holds more than {MAX_CREDENTIAL_CHARS} characters")
    if not set(credential) <= _HEADER_SAFE:
        # A newline would end the Authorization header and start one the file chooses.
        raise ConfigError(
            f"{where} {path} holds a newline, a control character or a non-ASCII character: "
            "a bearer token is printable ASCII on one line"
        )
    return credential


def secrets_of(config: AssistantConfig) -> tuple[str, ...]:
    """The Secrets an assistant's config names: at most its MCP credential's."""
    if config.mcp is None or config.mcp.credential_secret is None:
        return ()
    return (config.mcp.credential_secret,)


def offers_tools(agents: Iterable[AgentConfig]) -> bool:
    """Whether an agent of the tenant offers its model tools: an assistant with `mcp`."""
    return any(
        isinstance(agent.settings, AssistantConfig) and agent.settings.mcp is not None
        for agent in agents
    )


class McpUnavailable(Exception):
    """The MCP server could not be used for this turn; the message ends the task (502)."""


class _ToolFailed(Exception):
    """The server answered the call with an error result (the text is for the model)."""


class _ResponseTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Offered:
    schemas: list[ToolSchema]
    names: frozenset[str]


class _ToolAnswer(BaseModel):
    """A `tools/call` result as the model is shown it: its content items, each read as it is
    (see `_result_text`), and whether the tool failed."""

    model_config = ConfigDict(extra="ignore")
    content: list[Any]
    isError: bool = False  # MCP's name


class _ToolList(BaseModel):
    """A `tools/list` result: its tools, each read as it is (see `McpTools._offered`)."""

    model_config = ConfigDict(extra="ignore")
    tools: list[Any]


# The kinds of content MCP defines besides text, named to the model when a result has them.
OTHER_CONTENT = frozenset({"image", "audio", "resource", "resource_link"})


class McpTools:
    """One assistant's tools: a session per turn, the model loop, the audit of every call."""

    def __init__(self, config: McpConfig, credential: str | None, context: AgentContext) -> None:
        self._config = config
        self._headers = {"Authorization": f"Bearer {credential}"} if credential else {}
        self._context = context
        self._allowed = None if config.tools is None else frozenset(config.tools)

    @classmethod
    def from_context(cls, config: McpConfig, context: AgentContext) -> McpTools:
        """Reads the credential now, so that a bad one refuses the runtime at start-up."""
        credential = None
        if config.credential_secret is not None:
            key = config.credential_key or "token"
            path = context.secret_dirs[config.credential_secret] / key
            credential = read_credential(path, f"agent {context.name!r}: config.mcp credential")
        return cls(config, credential, context)

    async def complete(
        self,
        model: ChatCompletionClient,
        history: list[LLMMessage],
        task_id: str,
        token: CancellationToken,
    ) -> CreateResult:
        """The model's next text reply, after running the function calls it makes first.

        The calls and their results are appended to `history`. The whole turn runs in a task
        linked to the task's token: a cancelled task (its caller gave up, its timeout passed)
        ends whatever the turn awaits, a server that never answers included."""
        turn = asyncio.ensure_future(self._turn(model, history, task_id, token))
        token.link_future(turn)
        return await turn

    async def _turn(
        self,
        model: ChatCompletionClient,
        history: list[LLMMessage],
        task_id: str,
        token: CancellationToken,
    ) -> CreateResult:
        # Opening the session and listing the tools is audited as one call, `tools/list`: a
        # server that refuses the credential shows there, as an error.
        started, listed = time.monotonic(), False
        failure: Exception | None = None
        result: CreateResult | None = None
        try:
            async with self._session() as session:
                try:
                    tools = await self._list(session)
                    listed = True
                    self._context.record_tool_call(
                        LIST_TOOLS, _EMPTY_DIGEST, started, "ok", task_id
                    )
                    offered = self._offered(tools)
                    result = await self._rounds(session, offered, model, history, task_id, token)
                except Exception as exc:  # ours or the model's: raised as it is, once closed
                    failure = exc
        except Exception as exc:  # the transport's: refused, unreachable, a broken stream
            raise McpUnavailable(f"the MCP server could not be used: {_summary(exc)}") from None
        finally:
            if not listed:
                self._context.record_tool_call(LIST_TOOLS, _EMPTY_DIGEST, started, "error", task_id)
        if failure is not None:
            raise failure
        assert result is not None
        return result

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[ClientSession]:
        # Imported here: only a turn of an assistant with MCP tools loads mcp.
        from autogen_ext.tools.mcp import (  # noqa: PLC0415
            SseServerParams,
            StreamableHttpServerParams,
        )
        from mcp import ClientSession  # noqa: PLC0415
        from mcp.client.sse import sse_client  # noqa: PLC0415
        from mcp.client.streamable_http import streamablehttp_client  # noqa: PLC0415

        timeout = self._config.timeout_seconds
        read_timeout = timedelta(seconds=timeout)
        if self._config.transport == "sse":
            sse = SseServerParams(
                url=self._config.url, headers=self._headers, timeout=timeout, sse_read_timeout=600
            )
            transport = sse_client(
                sse.url,
                headers=sse.headers,
                timeout=sse.timeout,
                sse_read_timeout=sse.sse_read_timeout,
                httpx_client_factory=_bounded_client,
            )
        else:
            http = StreamableHttpServerParams(
                url=self._config.url, headers=self._headers, timeout=timeout, sse_read_timeout=600
            )
            transport = streamablehttp_client(
                http.url,
                headers=http.headers,
                timeout=http.timeout,
                sse_read_timeout=http.sse_read_timeout,
                httpx_client_factory=_bounded_client,
            )
        async with transport as streams:
            read, write = streams[0], streams[1]
            # No sampling, roots or elicitation callbacks: the server cannot make this runtime
            # call the tenant's model or read anything of it (the session's defaults refuse).
            async with ClientSession(read, write, read_timeout_seconds=read_timeout) as session:
                await session.initialize()
                yield session

    async def _list(self, session: ClientSession) -> list[Any]:
        """The server's first page of tools, each as it listed it."""
        from mcp import types  # noqa: PLC0415 - loaded with the session already

        request = types.ClientRequest(types.ListToolsRequest())
        try:
            return (await session.send_request(request, _ToolList)).tools
        except ValidationError as exc:  # no list at all
            raise McpUnavailable(
                f"the MCP server's list of tools could not be read: {_summary(exc)}"
            ) from None

    def _offered(self, listed: Sequence[Any]) -> _Offered:
        """The tools the model may call this turn, from the server's first page of tools."""
        schemas: list[ToolSchema] = []
        # A tool is an object with a name that is text; anything else is dropped before its
        # name is looked up anywhere (a list or an object cannot be).
        named = [t for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str)]
        counts: dict[str, int] = {}
        for tool in named:
            counts[tool["name"]] = counts.get(tool["name"], 0) + 1
        dropped = len(listed) - len(named)
        for tool in named:
            name, parameters = tool["name"], tool.get("inputSchema")
            if self._allowed is not None and name not in self._allowed:
                continue
            # Two tools of one name: which one a call would reach is the server's to decide.
            if (
                not TOOL_NAME_RE.fullmatch(name)
                or counts[name] > 1
                or not isinstance(parameters, dict)
                or parameters.get("type") != "object"
                or len(json.dumps(parameters)) > MAX_SCHEMA_CHARS
            ):
                dropped += 1
                continue
            description = tool.get("description")
            description = (
                description[:MAX_DESCRIPTION_CHARS] if isinstance(description, str) else ""
            )
            schemas.append(
                ToolSchema(
                    name=name,
                    description=description,
                    parameters=cast(ParametersSchema, parameters),
                )
            )
        if dropped:
            # One line per turn, whatever the server lists: its names are not logged.
            log.warning(
                "%d tool(s) of the MCP server are not offered: a name that is no identifier or "
                "is listed twice, or an input schema that is not a bounded JSON object",
                dropped,
            )
        if len(schemas) > MAX_TOOLS:
            raise McpUnavailable(
                f"the MCP server lists {len(schemas)} tools, more than {MAX_TOOLS}: name the ones "
                "the assistant may call in config.mcp.tools"
            )
        return _Offered(schemas, frozenset(schema["name"] for schema in schemas))

    async def _rounds(
        self,
        session: ClientSession,
        offered: _Offered,
        model: ChatCompletionClient,
        history: list[LLMMessage],
        task_id: str,
        token: CancellationToken,
    ) -> CreateResult:
        for rounds in range(MAX_TOOL_ROUNDS + 1):
            created = await model.create(history, tools=offered.schemas, cancellation_token=token)
            if isinstance(created.content, str):
                return created
            if rounds == MAX_TOOL_ROUNDS:
                break
            calls = list(created.content)
            history.append(AssistantMessage(content=calls, source=self._context.name))
            results = [
                await self._call(session, offered, call, index, task_id)
                for index, call in enumerate(calls)
            ]
            history.append(FunctionExecutionResultMessage(content=results))
        raise McpUnavailable(
            f"the model still called tools after {MAX_TOOL_ROUNDS} rounds of tool calls; the "
            "task is ended"
        )

    async def _call(
        self,
        session: ClientSession,
        offered: _Offered,
        call: FunctionCall,
        index: int,
        task_id: str,
    ) -> FunctionExecutionResult:
        name = call.name if TOOL_NAME_RE.fullmatch(call.name) else shown(call.name)

        def answer(content: str, *, error: bool) -> FunctionExecutionResult:
            return FunctionExecutionResult(
                content=content, name=name, call_id=call.id, is_error=error
            )

        refusal, arguments = _refusal(call, offered, index)
        if refusal is not None:
            digest = hashlib.sha256(call.arguments.encode("utf-8", "replace")).hexdigest()
            self._context.record_tool_call(name, digest, time.monotonic(), "refused", task_id)
            return answer(f"refused, not called: {refusal}", error=True)
        assert arguments is not None
        try:
            text = await self._context.call_tool(
                call.name, arguments, lambda: self._send(session, call.name, arguments), task_id
            )
        except _ToolFailed as exc:
            return answer(f"the tool failed: {exc}", error=True)
        except _mcp_error() as exc:  # a JSON-RPC error or a timeout: the model reads it
            return answer(f"the tool call failed: {_summary(exc)}", error=True)
        except ValidationError as exc:  # an answer that is no tool result: the model reads that
            return answer(f"the tool's answer could not be read: {_summary(exc)}", error=True)
        return answer(text, error=False)

    async def _send(self, session: ClientSession, name: str, arguments: dict[str, Any]) -> str:
        from mcp import types  # noqa: PLC0415 - loaded with the session already

        # A plain tools/call: ClientSession.call_tool would validate the result against the
        # server's output schema (jsonschema, with regular expressions the server writes).
        request = types.ClientRequest(
            types.CallToolRequest(
                params=types.CallToolRequestParams(name=name, arguments=arguments)
            )
        )
        result = await session.send_request(request, _ToolAnswer)
        text = _result_text(result.content)
        if result.isError:
            raise _ToolFailed(text)
        return text


_EMPTY_DIGEST = arguments_digest({})


def _refusal(
    call: FunctionCall, offered: _Offered, index: int
) -> tuple[str | None, dict[str, Any] | None]:
    """Why a function call of the model is not made (None: it is), and its arguments."""
    if index >= MAX_CALLS_PER_REPLY:
        return f"at most {MAX_CALLS_PER_REPLY} tool calls are run per reply", None
    if call.name not in offered.names:
        return (
            f"there is no tool {shown(call.name)}; the tools are: {', '.join(sorted(offered.names)) or 'none'}",
            None,
        )
    if len(call.arguments) > MAX_ARGUMENT_CHARS:
        return f"the arguments are longer than {MAX_ARGUMENT_CHARS} characters", None
    try:
        arguments = json.loads(call.arguments or "{}")
    except (ValueError, RecursionError):
        return "the arguments are not JSON", None
    if not isinstance(arguments, dict):
        return "the arguments are not a JSON object", None
    return None, arguments


def _result_text(content: Sequence[Any]) -> str:
    """The text the model reads of a result: its text parts, other parts named, cut to size."""
    parts = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        text = item.get("text") if kind == "text" else None
        if isinstance(text, str):
            parts.append(text)
        else:
            known = isinstance(kind, str) and kind in OTHER_CONTENT
            parts.append(f"[{kind if known else 'unknown'} content omitted]")
    text = "\n".join(parts)
    if len(text) > MAX_RESULT_CHARS:
        text = (
            text[:MAX_RESULT_CHARS]
            + f"\n[tenantry: the tool's result was cut at {MAX_RESULT_CHARS} of {len(text)} characters]"
        )
    return text


def _summary(exc: BaseException) -> str:
    """One printable line about a failure, from the first leaf of an exception group (anyio's)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ValidationError):  # its text lists every failure, with the input
        return f"ValidationError: {exc.error_count()} validation error(s)"
    lines = str(exc).splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:300])


def _mcp_error() -> type[Exception]:
    from mcp import McpError  # noqa: PLC0415 - loaded with the session already

    return McpError


def _bounded_client(
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.AsyncClient:
    """mcp's HTTP client, but every response body is cut off after MAX_RESPONSE_BYTES: a server
    cannot make the runtime hold more of one answer in memory."""
    import httpx  # noqa: PLC0415

    class BoundedStream(httpx.AsyncByteStream):
        def __init__(self, stream: httpx.AsyncByteStream) -> None:
            self._stream = stream

        async def __aiter__(self) -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in self._stream:
                seen += len(chunk)
                if seen > MAX_RESPONSE_BYTES:
                    raise _ResponseTooLarge(
                        f"a response of the MCP server is larger than {MAX_RESPONSE_BYTES} bytes"
                    )
                yield chunk

        async def aclose(self) -> None:
            await self._stream.aclose()

    class BoundedTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            stream = cast(httpx.AsyncByteStream, response.stream)
            return httpx.Response(
                status_code=response.status_code,
                headers=response.headers,
                stream=BoundedStream(stream),
                extensions=response.extensions,
            )

        async def aclose(self) -> None:
            await self._inner.aclose()

    return httpx.AsyncClient(
        headers=headers, timeout=timeout, auth=auth, transport=BoundedTransport()
    )
