"""The one percentile of the published page: every section's p50, p95 and p99 come from here."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest rank: a value that was measured, never one interpolated between two.

    The rank is round(fraction * n + 0.5), 1-based: ceil(fraction * n) except where
    fraction * n is a whole number, where Python's round-half-to-even takes the next rank up
    for an odd one (fraction 0.5 of 150 values: rank 76). Published figures were computed so;
    kept as it is, so they keep their meaning.
    """
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]
