"""Why a process refuses to start, in words: `ConfigError`, and every pattern a value must match
with what it means.

A refusal names the field, shows the value (briefly, escaped: it may be hostile) and says in
words what the value must be, never the regular expression behind the rule. This is the one
place that turns a pattern into a sentence, for runtime.json (runtime_json.py), the env of both
processes (env.py) and the sandbox's answers. Where a rule is also the operator's, the words
are the operator's (`tenantry.models.PATTERN_MEANINGS`; the two packages share no code).
"""

from __future__ import annotations

import re
from typing import Final

from .protocol import TASK_ID_RE


class ConfigError(ValueError):
    """The process cannot start with this configuration; the message says what to fix."""


DNS_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
"""A tenant id, like the AgentTenant's name it comes from."""
AGENT_KIND_RE: Final = DNS_LABEL_RE
"""An agent kind's name, as a package registers it and a manifest names it: a DNS-1123 label
(a kind refused is refused by name, with the kinds installed: runtime_json._parse_agent)."""
AGENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""Agent names become autogen agent types; no dot, so they never collide with internal types."""
TOPIC_TYPE_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""A subset of what autogen accepts for topic types: no ':', so they never reach an agent's
direct-message prefix subscription."""

PATTERN_MEANINGS: Final[dict[re.Pattern[str], str]] = {
    DNS_LABEL_RE: "a DNS-1123 label: lowercase letters, digits and '-', starting and ending with "
    "a letter or digit, at most 63 characters",
    AGENT_NAME_RE: "an agent name: letters, digits, '-' and '_', starting with a letter or "
    "digit, at most 63 characters",
    TOPIC_TYPE_RE: "a valid topic type: letters, digits, '-', '_' and '.', starting with a "
    "letter or digit, at most 63 characters",
    TASK_ID_RE: "a task id: 1 to 64 letters, digits, '-' and '_'",
}
"""What a value matching each pattern is, in words: "<where>=<value> is not <meaning>"."""

_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """`value` as a refusal shows it: its repr (so no control character reaches a log line),
    cut after 80 characters."""
    if isinstance(value, str):
        return repr(value[:_SHOWN_CHARS]) + ("..." if len(value) > _SHOWN_CHARS else "")
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def shown_name(name: str) -> str:
    """A field's name as a refusal shows it: as it is when it is short printable text (the
    names a config should have), else like a value."""
    return name if name.isprintable() and len(name) <= _SHOWN_CHARS else shown(name)


def pattern_refusal(where: str, value: object, pattern: re.Pattern[str]) -> str:
    """The sentence for a `value` at `where` that does not match `pattern`."""
    return f"{where}={shown(value)} is not {PATTERN_MEANINGS[pattern]}"
