"""How the operator's requests reach the API server: lightkube's client, carried by aiohttp.

lightkube sends through httpx, and httpx through its own connection pool (httpcore), which
checks every pooled connection before each request and keeps at most 20 of them open between
requests, so a burst opens new TLS connections again and again. While the operator provisioned
300 tenants, a py-spy profile found 45 % of its CPU in lightkube's requests, 27 % in httpcore
alone; per server-side apply, the client's CPU was 1.50 ms through httpcore and 0.85 ms through
the transport below (docs/benchmarks.md). aiohttp is loaded anyway: Kopf's own client uses it.

Only the carrying changes. lightkube still reads the configuration and does the credentials
(kubeconfig, the in-cluster token it re-reads on a 401, exec plugins), httpx still builds each
request, follows the authentication flow and decodes what the server compressed, and every
failure reaches lightkube as the httpx error it handles (a watch broken inside its body is
retried, a refusal is an ApiError).

The writes a pass makes for every tenant (its children's applies, the namespace's create, its
status and its events) skip lightkube and httpx too: `ApiClient.send_json` hands their JSON to
the aiohttp session itself, with the credentials httpx last sent through it. Building each
request through httpx and lightkube cost about as much CPU again as carrying it (0.93-1.06 ms
a server-side apply against 0.49-0.55 ms this way, bench/findings.md), and the operator makes
some eighteen of them a tenant. A 401 (a token rotated or expired) is sent again through httpx, whose
authentication flow reads the new one; so is every write while no request has shown the
credentials yet, and every write through a proxy.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx2
import msgspec
import yarl
from aiohttp.http_exceptions import HttpProcessingError

# httpx's own reading of the proxy environment, so that this client is used exactly where
# httpx would not have proxied (httpx2 does not export them).
from httpx2._utils import URLPattern, get_environment_proxies
from lightkube import AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource, NamespacedSubResource

from tenantry import __version__

# Connections to the API server at once, watches included: httpx's limit, which the operator
# has always run with (8 reconciles writing up to 16 children at once, a few watches).
CONNECTIONS = 100
# Seconds for each step of a write sent past httpx (waiting for a connection, connecting, each
# read of its answer), and for the whole of it: lightkube's default timeout (10 s for each of
# pool, connect, write and read), as the transport bounds a request httpx sent.
WRITE_LIMIT = 10.0
WRITE_BUDGET = 4 * WRITE_LIMIT
WRITE_TIMEOUTS = aiohttp.ClientTimeout(
    total=None, connect=WRITE_LIMIT, sock_connect=WRITE_LIMIT, sock_read=WRITE_LIMIT
)
# Seconds an idle connection stays open (httpx: 5). Long enough for a burst's requests to reuse
# it; short enough that an idle operator holds none of a burst's connections by the time it
# trims its heap (tenantry.memory, 5 s after the last event): asyncio keeps a 256 KiB read
# buffer for each TLS connection, and with 5 s the operator was read at 104 MiB idle after 300
# tenants instead of 81 (docs/benchmarks.md).
KEEPALIVE_SECONDS = 2.0
# The User-Agent of the writes sent past httpx, so that an audit log names who made them.
USER_AGENT = f"tenantry/{__version__}"
# A header a request carries: (name, value).
Header = tuple[str, str]


def api_client(config: KubeConfig | SingleConfig | None = None) -> ApiClient:
    """lightkube's AsyncClient, as `AsyncClient()` makes it from the environment (or CONFIG),
    sending through aiohttp.

    When the environment names a proxy for the API server (HTTPS_PROXY and NO_PROXY), lightkube's
    own httpx client is used instead: it honours them, and this transport does not.
    """
    if config is None:
        config = KubeConfig.from_env()
    single = config if isinstance(config, SingleConfig) else config.get()
    assert single is not None, "no kubeconfig context"  # get() raises ConfigError first
    if proxied(single.cluster.server):
        return ApiClient(single, None)
    user = single.user
    assert user is not None, "a kubeconfig context without a user"  # lightkube asserts it too
    context = verify_cluster(single.cluster, user, single.abs_file)
    return ApiClient(single, AiohttpTransport(context))


class ApiClient(AsyncClient):
    """lightkube's AsyncClient, and `send_json` for the operator's hot writes (see the module)."""

    def __init__(self, config: SingleConfig, transport: AiohttpTransport | None) -> None:
        super().__init__(config=config, transport=transport)
        self._server = config.cluster.server.rstrip("/")
        self._transport = transport

    async def send_json(
        self, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> dict[str, Any]:
        """Send BODY to the API server's PATH (with its query, each part quoted: `api_path`) and
        return its answer; a refusal raises what lightkube raises (an ApiError when the answer is
        a Status, else httpx's HTTPStatusError), a broken exchange httpx's error for it."""
        if not path.startswith("/"):  # "@host/…" would send the credentials to another host
            raise ValueError(f"not a path on the API server: {path[:100]!r}")
        content = msgspec.json.encode(body)
        headers = [
            ("Content-Type", content_type),
            ("Accept", "application/json"),
            ("User-Agent", USER_AGENT),
        ]
        url = self._server + path
        transport = self._transport
        if transport is not None and transport.credentials is not None:
            status, answer, kind = await transport.send_bytes(
                method, url, content, [*headers, *transport.credentials]
            )
            if status != 401:
                return answered(method, url, status, answer, kind)
        # No credentials seen yet, a 401, or a proxy: httpx's authentication flow and transport.
        http: httpx2.AsyncClient = self._client._client  # lightkube's, as watches.events uses it
        response = await http.request(method, path, content=content, headers=headers)
        return answered(
            method,
            url,
            response.status_code,
            response.content,
            response.headers.get("Content-Type", ""),
        )


def api_path(
    resource: Any, namespace: str | None = None, name: str | None = None, **query: str
) -> str:
    """The path of the objects of a lightkube RESOURCE class (in NAMESPACE when given), of the
    one named NAME, or of its subresource (`AgentTenantResource.Status`), with QUERY. Each part
    is one segment whatever it holds (`segment`), each value of QUERY one value."""
    info = resource._api_info
    kind = info.parent or info.resource  # a subresource's path is its parent's, then its own
    if bool(namespace) != issubclass(resource, (NamespacedResource, NamespacedSubResource)):
        raise ValueError(f"{info.resource.kind} {name}: a namespace exactly when it is namespaced")
    parts = [*(("namespaces", namespace) if namespace else ()), info.plural]
    parts += [name] if name is not None else []
    parts += [info.action] if info.action else []
    path = (
        f"/apis/{kind.group}/{kind.version}" if kind.group else f"/api/{kind.version}"
    ) + "".join("/" + segment(part) for part in parts)
    if query:
        path += "?" + "&".join(f"{key}={quote(value, safe='')}" for key, value in query.items())
    return path


def segment(part: str) -> str:
    """PART as one segment of a path: quoted whole, and "." or ".." (which a URL's reader may
    take for this or the parent segment) with their dots encoded too. An empty one would name
    the collection instead: refused."""
    if not part:
        raise ValueError("an empty name or namespace in an API path")
    return quote(part, safe="") if part.strip(".") else "%2E" * len(part)


def answered(method: str, url: str, status: int, content: bytes, kind: str) -> dict[str, Any]:
    """The API server's answer (an object), or the error lightkube would raise for it: an
    ApiError for a Status, httpx's HTTPStatusError for any other answer but a 2xx object (a 3xx
    from something in front of the API server among them)."""
    result = msgspec.json.decode(content) if 200 <= status < 300 and content else None
    if isinstance(result, dict):
        return result
    request = httpx2.Request(method, url)
    response = httpx2.Response(
        status, content=content, headers={"Content-Type": kind}, request=request
    )
    if status >= 300 and kind == "application/json":  # a Status: lightkube's test, exactly
        raise ApiError(request=request, response=response)
    raise httpx2.HTTPStatusError(
        f"{status} from {method} {url}" + (", not an object" if status < 300 else ""),
        request=request,
        response=response,
    )


def proxied(server: str) -> bool:
    """Whether httpx would send requests to SERVER through a proxy from the environment.

    As httpx decides (AsyncClient._transport_for_url): the most specific pattern that matches.
    urllib's reading differs: no CIDR ("10.0.0.0/8", common in-cluster), no "*.example.com",
    and ".example.com" exempts example.com itself, which httpx proxies.
    """
    url = httpx2.URL(server)
    patterns = sorted((URLPattern(key), proxy) for key, proxy in get_environment_proxies().items())
    return next((proxy is not None for pattern, proxy in patterns if pattern.matches(url)), False)


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """An httpx transport that sends each request, as httpx built it, through one aiohttp session."""

    def __init__(self, context: ssl.SSLContext, connections: int = CONNECTIONS) -> None:
        self._context = context
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        # The Authorization header of the last request httpx sent (none with a client
        # certificate), for the writes ApiClient.send_json sends itself; None before the first.
        self.credentials: tuple[Header, ...] | None = None
        self._closed = False

    def _opened(self) -> aiohttp.ClientSession:
        # Made at the first request, inside the event loop that will use it.
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=self._context,
                    limit=self._connections,
                    keepalive_timeout=KEEPALIVE_SECONDS,
                ),
                # httpx's headers are sent as they are, and httpx decodes the body by them.
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        limits = request.extensions.get("timeout") or {}
        body = await request.aread()
        headers = request.headers.multi_items()
        self.credentials = tuple((k, v) for k, v in headers if k.lower() == "authorization")
        # aiohttp has no write timeout, and its read timeout starts once the body is sent: a
        # peer that stops reading would hold a write forever. Sending and the answer's head are
        # bounded by httpx's four limits together (a watch, with no read limit, is not).
        parts: list[float | None] = [limits.get(k) for k in ("pool", "connect", "write", "read")]
        budget = sum(p for p in parts if p is not None) if None not in parts else None
        try:
            async with asyncio.timeout(budget):
                response = await self._opened().request(
                    request.method,
                    # httpx has encoded it already (a label selector's `=` as %3D): sent as is.
                    yarl.URL(str(request.url), encoded=True),
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=None,
                        connect=limits.get("pool"),
                        sock_connect=limits.get("connect"),
                        sock_read=limits.get("read"),
                    ),
                )
        except (aiohttp.ClientError, HttpProcessingError) as error:
            raise as_httpx_error(error, request) from error
        except TimeoutError as error:  # the budget's, not aiohttp's (a ClientError)
            raise httpx2.WriteTimeout("no answer in time", request=request) from error
        return httpx2.Response(
            response.status,
            headers=list(response.raw_headers),
            stream=ResponseBody(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode(),
            },
        )

    async def send_bytes(
        self, method: str, url: str, content: bytes, headers: list[Header]
    ) -> tuple[int, bytes, str]:
        """Send one request with a body and read its whole answer: (status, body, its
        Content-Type). Bounded as a lightkube request of the same client is: each step by
        WRITE_LIMIT, the whole by WRITE_BUDGET."""
        if self._closed:  # as httpx refuses a closed client's requests
            raise RuntimeError("cannot send a request: the client has been closed")
        try:
            async with asyncio.timeout(WRITE_BUDGET):
                async with self._opened().request(
                    method,
                    yarl.URL(url, encoded=True),
                    headers=headers,
                    data=content,
                    allow_redirects=False,
                    timeout=WRITE_TIMEOUTS,
                ) as response:
                    answer = await response.read()
                    return response.status, answer, response.headers.get("Content-Type", "")
        except (aiohttp.ClientError, HttpProcessingError) as error:
            raise as_httpx_error(error, httpx2.Request(method, url)) from error
        except TimeoutError as error:
            raise httpx2.WriteTimeout(
                "no answer in time", request=httpx2.Request(method, url)
            ) from error

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


class ResponseBody(httpx2.AsyncByteStream):
    """A response's body as aiohttp reads it, chunk by chunk (a watch is one long body)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx2.Request) -> None:
        self._response = response
        self._request = request
        # On a malformed chunk header aiohttp's C parser closes the connection but leaves the
        # body neither ended nor failed, with no read timeout left: a read would wait forever.
        # So the body fails when its connection is lost before its end.
        # (A protocol with nothing buffered is falsy: `is None`, never truthiness.)
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        self._closed = protocol.closed if protocol is not None else None
        if self._closed is None:
            self._connection_lost()  # lost already (or released after the whole body)
        else:
            self._closed.add_done_callback(self._connection_lost)
            # Once per connection, however many bodies it carries.
            self._closed.remove_done_callback(seen)
            self._closed.add_done_callback(seen)

    def _connection_lost(self, closed: asyncio.Future[None] | None = None) -> None:
        content = self._response.content
        if not content.is_eof() and content.exception() is None:
            content.set_exception(aiohttp.ClientPayloadError("connection lost inside the body"))

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, HttpProcessingError, TimeoutError) as error:
            raise as_httpx_error(error, self._request) from error

    async def aclose(self) -> None:
        if self._closed is not None:
            self._closed.remove_done_callback(self._connection_lost)
        # A body read to its end leaves the connection to the next request; one left unread (a
        # watch stopped) closes it.
        self._response.release()


