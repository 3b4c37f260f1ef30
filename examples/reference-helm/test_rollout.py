"""The reference pipeline's own suite: each stage of its canary plan, from its stage table.

Run it with the harness's plugin (installed with the package):

    pytest examples/reference-helm/test_rollout.py --abtest-spec examples/reference-helm/rollout.yaml

The table below restates the pipeline's plan (Blue_0 to Green_100: weights, which image each
colour runs, x-api-version pinning) without reading rollout.yaml's ``expect`` tables or the
charts' values, so it catches an edit of either. ``abtest mutate --suite`` runs this file on
every mutant that reaches the mesh.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from abtest_harness.rollout import StageResult
from abtest_harness_pytest import judge

CheckStage = Callable[..., StageResult]

A, B = "New Model A", "New Model B"
#: stage -> (weighted shares, answer of each running colour; a colour not listed does not run)
STAGES: dict[str, tuple[dict[str, float], dict[str, str]]] = {
    "Blue_0": ({"green": 1.0}, {"green": A, "blue": B}),
    "Blue_50": ({"green": 0.5, "blue": 0.5}, {"green": A, "blue": B}),
    "Blue_100": ({"blue": 1.0}, {"green": A, "blue": B}),
    "Blue_Green": ({"blue": 1.0}, {"green": B, "blue": B}),
    "Green_100": ({"green": 1.0}, {"green": B}),
}



@pytest.mark.parametrize("stage", list(STAGES))
def test_canary_requests_split_by_weight(check_stage: CheckStage, stage: str) -> None:
    judge(check_stage(stage, labels=["canary"], expected={"canary": STAGES[stage][0]}))


@pytest.mark.parametrize("colour", ["blue", "green"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_x_api_version_pins_the_colour(check_stage: CheckStage, stage: str, colour: str) -> None:
    runs = colour in STAGES[stage][1]
    label = f"ab-{colour}"
    judge(check_stage(stage, labels=[label], expected={label: {colour: 1.0} if runs else {"status:503": 1.0}}))


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_colour_answers_with_its_image(check_stage: CheckStage, stage: str) -> None:
    answers = STAGES[stage][1]
    labels = [f"ab-{colour}" for colour in answers]
    result = check_stage(stage, labels=labels, expected={f"ab-{c}": {c: 1.0} for c in answers})
    seen = {colour: set(bodies) for colour, bodies in result.answers.items()}
    assert seen == {colour: {answer} for colour, answer in answers.items()}, f"{stage}: answers {seen}"
    judge(result)
