"""Counts the fault and bad-input suites report at the end of a test run (tests/conftest.py)."""

from __future__ import annotations

from collections import Counter

counts: Counter[str] = Counter()
