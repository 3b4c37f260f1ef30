"""Faults the suite must catch: a version that errors, a version that dies, a swapped route.

Each test breaks one thing on purpose and asserts that the verdict fails, quickly and with a
message that says what was seen. A check that passes on a broken rollout would be worse
than no check.
"""

from __future__ import annotations

import copy
import subprocess
from typing import Any

import pytest

from harness.mesh.base import Mesh
from harness.plan import RolloutPlan
from harness.render import render_stage
from harness.rollout import MeshSession, sample
from harness.routing import STANDARD_CLASSES
from harness.stats import Decision, StatsConfig

pytestmark = pytest.mark.e2e
WEIGHTED, BLUE, GREEN = STANDARD_CLASSES


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


def _apply(mesh: Mesh, objects: list[dict[str, Any]]) -> None:
    mesh.apply(objects)
    mesh.converge(objects)


@pytest.fixture
def restore(mesh_session: MeshSession, abtest_plan: RolloutPlan, request: pytest.FixtureRequest) -> Any:
    """After a fault, put the mesh back on a clean baseline (blue removed, green restarted)."""
    request.node.abtest_mesh = mesh_session.mesh
    yield
    for stage in ("baseline", "Green_100"):
        _apply(mesh_session.mesh, render_stage(abtest_plan, stage, image_refs=mesh_session.image_refs))


def test_a_version_answering_500s_fails_the_split_on_its_error_bound(
    mesh_session: MeshSession, abtest_plan: RolloutPlan, stats_config: StatsConfig, restore: None
) -> None:
    objects = copy.deepcopy(render_stage(abtest_plan, "Blue_50", image_refs=mesh_session.image_refs))
    container = _deployment(objects, "model-blue")["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "SCORER_ERROR_RATE", "value": "0.2"})
    _apply(mesh_session.mesh, objects)
    load = sample(mesh_session.mesh, {"weighted": {"green": 0.5, "blue": 0.5}}, [WEIGHTED], stats_config)
    verdict = load.verdicts["weighted"]
    assert verdict.decision is Decision.FAIL, verdict.message
    assert verdict.errors.get("status:500", 0) >= 1, verdict.errors
    assert "status:500" in verdict.message, verdict.message
    assert "blue" not in verdict.errors, "an error must never count as a version"


def test_a_version_that_dies_fails_its_pinned_requests(
    mesh_session: MeshSession, abtest_plan: RolloutPlan, stats_config: StatsConfig, restore: None
) -> None:
    mesh = mesh_session.mesh
    _apply(mesh, render_stage(abtest_plan, "Blue_50", image_refs=mesh_session.image_refs))
    workloads = [w for w in getattr(mesh, "workloads", ()) if w.spec.deployment == "model-blue"]
    if not workloads:
        pytest.skip(f"{mesh.name} mesh does not expose its replicas")
    for workload in workloads:
        _kill(workload.handle)
    load = sample(mesh, {"header-blue": {"blue": 1.0}}, [BLUE], stats_config)
    verdict = load.verdicts["header-blue"]
    assert verdict.decision is Decision.FAIL, verdict.message
    # One wrong answer decides a deterministic route: the run stops at once, not at a cap.
    assert verdict.n <= 4 * 2, f"a dead backend must fail within the first answers, took n={verdict.n}"
    assert set(verdict.errors) <= {"status:503", "error:connection"}, verdict.errors


def _kill(handle: object) -> None:
    """Kill a replica the way a crash would: SIGKILL, no goodbye."""
    if isinstance(handle, subprocess.Popen):
        handle.kill()
        handle.wait(timeout=10)
    elif isinstance(handle, str):  # a container id
        import docker

        docker.from_env().containers.get(handle).kill()
    else:
        pytest.skip(f"do not know how to kill a replica with handle {handle!r}")


def test_swapped_header_routes_fail_the_pinned_requests_at_once(
    mesh_session: MeshSession, abtest_plan: RolloutPlan, stats_config: StatsConfig, restore: None
) -> None:
    objects = copy.deepcopy(render_stage(abtest_plan, "Blue_0", image_refs=mesh_session.image_refs))
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    http = vs["spec"]["http"]
    http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]
    _apply(mesh_session.mesh, objects)
    load = sample(
        mesh_session.mesh, {"header-blue": {"blue": 1.0}, "header-green": {"green": 1.0}}, [BLUE, GREEN], stats_config
    )
    for label, wrong in (("header-blue", "green"), ("header-green", "blue")):
        verdict = load.verdicts[label]
        assert verdict.decision is Decision.FAIL, verdict.message
        assert verdict.counts.get(wrong, 0) >= 1, verdict.counts
        assert verdict.n <= 8, f"{label}: a leak must fail at the first wrong answer, took n={verdict.n}"