def seen(closed: asyncio.Future[None]) -> None:
    """Take note of how a connection closed: asyncio logs a future's error nobody retrieved,
    and a connection lost with one is an event for the body reading it, not for the log."""
    if not closed.cancelled():
        closed.exception()


def as_httpx_error(error: BaseException, request: httpx2.Request) -> httpx2.TransportError:
    """The httpx error lightkube expects for what aiohttp raised (a watch retries on any)."""
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx2.ConnectError(message, request=request)
    if isinstance(error, aiohttp.ConnectionTimeoutError):  # waiting for the pool, or connecting
        return httpx2.PoolTimeout(message, request=request)
    if isinstance(error, TimeoutError):
        return httpx2.ReadTimeout(message, request=request)
    answer_broke = (
        aiohttp.ServerDisconnectedError,
        aiohttp.ClientPayloadError,
        aiohttp.ClientResponseError,
        HttpProcessingError,
    )
    if isinstance(error, answer_broke):
        return httpx2.RemoteProtocolError(message, request=request)
    return httpx2.ReadError(message, request=request)


def status_code(error: BaseException) -> int | None:
    """The HTTP status of a refusal as lightkube raises it, None for an error with no answer.

    lightkube raises an ApiError only for an answer that is a JSON Status; any other refusal
    stays httpx's HTTPStatusError. The API server answers a request for a group it does not
    serve (a CustomResourceDefinition not installed) with a plain-text 404, so `except
    ApiError` missed exactly that one: an operator whose --template-kinds named such a kind
    never got past its first list, and reconciled no tenant at all.
    """
    if isinstance(error, ApiError):  # an ERROR event inside a watch carries no response
        return error.status.code
    if isinstance(error, httpx2.HTTPStatusError):
        return error.response.status_code
    return None
