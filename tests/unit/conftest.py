"""Fixtures shared by the unit tests of the Kubernetes backends."""

from __future__ import annotations

from typing import Any

import pytest

from abtest_harness.plan import RolloutPlan, load_plan
from abtest_harness.render import render_stage


@pytest.fixture(scope="module")
def plan() -> RolloutPlan:
    """The repository's rollout plan (manifests/stages.yaml)."""
    return load_plan()


@pytest.fixture(scope="module")
def stages(plan: RolloutPlan) -> dict[str, list[dict[str, Any]]]:
    """Every stage of :func:`plan`, rendered, by stage name."""
    return {stage.name: render_stage(plan, stage) for stage in plan.stages}
