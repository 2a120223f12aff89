"""The sandbox's HTTP layer against hostile clients, on raw sockets to a real server process.

The sandbox server is reachable by the tenant's runtime and by the code it runs (the same pod,
on loopback): each test sends what such a client could, and asserts what must hold — the token
before the body, bounded heads, bodies, times and connections, answers in order, the same paths
and statuses as before — and that the server goes on serving. docs/security.md says which of
these the aiohttp server it replaced held too.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tenantry_runtime.protocol import MAX_CODE_BYTES

from tests.support.runtime_services import (
    SANDBOX_TOKEN,
    SandboxHome,
    Service,
    StartSandbox,
    json_lines,
    sandbox_env,
    start_service,
)

BODY_LIMIT = 2 * MAX_CODE_BYTES + 4096
"""sandbox.body_limit(): the code twice over (JSON escapes) and the rest; aiohttp's
client_max_size before."""
REQUEST_SECONDS = 10
"""sandbox_http.REQUEST_SECONDS: from a request's first byte to its last."""
CONNECTIONS_AT_MOST = 128
"""sandbox_http.MAX_CONNECTIONS."""
AUTH = f"Authorization: Bearer {SANDBOX_TOKEN}\r\n".encode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Wire:
    """One client connection that sends bytes exactly as given and reads answers one by one."""

    def __init__(self, sandbox: Service, timeout: float = 15.0) -> None:
        port = int(sandbox.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed by the server; unread: {self.buffer[:200]!r}")
        self.buffer += chunk

    def answer(self, *, to_head: bool = False, interim: bool = False) -> Answer:
        """The next answer; a 1xx one is skipped unless `interim`."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        assert status_line.startswith("HTTP/1."), status_line
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200:
            return Answer(status, headers, b"") if interim else self.answer(to_head=to_head)
        length = 0 if to_head or status == 204 else int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Answer(status, headers, body)

    def closed_within(self, seconds: float) -> bool:
        """Whether the server ends the connection within `seconds` (anything it sends first
        is kept in the buffer)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.buffer += chunk
        return False


def request(
    method: str,
    target: str | bytes,
    body: bytes | None = None,
    *,
    token: bool = True,
    headers: bytes = b"",
    version: bytes = b"1.1",
) -> bytes:
    """A request as bytes: Host, the token unless `token` is False, `headers` (CRLF-ended
    lines), and Content-Length when there is a body."""
    target = target.encode() if isinstance(target, str) else target
    head = b"%s %s HTTP/%s\r\nHost: sandbox\r\n" % (method.encode(), target, version)
    head += (AUTH if token else b"") + headers
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + (body or b"")


def run_body(code: str, task: str | None = None, language: str = "sh") -> bytes:
    body = {"language": language, "code": code, **({"taskId": task} if task else {})}
    return json.dumps(body).encode()


def exchange(sandbox: Service, data: bytes) -> Answer:
    with Wire(sandbox) as wire:
        wire.send(data)
        return wire.answer()


def runs_audited(sandbox: Service) -> int:
    return sum(record.get("event") == "code_execution" for record in json_lines(sandbox.stdout))


def assert_still_serving(sandbox: Service) -> None:
    assert exchange(sandbox, request("GET", "/healthz")).status == 200
    answer = exchange(sandbox, request("POST", "/v1/execute", run_body("echo still here")))
    assert (answer.status, answer.json()["output"]) == (200, "still here\n")


@pytest.fixture
def sandbox(start_sandbox: StartSandbox) -> Service:
    return start_sandbox(TENANTRY_SANDBOX_TIMEOUT_SECONDS="20")


# --- the token before the body ---------------------------------------------------------------


def test_a_request_without_the_token_is_answered_401_before_its_body_is_sent(
    sandbox: Service,
) -> None:
    for head in (
        request("POST", "/v1/execute", token=False, headers=b"Content-Length: 100000\r\n"),
        request("POST", "/v1/execute", token=False, headers=b"Transfer-Encoding: chunked\r\n"),
        request("DELETE", "/v1/workspaces", token=False, headers=b"Content-Length: 100000\r\n"),
    ):
        with Wire(sandbox, timeout=5) as wire:
            wire.send(head)  # and never the body
            answer = wire.answer()
        assert (answer.status, answer.json()) == (401, {"error": "missing or wrong bearer token"})
    assert runs_audited(sandbox) == 0
    assert_still_serving(sandbox)


def test_a_token_of_any_bytes_is_compared_as_bytes(sandbox: Service) -> None:
    token = SANDBOX_TOKEN.encode()
    for presented in (b"\xff\xfe" + token, token + b"\x80", b"\x01" + token, token[:-1] + b"\xe9"):
        answer = exchange(
            sandbox,
            request(
                "POST",
                "/v1/execute",
                run_body("echo ran"),
                token=False,
                headers=b"Authorization: Bearer " + presented + b"\r\n",
            ),
        )
        # Never a 500 nor a 200. (aiohttp refused the control character with 400, as a header
        # value it does not admit; h11 admits it, and the token does not match.)
        assert answer.status in {400, 401}, presented
    # The first Authorization counts, its scheme in any case, blanks around the token aside.
    for headers in (
        b"Authorization: bearer   " + token + b"  \r\n",
        AUTH + b"Authorization: Bearer wrong\r\n",
    ):
        answer = exchange(
            sandbox, request("DELETE", "/v1/workspaces", token=False, headers=headers)
        )
        assert answer.status == 204, headers
    assert runs_audited(sandbox) == 0


def test_the_body_is_not_invited_before_the_request_may_send_it(sandbox: Service) -> None:
    """`Expect: 100-continue` is answered `100 Continue` only once the token is right and the
    declared length fits: else the final answer comes at once, the body never asked for."""
    expect = b"Expect: 100-continue\r\n"
    cases = [
        (False, b"Content-Length: 100\r\n", 401),
        (True, b"Content-Length: %d\r\n" % (BODY_LIMIT + 1), 413),
    ]
    for token, length, status in cases:
        with Wire(sandbox, timeout=5) as wire:
            wire.send(request("POST", "/v1/execute", token=token, headers=expect + length))
            assert wire.answer(interim=True).status == status


def test_expect_100_continue_invites_the_body(sandbox: Service) -> None:
    body = run_body("echo invited")
    with Wire(sandbox, timeout=5) as wire:
        head = request("POST", "/v1/execute", headers=b"Expect: 100-continue\r\n")
        wire.send(head[:-2] + b"Content-Length: %d\r\n\r\n" % len(body))
        assert wire.answer(interim=True).status == 100
        wire.send(body)
        answer = wire.answer()
    assert (answer.status, answer.json()["output"]) == (200, "invited\n")


# --- heads and bodies of any size ------------------------------------------------------------


def test_a_head_too_long_is_refused_before_it_ends(sandbox: Service) -> None:
    for endless in (
        b"GET /healthz HTTP/1.1\r\nHost: sandbox\r\nX-Long: " + b"a" * 65536,
        b"GET /healthz HTTP/1.1\r\nHost: sandbox\r\n" + b"X-Many: y\r\n" * 8000,
        b"GET /" + b"a" * 65536,
    ):
        with Wire(sandbox, timeout=5) as wire:
            wire.send(endless)  # no end of head, ever
            answer = wire.answer()
            assert 400 <= answer.status < 500
            assert wire.closed_within(5)
    assert_still_serving(sandbox)


def test_a_declared_length_over_the_limit_is_refused_at_once(sandbox: Service) -> None:
    for length in (BODY_LIMIT + 1, 10**15):
        with Wire(sandbox, timeout=5) as wire:
            wire.send(request("POST", "/v1/execute", headers=b"Content-Length: %d\r\n" % length))
            answer = wire.answer()  # without having sent a byte of the body
        assert answer.status == 413
        assert str(BODY_LIMIT).encode() in answer.body
    assert runs_audited(sandbox) == 0


def test_the_body_limit_is_what_it_was(sandbox: Service) -> None:
    """`BODY_LIMIT` bytes are taken, one more is not; whatever its framing."""

    def padded(size: int) -> bytes:
        body = run_body("echo fits")
        return body[:-1] + b', "pad": "' + b"x" * (size - len(body) - 11) + b'"}'

    assert len(padded(BODY_LIMIT)) == BODY_LIMIT
    answer = exchange(sandbox, request("POST", "/v1/execute", padded(BODY_LIMIT)))
    assert (answer.status, answer.json()["output"]) == (200, "fits\n")
    answer = exchange(sandbox, request("POST", "/v1/execute", padded(BODY_LIMIT + 1)))
    assert answer.status == 413
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (BODY_LIMIT + 1, padded(BODY_LIMIT + 1))
    head = request("POST", "/v1/execute", headers=b"Transfer-Encoding: chunked\r\n")
    assert exchange(sandbox, head + chunked).status == 413
    # Code over its own limit is answered in the protocol's words, as before.
    answer = exchange(sandbox, request("POST", "/v1/execute", run_body("#" * (MAX_CODE_BYTES + 1))))
    assert (answer.status, answer.json()) == (413, {"error": "code is longer than 65536 bytes"})


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if "VmRSS" in line)) / 1024


