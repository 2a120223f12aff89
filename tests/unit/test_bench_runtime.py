"""The runtime benchmark's reading of its instruction counts: the guard's overhead as the
throughput it costs, and the report without valgrind."""

from __future__ import annotations

import pytest

from bench.runtime import _counted_report, collected, counted_overhead


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


def test_without_a_count_the_report_says_why() -> None:
    missing = {"instructions": {"not_counted": "valgrind is not installed"}}
    assert counted_overhead(missing) is None
    assert counted_overhead({}) is None
    assert "valgrind is not installed" in _counted_report(missing)
    assert "before the count" in _counted_report({})  # results saved before it existed


def test_callgrinds_count_is_read_from_its_summary_or_refused_clearly() -> None:
    assert collected("==7== Events    : Ir\n==7== Collected : 3099273518\n") == 3099273518
    with pytest.raises(ValueError, match="no count"):
        collected("valgrind: command failed\n")
