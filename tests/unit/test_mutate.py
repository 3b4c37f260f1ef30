"""abtest mutate, offline: the mutants of the sample rollout and which check catches which.

What each named mutant must come to is written here from the rollout's stage table and
Istio's rules, not read back from the code: a weight moved 15 points in Blue_50 is a routing
change the oracle must name; an upper-case header name is an Istio validation error; one more
replica of a version changes no share.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest

from abtest_harness import mutate
from abtest_harness.errors import HarnessError
from abtest_harness.plan import RolloutPlan, load_plan
from abtest_harness.render import render_stage

OPERATORS = {
    "weights-shift", "weights-sum", "destination-swap", "destination-host", "destination-port", "route-remove",
    "route-order", "match-remove", "header-value", "header-name", "match-kind", "header-remove", "uri-value",
    "host", "gateway-ref", "port", "selector", "replicas", "workload-remove", "pod-labels", "version-name",
    "image", "probe",
}


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    return load_plan()


@pytest.fixture(scope="module")
def judged(plan: RolloutPlan) -> tuple[list[mutate.Mutant], dict[str, mutate.Outcome]]:
    stages = [plan.stage("Blue_50"), plan.stage("Green_100")]
    checks, mutants = mutate.spec_mutants(plan, stages)
    report = mutate.mutate(checks, mutants)
    return mutants, {o.mutant.ident: o for o in report.outcomes}


def _one(mutants: list[mutate.Mutant], stage: str, operator: str, text: str) -> mutate.Mutant:
    found = [m for m in mutants if m.stage == stage and m.operator == operator and text in m.description]
    assert len(found) == 1, [m.description for m in found]
    return found[0]


def _diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two plain-data trees differ: a leaf, a list that changed length, or a dict
    whose keys changed (one change however many keys were added or removed there)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path} keys"] if set(a) != set(b) else []
        for key in set(a) & set(b):
            out += _diff(a[key], b[key], f"{path}.{key}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path or "."]


def test_at_least_fifty_mutants_per_stage_from_every_operator(
    judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]],
) -> None:
    mutants, _ = judged
    per_stage = Counter(m.stage for m in mutants)
    assert per_stage["Blue_50"] >= 50 and per_stage["Green_100"] >= 50, per_stage
    assert {m.operator for m in mutants if m.stage == "Blue_50"} == OPERATORS
    assert len({m.ident for m in mutants}) == len(mutants), "ids are unique"


def test_each_mutant_is_one_edit(
    plan: RolloutPlan, judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]]
) -> None:
    mutants, _ = judged
    original = render_stage(plan, "Blue_50")
    for mutant in (m for m in mutants if m.stage == "Blue_50"):
        if len(mutant.objects) != len(original):
            assert mutant.operator == "workload-remove" and len(mutant.objects) == len(original) - 1
            continue
        if mutant.operator == "route-order":  # the same routes, in another order
            before = [o for o in original if o["kind"] == "VirtualService"][0]["spec"]["http"]
            after = [o for o in mutant.objects if o["kind"] == "VirtualService"][0]["spec"]["http"]
            assert after != before and sorted(map(repr, after)) == sorted(map(repr, before)), mutant.description
            continue
        changed = _diff(original, mutant.objects)
        # A weight moved changes two numbers; a pod label changes the template and the selector
        # that must agree with it; a swap exchanges two hosts. Everything else changes one place.
        limit = 2 if mutant.operator in ("weights-shift", "pod-labels", "destination-swap") else 1
        assert 1 <= len(changed) <= limit, (mutant.description, changed)
    assert original == render_stage(plan, "Blue_50"), "generating mutants must not touch the original"


@pytest.mark.parametrize(
    ("stage", "operator", "text", "check", "detail"),
    [
        # 50/50 -> 35/65: outside 50 +- 10, the oracle names the class and the shares.
        ("Blue_50", "weights-shift", "from destination 0 to 1", "oracle", "weighted: blue 65%, green 35%"),
        ("Blue_50", "weights-sum", "destination 0 weight", "validate", "ABT001"),
        ("Blue_50", "header-name", "blue-header match[0] header x-api-version: name -> 'X-Api-Version'", "validate",
         "ABT003"),
        # Swapping the two single-destination header routes sends header-blue to green.
        ("Blue_50", "destination-swap", "blue-header: host", "oracle", "header-blue: green 100%"),
        ("Blue_50", "route-order", "weighted: moved first", "validate", ""),
        ("Blue_50", "replicas", "model-green replicas 1 -> 0", "oracle", "status:503"),
        # Green_100 has no blue: a pinned blue request must get 503, not green.
        ("Green_100", "destination-swap", "blue-header: host", "oracle", "header-blue: green 100%"),
    ],
)
def test_known_mutants_are_caught_by_the_right_check(
    judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]], stage: str, operator: str, text: str,
    check: str, detail: str,
) -> None:
    mutants, outcomes = judged
    outcome = outcomes[_one(mutants, stage, operator, text).ident]
    assert (outcome.status, outcome.check) == (mutate.CAUGHT, check), outcome
    assert detail in outcome.detail, outcome.detail


def test_equivalent_mutants_say_why(judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]]) -> None:
    mutants, outcomes = judged
    more = outcomes[_one(mutants, "Blue_50", "replicas", "model-blue replicas 1 -> 2").ident]
    assert more.status == mutate.EQUIVALENT and "same version" in more.detail
    # exact "blue" -> prefix "blue": the request classes send exactly "blue", so nothing changes for them.
    prefix = outcomes[_one(mutants, "Blue_50", "match-kind",
                           "blue-header match[0] header x-api-version: exact -> prefix").ident]
    assert prefix.status == mutate.EQUIVALENT and "every request class" in prefix.detail
    assert all(o.detail for o in outcomes.values() if o.status == mutate.EQUIVALENT)


def test_an_image_swap_is_caught_by_the_stage_images(
    judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]],
) -> None:
    """The plan says blue runs image B in Blue_50: blue's pods running scorer-a contradict it."""
    mutants, outcomes = judged
    image = outcomes[_one(mutants, "Blue_50", "image", "model-blue image").ident]
    assert (image.status, image.check) == (mutate.CAUGHT, "images"), image
    assert image.detail.startswith("blue runs abtest/scorer-a:"), image.detail
    assert "image B (abtest/scorer-b)" in image.detail


