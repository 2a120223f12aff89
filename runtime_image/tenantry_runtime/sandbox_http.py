"""The sandbox's HTTP/1.1 server: asyncio streams and h11's state machine, and nothing more.

The sandbox served with aiohttp, whose package brings its client along: 16 of the process's 40
MiB (bench/findings.md). Here h11 parses and frames and this module bounds what a client may
make the server hold, since the server is reachable by the tenant's runtime and by the code it
runs (the same pod, on loopback); docs/security.md lists what holds, and
tests/runtime/test_sandbox_http.py tries each against a real server:

- A request head is refused with 431 once 16 KiB of it is buffered without its end (h11), so
  no head longer than that plus one read is ever parsed.
- A body is read only when its handler asks (`Request.body`, after the token is checked): a
  request is answered 401 without waiting for its body, and `100 Continue` is sent only then.
  A declared length over the limit is answered 413 at once; a chunked body is counted as it
  arrives and answered 413 as soon as it passes the limit, never buffered whole.
- From its first byte, a request must arrive whole within `REQUEST_SECONDS` (408 otherwise), so
  a client that trickles its head or stalls in its body holds a connection for no longer; an
  idle connection is closed after `IDLE_SECONDS`; an answer the client does not read within
  `REQUEST_SECONDS` ends the connection.
- At most `MAX_CONNECTIONS` are open; a new one beyond them closes the connection idle the
  longest, or is answered 503 when every one is in a request (each has its own time limit).
- A connection is kept for the next request only when its request was read to its end; any
  other answer closes it, reading and dropping what the client still sends for a moment first,
  so that it reads the answer rather than a reset.
- On SIGTERM (`serve(stop=...)`) the server closes the connections that are not in a request,
  answers the requests being handled (waiting up to the `shutdown_seconds` its caller gives),
  and returns. It keeps its port until then, answering new connections 503: let go while runs
  are in flight, the port could be taken by one of them (the server's uid, which may send it
  that SIGTERM), and the runtime's next request, its token in it, would be that run's to read
  (and to answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import h11

log = logging.getLogger(__name__)

HEAD_BYTES = 16 * 1024
"""The most of an unfinished request head held (h11's own default); the runtime's are about
250 bytes."""
REQUEST_SECONDS = 10.0
"""From a request's first byte to its last, and for the client to take its answer. The runtime
sends at most about 130 KiB at once, in milliseconds; this only bounds how long a stalled or
trickling client keeps its connection."""
IDLE_SECONDS = 75.0
"""How long a kept connection waits for its next request: aiohttp's default, which the sandbox
had before, and above the 15 s for which the runtime's client pool keeps one, so the server does
not close a connection just as the client reuses it."""
MAX_CONNECTIONS = 128
"""Open connections at most. Each costs a socket and a few KiB; the bound keeps file descriptors
for the runs (pipes, the code's memfd). The runtime needs a few."""
LINGER_SECONDS = 5.0
"""How long an answered connection still reads (and drops) what its client sends, before it
closes: closing with unread data resets the connection, and the client may lose the answer."""
_READ_BYTES = 16 * 1024


class Refused(Exception):
    """Answer the request with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def json_response(payload: object, status: int = 200) -> Response:
    # json.dumps' default separators: the bodies stay byte for byte what aiohttp sent.
    return Response(status, json.dumps(payload).encode(), "application/json; charset=utf-8")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _plain(status: int, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """404 and 405 as aiohttp answered them."""
    text = f"{status}: {HTTPStatus(status).phrase}"
    return Response(status, text.encode(), "text/plain; charset=utf-8", headers)


class Request:
    """One request whose head has arrived; its body is read only if a handler asks."""

    def __init__(self, event: h11.Request, path: tuple[str, ...], connection: _Connection) -> None:
        self.method = event.method.decode("ascii")
        self.path = path
        """The path's segments, each percent-decoded ('/v1/workspaces/a%2Fb': v1, workspaces,
        a/b); the query is left out."""
        self.target = event.target
        self.http_version = event.http_version
        self._headers = event.headers
        self._connection = connection

    def header(self, name: bytes) -> bytes | None:
        """The first value of the header `name` (lower case), as sent; h11 strips the blanks
        around it."""
        return next((value for key, value in self._headers if key == name), None)

    async def body(self, limit: int) -> bytes:
        """The whole body, or Refused: 413 past `limit` bytes (declared or counted), 408 when
        it is not all there in time, 415 when it is compressed."""
        return await self._connection.read_body(self, limit)


Handler = Callable[[Request], Awaitable[Response]]
Route = Callable[[tuple[str, ...]], Mapping[str, Handler] | None]
"""The handlers of a path by method (None: no such path, 404; no such method: 405)."""


def _path(target: bytes) -> tuple[str, ...]:
    """The segments of an origin-form ('/a/b?q') or absolute-form ('http://host/a/b') target,
    () (which no route matches) for anything else ('*', 'host:443'). Split before decoding, so
    that '%2F' stays inside its segment; a segment that is not UTF-8 once decoded is kept as
    sent."""
    path = target.split(b"?", 1)[0].split(b"#", 1)[0]
    if path.startswith((b"http://", b"https://")):
        path = b"/" + path.split(b"/", 3)[3] if path.count(b"/") >= 3 else b"/"
    if not path.startswith(b"/"):
        return ()
    segments = []
    for raw in path[1:].split(b"/"):
        try:
            segments.append(unquote_to_bytes(raw).decode("utf-8"))
        except UnicodeDecodeError:
            segments.append(raw.decode("ascii"))  # h11 admits only visible ASCII in a target
    return tuple(segments)


class _Connection:
    def __init__(
        self, server: HTTPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_BYTES)
        self.handling = False  # a request's head has arrived and it is not answered yet
        self.deadline = 0.0  # the current request's, in the loop's time
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "-"

    async def serve(self) -> None:
        """Answers requests until the client leaves, is too slow, or one is answered with the
        connection's end."""
        try:
            while (head := await self._next_request()) is not None:
                if isinstance(head, Response):  # refused before a request could be read
                    await self._send(head, None, close=True)
                    return
                self.handling = True
                request = Request(head, _path(head.target), self)
                await self._send(await self._dispatch(request), request)
                self.handling = False
                if self.server.stopping or self.h11.our_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or did not take its answer in time
        finally:
            self.handling = False
            await self.close()

    def dismiss(self) -> None:
        """Ends a connection that is not in a request: closing its socket ends its wait for
        bytes as if the client had left (no task is cancelled)."""
        self.writer.close()

    async def refuse(self, response: Response) -> None:
        """Answers before reading anything, and closes."""
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send(response, None, close=True)
        await self.close()

    async def _next_request(self) -> h11.Request | Response | None:
        """The next request's head, or a Response refusing it; None when the client has gone or
        stayed idle too long (nothing is answered then)."""
        # Bytes of it may be here already (pipelined); else the wait for its first is idle.
        if not self.h11.trailing_data[0] and not await self._first_bytes():
            return None
        self.deadline = asyncio.get_running_loop().time() + REQUEST_SECONDS
        try:
            event = await self._event()
        except TimeoutError:
            return error_response(408, f"the request did not arrive in {REQUEST_SECONDS:.0f} s")
        except h11.RemoteProtocolError as exc:
            return error_response(exc.error_status_hint, f"malformed request: {str(exc)[:200]}")
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)  # h11's only other event before a request
        names = {name for name, _ in event.headers}
        if {b"content-length", b"transfer-encoding"} <= names:
            # Ambiguous framing, refused as aiohttp did (h11 would go by the chunks).
            return error_response(400, "Content-Length and Transfer-Encoding are both set")
        return event

    async def _first_bytes(self) -> bool:
        """Waits up to IDLE_SECONDS for bytes of a request; False if none came."""
        self.server.idle[self] = None
        try:
            async with asyncio.timeout(IDLE_SECONDS):
                first = await self.reader.read(_READ_BYTES)
        except TimeoutError:
            return False
        finally:
            self.server.idle.pop(self, None)
        self.h11.receive_data(first)
        return bool(first)

    async def _event(self) -> h11.Event:
        """The request's next event, reading as h11 needs until the request's deadline."""
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Event):
                return event
            assert event is h11.NEED_DATA  # PAUSED comes only after a request's end
            async with asyncio.timeout_at(self.deadline):
                self.h11.receive_data(await self.reader.read(_READ_BYTES))

    async def _dispatch(self, request: Request) -> Response:
        handlers = self.server.route(request.path)
        if handlers is None:
            return _plain(404)
        handler = handlers.get(request.method)
        if handler is None:
            return _plain(405, (("Allow", ",".join(sorted(handlers))),))
        expect = request.header(b"expect")
        # As aiohttp answered: 100-continue is the one expectation HTTP/1.1 defines.
        if expect and request.http_version == b"1.1" and expect.lower() != b"100-continue":
            return error_response(417, f"unknown Expect: {expect.decode('latin-1')!r}")
        try:
            return await handler(request)
        except Refused as refusal:
            return error_response(refusal.status, str(refusal))
        except Exception:
            log.exception("%s %r: the handler failed", request.method, request.target[:200])
            return error_response(500, "the sandbox server failed; see its log")

    async def read_body(self, request: Request, limit: int) -> bytes:
        encoding = request.header(b"content-encoding")
        if encoding is not None and encoding.lower() != b"identity":
            # Never inflated: a small body must not become a large one here.
            raise Refused(415, "Content-Encoding is not supported: send the body as it is")
        declared = request.header(b"content-length")  # h11 checked it: at most 20 digits
        if declared is not None and int(declared) > limit:
            raise Refused(413, f"the body is longer than {limit} bytes")
        if self.h11.they_are_waiting_for_100_continue:
            self.writer.write(
                self.h11.send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            )
        body = bytearray()
        while True:
            try:
                event = await self._event()
            except TimeoutError:
                raise Refused(408, f"the body did not arrive in {REQUEST_SECONDS:.0f} s") from None
            except h11.RemoteProtocolError as exc:
                raise Refused(400, f"malformed body: {str(exc)[:200]}") from None
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            assert isinstance(event, h11.Data)
            body += event.data
            if len(body) > limit:  # counted as it comes: a chunked body declares no length
                raise Refused(413, f"the body is longer than {limit} bytes")

    async def _send(self, response: Response, request: Request | None, close: bool = False) -> None:
        # What of the body is here already is read (a GET's, a refused request's) so that the
        # connection can be kept; with more to come, it is closed once answered.
        with contextlib.suppress(h11.RemoteProtocolError):
            while self.h11.their_state is h11.SEND_BODY:
                if self.h11.next_event() is h11.NEED_DATA:
                    break
        headers = [*response.headers, ("Date", _http_date())]
        if response.content_type is not None:
            headers.append(("Content-Type", response.content_type))
        if response.status != 204:
            headers.append(("Content-Length", str(len(response.body))))
        if close or self.server.stopping or self.h11.their_state not in {h11.DONE, h11.MUST_CLOSE}:
            headers.append(("Connection", "close"))
        status = HTTPStatus(response.status)
        data = self.h11.send(
            h11.Response(status_code=status, headers=headers, reason=status.phrase)
        )
        if response.body and not (request is not None and request.method == "HEAD"):
            data += self.h11.send(h11.Data(data=response.body))
        self.writer.write(data + self.h11.send(h11.EndOfMessage()))
        line = "-" if request is None else f"{request.method} {request.target[:200].decode()}"
        log.info('%s "%s" %d', self.peer, line, response.status)
        try:
            async with asyncio.timeout(REQUEST_SECONDS):
                await self.writer.drain()
        except TimeoutError:
            # The client does not take its answer: what is left of it is dropped and the
            # connection reset, since closing would wait for it to be taken, for ever.
            self.writer.transport.abort()
            raise

    async def close(self) -> None:
        """Closes the connection; when the client may still be sending (its request was not
        read to its end), first reads and drops that for a moment, so that it reads its answer
        instead of a reset."""
        try:
            if self.h11.their_state not in {h11.IDLE, h11.DONE, h11.MUST_CLOSE, h11.CLOSED}:
                with contextlib.suppress(ConnectionError, TimeoutError, OSError):
                    self.writer.write_eof()
                    async with asyncio.timeout(LINGER_SECONDS):
                        while await self.reader.read(_READ_BYTES):
                            pass
        finally:
            self.writer.close()
            # A socket closes once what was written to it is taken: a client that keeps its
            # window shut (an idle or dismissed connection with answers it never read) must
            # not keep it, nor its place among MAX_CONNECTIONS, for that long.
            try:
                async with asyncio.timeout(REQUEST_SECONDS):
                    await self.writer.wait_closed()
            except TimeoutError:  # (an OSError: caught first)
                self.writer.transport.abort()
            except (ConnectionError, OSError):
                pass


