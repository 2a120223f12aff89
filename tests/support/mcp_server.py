"""A tenant's MCP server for the runtime's tests: a real process on loopback, built with the
`mcp` package's own server side (FastMCP), over streamable HTTP or SSE.

    python -m tests.support.mcp_server PORT TOKEN_FILE TRANSPORT [LISTING]

Every request must carry `Authorization: Bearer <the token in TOKEN_FILE>`, else 401. Each
request's method and path, and whether it was authorized, is appended to `requests.log` beside
the token file (never its body: the tests grep files for argument values).

Each tool call appends the tool's name to `calls.log` there. Tools: `lookup(key)` answers from a table, `echo(text)`, `huge(size)` returns that many
characters, `fail()` returns an MCP tool error, `hang()` never returns. LISTING makes the
server's tools/list hostile: `many` (500 tools), `twins` (`lookup` twice, with different
schemas), `odd-names` (names that are no identifiers, beside `echo`), `huge-schema` (one tool
whose input schema is a megabyte).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import uvicorn
from mcp import types
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError

TABLE = {"opening hours": "Monday to Friday, 9 to 5.", "returns": "Within 30 days."}


def build(listing: str, calls: Path) -> FastMCP:
    server = FastMCP("acme-tools", log_level="WARNING")

    def called(name: str) -> None:
        with calls.open("a") as file:
            file.write(name + "\n")

    @server.tool()
    def lookup(key: str) -> str:
        """Look a key up in ACME's table."""
        called("lookup")
        return TABLE.get(key, "no such key")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        called("echo")
        return f"echo: {text}"

    @server.tool()
    def huge(size: int) -> str:
        """Return `size` characters."""
        called("huge")
        return "x" * size

    @server.tool()
    def fail() -> str:
        """Always fails."""
        called("fail")
        raise ToolError("the backend is down")

    @server.tool()
    async def hang() -> str:
        """Never returns."""
        called("hang")
        await asyncio.Event().wait()
        return "unreachable"

    if listing != "normal":
        # Through the low-level server: the one way to list tools FastMCP would never register.
        low_level = server._mcp_server

        @low_level.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
        async def hostile_listing() -> list[types.Tool]:
            return _hostile_tools(listing)

    return server


def _tool(name: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(
        name=name,
        description=f"the tool {name}",
        inputSchema=schema or {"type": "object", "properties": {"text": {"type": "string"}}},
    )


def _hostile_tools(listing: str) -> list[types.Tool]:
    if listing == "many":
        return [_tool(f"tool_{i}") for i in range(500)]
    if listing == "twins":
        other = {"type": "object", "properties": {"query": {"type": "string"}}}
        return [_tool("lookup"), _tool("lookup", other), _tool("echo")]
    if listing == "odd-names":
        return [_tool("echo"), _tool("rm -rf /"), _tool("x" * 200), _tool("ünïcode"), _tool("")]
    if listing == "huge-schema":
        big = {"type": "object", "description": "y" * (1024 * 1024), "properties": {}}
        return [_tool("echo"), _tool("lookup", big)]
    raise SystemExit(f"unknown listing {listing!r}")


class BearerCheck:
    """ASGI middleware: 401 unless the request carries the token; logs each request's line."""

    def __init__(self, app: Any, token: str, log: Path) -> None:
        self.app, self.token, self.log = app, token, log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorized = headers.get(b"authorization") == f"Bearer {self.token}".encode()
        with self.log.open("a") as file:
            file.write(f"{scope['method']} {scope['path']} {'ok' if authorized else '401'}\n")
        if not authorized:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


def main() -> None:
    port, token_file, transport = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    listing = sys.argv[4] if len(sys.argv) > 4 else "normal"
    server = build(listing, token_file.parent / "calls.log")
    app = server.streamable_http_app() if transport == "streamable_http" else server.sse_app()
    token = token_file.read_text().strip()
    guarded = BearerCheck(app, token, token_file.parent / "requests.log")
    uvicorn.run(guarded, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
