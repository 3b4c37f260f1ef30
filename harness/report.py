"""Results for people: JSON with every figure, a Markdown table, and an HTML page with plots.

The terminal gets one line per verdict; the artifacts directory gets the full detail:
``run.json`` (every figure, plus what makes the run reproducible: the settings, the backend,
the versions of Envoy, Istio and kind, the git commit and the time), ``run.md`` (a table for a
CI job summary), ``run.html`` with one PNG per stage. Each plot shows, per request class and
outcome, the observed share with its Clopper-Pearson interval, the expected share with its
tolerance band, each version in its own colour, and n.
"""

from __future__ import annotations

import datetime
import html
import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from abtest_harness import proc
from abtest_harness.errors import HarnessError
from abtest_harness.rollout import RolloutResult, StageResult

_REPO = Path(__file__).resolve().parent.parent


def _duration(seconds: float) -> float:
    """A duration for people: rounded to the millisecond, never negative."""
    return round(max(seconds, 0.0), 3)


def _first_line(argv: list[str], cwd: Path | None = None) -> str | None:
    """The first line a command prints, or None when it is missing or fails."""
    try:
        done = proc.run(argv, timeout=10.0, cwd=cwd)
    except (HarnessError, OSError):
        return None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


def tool_versions(mesh: str) -> dict[str, str | None]:
    """The versions of the data-plane tools a backend runs (None: not used, or not found).

    Envoy from ``envoy --version`` (the local mesh runs that binary); Istio (the pinned
    release) and kind (``kind version``) for the kind backend.
    """
    versions: dict[str, str | None] = {"envoy": None, "istio": None, "kind": None}
    if mesh == "local":
        try:
            line = _first_line([proc.tool("envoy"), "--version"])
        except HarnessError:
            line = None
        found = re.search(r"/(\d+\.\d+\.\d+)/", line or "")
        versions["envoy"] = found.group(1) if found else line
    elif mesh == "kind":
        from abtest_harness.istioctl import ISTIO_VERSION

        versions["istio"] = ISTIO_VERSION
        try:
            versions["kind"] = _first_line([proc.tool("kind"), "version"])
        except HarnessError:
            versions["kind"] = None
    return versions


def git_commit(root: Path = _REPO) -> str | None:
    """The commit the harness runs from, with ``-dirty`` when the work tree has changes."""
    commit = _first_line(["git", "rev-parse", "HEAD"], cwd=root)
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}", commit):
        return None
    try:
        status = proc.run(["git", "status", "--porcelain", "--untracked-files=no"], timeout=10.0, cwd=root)
    except (HarnessError, OSError):
        return commit
    return commit + ("-dirty" if status.stdout.strip() else "")


def run_metadata(
    settings: Mapping[str, Any], *, mesh: str, workloads: str | None = None, root: Path = _REPO
) -> dict[str, Any]:
    """What makes a run reproducible: settings, backend, tool versions, commit and time (UTC)."""
    return {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": _plain(dict(settings)),
        "backend": {"mesh": mesh, "workloads": workloads},
        "versions": tool_versions(mesh),
        "commit": git_commit(root),
    }


