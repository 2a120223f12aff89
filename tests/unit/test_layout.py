"""The test tree itself: what pytest needs of it to collect every test."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own() -> None:
    """pytest imports test modules by their file name (the directories are not packages), so
    two modules of one name stop the whole run at collection. Found when
    tests/integration/test_sessions.py met tests/runtime/test_sessions.py in a clean clone."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for module in TESTS.rglob("test_*.py"):
        by_name[module.name].append(str(module.relative_to(TESTS)))
    assert {name: paths for name, paths in by_name.items() if len(paths) > 1} == {}
