"""Overload (slow, ~4 min): benchmarks/bench_overload.py's full run — 2 minutes at 4x the
measured capacity — must lose nothing: every request completed or refused with
Retry-After, no 5xx or hung request, RSS under the README's bound, full speed after."""

from __future__ import annotations

import pytest

from benchmarks import bench_overload


@pytest.mark.slow
def test_four_times_capacity_for_two_minutes_loses_nothing() -> None:
    result = bench_overload.main([])
    overload = result["overload"]
    assert overload["failures"] == 0, overload["failure_reasons"]
    assert overload["refused_429"] + overload["refused_503"] > 0  # it really was overloaded
    assert result["offered_ratio"] >= 0.9 * bench_overload.OVERLOAD_FACTOR
    assert result["rss_peak_mib"] < bench_overload.RSS_BOUND_MIB
    assert result["ready_after_overload"] == 200 and result["ready_at_end"] == 200
    assert result["recovery_ratio"] >= bench_overload.RECOVERY_FLOOR