def send_until_cut_off(wire: Wire, pieces: Iterable[bytes], pause: float = 0) -> None:
    """Sends `pieces`, one every `pause` seconds, until they are all sent or the server stops
    taking them."""
    with contextlib.suppress(OSError):
        for piece in pieces:
            wire.send(piece)
            time.sleep(pause)


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(sandbox: Service) -> None:
    """Counted chunk by chunk and answered once past the limit, without the body's end (here
    it never comes), and never held whole."""
    before = rss_mib(sandbox.proc.pid)
    chunk = b"x" * 16384
    with Wire(sandbox, timeout=5) as wire:
        wire.send(request("POST", "/v1/execute", headers=b"Transfer-Encoding: chunked\r\n"))
        endless = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(1024))  # 16 MiB
        sender = threading.Thread(target=send_until_cut_off, args=(wire, endless))
        sender.start()
        answer = wire.answer()
        sender.join(timeout=30)
    assert answer.status == 413
    assert rss_mib(sandbox.proc.pid) - before < 4
    assert runs_audited(sandbox) == 0
    assert_still_serving(sandbox)


def test_a_length_shorter_than_the_body_frames_the_rest_as_the_next_request(
    sandbox: Service,
) -> None:
    body = run_body("echo never")
    with Wire(sandbox) as wire:
        short = request("POST", "/v1/execute", headers=b"Content-Length: 10\r\n")
        wire.send(short + body + b"\r\n\r\n")
        assert wire.answer().status == 400  # '{"language' is not a JSON object
        # What followed the ten bytes is no request: refused (aiohttp closed without a word),
        # and the connection ends.
        with contextlib.suppress(EOFError):
            assert wire.answer().status == 400
        assert wire.closed_within(5)
    assert runs_audited(sandbox) == 0


