"""The runtime benchmark's reading of its instruction counts: the guard's overhead as the
throughput it costs, and the report without valgrind."""

from __future__ import annotations

import pytest

from bench.runtime import _counted_report, counted_overhead


def counted(bare: float, guarded: float) -> dict[str, object]:
    return {
        "instructions": {
            "per_message": {"bare": bare, "guarded": guarded},
            "counts": {"bare": {"1000": 1, "5000": 2}, "guarded": {"1000": 1, "5000": 2}},
            "valgrind": "valgrind-3.19.0",
        }
    }


def test_the_counted_overhead_is_the_throughput_the_guards_instructions_cost() -> None:
    # 4 % more instructions a message: 1 - 100/104 of the messages a second, at one speed each.
    assert counted_overhead(counted(100.0, 104.0)) == pytest.approx(1 - 100 / 104)
    report = _counted_report(counted(100.0, 104.0))
    assert "| bare `SingleThreadedAgentRuntime` | 100 |" in report
    assert "3.8%" in report and "(met)" in report
    assert "5,000" in report and "1,000" in report


def test_without_valgrind_nothing_is_counted_and_the_report_says_why() -> None:
    assert counted_overhead({"instructions": None}) is None
    assert counted_overhead({}) is None
    assert "valgrind is not installed" in _counted_report({"instructions": None})
