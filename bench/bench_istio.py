"""Istio's own translation: build time, translation time per stage, differential agreement.

Run: ``python -m bench.bench_istio [--cases 500] [--jobs 2] [--cold]`` (``make bench`` uses
the defaults; the differential test runs 2,000 cases).

Printed figures:

- ``go build``: ``make istio-xds`` with the Go build cache as it is (cached), and with
  ``--cold`` also into an empty build cache (the module cache is kept: downloads are not
  timed). Without Go, says so and stops;
- ``translate <stage>``: one run of the program on the stage's objects (process start,
  Istio's fake discovery server, generation, JSON), median of three;
- ``differential``: the sample stages and the generated VirtualServices compared per request
  class between the oracle, the Python translation and Istio's route table (the categories
  of :mod:`tests.differential.cases`), with the time each side took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from abtest_harness import proc
from abtest_harness.errors import CommandError
from abtest_harness.mesh import istio_xds as ix
from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage

ROOT = Path(__file__).resolve().parents[1]


def _make(env: dict[str, str] | None = None, *, touch: bool = False) -> float:
    if touch:
        os.utime(ROOT / "istio-xds" / "main.go")  # make rebuilds; Go's cache decides the cost
    started = time.perf_counter()
    proc.run(["make", "--no-print-directory", "istio-xds"], cwd=ROOT, timeout=3600, env=env)
    return time.perf_counter() - started


def bench_build(cold: bool) -> bool:
    if shutil.which("go") is None:
        print("go build: Go is not installed; Istio's translation is unavailable (the rest of the harness works)")
        return False
    try:
        cached = _make(touch=True)
        print(f"go build (cached: Go build cache warm, sources touched): {cached:.1f}s")
        if cold:
            with tempfile.TemporaryDirectory(prefix="abtest-gocache-") as cache:
                seconds = _make({"GOCACHE": cache}, touch=True)
                print(f"go build (cold: empty build cache, modules already downloaded): {seconds:.1f}s")
    except CommandError as exc:
        print(f"go build: failed: {exc}")
        return False
    return True


def bench_stages() -> None:
    plan = load_plan()
    for stage in plan.stages:
        objects = render_stage(plan, stage)
        times = [ix.generate(objects).seconds for _ in range(3)]
        print(f"translate {stage.name:<10} {statistics.median(times) * 1000:7.0f} ms (median of 3)")


def bench_differential(cases: int, jobs: int) -> None:
    from tests.differential import run as drun

    result = drun.run(cases, jobs)
    print("differential:")
    for line in drun.report(result, limit=10).splitlines():
        print(f"  {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="also time a build into an empty Go build cache")
    args = parser.parse_args(argv)
    if not bench_build(args.cold):
        return 0
    try:
        ix.binary()
    except ix.IstioXdsUnavailable as exc:
        print(exc)
        return 0
    bench_stages()
    bench_differential(args.cases, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
