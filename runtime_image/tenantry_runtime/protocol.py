"""What the runtime and its sandbox share: the HTTP exchange between the two pods.

The runtime's executor (executor.py) is the one client and the sandbox server (sandbox.py) the
one server; both import the names below from here, and nothing else of each other: the
runtime process never loads the sandbox's server or runner, and the sandbox never loads
autogen (import-linter's contracts in pyproject.toml keep it so). docs/runtime-contract.md
describes the same exchange for people.

Every call but `GET /healthz` carries `Authorization: Bearer <tenant token>`:

    POST   /v1/execute             ExecuteRequest -> 200 ExecuteResponse (or {"error"})
    DELETE /v1/workspaces/<taskId> 204: the task has ended, its files go
    DELETE /v1/workspaces          204: every task has ended
"""

from __future__ import annotations

import re
from typing import Final, NotRequired, TypedDict

HEALTHZ_PATH: Final = "/healthz"
EXECUTE_PATH: Final = "/v1/execute"
WORKSPACES_PATH: Final = "/v1/workspaces"

AUTHORIZATION: Final = "Authorization"
BEARER: Final = "Bearer"

MAX_CODE_BYTES: Final = 64 * 1024
"""The longest code one run takes, in UTF-8 bytes; longer is answered 413."""

TASK_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""Task ids name directories in the sandbox: no dots or slashes, so never `..` or a path."""

_LANGUAGES = {"python": "python", "py": "python", "python3": "python"}
_LANGUAGES.update({"sh": "sh", "shell": "sh", "bash": "bash"})


def normalize_language(language: str) -> str | None:
    """The sandbox's name for a code block's language, or None if it cannot run it."""
    return _LANGUAGES.get(language.strip().lower())


def bearer(token: str) -> str:
    """The `Authorization` header's value that presents `token`."""
    return f"{BEARER} {token}"


class ExecuteRequest(TypedDict):
    """The body of `POST /v1/execute`."""

    language: str
    code: str
    taskId: NotRequired[str]


class ExecuteResponse(TypedDict):
    """The body of a 200 answer to `POST /v1/execute`."""

    exitCode: int
    output: str
    timedOut: bool
    truncated: bool
    durationSeconds: float