def to_data(result: RolloutResult, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run as plain data: `meta` (see `run_metadata`), stages, timings, every verdict's figures."""
    return {
        "passed": result.passed,
        **({"run": dict(meta)} if meta is not None else {}),
        "up_s": _duration(result.up_s),
        "elapsed_s": _duration(result.elapsed_s),
        "stages": [
            {
                "stage": s.stage.name,
                "description": s.stage.description,
                "weights": dict(s.weights),
                "images": dict(s.images),
                "passed": s.passed,
                "apply_s": _duration(s.apply_s),
                "converge_s": _duration(s.converge_s),
                "sample_s": _duration(s.sample_s),
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
    if isinstance(value, Path):
        return str(value)
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


_VERSION_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e")
_ERROR_COLOUR = "#7f7f7f"


def outcome_colours(outcomes: list[str]) -> dict[str, str]:
    """One colour per outcome: versions from a fixed palette in name order, every error grey.

    Green and blue get the colours their names say, so the sample rollout reads at a glance.
    """
    versions = sorted(o for o in set(outcomes) if not o.startswith(("status:", "error:")))
    named = {"green": "#2ca02c", "blue": "#1f77b4"}
    palette = itertools.cycle([c for c in _VERSION_COLOURS if c not in named.values()])
    colours = {version: named.get(version) or next(palette) for version in versions}
    for outcome in outcomes:
        colours.setdefault(outcome, _ERROR_COLOUR)
    return colours


def plot_rows(stage: StageResult) -> list[tuple[str, str, float, tuple[float, float], float]]:
    """(label, outcome, observed, interval, expected) per class and outcome, as the plot draws them."""
    rows = []
    for cls in stage.classes:
        v = cls.verdict
        word = "PASS" if v.passed else str(getattr(v.decision, "name", "FAIL"))
        for outcome in sorted(set(v.expected) | set(v.observed)):
            observed = float(v.observed.get(outcome, 0.0))
            low, high = v.intervals.get(outcome, (observed, observed))
            label = f"{cls.request.label}: {outcome} (n={v.n}, {word})"
            rows.append((label, outcome, observed, (float(low), float(high)), float(v.expected.get(outcome, 0.0))))
    return rows


def draw_stage(ax: Any, stage: StageResult, *, delta: float | None = None) -> None:
    """Draw one stage's rows on matplotlib axes `ax` (see `plot_stage`)."""
    rows = plot_rows(stage)
    colours = outcome_colours([r[1] for r in rows])
    for i, (_, outcome, observed, (low, high), expected) in enumerate(rows):
        colour = colours[outcome]
        if delta is not None and 0.0 < expected < 1.0:
            ax.fill_betweenx([i - 0.35, i + 0.35], max(expected - delta, 0.0), min(expected + delta, 1.0),
                             color=colour, alpha=0.15, linewidth=0)
        ax.errorbar(observed, i, xerr=[[max(observed - low, 0.0)], [max(high - observed, 0.0)]], fmt="o",
                    color=colour, ecolor=colour, capsize=4, markersize=7, clip_on=False)
        ax.plot([expected], [i], marker="D", color="black", markerfacecolor="none", markersize=8, clip_on=False)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(-0.04, 1.04)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    band = f", shade: expected +-{delta:g}" if delta is not None else ""
    ax.set_xlabel(f"share of answers\ndot: observed, bar: interval, diamond: expected{band}")
    ax.set_title(f"{stage.stage.name}: {'PASS' if stage.passed else 'FAIL'}")
    ax.grid(axis="x", alpha=0.3)


def plot_stage(stage: StageResult, path: Path, *, delta: float | None = None) -> Path:
    """A PNG of one stage: per class and outcome, observed share and interval, expected share and band.

    The band is expected +- `delta` for shares strictly between 0 and 1 (a split); 0 and 1 have
    no tolerance (one wrong answer fails). The axis runs a little past 0 and 1 so markers there
    are drawn whole.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.0, 0.5 * max(len(plot_rows(stage)), 1) + 1.4))
    try:
        draw_stage(ax, stage, delta=delta)
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


def write_report(result: RolloutResult, directory: Path, *, meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``run.json``, ``run.md``, ``run.html`` and a PNG per stage into `directory`.

    `meta` (from `run_metadata`) goes into ``run.json``; its ``settings.delta``, if any, is the
    tolerance band of the plots.
    """
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "run.json"
    md_path = directory / "run.md"
    html_path = directory / "run.html"
    json_path.write_text(json.dumps(to_data(result, meta), indent=2, sort_keys=False) + "\n")
    md_path.write_text(to_markdown(result))
    settings = (meta or {}).get("settings") or {}
    delta = settings.get("delta") if isinstance(settings, Mapping) else None
    images = {
        stage.stage.name: plot_stage(stage, directory / f"stage-{stage.stage.name}.png",
                                     delta=float(delta) if isinstance(delta, int | float) else None).name
        for stage in result.stages
        if stage.classes
    }
    html_path.write_text(to_html(result, images))
    return [json_path, md_path, html_path, *(directory / name for name in images.values())]
