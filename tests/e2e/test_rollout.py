"""The rollout suite: every stage of the canary plan, through a real data plane.

Each test puts the mesh in its own stage (so the tests pass in any order), waits until the
gateway serves that stage, then samples once, sequentially, until the statistics decide.
What each stage must do is written here, from the rollout's stage table, independently of
manifests/stages.yaml: this suite is the regression check on the manifests, so a weight
edited to 70/30 in Blue_50 fails the Blue_50 split test with the observed share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from abtest_harness.rollout import StageResult
from abtest_harness_pytest import judge

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Expect:
    """What a stage must do: weighted shares, which versions run, and their answers."""

    weights: dict[str, float]
    answers: dict[str, str]  # version -> answer; a version absent here does not run (503 when pinned)


A, B = "New Model A", "New Model B"
STAGES: dict[str, Expect] = {
    "baseline": Expect({"green": 1.0}, {"green": A}),
    "Blue_0": Expect({"green": 1.0}, {"green": A, "blue": B}),
    "Blue_50": Expect({"green": 0.5, "blue": 0.5}, {"green": A, "blue": B}),
    "Blue_100": Expect({"blue": 1.0}, {"green": A, "blue": B}),
    "Blue_Green": Expect({"blue": 1.0}, {"green": B, "blue": B}),
    "Green_100": Expect({"green": 1.0}, {"green": B}),
}

CheckStage = Callable[..., StageResult]


def _expected(stage: str, label: str) -> dict[str, float]:
    expect = STAGES[stage]
    if label == "weighted":
        return expect.weights
    version = label.removeprefix("header-")
    return {version: 1.0} if version in expect.answers else {"status:503": 1.0}


def _check(check_stage: CheckStage, stage: str, labels: list[str]) -> StageResult:
    return check_stage(stage, labels=labels, expected={label: _expected(stage, label) for label in labels})


@pytest.mark.parametrize("stage", list(STAGES))
def test_weighted_split(check_stage: CheckStage, stage: str) -> None:
    """Requests without x-api-version split as the stage's weights say (and no errors)."""
    result = _check(check_stage, stage, ["weighted"])
    judge(result)


@pytest.mark.parametrize("version", ["blue", "green"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_version_header_pins_the_request(check_stage: CheckStage, stage: str, version: str) -> None:
    """x-api-version: V reaches V only, whatever the weights; 503 where V does not run."""
    judge(_check(check_stage, stage, [f"header-{version}"]))


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_version_gives_its_images_answer(check_stage: CheckStage, stage: str) -> None:
    """Every running version answers with its image's answer (Blue_Green: both "New Model B")."""
    # Pinned requests reach every running version; the weighted split is judged apart, so a
    # weight edit fails only the split test.
    labels = [f"header-{v}" for v in STAGES[stage].answers]
    result = _check(check_stage, stage, labels)
    seen = {version: set(bodies) for version, bodies in result.answers.items()}
    assert seen == {v: {answer} for v, answer in STAGES[stage].answers.items()}, (
        f"{stage}: answers per version {seen}"
    )
    judge(result)