def test_what_the_offline_checks_cannot_see_survives_them(
    judged: tuple[list[mutate.Mutant], dict[str, mutate.Outcome]],
) -> None:
    """A readiness probe on a path nothing serves changes no object the oracle reads: only a run sees it."""
    mutants, outcomes = judged
    probe = outcomes[_one(mutants, "Blue_50", "probe", "model-blue readinessProbe path").ident]
    assert probe.status == mutate.SURVIVED


def test_survivors_go_to_the_run_check_and_its_verdict_decides(plan: RolloutPlan) -> None:
    checks, mutants = mutate.spec_mutants(plan, [plan.stage("Blue_50")])
    ran: list[str] = []

    def factory() -> mutate.RunCheck:
        def run_check(check: mutate.StageCheck, mutant: mutate.Mutant) -> str | None:
            ran.append(mutant.operator)
            return "blue: no endpoint became ready" if "readinessProbe path" in mutant.description else None
        return run_check

    report = mutate.mutate(checks, mutants, run_check=factory)
    offline = {o.mutant.ident: o for o in mutate.mutate(checks, mutants).outcomes}
    assert len(ran) == sum(o.status == mutate.SURVIVED for o in offline.values()), "only offline survivors run"
    by_op = Counter((o.mutant.operator, o.check or o.status) for o in report.outcomes)
    assert by_op[("probe", "run")] == 2, by_op
    assert not report.passed, "a mutant the run passes and nothing else caught is a survivor"
    out = io.StringIO()
    mutate.write_table(report, out)
    assert out.getvalue().splitlines()[-1].startswith(f"FAIL: {len(mutants)} mutants:"), out.getvalue()[-300:]


