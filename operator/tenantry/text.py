"""Text from elsewhere as the tenant's status and events show it."""

from __future__ import annotations

# A condition message of the CRD may hold 32768 characters: a status write over it is refused,
# and the status would stay what it was.
MAX_MESSAGE_CHARS = 1024


def shown(message: str) -> str:
    """A message written by someone else (a runtime's last words, the API server's refusal of a
    pod) as status and events show it: one line of printable text, cut. It is data, not markup."""
    text = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."