def test_ambiguous_or_malformed_framing_is_refused(sandbox: Service) -> None:
    for headers, body in (
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", b"{}"),
        (b"Content-Length: -1\r\n", b"{}"),
        (b"Content-Length: 0x10\r\n", b"{}"),
        (b"Transfer-Encoding: gzip\r\n", b"{}"),
        (b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
        (b"Transfer-Encoding: chunked\r\n", b"2\r\n{}XX0\r\n\r\n"),
    ):
        with Wire(sandbox, timeout=5) as wire:
            wire.send(request("POST", "/v1/execute", headers=headers) + body)
            # 501: a transfer coding the server does not implement (RFC 9112).
            assert wire.answer().status in {400, 501}, headers + body
            assert wire.closed_within(5)
    assert runs_audited(sandbox) == 0


def test_a_compressed_body_is_not_inflated(sandbox: Service) -> None:
    body = gzip.compress(run_body("echo inflated"))
    answer = exchange(
        sandbox, request("POST", "/v1/execute", body, headers=b"Content-Encoding: gzip\r\n")
    )
    assert answer.status == 415
    assert runs_audited(sandbox) == 0


def test_a_body_that_is_no_json_object_is_a_bad_request(sandbox: Service) -> None:
    for body in (b"[" * 100_000, b'{"code": "\xff"}', b"", b"1" * 5000, b"\x00{}"):
        answer = exchange(sandbox, request("POST", "/v1/execute", body))
        assert (answer.status, answer.json()) == (400, {"error": "the body must be a JSON object"})


# --- slow, stalled and many clients ----------------------------------------------------------


def test_a_stalled_or_trickling_request_is_cut_off(sandbox: Service) -> None:
    """From its first byte a request has REQUEST_SECONDS to arrive whole (then 408 and the
    connection ends), however it dribbles in: a trickle resets no timer."""
    body = run_body("echo never")
    starts = {
        "head stalls": request("GET", "/healthz")[:20],
        "body stalls": request("POST", "/v1/execute", headers=b"Content-Length: %d\r\n" % len(body))
        + body[:10],
        "head trickles": b"",
    }
    outcomes: dict[str, tuple[int, float]] = {}

    def client(name: str) -> None:
        with Wire(sandbox, timeout=REQUEST_SECONDS + 10) as wire:
            started = time.monotonic()
            wire.send(starts[name])
            if name == "head trickles":  # a byte every half second, for minutes
                trickle = b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"s" * 1000
                send_until_cut_off(wire, (bytes([byte]) for byte in trickle), pause=0.5)
            status = wire.answer().status
            assert wire.closed_within(5)
            outcomes[name] = (status, time.monotonic() - started)

    threads = [threading.Thread(target=client, args=(name,)) for name in starts]
    for thread in threads:
        thread.start()
    time.sleep(1)
    assert_still_serving(sandbox)  # while they hang on
    for thread in threads:
        thread.join(timeout=REQUEST_SECONDS + 30)
    assert set(outcomes) == set(starts), outcomes
    for name, (status, seconds) in outcomes.items():
        assert status == 408, name
        assert REQUEST_SECONDS - 1 <= seconds < REQUEST_SECONDS + 5, (name, seconds)
    assert runs_audited(sandbox) == 1  # assert_still_serving's own


def test_many_connections_are_bounded_and_the_server_serves_on(sandbox: Service) -> None:
    """Every connection costs the server a socket and a little memory: past CONNECTIONS_AT_MOST
    the one idle longest is closed for the newcomer, so an idle crowd keeps neither the
    runtime out nor the runs' file descriptors."""
    pid = sandbox.proc.pid
    before = rss_mib(pid)
    crowd = [Wire(sandbox) for _ in range(300)]
    try:
        crowd[-1].send(request("GET", "/healthz"))
        assert crowd[-1].answer().status == 200  # the last one in is served
        time.sleep(0.5)
        assert len(os.listdir(f"/proc/{pid}/fd")) <= CONNECTIONS_AT_MOST + 20
        assert crowd[0].closed_within(5)  # the first one in made room
        assert rss_mib(pid) - before < 8
        assert_still_serving(sandbox)
    finally:
        for wire in crowd:
            wire.sock.close()


# --- what a request may look like ------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(sandbox: Service) -> None:
    with Wire(sandbox) as wire:
        wire.send(
            request("GET", "/healthz")
            + request("DELETE", "/v1/workspaces/t1")
            + request("GET", "/nowhere")
            + request("POST", "/v1/execute", run_body("echo piped"))
            + request("GET", "/healthz", headers=b"Connection: close\r\n")
        )
        answers = [wire.answer() for _ in range(5)]
        assert wire.closed_within(5)
    assert [a.status for a in answers] == [200, 204, 404, 200, 200]
    assert answers[3].json()["output"] == "piped\n"


def test_a_body_on_a_get_is_dropped_and_the_connection_kept(sandbox: Service) -> None:
    with Wire(sandbox) as wire:
        wire.send(request("GET", "/healthz", b"hello") + request("GET", "/healthz"))
        assert [wire.answer().json(), wire.answer().json()] == [{"status": "ok"}] * 2


def test_http_1_0_is_answered_and_the_connection_closed(sandbox: Service) -> None:
    with Wire(sandbox) as wire:
        wire.send(request("GET", "/healthz", version=b"1.0"))
        assert (wire.answer().json(), wire.closed_within(5)) == ({"status": "ok"}, True)
    with Wire(sandbox) as wire:
        wire.send(request("POST", "/v1/execute", run_body("echo old"), version=b"1.0"))
        assert (wire.answer().json()["output"], wire.closed_within(5)) == ("old\n", True)


def test_paths_and_methods_are_answered_as_before(sandbox: Service) -> None:
    """What aiohttp's router answered: 404 and 405 (with Allow) before the token is looked at,
    the path percent-decoded but for '/', the query ignored, HEAD wherever GET is."""
    cases = [
        ("GET", "/healthz?probe=1", False, 200, None),
        ("GET", "/health%7A", False, 200, None),
        ("GET", "http://sandbox/healthz", False, 200, None),
        ("GET", "/healthz/", False, 404, None),
        ("GET", "//healthz", False, 404, None),
        ("GET", "/nowhere", True, 404, None),
        ("GET", "/V1/execute", True, 404, None),
        ("POST", "/healthz", False, 405, "GET,HEAD"),
        ("GET", "/v1/execute", False, 405, "POST"),
        ("OPTIONS", "/v1/execute", True, 405, "POST"),
        ("GET", "/v1/workspaces", True, 405, "DELETE"),
        ("PUT", "/v1/workspaces/t1", False, 405, "DELETE"),
        ("DELETE", "/v1/workspaces/", True, 404, None),
        ("DELETE", "/v1/workspaces/a/b", True, 404, None),
        ("DELETE", "/v1%2Fworkspaces/t1", True, 404, None),
        ("DELETE", "/v1/workspaces%2Ft1", True, 404, None),
        ("DELETE", "/v1/./workspaces/t1", True, 404, None),
        ("DELETE", "/v1/workspaces?all", True, 204, None),
    ]
    for method, target, token, status, allow in cases:
        answer = exchange(sandbox, request(method, target, token=token))
        assert (answer.status, answer.headers.get("allow")) == (status, allow), (method, target)
        if status in {404, 405}:
            assert answer.headers["content-type"] == "text/plain; charset=utf-8"
            assert answer.body == {404: b"404: Not Found", 405: b"405: Method Not Allowed"}[status]
    with Wire(sandbox) as wire:
        wire.send(request("HEAD", "/healthz"))
        answer = wire.answer(to_head=True)
        assert (answer.status, answer.headers["content-length"]) == (200, "16")
        wire.send(request("GET", "/healthz"))  # nothing of a body came in between
        assert wire.answer().json() == {"status": "ok"}


def test_odd_methods_and_targets_run_nothing(sandbox: Service) -> None:
    for head in (
        request("FOO", "/v1/execute", run_body("echo ran")),
        request("G@T", "/healthz"),
        request("CONNECT", "sandbox:443"),
        request("OPTIONS", "*"),
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),  # TLS
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ):
        assert 400 <= exchange(sandbox, head).status < 500, head
    assert runs_audited(sandbox) == 0
    assert_still_serving(sandbox)


