"""abtest_harness.report: run.json's provenance, durations, and what the plots draw."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from abtest_harness import proc, report
from abtest_harness.plan import load_plan
from abtest_harness.rollout import ClassResult, RolloutResult, StageResult
from abtest_harness.routing import STANDARD_CLASSES
from abtest_harness.stats import SequentialTest, StatsConfig, Verdict


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
    assert {p.name for p in paths} == {"run.json", "run.md", "run.html", "stage-Blue_50.png"}
    assert (tmp_path / "out" / "stage-Blue_50.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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


def test_the_plot_shows_bands_for_splits_and_whole_markers_at_0_and_1(stage_result: StageResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        report.draw_stage(ax, stage_result, delta=0.1)
        low, high = ax.get_xlim()
        assert low < 0.0 and high > 1.0, "markers at shares 0 and 1 must not be cut by the axis"
        bands = [c for c in ax.collections if c.__class__.__name__ in ("PolyCollection", "FillBetweenPolyCollection")]
        assert len(bands) == 2, "one tolerance band per outcome of the 50/50 split, none for 0% or 100%"
        for band in bands:
            vertices: Any = band.get_paths()[0].vertices
            xs = [float(x) for x, _ in vertices]
            assert min(xs) == pytest.approx(0.4) and max(xs) == pytest.approx(0.6)
        rows = report.plot_rows(stage_result)
        colours = report.outcome_colours([r[1] for r in rows])
        drawn = [line for line in ax.lines if line.get_marker() == "o"]
        assert [line.get_color() for line in drawn] == [colours[r[1]] for r in rows], \
            "each observed marker is drawn in its version's colour"
        assert all(not line.get_clip_on() for line in ax.lines), "markers are not clipped at the axes"
    finally:
        plt.close(fig)
