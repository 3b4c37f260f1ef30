"""Results for people: a JSON file with every figure, and a Markdown table for a CI summary.

The terminal gets one line per verdict; the artifacts directory gets the full detail.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from harness.rollout import RolloutResult


def to_data(result: RolloutResult) -> dict[str, Any]:
    """The run as plain data: stages, timings, and each class's verdict with all its figures."""
    return {
        "passed": result.passed,
        "elapsed_s": round(result.elapsed_s, 3),
        "stages": [
            {
                "stage": s.stage.name,
                "description": s.stage.description,
                "weights": dict(s.stage.weights),
                "images": dict(s.stage.images),
                "passed": s.passed,
                "apply_s": round(s.apply_s, 3),
                "converge_s": round(s.converge_s, 3),
                "sample_s": round(s.sample_s, 3),
                "requests": s.requests,
                "manifest_mismatches": list(s.manifest_mismatches),
                "wrong_answers": list(s.wrong_answers),
                "answers": {v: dict(b) for v, b in s.answers.items()},
                "classes": [
                    {"label": c.request.label, "headers": dict(c.request.headers), "verdict": _plain(c.verdict)}
                    for c in s.classes
                ],
            }
            for s in result.stages
        ],
    }


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_markdown(result: RolloutResult) -> str:
    """A table a CI job summary can show: one row per stage and request class."""
    lines = [
        f"## abtest run: {'PASS' if result.passed else 'FAIL'}",
        "",
        "| stage | class | verdict | expected | observed [interval] | n | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in result.stages:
        for cls in stage.classes:
            v = cls.verdict
            expected = ", ".join(f"{k} {p:.0%}" for k, p in v.expected.items() if p > 0)
            observed = ", ".join(
                f"{k} {share:.1%} [{v.intervals[k][0]:.1%}, {v.intervals[k][1]:.1%}]"
                for k, share in v.observed.items()
                if k in v.intervals
            )
            lines.append(
                f"| {stage.stage.name} | {cls.request.label} | {'PASS' if v.passed else 'FAIL'} "
                f"| {expected} | {observed} | {v.n} | {v.rule} |"
            )
        for problem in [*stage.manifest_mismatches, *stage.wrong_answers]:
            lines.append(f"| {stage.stage.name} | | FAIL | | {problem} | | |")
    return "\n".join(lines) + "\n"


def write_report(result: RolloutResult, directory: Path) -> list[Path]:
    """Write ``run.json`` and ``run.md`` into `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "run.json"
    md_path = directory / "run.md"
    json_path.write_text(json.dumps(to_data(result), indent=2, sort_keys=False) + "\n")
    md_path.write_text(to_markdown(result))
    return [json_path, md_path]
