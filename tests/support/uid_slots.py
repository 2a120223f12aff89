"""Tenant names that share a uid slot (render.tenant.uid_slot), as an attacker would search for
them: a birthday search, a few tens of thousands of names for the 2^29 slots."""

from __future__ import annotations

import itertools

from tenantry.render import uid_slot


def names_in_one_uid_slot(prefix: str) -> tuple[str, str]:
    """Two names `<prefix>-<n>` whose hashes pick one slot: the one found first, then the other."""
    seen: dict[int, str] = {}
    for count in itertools.count():
        name = f"{prefix}-{count}"
        first = seen.setdefault(uid_slot(name), name)
        if first != name:
            return first, name
    raise AssertionError("itertools.count() ended")
