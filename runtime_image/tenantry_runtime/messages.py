"""The messages agents exchange, and the topics they travel on.

One task flows like this; every arrow is a publish to `TopicId(<type>, source=<tenant>)`, so
every hop passes the tenant guard and lands in the audit log:

    HTTP POST /v1/tasks --TaskRequest--> assistant (topic type from the request)
    assistant --CodeRequest--> coder (the coder's topic type)      [model replied with code]
    coder --CodeOutput--> assistant (the topic type the request named)
    ... (at most MAX_CODE_RUNS code runs per task)
    assistant --TaskResult--> RESULT_TOPIC_TYPE, where the HTTP handler waits for it

Every message carries the task id, so agents keep per-task state in a dict and the result
finds the request that is waiting for it. A task of a session carries the session id too: the
session lives in the message, never in a topic source or an agent key (sessions.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass

from autogen_core.code_executor import CodeBlock

RESULT_TOPIC_TYPE = "tenantry.results"


@dataclass(frozen=True)
class TaskRequest:
    task_id: str
    content: str
    session_id: str | None = None
    """The session the task continues (POST /v1/sessions/{id}/tasks); None for a task alone."""


@dataclass(frozen=True)
class CodeRequest:
    task_id: str
    code_blocks: list[CodeBlock]
    reply_topic_type: str


@dataclass(frozen=True)
class CodeOutput:
    task_id: str
    exit_code: int
    output: str
    error: str | None = None
    """Set when the code could not be run at all (sandbox unreachable, busy, refused)."""
    runs: int | None = None
    """How many of the request's blocks ran (the coder stops at the first that fails); None:
    not said, every block is counted as run."""


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    content: str
    error: str | None = None