def test_the_suite_reads_every_mutant_that_goes_to_the_mesh_and_can_catch_one_alone(plan: RolloutPlan) -> None:
    checks, mutants = mutate.spec_mutants(plan, [plan.stage("Blue_50")])
    offline = {o.mutant.ident: o for o in mutate.mutate(checks, mutants).outcomes}
    to_mesh = [m for m in mutants if offline[m.ident].status == mutate.SURVIVED]
    assert len(to_mesh) >= 3, "the sample's Blue_50 has probe and port mutants only a mesh can catch"
    only_suite, only_run, neither = to_mesh[0].ident, to_mesh[1].ident, to_mesh[2].ident
    suite_ran: list[str] = []

    def factory() -> mutate.RunCheck:
        return lambda check, mutant: None if mutant.ident in (only_suite, neither) else "run: failed"

    def suite(check: mutate.StageCheck, mutant: mutate.Mutant) -> str | None:
        suite_ran.append(mutant.ident)
        return None if mutant.ident in (only_run, neither) else "FAILED test_rollout.py::test_x[Blue_50]"

    report = mutate.mutate(checks, mutants, run_check=factory, suite_check=suite)
    by_id = {o.mutant.ident: o for o in report.outcomes}
    assert sorted(suite_ran) == sorted(m.ident for m in to_mesh), "the suite reads exactly the mutants on the mesh"
    assert (by_id[only_suite].status, by_id[only_suite].check, by_id[only_suite].suite) == (mutate.CAUGHT, "suite",
                                                                                            "caught")
    assert (by_id[only_run].status, by_id[only_run].check, by_id[only_run].suite) == (mutate.CAUGHT, "run", "missed")
    assert by_id[neither].status == mutate.SURVIVED and "the run passed and the suite passed" in by_id[neither].detail
    assert all(o.suite == "" for o in report.outcomes if o.mutant.ident not in suite_ran), "offline catches: not read"
    out = io.StringIO()
    mutate.write_table(report, out)
    text = out.getvalue()
    assert f"suite: caught {len(to_mesh) - 2} of the {len(to_mesh)} mutants it ran; missed 2 that are not " \
           f"equivalent: " in text, text[-400:]
    assert "; suite: MISSED" in text and "; suite: caught" in text


def test_an_image_edit_nothing_can_see_names_the_missing_stage_images() -> None:
    import dataclasses

    from abtest_harness.spec import load_spec

    spec = load_spec()
    spec = dataclasses.replace(spec, stages=tuple(dataclasses.replace(s, images=None) for s in spec.stages))
    checks, mutants = mutate.spec_mutants(spec, [spec.stage("Green_100")])
    report = mutate.mutate(checks, mutants, run_check=lambda: lambda check, mutant: None)
    image = [o for o in report.outcomes if o.mutant.operator == "image"]
    assert image and all(o.status == mutate.SURVIVED for o in image), [(o.status, o.detail) for o in image]
    assert all("stage Green_100 has no `images:`" in o.detail for o in image)
    assert not any("images:" in o.detail for o in report.outcomes if o.mutant.operator != "image")


def test_the_deadline_bounds_the_run(plan: RolloutPlan) -> None:
    checks, mutants = mutate.spec_mutants(plan, [plan.stage("Blue_50")])
    report = mutate.mutate(checks, mutants, deadline_s=0.0)
    assert report.count(mutate.NOT_RUN) == len(mutants) and not report.passed


def test_a_stage_that_already_disagrees_is_refused(plan: RolloutPlan) -> None:
    stage = plan.stage("Blue_50")
    objects = render_stage(plan, stage)
    wrong = {"weighted": {"green": 0.7, "blue": 0.3}, "header-blue": {"blue": 1.0}, "header-green": {"green": 1.0}}
    with pytest.raises(HarnessError, match="Blue_50 weighted: the unmutated manifests route blue 50%, green 50%"):
        mutate.prepare_stage(stage, objects, wrong)


