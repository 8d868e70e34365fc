"""The figures of the load generator (tests/bench/load_stats.py): nearest-rank
percentiles, latency summaries, rates and the fixed-rate send schedule."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import ROOT


def _load_stats():
    spec = importlib.util.spec_from_file_location("load_stats", ROOT / "tests" / "bench" / "load_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


stats = _load_stats()


# --- percentile (nearest rank) -------------------------------------------------


@pytest.mark.parametrize(
    ("p", "want"),
    [
        (0, 15),  # the first value
        (5, 15),  # rank ceil(0.25) = 1
        (30, 20),  # rank ceil(1.5) = 2
        (40, 20),  # rank ceil(2.0) = 2: exactly 40 % are <= 20
        (50, 35),  # rank ceil(2.5) = 3
        (100, 50),
    ],
)
def test_percentile_is_nearest_rank(p, want):
    # The textbook example of the nearest-rank method.
    assert stats.percentile([15, 20, 35, 40, 50], p) == want


def test_percentile_sorts_and_never_interpolates():
    values = [9, 1, 8, 2, 7, 3, 6, 4, 5, 10]
    assert stats.percentile(values, 50) == 5  # rank 5, not 5.5
    assert stats.percentile(values, 51) == 6  # rank ceil(5.1) = 6
    assert stats.percentile(values, 95) == 10  # rank ceil(9.5) = 10
    assert stats.percentile(values, 90) == 9  # rank 9 exactly
    assert values[0] == 9  # the caller's list is left alone


def test_percentile_ranks_are_not_thrown_by_float_noise():
    # 64.4 * 250 / 100 is 161.00000000000003 in floating point: still rank 161.
    assert stats.percentile(list(range(1, 251)), 64.4) == 161
    assert stats.percentile(list(range(1, 376)), 8.8) == 33  # 33.00000000000001
    assert stats.percentile(list(range(1, 1001)), 99.9) == 999
    assert stats.percentile(list(range(1, 21)), 95) == 19


def test_percentile_of_one_value_and_of_none():
    assert stats.percentile([42.5], 50) == 42.5
    assert stats.percentile([42.5], 95) == 42.5
    assert stats.percentile([], 50) is None
    assert stats.percentile(iter([3, 1, 2]), 100) == 3


@pytest.mark.parametrize("p", [-1, 100.5])
def test_percentile_out_of_range(p):
    with pytest.raises(ValueError):
        stats.percentile([1, 2, 3], p)


# --- summarise ---------------------------------------------------------------


def test_summarise_latencies():
    latencies = [float(v) for v in range(1, 101)]  # 1 .. 100 ms
    latencies.reverse()
    assert stats.summarise(latencies) == {"count": 100, "p50": 50.0, "p95": 95.0, "max": 100.0}


def test_summarise_rounds():
    assert stats.summarise([12.34, 30.56, 18.25]) == {"count": 3, "p50": 18.2, "p95": 30.6, "max": 30.6}
    assert stats.summarise([1.23456], digits=3) == {"count": 1, "p50": 1.235, "p95": 1.235, "max": 1.235}


def test_summarise_nothing():
    assert stats.summarise([]) == {"count": 0, "p50": None, "p95": None, "max": None}


# --- rate --------------------------------------------------------------------


def test_rate():
    assert stats.rate(150, 10.0) == 15.0
    assert stats.rate(1, 3.0) == 0.33
    assert stats.rate(0, 5.0) == 0.0
    assert stats.rate(10, 0.0) == 0.0
    assert stats.rate(10, -1.0) == 0.0


# --- fixed-rate schedule -----------------------------------------------------


def test_schedule_spreads_the_rate_over_the_senders():
    schedule = stats.fixed_rate_schedule(10, 1, 4)
    assert schedule == [
        [0.0, 0.4, 0.8],
        [0.1, 0.5, 0.9],
        [0.2, 0.6],
        [0.3, 0.7],
    ]


def test_schedule_offers_exactly_the_rate():
    schedule = stats.fixed_rate_schedule(10, 30, 4)
    offsets = sorted(t for sender in schedule for t in sender)
    assert len(offsets) == 300
    assert offsets[0] == 0.0
    assert offsets[-1] == pytest.approx(29.9)
    gaps = {round(b - a, 9) for a, b in zip(offsets, offsets[1:])}
    assert gaps == {0.1}
    # Each sender sends every senders / rate seconds.
    for sender in schedule:
        assert len(sender) == 75
        assert {round(b - a, 9) for a, b in zip(sender, sender[1:])} == {0.4}


def test_schedule_fractional_rate_and_period():
    # 2.5 msg/s for 3 s: due at 0, 0.4, ..., 2.8 (k / 2.5 < 3): 8 sends.
    schedule = stats.fixed_rate_schedule(2.5, 3, 1)
    assert len(schedule[0]) == 8
    assert schedule[0][-1] == pytest.approx(2.8)
    # 3 msg/s for 1 s exactly: 0, 1/3, 2/3 (not 1.0, which is the end).
    assert stats.fixed_rate_schedule(3, 1, 1) == [[0.0, 1 / 3, 2 / 3]]
    # 25 * 2.2 is 55.00000000000001 in floating point: still 55 slots, the
    # last due at 54 / 25 = 2.16 s (a 56th would be due at the end, 2.2 s).
    schedule = stats.fixed_rate_schedule(25, 2.2, 1)
    assert len(schedule[0]) == 55
    assert schedule[0][-1] == pytest.approx(2.16)


def test_schedule_limit_and_more_senders_than_slots():
    assert stats.fixed_rate_schedule(10, 30, 2, limit=5) == [[0.0, 0.2, 0.4], [0.1, 0.3]]
    assert stats.fixed_rate_schedule(1, 2, 4) == [[0.0], [1.0], [], []]
    assert stats.fixed_rate_schedule(10, 1, 3, limit=0) == [[], [], []]


@pytest.mark.parametrize(("rate", "seconds", "senders"), [(0, 10, 1), (10, 0, 1), (10, 10, 0), (-1, 10, 1)])
def test_schedule_bad_input(rate, seconds, senders):
    with pytest.raises(ValueError):
        stats.fixed_rate_schedule(rate, seconds, senders)


# --- catching up with the schedule -------------------------------------------


OFFSETS = [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4]


def test_catch_up_on_time_skips_nothing():
    assert stats.catch_up(OFFSETS, 0, 0.0, 1.0) == (0, 0)
    assert stats.catch_up(OFFSETS, 2, 0.5, 1.0) == (2, 0)  # due later: wait for it


def test_catch_up_a_little_behind_sends_late_without_skipping():
    # 0.8 s behind slot 1: within the bound, it is sent (late), not skipped.
    assert stats.catch_up(OFFSETS, 1, 1.2, 1.0) == (1, 0)


def test_catch_up_far_behind_skips_old_slots():
    # At 2.3 s the slots due before 1.3 s (0.4, 0.8, 1.2) are dropped.
    assert stats.catch_up(OFFSETS, 1, 2.3, 1.0) == (4, 3)
    # With no slack at all every slot already due is dropped.
    assert stats.catch_up(OFFSETS, 0, 1.3, 0.0) == (4, 4)


def test_catch_up_past_the_end():
    assert stats.catch_up(OFFSETS, 0, 10.0, 1.0) == (7, 7)
    assert stats.catch_up(OFFSETS, 7, 10.0, 1.0) == (7, 0)
    assert stats.catch_up([], 0, 1.0, 1.0) == (0, 0)


def test_catch_up_bad_bound():
    with pytest.raises(ValueError):
        stats.catch_up(OFFSETS, 0, 1.0, -0.1)
