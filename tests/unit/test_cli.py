"""The abtest command: exit codes and output a CI log can be read by."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from harness.cli import main

DATA = Path(__file__).parent / "data" / "validate"


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_render_prints_the_stage_yaml() -> None:
    code, text = _run("render", "--stage", "Blue_Green")
    assert code == 0
    assert text.count("image: abtest/scorer-b:dev") == 2
    assert "weight: 0" in text and "weight: 100" in text


def test_render_unknown_stage_is_exit_2_with_the_known_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("render", "--stage", "Blue_75")
    assert code == 2
    assert "no stage 'Blue_75' (known: baseline" in capsys.readouterr().err


def test_validate_all_prints_one_valid_line_per_stage() -> None:
    code, text = _run("validate", "--all")
    assert code == 0, text
    lines = [line for line in text.splitlines() if not line.startswith("    ")]
    stages = ["baseline", "Blue_0", "Blue_50", "Blue_100", "Blue_Green", "Green_100"]
    assert [line.split()[0] for line in lines] == stages
    assert all(line.endswith("valid") and "INVALID" not in line for line in lines)
    assert "green 50 (A) / blue 50 (B)" in text


@pytest.mark.parametrize(
    ("name", "finding"),
    [
        ("fault-and-mirror.yaml", "ABT020"),
        ("misspelled-match.yaml", "spec.http[0].mtach: unknown field"),
        ("missing-service.yaml", "IST0101"),
        ("header-after-weighted.yaml", "IST0130"),
    ],
)
def test_validate_file_fails_with_a_readable_finding(name: str, finding: str) -> None:
    code, text = _run("validate", "--file", str(DATA / name))
    assert code == 1, text
    assert finding in text


def test_bad_image_argument_is_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("render", "--stage", "Blue_50", "--image", "nokey")
    assert code == 2
    assert "option --image: nokey: takes KEY=REF" in capsys.readouterr().err


def test_run_with_a_bad_plan_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "stages.yaml"
    text = (Path(__file__).parents[2] / "manifests" / "stages.yaml").read_text()
    plan.write_text(text.replace("weights: {green: 50, blue: 50}", "weights: {green: 60, blue: 50}"))
    code, out = _run("run", "--plan", str(plan), "--artifacts-dir", str(tmp_path))
    assert code == 2
    assert out == ""
    assert "Stage Blue_50: weights: sum to 110, not 100" in capsys.readouterr().err


def test_run_refuses_manifests_that_route_otherwise_than_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from harness import cli, rollout
    from harness.render import render_stage

    def swapped(plan: object, stage: object, **kwargs: object) -> list[dict[str, object]]:
        objects = copy.deepcopy(render_stage(plan, stage, **kwargs))  # type: ignore[arg-type]
        http = next(o for o in objects if o["kind"] == "VirtualService")["spec"]["http"]  # type: ignore[index]
        http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]
        return objects

    def no_mesh(*args: object, **kwargs: object) -> None:
        raise AssertionError("a mesh was opened for invalid manifests")

    monkeypatch.setattr(cli, "render_stage", swapped)
    monkeypatch.setattr(rollout, "open_mesh", no_mesh)
    code, text = _run("run", "--stage", "Blue_0", "--artifacts-dir", str(tmp_path))
    assert code == 1, text
    assert "Blue_0      green 100 (A) / blue 0 (B)" in text and "INVALID" in text
    assert "error PLAN Blue_0 header-blue: manifests route green 100%, the plan says blue 100%" in text
    assert "FAIL: invalid manifests; nothing was started" in text
