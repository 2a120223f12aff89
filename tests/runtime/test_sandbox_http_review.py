"""A second, adversarial pass over the sandbox's HTTP layer (sandbox_http.py), on raw sockets to
a real server process, with the helpers of test_sandbox_http.py.

Each test is a way a client of the sandbox — its runtime, or the code it runs, on loopback —
could make the server break a bound docs/security.md states, and what must hold instead.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.runtime.test_sandbox_http import (
    REQUEST_SECONDS,
    assert_still_serving,
    exchange,
    request,
    run_body,
    runs_audited,
)
from tests.support.runtime_services import Service, StartSandbox


@pytest.fixture
def sandbox(start_sandbox: StartSandbox) -> Service:
    return start_sandbox(TENANTRY_SANDBOX_TIMEOUT_SECONDS="20")


def port_of(sandbox: Service) -> int:
    return int(sandbox.url.rsplit(":", 1)[1])


def server_holds(sandbox: Service, client: socket.socket) -> bool:
    """Whether the server process still holds its end of `client`'s connection (an open
    socket of its own, whatever its TCP state). Read from /proc/net/tcp alone: a socket no file
    holds any more shows inode 0 there, and only the server holds the sockets it accepted (the
    server's own /proc/<pid>/fd is closed to others than root: it is not dumpable)."""
    server_port, client_port = port_of(sandbox), client.getsockname()[1]
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(address.split(":")[1], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port) and fields[9] != "0":
            return True
    return False


def within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether `condition` holds at some point within `seconds` (polled)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


# --- a client that never takes its answers ---------------------------------------------------


def never_reading_client(sandbox: Service) -> socket.socket:
    """A connection that sends 40 runs at once, each answered with 64 KiB of output
    (JSON-escaped six times over), and reads none of it, its receive buffer as small as can be:
    what the server cannot send soon outgrows the kernel's buffers and the server's own."""
    code = "head -c 65536 /dev/zero | tr '\\0' '\\1'"
    pipelined = request("POST", "/v1/execute", run_body(code)) * 40
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(5)
    client.connect(("127.0.0.1", port_of(sandbox)))
    threading.Thread(target=send_until_cut_off, args=(client, [pipelined]), daemon=True).start()
    return client


def send_until_cut_off(client: socket.socket, pieces: list[bytes]) -> None:
    with contextlib.suppress(OSError):
        for piece in pieces:
            client.sendall(piece)


def test_a_client_that_never_takes_its_answers_does_not_keep_its_connection(
    sandbox: Service,
) -> None:
    """'10 s for a client to take its answer' (docs/security.md): past it the connection ends,
    and with it the server's socket and its place among the 128. A client that keeps its
    receive window shut (a small receive buffer, never read) must not keep the server's end
    open: the answers it did not take are dropped."""
    client = never_reading_client(sandbox)
    try:
        assert within(10, lambda: server_holds(sandbox, client))  # the check can see
        # The answer blocked, then REQUEST_SECONDS for it to be taken; and some slack.
        released = within(3 * REQUEST_SECONDS + 15, lambda: not server_holds(sandbox, client))
        assert released, "the server still holds the connection"
    finally:
        client.close()
    assert_still_serving(sandbox)


def test_sigterm_is_not_held_up_by_a_client_that_never_takes_its_answers(
    sandbox: Service,
) -> None:
    """The kubelet sends SIGKILL 30 s after SIGTERM (a pod's default grace period): the
    server must be gone by then, its answers to a client that never takes them dropped."""
    client = never_reading_client(sandbox)
    try:
        assert within(10, lambda: server_holds(sandbox, client))
        time.sleep(2)  # the runs' answers pile up
        sandbox.proc.send_signal(signal.SIGTERM)
        assert sandbox.proc.wait(timeout=30) == 0
    finally:
        client.close()


# --- bodies the handlers parse ---------------------------------------------------------------


def test_code_that_is_no_valid_unicode_is_a_bad_request(sandbox: Service) -> None:
    """A lone surrogate is valid JSON ("\\ud800") but no text: the code cannot be run, and
    that is the client's error (400), not the server's (500 and a traceback)."""
    for code in ("echo \\ud800", "echo \\udfff ok"):
        body = b'{"language": "sh", "code": "%s"}' % code.encode()
        answer = exchange(sandbox, request("POST", "/v1/execute", body))
        assert answer.status == 400, answer.body
        assert "Traceback" not in sandbox.logs()
    assert runs_audited(sandbox) == 0
    assert json.loads(exchange(sandbox, request("GET", "/healthz")).body) == {"status": "ok"}