def test_only_http_1_is_spoken(sandbox: Service) -> None:
    """An HTTP/0.9 request line (no version: aiohttp answered it, in HTTP/0.9) is refused."""
    with Wire(sandbox) as wire:
        wire.send(b"GET /healthz\r\n\r\n")
        assert wire.answer().status == 400
        assert wire.closed_within(5)


def test_task_ids_in_paths_are_decoded_then_checked(sandbox: Service) -> None:
    workspace: Path = sandbox.extra["workspace"]
    keep = "write files here and keep them"
    for task in ("Abc", "keep"):
        body = run_body(f"echo {keep} > file", task=task)
        assert exchange(sandbox, request("POST", "/v1/execute", body)).status == 200
    assert (workspace / "keep" / "file").exists()
    words = "is not a task id: 1 to 64 letters, digits, '-' and '_'"
    refused = [
        ("..", "'..'"),
        ("%2e%2e", "'..'"),
        ("a%2Fb", "'a/b'"),
        ("%2e%2e%2F%2e%2e", "'../..'"),
        ("keep%2F..%2F..", "'keep/../..'"),
        ("%FF", "'%FF'"),
        ("%C3%A9", "'\\u00e9'"),
        ("a%00b", "'a\\\\x00b'"),
        ("a%20b", "'a b'"),
        ("%2A", "'*'"),
        ("a" * 65, f"'{'a' * 65}'"),
    ]
    for segment, shown in refused:
        answer = exchange(sandbox, request("DELETE", f"/v1/workspaces/{segment}"))
        assert answer.status == 400, segment
        assert answer.body == b'{"error": "taskId=%s %s"}' % (shown.encode(), words.encode())
    for raw in (b"\xff", b"\xc3\xa9", b"\x7f"):  # not even a request line
        assert exchange(sandbox, request("DELETE", b"/v1/workspaces/" + raw)).status == 400
    # None of it ended a task; '%41bc' ends Abc.
    assert (workspace / "keep" / "file").read_text().strip() == keep
    assert exchange(sandbox, request("DELETE", "/v1/workspaces/%41bc")).status == 204
    answer = exchange(sandbox, request("POST", "/v1/execute", run_body("ls", task="Abc")))
    assert answer.status == 409
    answer = exchange(sandbox, request("POST", "/v1/execute", run_body("cat file", task="keep")))
    assert answer.json()["output"].strip() == keep


