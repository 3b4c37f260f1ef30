"""A stage's ``images``: which image each version runs, checked against the manifests and the answers.

What each case must give is written from the spec files themselves (the sample runs image A
on green and B on blue in Blue_50; Bookinfo runs reviews-vN on version vN), not from the code.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness import cli
from abtest_harness.plan import load_plan
from abtest_harness.render import render
from abtest_harness.rollout import _stage_answers, image_mismatches, manifest_mismatches, wrong_answers
from abtest_harness.spec import DEFAULT_SPEC, StageImage, load_spec, spec_from_plan

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "examples" / "bookinfo-reviews" / "rollout.yaml"


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o.get("kind") == "Deployment" and o["metadata"]["name"] == name)


def test_a_key_of_the_spec_images_brings_its_answer_and_the_plan_says_the_same() -> None:
    spec = load_spec(DEFAULT_SPEC)
    blue_green = spec.stage("Blue_Green").images
    assert blue_green is not None
    assert dict(blue_green) == {
        "green": StageImage("abtest/scorer-b", key="B", answer="New Model B"),
        "blue": StageImage("abtest/scorer-b", key="B", answer="New Model B"),
    }
    assert spec.stage("baseline").images == {"green": StageImage("abtest/scorer-a", key="A", answer="New Model A")}
    plan_spec = spec_from_plan(load_plan())
    for stage in spec.stages:
        assert stage.images == plan_spec.stage(stage.name).images, stage.name


def test_an_image_reference_matches_by_tag_when_it_has_one() -> None:
    keyed = StageImage("abtest/scorer-b", key="B", answer="New Model B")
    assert keyed.matches("abtest/scorer-b:dev") and keyed.matches("abtest/scorer-b:3f2a")
    assert not keyed.matches("abtest/scorer-a:dev") and not keyed.matches("abtest/scorer-bb:dev")
    tagged = StageImage("registry.example.com:5000/reviews:1.4")
    assert tagged.matches("registry.example.com:5000/reviews:1.4")
    assert not tagged.matches("registry.example.com:5000/reviews:1.5")
    untagged = StageImage("registry.example.com:5000/reviews")
    assert untagged.matches("registry.example.com:5000/reviews:1.5") and not untagged.matches("reviews:1.5")


def test_the_unedited_sample_and_bookinfo_agree_with_their_images() -> None:
    for path in (DEFAULT_SPEC, BOOKINFO):
        spec = load_spec(path)
        for stage in spec.stages:
            assert stage.images is not None, (path, stage.name)
            assert image_mismatches(render(spec, stage), stage, spec.versions) == [], (path, stage.name)


def test_a_version_running_the_wrong_image_is_named() -> None:
    spec = load_spec(DEFAULT_SPEC)
    stage = spec.stage("Blue_50")
    objects = copy.deepcopy(render(spec, stage))
    _deployment(objects, "model-blue")["spec"]["template"]["spec"]["containers"][0]["image"] = "abtest/scorer-a:dev"
    assert image_mismatches(objects, stage, spec.versions) == [
        "Blue_50 images: blue runs abtest/scorer-a:dev, the spec says image B (abtest/scorer-b)"
    ]
    # The same finding reaches `abtest validate` and the run's offline gate.
    assert manifest_mismatches(objects, stage, spec.classes, versions=spec.versions) == [
        "Blue_50 images: blue runs abtest/scorer-a:dev, the spec says image B (abtest/scorer-b)"
    ]


def test_versions_that_run_are_exactly_those_named() -> None:
    spec = load_spec(DEFAULT_SPEC)
    # Blue_50's objects where Green_100 is declared: blue runs but is not named, green runs A not B.
    found = image_mismatches(render(spec, "Blue_50"), spec.stage("Green_100"), spec.versions)
    assert sorted(found) == [
        "Green_100 images: blue runs abtest/scorer-b:dev, the stage's images do not name blue",
        "Green_100 images: green runs abtest/scorer-a:dev, the spec says image B (abtest/scorer-b)",
    ]
    stage = spec.stage("Blue_50")
    objects = copy.deepcopy(render(spec, stage))
    _deployment(objects, "model-green")["spec"]["replicas"] = 0
    assert image_mismatches(objects, stage, spec.versions) == [
        "Blue_50 images: no workload runs green, the spec says image A (abtest/scorer-a)"
    ]


def test_answers_are_judged_against_the_declared_image_not_the_manifests() -> None:
    """Blue's pods run scorer-a ("New Model A"); the stage says B, so that answer is wrong."""
    spec = load_spec(DEFAULT_SPEC)
    stage = spec.stage("Blue_50")
    objects = copy.deepcopy(render(spec, stage))
    _deployment(objects, "model-blue")["spec"]["template"]["spec"]["containers"][0]["image"] = "abtest/scorer-a:dev"
    intended = _stage_answers(spec, stage, objects)
    assert intended == {"green": "New Model A", "blue": "New Model B"}
    given = {"green": {"New Model A": 40}, "blue": {"New Model A": 38}}
    assert wrong_answers(intended, given) == ["blue answered 'New Model A' x38, expected 'New Model B'"]


def test_validate_reports_a_values_edit_that_swaps_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = yaml.safe_load(BOOKINFO.read_text(encoding="utf-8"))
    stage = raw["stages"][2]  # shift-80-20
    stage["images"]["v2"] = "reviews-v3"
    for entry in raw["stages"]:
        entry["source"]["files"] = [str(BOOKINFO.parent / p) for p in entry["source"]["files"]]
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    out = io.StringIO()
    code = cli.main(["validate", "--spec", str(path), "--stage", "shift-80-20"], out=out)
    text = out.getvalue() + capsys.readouterr().out
    assert code == 1, text
    assert "shift-80-20 images: v2 runs example/reviews-v2:dev, the spec says image reviews-v3 (example/reviews-v3)" \
        in text, text
