"""A scripted OpenAI-compatible model server for the runtime's end-to-end tests.

First it answers with CODE_REPLY (a python block); once the last message carries the code's
output, it answers with that output. Under /slow it never answers (until released). A task
that starts with HUGE_REPLY and a number gets a reply of that many characters: fences opened
and never closed, the worst case for a fence parser; one that starts with MANY_BLOCKS and a
number, that many code blocks in one reply.

For teams (the `team` kind): a participant whose system message starts with TEAM_MEMBER and
its name is answered "<name> heard <n> message(s)" (n: the messages it was sent, its system
message aside); a selector's speaker-selection request is answered with the last candidate it
lists, so a selector team's order differs from a round robin's. The team member TOOL_CALLER
is answered with a call of a tool nobody gave it (a model's reply is the attacker's to write).
"""

from __future__ import annotations

import ast
import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import web

# One OpenAI chat-completion shape for every scripted model: the real node's (e2e/, which runs
# with the standard library alone, before any venv exists) is its home.
from e2e.model_server import completion
from tests.support.ports import served

CODE = (
    "import os\nprint('sum:', sum(range(101)) * 7)\nprint('cwd:', os.getcwd())\n"
    "open('scratch.txt', 'w').write('a file of this task')\n"
)
CODE_REPLY = f"Let me compute that.\n```python\n{CODE}```\n"
HUGE_REPLY = "Reply with this many characters: "
MANY_BLOCKS = "Reply with this many code blocks: "
"""A task starting with this and a number is answered with that many sh blocks at once, each
printing `run <its index>`."""
FAILING_FIRST = "Reply with a failing block and this many more: "
"""A task starting with this and a number is answered with a block that exits 3 and that many
more; the output of a run that exited 3 is answered with one more block, printing
SECOND_REPLY_RAN."""
SECOND_REPLY_RAN = "the second reply ran"
STALLING_TASK = "Take your time: "
"""A task starting with this is answered like one to /slow: never, until released."""
OPENED_FENCE = "```python\n"
TEAM_MEMBER = "You are team member "
TOOL_CALLER = "tool_caller"
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "os_system", "arguments": '{"command": "cat /etc/passwd"}'},
}
# AgentChat's selector prompt (0.7.5) asks to "select the next role from ['a', 'b']".
_CANDIDATES_RE = re.compile(r"select the next role from (\[[^\]]*\])")


def team_member(name: str) -> str:
    """The system message of a participant the script answers as a team member."""
    return f"{TEAM_MEMBER}{name}."


def team_reply(messages: list[dict[str, Any]]) -> str | None:
    """The script's reply to a team's request, or None if it is no team's."""
    system = messages[0].get("content") if messages[0].get("role") == "system" else None
    if isinstance(system, str) and system.startswith(TEAM_MEMBER):
        name = system.removeprefix(TEAM_MEMBER).split(".", 1)[0]
        return f"{name} heard {len(messages) - 1} message(s)"
    for message in messages:
        found = _CANDIDATES_RE.search(str(message.get("content")))
        if found is not None:
            candidates = ast.literal_eval(found.group(1))
            return str(candidates[-1])
    return None


def huge_reply(size: int) -> str:
    return (OPENED_FENCE * (size // len(OPENED_FENCE) + 1))[:size]


@dataclass
class ScriptedModel:
    """An OpenAI-compatible chat-completions server with a fixed script.

    First it answers with CODE_REPLY; once the last message carries the code's output, it
    answers with that output. Under /slow it never answers (until released at teardown).
    """

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    caller_left: asyncio.Event = field(default_factory=asyncio.Event)
    stall_began: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: int = 0
    abandoned: int = 0

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append({"authorization": request.headers.get("Authorization"), **body})
        last = body["messages"][-1]["content"]
        team = team_reply(body["messages"])
        if team is not None and team.startswith(f"{TOOL_CALLER} heard"):
            reply = completion(body["model"], "")
            reply["choices"][0]["message"] = {"role": "assistant", "tool_calls": [TOOL_CALL]}
            reply["choices"][0]["finish_reason"] = "tool_calls"
            return web.json_response(reply)
        if last.startswith(STALLING_TASK):
            return await self.stall(request)
        if team is not None:
            content = team
        elif last.startswith("Output of the code (exit code 3)"):
            content = f"```sh\necho {SECOND_REPLY_RAN}\n```\n"
        elif last.startswith("Output of the code"):
            content = "The code printed:\n" + last.split("\n", 1)[1]
        elif last.startswith(HUGE_REPLY):
            content = huge_reply(int(last.removeprefix(HUGE_REPLY)))
        elif last.startswith(FAILING_FIRST):
            count = int(last.removeprefix(FAILING_FIRST))
            content = "```sh\nexit 3\n```\n" + "```sh\necho unreached\n```\n" * count
        elif last.startswith(MANY_BLOCKS):
            count = int(last.removeprefix(MANY_BLOCKS))
            content = "".join(f"```sh\necho run {i}\n```\n" for i in range(count))
        else:
            content = CODE_REPLY
        return web.json_response(completion(body["model"], content))

    async def stall(self, request: web.Request) -> web.Response:
        self.stalled += 1
        self.stall_began.set()
        deadline = time.monotonic() + 60
        while not self.release.is_set() and time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                self.abandoned += 1  # the caller gave up on us
                self.caller_left.set()
                break
            await asyncio.sleep(0.05)
        return web.json_response({}, status=503)


@pytest_asyncio.fixture(loop_scope="session")
async def model() -> AsyncIterator[ScriptedModel]:
    scripted = ScriptedModel()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted.complete)
    app.router.add_post("/slow/v1/chat/completions", scripted.stall)
    async with served(app) as scripted.url:
        yield scripted
        scripted.release.set()