# --- ends: the client's and the server's -----------------------------------------------------


def wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_run_goes_on_when_its_client_goes_away(sandbox: Service) -> None:
    """As with aiohttp (its handlers were never cancelled): the run finishes, is audited, and
    frees its slot; only its answer is lost."""
    workspace: Path = sandbox.extra["workspace"]
    with Wire(sandbox) as wire:
        wire.send(
            request("POST", "/v1/execute", run_body("touch started; sleep 1; touch done", "t"))
        )
        wait_for(workspace / "t" / "started")
    wait_for(workspace / "t" / "done")
    deadline = time.monotonic() + 10
    while runs_audited(sandbox) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs_audited(sandbox) == 1
    assert_still_serving(sandbox)


def test_sigterm_answers_the_run_in_flight_and_exits_cleanly(sandbox: Service) -> None:
    workspace: Path = sandbox.extra["workspace"]
    outcome: dict[str, Answer] = {}
    code = "touch started; sleep 2; echo finished"
    thread = threading.Thread(
        target=lambda: outcome.update(
            answer=exchange(sandbox, request("POST", "/v1/execute", run_body(code, "t")))
        )
    )
    with Wire(sandbox) as idle:
        idle.send(request("GET", "/healthz"))
        assert idle.answer().status == 200  # kept open, waiting for a next request
        thread.start()
        wait_for(workspace / "t" / "started")
        sandbox.proc.send_signal(signal.SIGTERM)
        assert idle.closed_within(1)  # at once, while the run goes on
        time.sleep(0.3)
        # Still listening, so that no run in flight can take the port (and the runtime's next
        # request, with its token: test_sandbox_isolation.py), but running nothing more.
        with Wire(sandbox) as late:
            late.send(request("POST", "/v1/execute", run_body("echo late", "u")))
            refused = late.answer()
            assert (refused.status, refused.json()) == (503, {"error": "the sandbox is stopping"})
            assert late.closed_within(1)
    thread.join(timeout=30)
    assert sandbox.proc.wait(timeout=30) == 0
    answer = outcome["answer"]
    assert (answer.status, answer.json()["output"]) == (200, "finished\n")