def _http_date() -> str:
    # Day and month names in English: Python never sets LC_TIME from the environment.
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())


class HTTPServer:
    def __init__(self, route: Route) -> None:
        self.route = route
        self.stopping = False
        self.connections: dict[_Connection, asyncio.Task[None]] = {}
        self.idle: dict[_Connection, None] = {}
        """The connections waiting for a request, the longest waiting first."""

    async def serve(
        self, host: str | None, port: int, stop: asyncio.Event, *, shutdown_seconds: float
    ) -> None:
        """Serves on host:port (every interface for None) until `stop` is set, then waits up to
        `shutdown_seconds` for the requests being handled before it cancels them."""
        listener = await asyncio.start_server(
            self._accept, host, port, limit=_READ_BYTES, backlog=128
        )
        await stop.wait()
        self.stopping = True
        # The listener stays open (new connections are answered 503) until nothing of a run is
        # left: closed now, its port would be free for a run in flight to listen on.
        for connection in list(self.connections):
            if not connection.handling:
                connection.dismiss()
        if self.connections:
            await asyncio.wait(list(self.connections.values()), timeout=shutdown_seconds)
        for task in self.connections.values():
            task.cancel()
        await asyncio.gather(*self.connections.values(), return_exceptions=True)
        listener.close()
        await listener.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, reader, writer)
        if self.stopping:
            await connection.refuse(error_response(503, "the sandbox is stopping"))
            return
        if len(self.connections) >= MAX_CONNECTIONS:
            if not self.idle:
                await connection.refuse(error_response(503, "too many connections are open"))
                return
            # The connection idle the longest makes room: it was holding a place unused.
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            oldest.dismiss()
        task = asyncio.current_task()
        assert task is not None
        self.connections[connection] = task
        try:
            await connection.serve()
        finally:
            del self.connections[connection]
