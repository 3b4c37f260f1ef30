"""Faults the suite must catch: a version that errors, a version that dies, a swapped route.

Each test breaks one thing on purpose and asserts that the verdict fails, quickly and with a
message that says what was seen. A check that passes on a broken rollout would be worse
than no check.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from abtest_harness.rollout import MeshSession
from abtest_harness.stats import Decision
from abtest_harness.traffic import LoadResult

pytestmark = pytest.mark.e2e

Deploy = Callable[..., list[dict[str, Any]]]
Traffic = Callable[..., LoadResult]


def _deployment(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)


@pytest.fixture
def restore(deploy_stage: Deploy) -> Iterator[None]:
    """After a fault, put the mesh back on clean workloads: blue removed, green replaced."""
    yield
    deploy_stage("baseline")
    deploy_stage("Green_100")


def test_a_version_answering_500s_fails_the_split_on_its_error_bound(
    deploy_stage: Deploy, traffic: Traffic, restore: None
) -> None:
    def inject(objects: list[dict[str, Any]]) -> None:
        container = _deployment(objects, "model-blue")["spec"]["template"]["spec"]["containers"][0]
        container["env"].append({"name": "SCORER_ERROR_RATE", "value": "0.2"})

    deploy_stage("Blue_50", edit=inject)
    verdict = traffic({"weighted": {"green": 0.5, "blue": 0.5}}).verdicts["weighted"]
    assert verdict.decision is Decision.FAIL, verdict.message
    assert verdict.errors.get("status:500", 0) >= 1, verdict.errors
    assert "status:500" in verdict.message, verdict.message
    assert "blue" not in verdict.errors, "an error must never count as a version"


def test_a_version_that_dies_fails_its_pinned_requests(
    deploy_stage: Deploy, traffic: Traffic, mesh_session: MeshSession, restore: None
) -> None:
    deploy_stage("Blue_50")
    mesh = mesh_session.mesh
    workloads = [w for w in getattr(mesh, "workloads", ()) if w.spec.deployment == "model-blue"]
    if not workloads:
        pytest.skip(f"{mesh.name} mesh does not expose its replicas")
    for workload in workloads:
        _kill(workload.handle)
    verdict = traffic({"header-blue": {"blue": 1.0}}).verdicts["header-blue"]
    assert verdict.decision is Decision.FAIL, verdict.message
    # One wrong answer decides a deterministic route: the run stops at once, not at a cap.
    assert verdict.n <= 8, f"a dead backend must fail within the first answers, took n={verdict.n}"
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
    deploy_stage: Deploy, traffic: Traffic, restore: None
) -> None:
    def swap(objects: list[dict[str, Any]]) -> None:
        http = next(o for o in objects if o["kind"] == "VirtualService")["spec"]["http"]
        http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]

    deploy_stage("Blue_0", edit=swap)
    load = traffic({"header-blue": {"blue": 1.0}, "header-green": {"green": 1.0}})
    for label, wrong in (("header-blue", "green"), ("header-green", "blue")):
        verdict = load.verdicts[label]
        assert verdict.decision is Decision.FAIL, verdict.message
        assert verdict.counts.get(wrong, 0) >= 1, verdict.counts
        assert verdict.n <= 8, f"{label}: a leak must fail at the first wrong answer, took n={verdict.n}"
