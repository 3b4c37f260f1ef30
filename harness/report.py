"""Results for people: JSON with every figure, a Markdown table, and an HTML page with plots.

The terminal gets one line per verdict; the artifacts directory gets the full detail:
``run.json`` (everything), ``run.md`` (a table for a CI job summary), ``run.html`` with one
PNG per stage showing each outcome's observed share, its Clopper-Pearson interval and the
expected share.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from harness.rollout import RolloutResult, StageResult


def to_data(result: RolloutResult) -> dict[str, Any]:
    """The run as plain data: stages, timings, and each class's verdict with all its figures."""
    return {
        "passed": result.passed,
        "elapsed_s": round(result.elapsed_s, 3),
        "stages": [
            {
                "stage": s.stage.name,
                "description": s.stage.description,
                "weights": dict(s.weights),
                "images": dict(s.images),
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


def plot_stage(stage: StageResult, path: Path) -> Path:
    """A PNG of one stage: per class and outcome, observed share with interval, and expected."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows: list[tuple[str, float, tuple[float, float], float, bool]] = []
    for cls in stage.classes:
        v = cls.verdict
        for outcome in sorted(set(v.expected) | set(v.observed)):
            observed = float(v.observed.get(outcome, 0.0))
            low, high = v.intervals.get(outcome, (observed, observed))
            rows.append((f"{cls.request.label}: {outcome}", observed, (low, high), float(v.expected.get(outcome, 0.0)),
                         bool(v.passed)))
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(rows) + 1.2))
    try:
        for i, (_, observed, (low, high), expected, passed) in enumerate(rows):
            ax.barh(i, observed, color="#4c9a2a" if passed else "#c0392b", alpha=0.75)
            ax.errorbar(observed, i, xerr=[[observed - low], [high - observed]], fmt="none", ecolor="black",
                        capsize=3)
            ax.plot([expected], [i], marker="D", color="black")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows])
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of answers (bar: observed, whisker: interval, diamond: expected)")
        ax.set_title(f"{stage.stage.name}: {'PASS' if stage.passed else 'FAIL'}")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
    finally:
        plt.close(fig)
    return path


def to_html(result: RolloutResult, images: dict[str, str]) -> str:
    """A self-contained page: the verdict table and each stage's plot (by relative file name)."""
    rows = []
    for stage in result.stages:
        for cls in stage.classes:
            v = cls.verdict
            rows.append(
                f"<tr class={'pass' if v.passed else 'fail'}><td>{html.escape(stage.stage.name)}</td>"
                f"<td>{html.escape(cls.request.label)}</td><td>{'PASS' if v.passed else 'FAIL'}</td>"
                f"<td>{html.escape(v.message)}</td></tr>"
            )
        for problem in [*stage.manifest_mismatches, *stage.wrong_answers]:
            rows.append(f"<tr class=fail><td>{html.escape(stage.stage.name)}</td><td></td><td>FAIL</td>"
                        f"<td>{html.escape(problem)}</td></tr>")
    plots = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}'
        f"</figcaption></figure>"
        for name, src in images.items()
    )
    verdict = "PASS" if result.passed else "FAIL"
    return (
        "<!doctype html><meta charset=utf-8><title>abtest run</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 8px}.fail{background:#fdd}.pass{background:#efe}</style>"
        f"<h1>abtest run: {verdict}</h1><table><tr><th>stage<th>class<th>verdict<th>detail</tr>"
        + "".join(rows)
        + f"</table>{plots}\n"
    )


def write_report(result: RolloutResult, directory: Path) -> list[Path]:
    """Write ``run.json``, ``run.md``, ``run.html`` and a PNG per stage into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "run.json"
    md_path = directory / "run.md"
    html_path = directory / "run.html"
    json_path.write_text(json.dumps(to_data(result), indent=2, sort_keys=False) + "\n")
    md_path.write_text(to_markdown(result))
    images = {
        stage.stage.name: plot_stage(stage, directory / f"stage-{stage.stage.name}.png").name
        for stage in result.stages
        if stage.classes
    }
    html_path.write_text(to_html(result, images))
    return [json_path, md_path, html_path, *(directory / name for name in images.values())]
