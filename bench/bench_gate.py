"""Start-up and the offline gate: what a user waits for before (and instead of) any traffic.

Run: ``python -m bench.bench_gate [--repeats 5] [--run-repeats 3] [--skip-run]``.

Each figure is the median of several runs, each in a fresh Python process (so imports and
first-use caches count, as they do for a user), with the machine's load average printed
before and after. On a shared machine wall times scale with the load; the CPU time a
command and its children used (user + system, from ``getrusage``), printed beside it, does
not. Commands run with Python's bytecode cache on (as an installed package has it), after
one warm-up run.

- ``abtest --help``: the command's wall time (goal: under 0.2 s);
- the offline gate per stage: rendering (``kubectl kustomize``), schema and semantic
  validation, and the plan/manifest agreement check, timed inside one process that goes
  through the sample's stages one by one, plus that process's imports;
- ``abtest validate --all``: the whole gate as a command (goal: under 1 s for the sample's
  six stages), its stages rendered concurrently;
- ``abtest validate --file`` on a 300-byte YAML alias bomb: the time to refuse it;
- ``abtest run``: the whole rollout on the local mesh as a command (goal: under 3.5 s),
  and whether it imported scipy, numpy or matplotlib (with the split boundaries stored it
  should not); ``--skip-run`` leaves it out.

The gate is timed twice: with a cold render cache (a fresh, empty cache directory each
run: every stage runs kustomize) and with a warm one (an unchanged tree: no kustomize at
all). See ``harness/rendercache.py``.

Which modules ``abtest validate`` imports is printed too: scipy, matplotlib, docker and
the mesh are not needed to validate and should not appear.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from abtest_harness import proc, yamlio
from abtest_harness.errors import CommandError, ConfigError
from abtest_harness.rendercache import CACHE_ENV

# One process: import the CLI, then time each stage of the gate; prints JSON on stdout.
_PER_STAGE = r"""
import io, json, sys, time
t0 = time.perf_counter()
from abtest_harness import cli, render, validate, rollout
from abtest_harness.spec import load_spec
t1 = time.perf_counter()
spec = load_spec()
t2 = time.perf_counter()
rows = []
for stage in spec.stages:
    a = time.perf_counter()
    objects = render.render(spec, stage)
    b = time.perf_counter()
    findings = validate.validate_objects(objects)
    c = time.perf_counter()
    if not validate.has_errors(findings):
        rollout.manifest_mismatches(objects, stage, spec.classes, versions=spec.versions)
    d = time.perf_counter()
    rows.append([stage.name, b - a, c - b, d - c])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("scipy", "matplotlib", "docker", "numpy", "pydantic")
               or m.startswith("abtest_harness.mesh."))
print(json.dumps({"imports": t1 - t0, "spec": t2 - t1, "stages": rows,
                  "heavy": sorted({m.split(".")[0] if not m.startswith("abtest_harness") else m for m in heavy})}))
"""
#: Subprocesses write and use Python's bytecode cache, as an installed package does.
_ENV = {"PYTHONDONTWRITEBYTECODE": ""}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def _wall(
    argv: list[str], *, timeout: float, ok_codes: tuple[int, ...] = (0,), env: Mapping[str, str] | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children: user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = proc.run(argv, timeout=timeout, check=False, env={**_ENV, **(env or {})})
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in ok_codes:
        raise CommandError(argv, result.returncode, result.stdout, result.stderr)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _median_wall(
    argv: list[str],
    repeats: int,
    *,
    timeout: float,
    ok_codes: tuple[int, ...] = (0,),
    env: Mapping[str, str] | None = None,
    fresh_cache: bool = False,
) -> str:
    """Median wall and CPU of `repeats` runs; `fresh_cache`: each run gets an empty render cache."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="abtest-bench-cache-") as cold:
            extra = {**(env or {}), CACHE_ENV: cold} if fresh_cache else env
            runs.append(_wall(argv, timeout=timeout, ok_codes=ok_codes, env=extra))
    times = [wall for wall, _ in runs]
    cpu = statistics.median(c for _, c in runs)
    return (f"{statistics.median(times):6.3f} s (min {min(times):.3f}, max {max(times):.3f}, n={repeats}; "
            f"CPU {cpu:.3f} s)")


