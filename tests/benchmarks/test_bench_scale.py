"""The scale benchmark's repeats: a row reports its fastest run, and a failed run is never
hidden behind a good one."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import bench_scale  # noqa: E402
from bench_scale import Ctx, Result  # noqa: E402


def _ctx() -> Ctx:
    return Ctx(1000, {}, "/nonexistent")


def _row(times: list[tuple[float, float, str]]):
    """A row of two results (as list-name gives) whose runs take the given wall times."""
    it = iter(times)

    def fn(ctx: Ctx) -> list[Result]:
        a, b, error = next(it)
        return [Result("first", ctx.n, a, cpu=a), Result("second", ctx.n, b, error=error)]
    return fn


def test_each_result_of_a_row_is_its_fastest_run():
    got = bench_scale.best_of(_row([(0.3, 0.2, ""), (0.1, 0.5, ""), (0.2, 0.4, "")]), _ctx(), 3)
    assert [(r.row, r.seconds) for r in got] == [("first", 0.1), ("second", 0.2)]
    assert got[0].cpu == 0.1  # the fastest run's own figures, not a mix of runs


def test_a_failed_run_is_reported_even_when_another_was_faster():
    got = bench_scale.best_of(_row([(0.1, 0.1, ""), (0.2, 0.3, "boom")]), _ctx(), 2)
    assert got[0].seconds == 0.1 and not got[0].error
    assert got[1].error == "boom"


def test_the_row_runs_as_often_as_asked():
    calls = []

    def fn(ctx: Ctx) -> list[Result]:
        calls.append(1)
        return [Result("r", ctx.n, 1.0)]
    bench_scale.best_of(fn, _ctx(), 4)
    assert len(calls) == 4
    bench_scale.best_of(fn, _ctx(), 0)  # at least once
    assert len(calls) == 5
