"""The rollout driver's pure parts: what the plan promises, and a manifest that disagrees with it."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage
from abtest_harness.report import to_markdown, write_report
from abtest_harness.rollout import (
    ClassResult,
    RolloutResult,
    StageResult,
    intended_answers,
    intended_distribution,
    manifest_mismatches,
    pinned_version,
    wrong_answers,
)
from abtest_harness.routing import STANDARD_CLASSES, Request
from abtest_harness.stats import SequentialTest

PLAN = load_plan()
WEIGHTED, BLUE, GREEN = STANDARD_CLASSES


@pytest.mark.parametrize(
    ("stage", "request_", "expected"),
    [
        ("baseline", WEIGHTED, {"green": 1.0}),
        ("baseline", BLUE, {"status:503": 1.0}),
        ("Blue_0", BLUE, {"blue": 1.0}),
        ("Blue_50", WEIGHTED, {"green": 0.5, "blue": 0.5}),
        ("Blue_100", GREEN, {"green": 1.0}),
        ("Blue_Green", WEIGHTED, {"blue": 1.0}),
        ("Green_100", BLUE, {"status:503": 1.0}),
    ],
)
def test_intended_distribution_follows_the_plan(stage: str, request_: Request, expected: dict[str, float]) -> None:
    assert intended_distribution(PLAN.stage(stage), request_) == expected


def test_pinned_version_reads_the_header_case_insensitively() -> None:
    assert pinned_version(Request("x", headers={"X-Api-Version": "blue"})) == "blue"
    assert pinned_version(WEIGHTED) is None


def test_blue_green_answers_are_both_image_b() -> None:
    assert intended_answers(PLAN, PLAN.stage("Blue_Green")) == {"green": "New Model B", "blue": "New Model B"}


def test_rendered_stages_agree_with_the_plan() -> None:
    for stage in PLAN.stages:
        assert manifest_mismatches(render_stage(PLAN, stage), stage, STANDARD_CLASSES) == [], stage.name


def _vs(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "VirtualService")


def test_swapped_header_routes_are_reported_before_any_traffic() -> None:
    stage = PLAN.stage("Blue_50")
    objects = copy.deepcopy(render_stage(PLAN, stage))
    http = _vs(objects)["spec"]["http"]
    http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]
    found = manifest_mismatches(objects, stage, STANDARD_CLASSES)
    assert found == [
        "Blue_50 header-blue: manifests route green 100%, the plan says blue 100%",
        "Blue_50 header-green: manifests route blue 100%, the plan says green 100%",
    ]


def test_edited_weight_is_reported() -> None:
    stage = PLAN.stage("Blue_50")
    objects = copy.deepcopy(render_stage(PLAN, stage))
    route = _vs(objects)["spec"]["http"][2]["route"]
    route[0]["weight"], route[1]["weight"] = 70, 30
    assert manifest_mismatches(objects, stage, [WEIGHTED]) == [
        "Blue_50 weighted: manifests route blue 30%, green 70%, the plan says blue 50%, green 50%"
    ]


def test_wrong_answers_names_version_body_and_count() -> None:
    given = {"green": {"New Model B": 3, "New Model A": 7}, "blue": {"New Model B": 5}}
    assert wrong_answers({"green": "New Model A", "blue": "New Model B"}, given) == [
        "green answered 'New Model B' x3, expected 'New Model A'"
    ]


def _result() -> RolloutResult:
    test = SequentialTest({"green": 0.5, "blue": 0.5}, label="weighted")
    for i in range(3000):
        if test.decision.value != "continue":
            break
        test.observe("green" if i % 2 else "blue")
    from abtest_harness.spec import load_spec

    stage = StageResult(load_spec().stage("Blue_50"), [ClassResult("Blue_50", WEIGHTED, test.verdict())],
                        weights={"green": 50, "blue": 50})
    stage.answers = {"green": {"New Model A": 10}}
    return RolloutResult([stage])


def test_report_writes_json_markdown_html_and_a_plot_per_stage(tmp_path: Path) -> None:
    result = _result()
    paths = write_report(result, tmp_path)
    data = json.loads(paths[0].read_text())
    verdict = data["stages"][0]["classes"][0]["verdict"]
    assert data["passed"] is True
    assert verdict["passed"] is True and verdict["decision"] == "pass"
    assert data["stages"][0]["weights"] == {"green": 50, "blue": 50}
    markdown = to_markdown(result)
    assert "| Blue_50 | weighted | PASS | green 50%, blue 50% |" in markdown
    svg = tmp_path / "stage-Blue_50.svg"
    assert svg in paths and ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    page = (tmp_path / "run.html").read_text()
    assert page.count("<svg") == 1 and "Blue_50: PASS" in page and "weighted: PASS" in page, \
        "the page holds the stage's plot inline"


def test_open_mesh_kind_without_kind_is_unavailable_naming_the_prereq_check(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from abtest_harness import proc
    from abtest_harness.errors import ToolNotFound
    from abtest_harness.rollout import MeshOptions, MeshUnavailable, open_mesh

    def missing(name: str) -> str:
        raise ToolNotFound(f"{name!r} not found")

    monkeypatch.setattr(proc, "tool", missing)
    with pytest.raises(MeshUnavailable, match=r"'kind' not found .*python -m abtest_harness.prereqs kind"):
        open_mesh(PLAN, MeshOptions(mesh="kind", artifacts_dir=tmp_path))


def test_open_mesh_kind_builds_the_backend_from_the_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from abtest_harness import images, proc
    from abtest_harness.mesh.kind import KindIstioMesh
    from abtest_harness.rollout import MeshOptions, open_mesh

    monkeypatch.setattr(proc, "tool", lambda name: f"/usr/local/bin/{name}")
    monkeypatch.setattr(images, "docker_client", lambda: object())
    options = MeshOptions(mesh="kind", artifacts_dir=tmp_path, keep_cluster=True, cluster_name="ab2", base_image="b:1")
    session = open_mesh(PLAN, options)
    mesh = session.mesh
    assert isinstance(mesh, KindIstioMesh)
    assert (mesh.cluster_name, mesh.keep_cluster, mesh.base_image) == ("ab2", True, "b:1")
    assert mesh.artifacts_dir == tmp_path / "kind"
    assert session.image_refs is None, "refs are known only after the images step of up()"


def test_open_mesh_rejects_an_unknown_backend(tmp_path: Path) -> None:
    from abtest_harness.errors import HarnessError
    from abtest_harness.rollout import MeshOptions, open_mesh

    with pytest.raises(HarnessError, match="unknown mesh 'minikube'"):
        open_mesh(PLAN, MeshOptions(mesh="minikube", artifacts_dir=tmp_path))


def test_a_stage_fails_exactly_when_it_has_failures_and_judge_says_them() -> None:
    from abtest_harness_pytest import judge

    passed = _result().stages[0]
    assert passed.passed and passed.failures == [] and judge(passed) is passed
    wrong = StageResult(passed.stage, passed.classes, wrong_answers=["green answered 'New Model B' x3, expected "
                                                                     "'New Model A'"])
    empty = StageResult(passed.stage)
    for failed, line in ((wrong, wrong.wrong_answers[0]), (empty, "no request class was sampled")):
        assert not failed.passed and failed.failures == [line]
        with pytest.raises(pytest.fail.Exception, match=f"^Blue_50: {line}$"):
            judge(failed)
