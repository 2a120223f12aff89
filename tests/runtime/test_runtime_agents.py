"""Pure parts of the agents: code extraction, the kind allowlist, result hand-off, model client."""

from __future__ import annotations

from pathlib import Path

from autogen_core import CancellationToken
from autogen_core.code_executor import CodeBlock
from autogen_core.models import ModelFamily
from tenantry_runtime.agents import (
    AGENT_BUILDERS,
    PendingTasks,
    build_model_client,
    extract_code_blocks,
)
from tenantry_runtime.config import AGENT_KINDS, ModelConfig
from tenantry_runtime.messages import TaskResult


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


def test_every_allowed_kind_has_a_builder_and_nothing_else_does() -> None:
    assert set(AGENT_BUILDERS) == set(AGENT_KINDS) == {"assistant", "coder"}


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
