"""Local mesh timings: start, apply + converge per stage, config propagation, request cost.

Run: ``python -m bench.bench_mesh [--repeats 3] [--changes 20] [--skip-full-run]``.

Printed figures (medians over repeats; every process started is stopped, all traffic goes
to 127.0.0.1 and is bounded):

- ``up``: LocalMesh.up() until Envoy is LIVE with its gateway listener bound;
- ``stage <name>``: apply (start new replicas, wait for /healthz, write xDS, wait until Envoy
  serves it, stop replaced replicas) and the converge() that follows, for every plan stage;
- ``propagation``: for weight-only changes, the time from the xDS file rename to Envoy's own
  ``last_updated`` of the route configuration (Envoy picking the file up), and from that to
  the harness having seen it in ``/config_dump`` (goal: within 0.5 s);
- ``request``: one GET /score through the gateway vs straight to a scorer replica;
- full run (unless ``--skip-full-run``): the ``abtest run`` command's wall time, then
  :func:`timed_run`, the whole plan as ``abtest run`` drives it on the local mesh, with its
  breakdown (start, then apply/converge/sample per stage; goal: under 20 s).
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import requests

from abtest_harness.mesh.local import LocalMesh
from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _last_updated(mesh: LocalMesh) -> float:
    """Envoy's wall-clock time of applying the gateway's route configuration."""
    dump = mesh._admin_get("/config_dump?resource=dynamic_route_configs").json()
    stamps = [c["last_updated"] for c in dump.get("configs", []) if "last_updated" in c]
    return max(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps)


def bench_up(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        mesh = LocalMesh()
        times.append(_timed(mesh.up))
        mesh.down()
    return _median(times)


def bench_stages(mesh: LocalMesh, repeats: int) -> dict[str, tuple[float, float]]:
    plan = load_plan()
    rendered = {stage.name: render_stage(plan, stage) for stage in plan.stages}
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in rendered}
    for _ in range(repeats):
        mesh.apply(rendered["baseline"])  # every repeat starts from the same state
        for name, objects in rendered.items():
            applied = _timed(functools.partial(mesh.apply, objects))
            converged = _timed(functools.partial(mesh.converge, objects, timeout=30))
            out[name].append((applied, converged))
    return {name: (_median([a for a, _ in v]), _median([c for _, c in v])) for name, v in out.items()}


def bench_propagation(mesh: LocalMesh, changes: int) -> tuple[list[float], list[float]]:
    """(file rename -> Envoy applied, Envoy applied -> harness saw it) for weight-only changes."""
    plan = load_plan()
    base = render_stage(plan, "Blue_50")
    mesh.apply(base)
    pickup, seen = [], []
    for i in range(changes):
        objects = copy.deepcopy(base)
        vs = next(o for o in objects if o["kind"] == "VirtualService")
        route = next(r for r in vs["spec"]["http"] if r.get("name") == "weighted")
        route["route"][0]["weight"] = 40 + i % 2 * 20
        route["route"][1]["weight"] = 100 - route["route"][0]["weight"]
        mesh.apply(objects)  # returns once the harness has seen Envoy serve the change
        saw = time.time()
        applied = _last_updated(mesh)
        assert mesh.last_xds_write is not None
        pickup.append(applied - mesh.last_xds_write)
        seen.append(saw - applied)
    return pickup, seen


def bench_requests(mesh: LocalMesh, n: int = 200) -> tuple[float, float]:
    """Median seconds per GET /score through the gateway and straight to a replica."""
    workload = mesh.workloads[0]
    direct = f"http://{workload.endpoint[0]}:{workload.endpoint[1]}/score"
    out = []
    for url in (mesh.gateway_url + "/score", direct):
        with requests.Session() as session:
            session.get(url, timeout=5)
            times = [_timed(functools.partial(session.get, url, timeout=5)) for _ in range(n)]
        out.append(_median(times))
    return out[0], out[1]


def timed_run(stages: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole plan on a fresh local mesh, as ``abtest run`` drives it, with its breakdown.

    Returns ``{"total_s", "up_s", "stages": [{"name", "apply_s", "converge_s", "sample_s",
    "requests", "passed"}], "passed"}``. Needs ``abtest_harness.rollout`` and ``abtest_harness.stats``.
    """
    from abtest_harness import rollout
    from abtest_harness.stats import StatsConfig

    plan = load_plan()
    chosen = [plan.stage(s) for s in stages] if stages else list(plan.stages)
    started = time.perf_counter()
    mesh = LocalMesh()
    up_s = _timed(mesh.up)
    try:
        result = rollout.run_rollout(mesh, plan, StatsConfig(), stages=chosen)
    finally:
        mesh.down()
    return {
        "total_s": time.perf_counter() - started,
        "up_s": up_s,
        "passed": result.passed,
        "stages": [
            {
                "name": s.stage.name,
                "apply_s": s.apply_s,
                "converge_s": s.converge_s,
                "sample_s": s.sample_s,
                "requests": s.requests,
                "passed": s.passed,
            }
            for s in result.stages
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changes", type=int, default=20, help="weight changes for the propagation figures")
    parser.add_argument("--skip-full-run", action="store_true", help="do not time the whole plan (abtest run)")
    args = parser.parse_args(argv)

    print(
        f"up (LocalMesh.up until LIVE)      {bench_up(args.repeats) * 1000:8.0f} ms"
        f"  (median of {args.repeats})"
    )
    with LocalMesh() as mesh:
        for name, (applied, converged) in bench_stages(mesh, args.repeats).items():
            print(f"stage {name:<11} apply {applied * 1000:6.0f} ms   converge {converged * 1000:5.1f} ms")
        pickup, seen = bench_propagation(mesh, args.changes)
        print(
            f"propagation: file rename -> Envoy applied  median {_median(pickup) * 1000:6.1f} ms  "
            f"max {max(pickup) * 1000:6.1f} ms  (n={len(pickup)}, Envoy stamps in ms)"
        )
        worst = max(seen)
        print(
            f"propagation: Envoy applied -> harness saw  median {_median(seen) * 1000:6.1f} ms  "
            f"max {worst * 1000:6.1f} ms  goal <= 500 ms: {'met' if worst <= 0.5 else 'MISSED'}"
        )
        via, direct = bench_requests(mesh)
        print(
            f"request GET /score via gateway {via * 1000:7.2f} ms   direct to replica {direct * 1000:7.2f} ms"
        )
    if not args.skip_full_run:
        with tempfile.TemporaryDirectory(prefix="abtest-bench-") as artifacts:
            started = time.monotonic()
            done = subprocess.run(  # noqa: S603 - our own CLI, argv list
                [sys.executable, "-m", "abtest_harness.cli", "run", "--artifacts-dir", artifacts],
                capture_output=True, text=True, timeout=300, check=False,
            )
            wall = time.monotonic() - started
        print(
            f"abtest run as a command (process start, imports, all stages)  {wall:6.1f} s  exit {done.returncode}"
            f"  goal < 20 s: {'met' if wall < 20 and done.returncode == 0 else 'MISSED'}"
        )
        try:
            run = timed_run()
        except ImportError as exc:
            print(f"full run: skipped ({exc})")
        else:
            print(
                f"full run (abtest run, local mesh)  {run['total_s']:6.1f} s  goal < 20 s: "
                f"{'met' if run['total_s'] < 20 else 'MISSED'}"
                f"  (up {run['up_s']:.2f} s, passed {run['passed']})"
            )
            for s in run["stages"]:
                print(
                    f"  {s['name']:<11} apply {s['apply_s']:5.2f} s  converge {s['converge_s']:5.3f} s  "
                    f"sample {s['sample_s']:5.2f} s  n={s['requests']}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