def _bomb(directory: Path) -> Path:
    lines = [f"a0: &a0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = directory / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def per_stage(repeats: int, label: str, *, warm_cache: str | None) -> None:
    """Per-stage figures; `warm_cache` a populated cache directory, None for a fresh one per run."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="abtest-bench-cache-") as cold:
            env = {**_ENV, CACHE_ENV: warm_cache or cold}
            out = proc.run([sys.executable, "-c", _PER_STAGE], timeout=120, env=env).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    names = [row[0] for row in runs[0]["stages"]]
    print(f"offline gate per stage, {label}, one process, stages one by one (median of {repeats} processes):")
    print(f"  {'stage':<12} {'render':>8} {'validate':>9} {'agree':>8} {'total':>8}")
    totals = [0.0, 0.0, 0.0]
    for i, name in enumerate(names):
        cols = [statistics.median(run["stages"][i][k] for run in runs) for k in (1, 2, 3)]
        totals = [t + c for t, c in zip(totals, cols, strict=True)]
        print(f"  {name:<12} {cols[0]:>7.3f}s {cols[1]:>8.3f}s {cols[2]:>7.3f}s {sum(cols):>7.3f}s")
    imports = statistics.median(run["imports"] for run in runs)
    spec = statistics.median(run["spec"] for run in runs)
    print(f"  {'all stages':<12} {totals[0]:>7.3f}s {totals[1]:>8.3f}s {totals[2]:>7.3f}s {sum(totals):>7.3f}s"
          f"  (+ imports {imports:.3f}s, reading the spec {spec:.3f}s)")
    heavy = runs[0]["heavy"]
    print(f"  heavy modules imported by the gate: {', '.join(heavy) if heavy else 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--run-repeats", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="leave out `abtest run` (about 5 s a run)")
    args = parser.parse_args(argv)
    abtest = [sys.executable, "-m", "abtest_harness.cli"]
    print(f"before: {_load()}")
    with tempfile.TemporaryDirectory(prefix="abtest-bench-gate-") as tmp:
        warm = {CACHE_ENV: str(Path(tmp) / "render-cache")}
        # Warm-up: writes the bytecode cache and fills the warm render cache.
        _wall([*abtest, "validate", "--all"], timeout=120, env=warm)
        print(f"abtest --help:                 {_median_wall([*abtest, '--help'], args.repeats, timeout=60)}")
        per_stage(args.repeats, "cold render cache", warm_cache=None)
        per_stage(args.repeats, "warm render cache", warm_cache=warm[CACHE_ENV])
        gate = [*abtest, "validate", "--all"]
        print(f"abtest validate --all, cold:   {_median_wall(gate, args.repeats, timeout=120, fresh_cache=True)}")
        print(f"abtest validate --all, warm:   {_median_wall(gate, args.repeats, timeout=120, env=warm)}")
        bomb = _bomb(Path(tmp))
        refused = _median_wall([*abtest, "validate", "--file", str(bomb)], args.repeats, timeout=60, ok_codes=(2,))
        print(f"alias bomb refused:            {refused}  ({bomb.stat().st_size} bytes, exit 2)")
        inside = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            try:
                yamlio.load_documents(bomb)
            except ConfigError:
                inside.append(time.perf_counter() - started)
        print(f"  of which the refusal itself (in-process): {1000 * statistics.median(inside):.2f} ms")
        if not args.skip_run:
            artifacts = Path(tmp) / "artifacts"
            run = [*abtest, "run", "--artifacts-dir", str(artifacts)]
            _wall(run, timeout=300, env=warm)  # warm-up: stores the split boundaries if they are not yet
            print(f"abtest run (local mesh), warm: {_median_wall(run, args.run_repeats, timeout=300, env=warm)}")
            traced = proc.run([sys.executable, "-X", "importtime", *run[1:]], timeout=300,
                              env={**_ENV, **warm}).stderr
            heavy = sorted({line.rsplit("|", 1)[-1].strip().split(".")[0] for line in traced.splitlines()
                            if line.startswith("import time:")} & {"scipy", "numpy", "matplotlib"})
            print(f"  heavy modules imported by abtest run: {', '.join(heavy) if heavy else 'none'}")
    print(f"after:  {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
