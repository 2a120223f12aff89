"""Pure parts of the agents: code extraction, the kind allowlist, result hand-off, model client."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock
from autogen_core.models import ModelFamily
from hypothesis import given, settings
from hypothesis import strategies as st
from tenantry_runtime import agent_kinds
from tenantry_runtime.agents import (
    PendingTasks,
    build_model_client,
    extract_code_blocks,
)
from tenantry_runtime.audit import AuditLog
from tenantry_runtime.messages import TaskResult
from tenantry_runtime.protocol import normalize_language
from tenantry_runtime.runtime_json import AGENT_KINDS, ModelConfig


def test_runnable_fenced_blocks_are_extracted_in_order() -> None:
    reply = (
        "First:\n```python\nprint(1)\n```\nthen\n```sh\necho 2\n```\n"
        "and\n```Bash\nls\n```\n```py\nx = 3\n```\n"
    )
    assert extract_code_blocks(reply) == [
        CodeBlock(code="print(1)\n", language="python"),
        CodeBlock(code="echo 2\n", language="sh"),
        CodeBlock(code="ls\n", language="bash"),
        CodeBlock(code="x = 3\n", language="python"),
    ]


def test_other_fences_and_prose_are_not_code_to_run() -> None:
    reply = (
        "Use `print()` inline.\n```json\n{}\n```\n```\nplain fence\n```\n"
        "```javascript\nconsole.log(1)\n```\n```python\nunterminated"
    )
    assert extract_code_blocks(reply) == []
    assert extract_code_blocks("The answer is 42.") == []


# The regex extract_code_blocks used before it became a line scanner: the reference for what a
# fence is. It is quadratic when many fences are opened and none is closed, so it only ever
# sees the small replies hypothesis makes here.
_REFERENCE_FENCE_RE = re.compile(
    r"^```[ \t]*([A-Za-z0-9_+-]+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S
)
# Lines that open, close, almost open or almost close a fence, and prose.
_FENCE_LINES = st.sampled_from(
    ["```python", "```sh", "``` py ", "```Bash\t", "```js", "```", "```  ", "````", " ```",
     "```python x", "```\r", "print(1)", "", "x = '```'", "\t```"]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(_FENCE_LINES, max_size=12), trailing_newline=st.booleans())
def test_the_fence_scanner_finds_what_the_reference_regex_finds(
    lines: list[str], trailing_newline: bool
) -> None:
    reply = "\n".join(lines) + ("\n" if trailing_newline else "")
    expected = [
        CodeBlock(code=match.group(2), language=language)
        for match in _REFERENCE_FENCE_RE.finditer(reply)
        if (language := normalize_language(match.group(1))) is not None
    ]
    assert extract_code_blocks(reply) == expected


def blocks_found_in_a_child(reply_expression: str) -> list[tuple[str, str]]:
    """(language, code) of the blocks extract_code_blocks finds in the reply the expression
    builds, parsed in a child process with a generous deadline for "does it finish at all".

    A child, because a regex that backtracks holds the GIL and never returns to Python: no
    timeout inside this process could interrupt it (the reference regex takes most of an hour
    on a megabyte of opened fences).
    """
    program = (
        "import json, sys\n"
        "from tenantry_runtime.agents import extract_code_blocks\n"
        f"blocks = extract_code_blocks({reply_expression})\n"
        "json.dump([(b.language, b.code) for b in blocks], sys.stdout)\n"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"extract_code_blocks({reply_expression}) did not finish within 60 s")
    return [tuple(block) for block in json.loads(child.stdout)]


def test_a_megabyte_of_fences_opened_and_never_closed_is_parsed() -> None:
    assert blocks_found_in_a_child("'```python\\n' * (2**20 // 10)") == []
    assert blocks_found_in_a_child("'```python\\n' + 'x = 1\\n' * (2**20 // 6)") == []


def test_a_megabyte_of_closed_fences_is_parsed() -> None:
    block = "```python\nprint(1)\n```\nprose\n"
    found = blocks_found_in_a_child(f"{block!r} * (2**20 // {len(block)})")
    assert found == [("python", "print(1)\n")] * (2**20 // len(block))


def test_every_built_in_kind_is_installed_as_an_entry_point_and_nothing_else_is() -> None:
    installed = agent_kinds.installed()
    assert set(installed) == set(AGENT_KINDS) == {"assistant", "coder", "team"}
    assert all(
        isinstance(agent_kinds.load(point), agent_kinds.AgentKind) for point in installed.values()
    )


async def test_pending_tasks_hand_each_result_to_its_waiter_and_cancel_the_rest() -> None:
    pending = PendingTasks()
    tokens = {name: CancellationToken() for name in "abc"}
    waiting = pending.expect("a", tokens["a"])
    pending.expect("b", tokens["b"])
    pending.expect("c", tokens["c"])
    pending.forget("b")
    assert tokens["b"].is_cancelled()  # nobody waits: its work is stopped
    pending.resolve(TaskResult("b", "late"))  # and its late result dropped
    pending.resolve(TaskResult("x", "unknown"))
    pending.resolve(TaskResult("a", "answer"))
    assert (await waiting).content == "answer"
    pending.resolve(TaskResult("a", "again"))  # already handed over: ignored
    assert not tokens["a"].is_cancelled()
    pending.cancel_all()
    assert all(token.is_cancelled() for token in tokens.values())


def test_unknown_model_names_get_a_plain_chat_model_info() -> None:
    def client_for(name: str) -> dict[str, object]:
        config = ModelConfig(name, "http://127.0.0.1:9/v1", Path("/unused"))
        return dict(build_model_client(config, "sk-test", 5).model_info)

    local = client_for("my-local-llama")
    assert local["family"] == ModelFamily.UNKNOWN
    assert (local["function_calling"], local["vision"]) == (False, False)
    # A name autogen knows keeps autogen's own capabilities.
    assert client_for("gpt-4.1-mini")["function_calling"] is True


async def test_a_tool_call_with_arguments_that_are_not_json_is_still_made_and_audited() -> None:
    """Finding: the digest was computed before the call, outside its try: arguments with keys
    of mixed types raised TypeError, and the tool ran with no record."""
    stream = io.StringIO()
    context = agent_kinds.AgentContext(
        tenant="acme",
        name="faq",
        topic_type="faq",
        agents=(),
        topic_types=("faq",),
        system_message="",
        model=None,
        executor=None,
        secret_dirs={},
        audit=AuditLog("acme", stream),
    )

    async def tool() -> str:
        return "done"

    for arguments in ({1: "a", "b": 2}, {("t", "k"): 1}, {"self": object()}):
        assert await context.call_tool("lookup", arguments, tool, task_id="t1") == "done"
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["tool"], r["outcome"]) for r in records] == [
        ("tool_call", "lookup", "ok")
    ] * 3
    assert len({r["argumentsSha256"] for r in records}) == 1  # the one "not JSON" marker
