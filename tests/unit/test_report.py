"""abtest_harness.report: run.json's provenance, durations, and what the SVG plots draw."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from abtest_harness import proc, report
from abtest_harness.plan import load_plan
from abtest_harness.rollout import ClassResult, RolloutResult, StageResult
from abtest_harness.routing import STANDARD_CLASSES, Request
from abtest_harness.stats import Decision, SequentialTest, StatsConfig, Verdict


def _verdict(label: str, expected: dict[str, float], outcomes: list[str]) -> Verdict:
    test = SequentialTest(expected, StatsConfig(), label=label)
    for outcome in outcomes:
        test.observe(outcome)
    return test.verdict()


@pytest.fixture
def stage_result() -> StageResult:
    """Blue_50: a split that is on its way (blue 3 of 10) and two pinned classes, one leaking."""
    stage = load_plan().stage("Blue_50")
    weighted, header_blue, header_green = STANDARD_CLASSES
    result = StageResult(stage)
    result.classes = [
        ClassResult("Blue_50", weighted,
                    _verdict("weighted", {"green": 0.5, "blue": 0.5}, ["green"] * 7 + ["blue"] * 3)),
        ClassResult("Blue_50", header_blue, _verdict("header-blue", {"blue": 1.0}, ["blue"] * 200)),
        ClassResult("Blue_50", header_green, _verdict("header-green", {"green": 1.0}, ["green"] * 5 + ["blue"])),
    ]
    result.apply_s, result.converge_s, result.sample_s = -0.0004, 0.25, 1.5  # a clock step, rounded
    return result


def test_durations_are_never_negative(stage_result: StageResult) -> None:
    data = report.to_data(RolloutResult([stage_result], elapsed_s=-1e-9))
    stage = data["stages"][0]
    assert stage["apply_s"] == 0.0 and stage["converge_s"] == 0.25 and stage["sample_s"] == 1.5
    assert data["elapsed_s"] == 0.0


def test_run_json_records_settings_backend_versions_commit_and_time(
    stage_result: StageResult, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    proc.run([*git, "init", "-q"], timeout=30)
    (repo / "f").write_text("x")
    proc.run([*git, "add", "f"], timeout=30)
    proc.run([*git, "commit", "-q", "-m", "m"], timeout=30)
    head = proc.run([*git, "rev-parse", "HEAD"], timeout=30).stdout.strip()

    meta = report.run_metadata({"alpha": 1e-6, "delta": 0.1, "plan": Path("manifests/stages.yaml")},
                               mesh="kind", workloads="process", root=repo)
    paths = report.write_report(RolloutResult([stage_result]), tmp_path / "out", meta=meta)
    data = json.loads((tmp_path / "out" / "run.json").read_text())
    run = data["run"]
    assert run["settings"] == {"alpha": 1e-6, "delta": 0.1, "plan": "manifests/stages.yaml"}
    assert run["backend"] == {"mesh": "kind", "workloads": "process"}
    assert run["commit"] == head, "a clean work tree records the bare commit"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", run["time"]), run["time"]
    assert set(run["versions"]) == {"envoy", "istio", "kind"}
    assert run["versions"]["istio"] and run["versions"]["envoy"] is None, "kind runs Istio, not the local Envoy"
    assert {p.name for p in paths} == {"run.json", "run.md", "run.html", "stage-Blue_50.svg"}
    assert ET.parse(tmp_path / "out" / "stage-Blue_50.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"

    (repo / "f").write_text("changed")
    assert report.git_commit(repo) == head + "-dirty"
    assert report.git_commit(tmp_path / "out") is None, "outside a repository there is no commit"


def test_rows_carry_n_and_the_decision(stage_result: StageResult) -> None:
    rows = report.plot_rows(stage_result)
    labels = [r[0] for r in rows]
    assert "weighted: blue (n=10, CONTINUE)" in labels
    assert "header-blue: blue (n=132, PASS)" in labels, "n counts the answers before the decision, not the late"
    assert "header-green: blue (n=6, FAIL)" in labels, "a leak shows as its own row"


def test_colours_follow_versions_not_verdicts() -> None:
    colours = report.outcome_colours(["green", "blue", "v3", "v4", "status:503", "error:timeout"])
    assert colours["green"] != colours["blue"]
    assert len({colours["green"], colours["blue"], colours["v3"], colours["v4"]}) == 4
    assert colours["status:503"] == colours["error:timeout"], "errors share one neutral colour"
    assert colours["status:503"] not in {colours[v] for v in ("green", "blue", "v3", "v4")}


# --------------------------------------------------------------------------- the SVG plots
#
# The checks below read the SVG as a reader would: the share axis is recovered from the tick
# elements (their position and printed value), not from report.py's constants, and every
# marker is mapped back through it to the figure it must show.

SVG = "{http://www.w3.org/2000/svg}"


def _classes(element: ET.Element) -> set[str]:
    return set(element.get("class", "").split())


def _find(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in _classes(e)]


def _axis(root: ET.Element) -> tuple[float, float]:
    """(slope, intercept) of share -> x, fitted through the ticks; the ticks must be colinear."""
    points = []
    for tick in _find(root, "tick"):
        (text,) = [e for e in tick.iter(f"{SVG}text")]
        lines = [e for e in tick.iter(f"{SVG}line") if float(e.get("x1", "nan")) == float(e.get("x2", "nan"))]
        xs = {float(e.get("x1", "nan")) for e in lines}
        assert len(xs) == 1, "a tick's lines are vertical, at one x"
        points.append((float(text.text or ""), xs.pop()))
    assert [v for v, _ in points] == [0.0, 0.25, 0.5, 0.75, 1.0], points
    (v0, x0), (v1, x1) = points[0], points[-1]
    slope = (x1 - x0) / (v1 - v0)
    for v, x in points:
        assert x == pytest.approx(x0 + slope * (v - v0), abs=0.02), "ticks evenly spaced: a linear axis"
    return slope, x0 - slope * v0


def _share(axis: tuple[float, float], x: float) -> float:
    slope, intercept = axis
    return (x - intercept) / slope


def _rows(root: ET.Element) -> dict[str, ET.Element]:
    """Row groups by their label text."""
    rows = {}
    for row in _find(root, "row"):
        (label,) = [e for e in row.iter(f"{SVG}text") if "label" in _classes(e)]
        rows[label.text or ""] = row
    return rows


def _marks(axis: tuple[float, float], row: ET.Element) -> dict[str, Any]:
    """What a row shows, as shares: observed (dot), expected (diamond centre), interval, caps, band."""
    (dot,) = _find(row, "observed")
    (diamond,) = _find(row, "expected")
    (bar,) = _find(row, "interval")
    corners = [tuple(map(float, pt.split(","))) for pt in (diamond.get("points") or "").split()]
    xs = [x for x, _ in corners]
    assert dot.tag == f"{SVG}circle" and diamond.tag == f"{SVG}polygon" and len(corners) == 4
    assert diamond.get("fill") == "none", "the expected share is a hollow diamond"
    bands = _find(row, "band")
    band = None
    if bands:
        (rect,) = bands
        left = float(rect.get("x", "nan"))
        band = (_share(axis, left), _share(axis, left + float(rect.get("width", "nan"))))
    return {
        "observed": _share(axis, float(dot.get("cx", "nan"))),
        "expected": _share(axis, (min(xs) + max(xs)) / 2),
        "interval": tuple(sorted(_share(axis, float(bar.get(k, "nan"))) for k in ("x1", "x2"))),
        "caps": sorted(_share(axis, float(c.get("x1", "nan"))) for c in _find(row, "cap")),
        "band": band,
        "colour": dot.get("fill"),
    }


def _hand_verdict(label: str, passed: bool, n: int, rows: dict[str, tuple[float, tuple[float, float], float]]
                  ) -> Verdict:
    """A verdict with given figures: outcome -> (observed, interval, expected)."""
    return Verdict(
        label=label, passed=passed, decision=Decision.PASS if passed else Decision.FAIL, n=n,
        counts={k: round(o * n) for k, (o, _, _) in rows.items()}, expected={k: e for k, (_, _, e) in rows.items()},
        observed={k: o for k, (o, _, _) in rows.items()}, intervals={k: i for k, (_, i, _) in rows.items()},
        errors={}, rule="given", boundary="given", message=f"{label}: given",
    )


def test_svg_markers_map_back_to_the_figures_given() -> None:
    figures = {"blue": (0.3, (0.12, 0.61), 0.5), "green": (0.7, (0.39, 0.88), 0.5)}
    pinned = {"blue": (1.0, (0.977, 1.0), 1.0), "green": (0.0, (0.0, 0.023), 0.0)}
    stage = StageResult(load_plan().stage("Blue_50"))
    weighted, header_blue, _ = STANDARD_CLASSES
    stage.classes = [ClassResult("Blue_50", weighted, _hand_verdict("weighted", False, 40, figures)),
                     ClassResult("Blue_50", header_blue, _hand_verdict("header-blue", True, 132, pinned))]
    root = ET.fromstring(report.stage_svg(stage, delta=0.1))
    assert root.tag == f"{SVG}svg"
    axis = _axis(root)
    rows = _rows(root)
    assert set(rows) == {"weighted: blue (n=40, FAIL)", "weighted: green (n=40, FAIL)",
                         "header-blue: blue (n=132, PASS)", "header-blue: green (n=132, PASS)"}
    for label, given in [("weighted", figures), ("header-blue", pinned)]:
        n, word = (40, "FAIL") if label == "weighted" else (132, "PASS")
        for outcome, (observed, interval, expected) in given.items():
            marks = _marks(axis, rows[f"{label}: {outcome} (n={n}, {word})"])
            assert marks["observed"] == pytest.approx(observed, abs=1e-4)
            assert marks["expected"] == pytest.approx(expected, abs=1e-4)
            assert marks["interval"] == pytest.approx(interval, abs=1e-4)
            assert marks["caps"] == pytest.approx(list(interval), abs=1e-4), "a cap at each end of the bar"
            if 0.0 < expected < 1.0:
                assert marks["band"] == pytest.approx((expected - 0.1, expected + 0.1), abs=1e-4)
            else:
                assert marks["band"] is None, "shares 0 and 1 have no tolerance band"
    # The axis runs past 0 and 1, so markers there are drawn whole.
    (frame,) = _find(root, "frame")
    left, width = float(frame.get("x", "nan")), float(frame.get("width", "nan"))
    assert _share(axis, left) == pytest.approx(-0.04, abs=1e-4)
    assert _share(axis, left + width) == pytest.approx(1.04, abs=1e-4)
    # Without a delta there is no band to draw, and the caption does not speak of one.
    plain = ET.fromstring(report.stage_svg(stage))
    assert not _find(plain, "band")
    captions = " ".join(e.text or "" for e in _find(plain, "caption"))
    assert "dot: observed, bar: interval, diamond: expected" in captions and "shade" not in captions


def test_svg_of_real_verdicts_shows_their_figures_and_the_stage_verdict(stage_result: StageResult) -> None:
    root = ET.fromstring(report.stage_svg(stage_result, delta=0.1))
    (title,) = _find(root, "title")
    assert title.text == "Blue_50: FAIL", "a leaking class fails the stage, and the plot says so"
    axis, rows = _axis(root), _rows(root)
    colours = report.outcome_colours(["green", "blue"])
    for cls in stage_result.classes:
        v = cls.verdict
        for outcome in set(v.expected) | set(v.observed):
            (label,) = [k for k in rows if k.startswith(f"{cls.request.label}: {outcome} (")]
            marks = _marks(axis, rows[label])
            assert marks["observed"] == pytest.approx(v.observed.get(outcome, 0.0), abs=1e-4)
            assert marks["expected"] == pytest.approx(v.expected.get(outcome, 0.0), abs=1e-4)
            assert marks["interval"] == pytest.approx(v.intervals[outcome], abs=1e-4)
            assert marks["colour"] == colours[outcome], "each version in its own colour"
    assert len(_find(root, "band")) == 2, "one tolerance band per outcome of the 50/50 split"
    passing = StageResult(stage_result.stage, stage_result.classes[1:2])
    (title,) = _find(ET.fromstring(report.stage_svg(passing)), "title")
    assert title.text == "Blue_50: PASS"


def test_labels_and_outcomes_from_the_spec_are_escaped(tmp_path: Path) -> None:
    label = 'a<b & "c"\x01'
    outcome = "v<2>&\"x\""
    request = Request(label=label)
    stage = StageResult(load_plan().stage("Blue_50"),
                        [ClassResult("Blue_50", request, _verdict(label, {outcome: 1.0}, [outcome] * 3))])
    paths = report.write_report(RolloutResult([stage]), tmp_path, meta={"settings": {"delta": 0.1}})
    svg = tmp_path / "stage-Blue_50.svg"
    assert svg in paths
    root = ET.parse(svg).getroot()  # well-formed despite the label
    (row,) = _find(root, "row")
    (text,) = _find(row, "label")
    assert text.text == 'a<b & "c"\ufffd: v<2>&"x" (n=3, CONTINUE)', "the label reads back as written"
    assert row.get("data-outcome") == outcome
    page = (tmp_path / "run.html").read_text()
    assert label not in page and 'a&lt;b &amp; &quot;c&quot;' in page
    # The page holds the plot inline: the same well-formed SVG.
    inline = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    assert [e.text for e in _find(ET.fromstring(inline), "label")] == [text.text]


def test_an_outcome_has_one_colour_in_every_stage(tmp_path: Path) -> None:
    plan = load_plan()
    first = StageResult(plan.stage("Blue_50"), [ClassResult("Blue_50", STANDARD_CLASSES[0],
                                                            _verdict("weighted", {"v3": 1.0}, ["v3"] * 3))])
    second = StageResult(plan.stage("Blue_100"), [ClassResult("Blue_100", STANDARD_CLASSES[0], _verdict(
        "weighted", {"a1": 0.5, "v3": 0.5}, ["a1", "v3"]))])
    report.write_report(RolloutResult([first, second]), tmp_path)
    fills = {}
    for name in ("Blue_50", "Blue_100"):
        root = ET.parse(tmp_path / f"stage-{name}.svg").getroot()
        for row in _find(root, "row"):
            fills.setdefault(row.get("data-outcome"), set()).update(d.get("fill") for d in _find(row, "observed"))
    assert len(fills["v3"]) == 1 and fills["v3"] != fills["a1"], fills


# --------------------------------------------------------------------------- what a run imports

_VERDICT_AND_REPORT = """
import sys
from pathlib import Path
from abtest_harness.plan import load_plan
from abtest_harness.report import write_report
from abtest_harness.rollout import ClassResult, RolloutResult, StageResult
from abtest_harness.routing import STANDARD_CLASSES
from abtest_harness.stats import Decision, SequentialTest, StatsConfig
weighted, header_blue, _ = STANDARD_CLASSES
config = StatsConfig(alpha=0.01, beta=0.01)  # small boundaries: quick to build
split = SequentialTest({"green": 0.5, "blue": 0.5}, config, label="weighted")
i = 0
while split.observe("green" if i % 2 else "blue") is Decision.CONTINUE:
    i += 1