def test_a_spec_example_with_subsets_and_selectors() -> None:
    """Istio's Bookinfo reviews rollout: versions are pod selectors, routes go to subsets."""
    from pathlib import Path

    from abtest_harness.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / "bookinfo-reviews" / "rollout.yaml")
    checks, mutants = mutate.spec_mutants(spec, [spec.stage("all-v1"), spec.stage("shift-80-20")])
    assert all(n >= 50 for n in Counter(m.stage for m in mutants).values())
    outcomes = {o.mutant.ident: o for o in mutate.mutate(checks, mutants).outcomes}
    # Subset v1 relabelled to select v2's pods: everything for v1 now reaches v2.
    moved = outcomes[_one(mutants, "all-v1", "subset", "subset v1 version: v1 -> v2").ident]
    assert (moved.status, moved.check) == (mutate.CAUGHT, "oracle") and "anonymous: v2 100%" in moved.detail
    # 80/20 moved by 15 points is 65/35 or 95/5: outside 80 +- 10 for v1.
    shifted = [outcomes[m.ident] for m in mutants if m.stage == "shift-80-20" and m.operator == "weights-shift"]
    assert shifted and all((o.status, o.check) == (mutate.CAUGHT, "oracle") for o in shifted), shifted


def test_a_partial_table_still_judges_the_classes_it_names(tmp_path: Any) -> None:
    """A table that names only `anonymous`: a weight moved for it is caught by the oracle, while
    the jason route removed (jason then gets what anonymous gets: v1, not v2) is an unchecked
    change, so it survives the offline checks rather than being called equivalent."""
    from pathlib import Path

    import yaml

    from abtest_harness.spec import load_spec

    example = Path(__file__).resolve().parents[2] / "examples" / "bookinfo-reviews" / "rollout.yaml"
    raw = yaml.safe_load(example.read_text(encoding="utf-8"))
    for entry in raw["stages"]:
        entry["source"]["files"] = [str(example.parent / p) for p in entry["source"]["files"]]
        entry["expect"].pop("jason")
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    spec = load_spec(path)
    checks, mutants = mutate.spec_mutants(spec, [spec.stage("jason-v2"), spec.stage("shift-80-20")])
    outcomes = {o.mutant.ident: o for o in mutate.mutate(checks, mutants).outcomes}
    shifted = [outcomes[m.ident] for m in mutants if m.stage == "shift-80-20" and m.operator == "weights-shift"]
    assert shifted and all((o.status, o.check) == (mutate.CAUGHT, "oracle") for o in shifted), shifted
    assert all("anonymous:" in o.detail for o in shifted), shifted
    removed = outcomes[_one(mutants, "jason-v2", "route-remove", "http[0]: removed").ident]
    assert removed.status == mutate.SURVIVED, removed


def test_a_run_points_the_mutant_at_the_images_the_mesh_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """With docker workloads the images are built with content tags; a mutant rendered with the
    manifests' tags must run those, or every mutant fails on a missing image (a false catch)."""
    from abtest_harness import rollout
    from abtest_harness.spec import load_spec
    from abtest_harness.stats import StatsConfig

    spec = load_spec()
    checks, mutants = mutate.spec_mutants(spec, [spec.stage("Blue_50")])
    image_swap = _one(mutants, "Blue_50", "image", "model-blue image")
    probe = _one(mutants, "Blue_50", "probe", "model-blue readinessProbe path")
    seen: list[dict[str, str]] = []

    def fake_check_stage(mesh: Any, spec: Any, stage: Any, config: Any, **kwargs: Any) -> Any:
        seen.append({o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
                     for o in kwargs["objects"] if o["kind"] == "Deployment"})
        return rollout.StageResult(stage, wrong_answers=["stop"])

    class Session:
        mesh = None
        image_refs = {"A": "abtest/scorer-a:built-a", "B": "abtest/scorer-b:built-b"}

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

    monkeypatch.setattr(rollout, "check_stage", fake_check_stage)
    run = mutate.MeshRunCheck(spec, StatsConfig(), Session)
    run(checks[0], probe)
    run(checks[0], image_swap)
    run.close()
    assert seen == [
        {"model-green": "abtest/scorer-a:built-a", "model-blue": "abtest/scorer-b:built-b"},
        {"model-green": "abtest/scorer-a:built-a", "model-blue": "abtest/scorer-a:built-a"},  # the swap stays
    ]