# --- what the process loads ------------------------------------------------------------------

LOADED_MODULES = """
import json, sys
from tenantry_runtime.__main__ import main
code = main(sys.argv[1:])
with open({marker!r}, "w") as file:
    json.dump(sorted(name for name, module in sys.modules.items() if module is not None), file)
sys.exit(code)
"""


def test_the_sandbox_process_never_loads_ssl_nor_aiohttp(
    sandbox_home: SandboxHome, tmp_path: Path
) -> None:
    """The sandbox neither serves nor makes TLS: aiohttp (16 MiB with its client) and ssl
    (asyncio's, 1.4 MiB) stay out of its memory (bench/findings.md), through a health check,
    a run and a stop."""
    marker = sandbox_home.root / "modules.json"
    service = start_service(
        "sandbox",
        sandbox_env(sandbox_home),
        tmp_path,
        as_sandbox_user=True,
        cwd=sandbox_home.root,
        bootstrap=LOADED_MODULES.format(marker=str(marker)),
    )
    try:
        assert_still_serving(service)
    finally:
        service.stop()
    assert service.proc.returncode == 0, service.logs()
    loaded = set(json.loads(marker.read_text()))
    assert {"tenantry_runtime.sandbox", "h11"} <= loaded  # the check can see
    assert {"ssl", "_ssl", "aiohttp"} & loaded == set()