pinned = SequentialTest({"blue": 1.0}, config, label="header-blue")
for _ in range(200):
    pinned.observe("blue")
stage = StageResult(load_plan().stage("Blue_50"), [ClassResult("Blue_50", weighted, split.verdict()),
                                                   ClassResult("Blue_50", header_blue, pinned.verdict())])
paths = write_report(RolloutResult([stage]), Path(sys.argv[1]), meta={"settings": {"delta": 0.1}})
print(stage.passed, len(paths))
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""
_HEAVY = {"scipy", "numpy", "matplotlib"}


def test_verdicts_and_report_import_no_scipy_numpy_or_matplotlib_once_boundaries_are_stored(
    tmp_path: Path,
) -> None:
    """`abtest run` with the split boundaries stored: the verdicts and the report run in pure Python."""
    import sys

    from abtest_harness import stats

    store = tmp_path / "stats"

    def loaded() -> set[str]:
        out = proc.run([sys.executable, "-c", _VERDICT_AND_REPORT, str(tmp_path / "out")], timeout=120,
                       env={stats.STATS_CACHE_ENV: str(store)}).stdout.splitlines()
        assert out[0] == "True 4", out[0]  # the stage passed; json, md, html and one SVG written
        return set(out[1].split())

    # The first run builds the boundaries (with numpy and scipy: the check sees them) and stores them.
    assert {"scipy", "numpy"} <= loaded()
    assert len(list(store.glob("split-*.json"))) == 1
    # The next reads them back and needs neither, nor a plotting library.
    assert loaded() & _HEAVY == set()


