"""The Bookinfo reviews rollout's own suite: what each stage must do, as Istio's tasks describe it.

Run it with the harness's plugin (installed with the package):

    pytest examples/bookinfo-reviews/test_rollout.py --abtest-spec examples/bookinfo-reviews/rollout.yaml

The table below is written from Istio's request-routing and traffic-shifting tasks, not read
from rollout.yaml's ``expect`` tables: it is a second, independent statement of the rollout,
so an edit of the spec and the manifests together still fails here. ``abtest mutate --suite``
runs this file on every mutant that reaches the mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from abtest_harness.rollout import StageResult
from abtest_harness_pytest import judge

CheckStage = Callable[..., StageResult]

#: stage -> (share of anonymous requests per version, version the user jason gets, or None: jason splits too)
STAGES: dict[str, tuple[dict[str, float], str | None]] = {
    "all-v1": ({"v1": 1.0}, "v1"),
    "jason-v2": ({"v1": 1.0}, "v2"),
    "shift-80-20": ({"v1": 0.8, "v2": 0.2}, None),
    "shift-50-50-v3": ({"v1": 0.5, "v3": 0.5}, None),
    "v3": ({"v3": 1.0}, "v3"),
}
#: Every stage runs all three versions, each with its own image.
ANSWERS = {"v1": "reviews v1: no stars", "v2": "reviews v2: black stars", "v3": "reviews v3: red stars"}



@pytest.mark.parametrize("stage", list(STAGES))
def test_anonymous_requests_split_as_the_stage_says(check_stage: CheckStage, stage: str) -> None:
    judge(check_stage(stage, labels=["anonymous"], expected={"anonymous": STAGES[stage][0]}))


@pytest.mark.parametrize("stage", list(STAGES))
def test_jason_gets_his_version(check_stage: CheckStage, stage: str) -> None:
    weights, jason = STAGES[stage]
    judge(check_stage(stage, labels=["jason"], expected={"jason": {jason: 1.0} if jason else weights}))


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_version_answers_with_its_image(check_stage: CheckStage, stage: str) -> None:
    result = check_stage(stage, labels=["anonymous", "jason"],
                         expected={"anonymous": STAGES[stage][0],
                                   "jason": {STAGES[stage][1]: 1.0} if STAGES[stage][1] else STAGES[stage][0]})
    seen = {version: set(bodies) for version, bodies in result.answers.items()}
    assert all(seen[v] == {ANSWERS[v]} for v in seen), f"{stage}: answers per version {seen}"
    judge(result)
