"""The figures of tests/bench/matrix_load.py: percentiles, rates, schedules.

Pure functions (no network, no matrix-nio), unit-tested in
tests/unit/bench/test_load_stats.py, so that every load run computes its
figures the same way:

    percentile([5, 1, 4, 2, 3], 50)        -> 3 (nearest rank)
    summarise([12.0, 30.5, 18.2])          -> {"count": 3, "p50": 18.2, ...}
    rate(150, 10.0)                        -> 15.0
    fixed_rate_schedule(10, 2, 4)          -> send offsets of each of 4 senders
    catch_up(offsets, index, elapsed, 1.0) -> (next index, slots skipped)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# Guards the rank and slot counts against float noise such as
# 64.4 * 250 / 100 == 161.00000000000003 or 25 * 2.2 == 55.00000000000001.
_EPSILON = 1e-9


def percentile(values: Iterable[float], p: float) -> float | None:
    """The nearest-rank p-th percentile: the smallest value such that at
    least p % of the values are less than or equal to it (rank
    ceil(p / 100 * n) of the sorted values, at least the first). Always one
    of the values, never interpolated; None when there are none."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be within 0..100, got {p}")
    ordered = sorted(values)
    if not ordered:
        return None
    n = len(ordered)
    rank = min(n, max(1, math.ceil(p * n / 100 - _EPSILON)))
    return ordered[rank - 1]


def summarise(latencies_ms: Iterable[float], digits: int = 1) -> dict[str, float | int | None]:
    """count, p50, p95 (nearest rank) and max of latencies in milliseconds,
    rounded to ``digits``; the figures are None when there are none."""
    values = sorted(latencies_ms)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "count": len(values),
        "p50": rounded(percentile(values, 50)),
        "p95": rounded(percentile(values, 95)),
        "max": rounded(values[-1] if values else None),
    }


def rate(count: int, seconds: float, digits: int = 2) -> float:
    """count per second over ``seconds`` of wall time (0.0 for no time)."""
    if seconds <= 0:
        return 0.0
    return round(count / seconds, digits)


def fixed_rate_schedule(total_rate: float, seconds: float, senders: int, limit: int | None = None) -> list[list[float]]:
    """When each sender sends, as offsets in seconds from the phase start,
    for ``senders`` that together offer ``total_rate`` messages a second for
    ``seconds``: the k-th message of the whole schedule is due at k / rate
    (k = 0, 1, ... while k / rate < seconds, at most ``limit`` of them) and
    is sent by sender k mod senders, so each sender sends every
    senders / rate seconds and the senders take turns, evenly staggered."""
    if total_rate <= 0 or seconds <= 0 or senders < 1:
        raise ValueError("rate and seconds must be positive, senders at least 1")
    count = max(0, math.ceil(total_rate * seconds - _EPSILON))
    if limit is not None:
        count = min(count, max(0, limit))
    schedule: list[list[float]] = [[] for _ in range(senders)]
    for k in range(count):
        schedule[k % senders].append(k / total_rate)
    return schedule


def catch_up(offsets: Sequence[float], index: int, elapsed: float, max_behind: float) -> tuple[int, int]:
    """A sender behind its schedule: from slot ``index`` on, skip the slots
    due more than ``max_behind`` seconds before ``elapsed`` (they are not
    sent late in a burst). Returns the next slot to send and how many were
    skipped; the next slot may still be due in the past, by at most
    ``max_behind``."""
    if max_behind < 0:
        raise ValueError("max_behind must not be negative")
    start = index
    while index < len(offsets) and offsets[index] < elapsed - max_behind:
        index += 1
    return index, index - start