def test_envoy_version_is_kept_until_the_binary_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest_harness.errors import HarnessError
    from abtest_harness.rendercache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    envoy = tmp_path / "envoy"

    def fake(version: str) -> None:
        envoy.write_text(f"#!/bin/sh\necho run >> '{runs}'\n"
                         f"echo 'envoy  version: abc/{version}/Clean/RELEASE/BoringSSL'\n")
        envoy.chmod(0o755)

    fake("1.40.0")
    line = report._envoy_version_line(str(envoy))
    assert line == "envoy  version: abc/1.40.0/Clean/RELEASE/BoringSSL"
    assert report._envoy_version_line(str(envoy)) == line and runs.read_text().count("run") == 1, \
        "the second run reads the stored line"
    fake("1.41.10")  # a new binary: another size
    assert "/1.41.10/" in report._envoy_version_line(str(envoy)) and runs.read_text().count("run") == 2
    envoy.write_text("#!/bin/sh\nexit 0\n")
    with pytest.raises(HarnessError):
        report._envoy_version_line(str(envoy))
    with pytest.raises(HarnessError):
        report._envoy_version_line(str(envoy))  # a failure is not stored


def test_tool_versions_of_the_local_mesh_name_the_envoy_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from abtest_harness.rendercache import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    line = proc.run([proc.tool("envoy"), "--version"], timeout=30).stdout
    found = re.search(r"/(\d+\.\d+\.\d+)/", line)
    assert found and report.tool_versions("local")["envoy"] == found.group(1)
