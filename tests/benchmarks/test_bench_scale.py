"""The scale benchmark's repeats: a row reports its fastest run, and a failed run is never
hidden behind a good one."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_scale  # noqa: E402
from bench_scale import Result  # noqa: E402


def _runs(times: list[tuple[float, float, str]]) -> list[list[Result]]:
    """Runs of a row of two results (as list-name gives), with the given wall times."""
    return [[Result("first", 1000, a, cpu=a), Result("second", 1000, b, error=error)]
            for a, b, error in times]


def test_each_result_of_a_row_is_its_fastest_run():
    got = bench_scale.best(_runs([(0.3, 0.2, ""), (0.1, 0.5, ""), (0.2, 0.4, "")]))
    assert [(r.row, r.seconds) for r in got] == [("first", 0.1), ("second", 0.2)]
    assert got[0].cpu == 0.1  # the fastest run's own CPU time


def test_the_peak_memory_is_the_least_of_the_runs():
    # A later run's child inherits more of the harness's own high-water mark at the fork, so
    # the fastest run need not be the one with the command's own peak.
    runs = [[Result("r", 1000, seconds, rss_mb=rss)] for seconds, rss in [(0.2, 26), (0.1, 40), (0.3, 41)]]
    got = bench_scale.best(runs)
    assert (got[0].seconds, got[0].rss_mb) == (0.1, 26)


def test_a_failed_run_is_reported_even_when_another_was_faster():
    got = bench_scale.best(_runs([(0.1, 0.1, ""), (0.2, 0.3, "boom")]))
    assert got[0].seconds == 0.1 and not got[0].error
    assert got[1].error == "boom"
