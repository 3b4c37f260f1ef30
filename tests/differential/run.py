"""Run the differential comparison: the sample stages and N generated cases, Istio in batches.

``python -m tests.differential.run [--cases 2000] [--jobs 2] [--report FILE]`` prints the
counts per category and every class that is not "agree", grouped by the rule that explains
it (:data:`KNOWN`), and exits 1 when a disagreement no rule explains remains.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abtest_harness.mesh import istio_xds as ix
from tests.differential import cases as dc
from tests.differential import evaluate as ev


@dataclass(frozen=True)
class Known:
    """A documented disagreement: which category, how to recognise it, and where Istio decides it."""

    name: str
    category: str
    applies: Callable[[dc.ClassResult], bool]
    explanation: str


def _weights_not_100(result: dc.ClassResult) -> bool:
    return isinstance(result.oracle, str) and re.search(r"sum to \d+, not 100", result.oracle) is not None


def _istio_rejects(message: str) -> Callable[[dc.ClassResult], bool]:
    def applies(result: dc.ClassResult) -> bool:
        return isinstance(result.istio, str) and "Istio validation" in result.istio and message in result.istio

    return applies


#: Disagreements explained in docs/istio-translation.md, each with the Istio source that decides it.
KNOWN: tuple[Known, ...] = (
    Known(
        "weights-not-100",
        "harness-refuses-istio-routes",
        _weights_not_100,
        "Istio admits weights of any positive sum (pkg/config/validation/validation.go:2449 rejects "
        "only a zero total) and passes them to Envoy as they are (pilot/pkg/networking/core/route/"
        "route.go:754), which splits by weight / sum; the oracle refuses sums other than 100",
    ),
    Known(
        "header-regex-star",
        "istio-refuses-harness-routes",
        _istio_rejects("missing argument to repetition operator"),
        "Istio's validation rejects header regex '*' as invalid RE2 (pkg/config/validation/"
        "validation.go:2344 validateStringMatchRegexp); the oracle reads it as 'present'",
    ),
    Known(
        "header-empty-prefix",
        "istio-refuses-harness-routes",
        _istio_rejects("prefix string match should not be empty"),
        "Istio's validation rejects a header prefix '' (pkg/config/validation/validation.go:2336 "
        "validateStringMatch); the oracle reads it as 'present'",
    ),
)


@dataclass
class Run:
    results: list[dc.CaseResult]
    counts: dict[str, int]
    unexplained: list[tuple[str, dc.ClassResult]]
    explained: dict[str, int]
    istio_seconds: float
    python_seconds: float
    cases: int


def _batch(items: Sequence[tuple[str, list[dict[str, Any]]]]) -> dict[str, ix.IstioOutput | str]:
    return ix.generate_batch(dict(items))


def run(n_cases: int, jobs: int = 2, *, include_stages: bool = True) -> Run:
    all_cases: dict[str, list[dict[str, Any]]] = {}
    if include_stages:
        all_cases.update(dc.stage_cases())
    for seed in range(n_cases):
        all_cases[f"seed:{seed}"] = dc.generated_case(seed)
    items = list(all_cases.items())
    chunks = [items[i::jobs] for i in range(jobs)] if jobs > 1 else [items]
    started = time.perf_counter()
    outputs: dict[str, ix.IstioOutput | str] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        for part in pool.map(_batch, chunks):
            outputs.update(part)
    istio_seconds = time.perf_counter() - started
    started = time.perf_counter()
    results = [dc.compare(case_id, objects, outputs[case_id]) for case_id, objects in items]
    python_seconds = time.perf_counter() - started
    counts = dc.summarize(results)
    unexplained: list[tuple[str, dc.ClassResult]] = []
    explained: dict[str, int] = {}
    for case in results:
        for cls in case.classes:
            category = cls.category
            if category in ("agree", "all-refuse"):
                continue
            rule = next((k for k in KNOWN if k.category == category and k.applies(cls)), None)
            if rule is None:
                unexplained.append((case.case_id, cls))
            else:
                explained[rule.name] = explained.get(rule.name, 0) + 1
    return Run(results, counts, unexplained, explained, istio_seconds, python_seconds, len(items))


def report(r: Run, limit: int = 40) -> str:
    classes = sum(r.counts.values())
    lines = [
        f"cases: {r.cases} ({classes} request classes); Istio {r.istio_seconds:.1f}s, "
        f"oracle + Python translation + comparison {r.python_seconds:.1f}s",
        "per category: " + ", ".join(f"{k} {v}" for k, v in r.counts.items()),
        "explained disagreements: " + (", ".join(f"{k} {v}" for k, v in r.explained.items()) or "none"),
        f"unexplained: {len(r.unexplained)}",
    ]
    for case_id, cls in r.unexplained[:limit]:
        lines.append(f"  [{cls.category}] {case_id}: {cls.describe()}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    r = run(args.cases, args.jobs)
    text = report(r)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")
    return 1 if r.unexplained else 0


def as_json(r: Run) -> Mapping[str, Any]:
    return {"cases": r.cases, "counts": r.counts, "explained": r.explained, "unexplained": len(r.unexplained)}


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["KNOWN", "Known", "Run", "as_json", "ev", "main", "report", "run"]
