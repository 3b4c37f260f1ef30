"""Docker tests: they need a running Docker engine and the local base image.

Where either is missing they SKIP, with a reason that says how to enable them. In CI
(``CI=true``) they FAIL instead: CI must prove that they ran, not that they skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import docker
import pytest

from abtest_harness.images import BaseImageMissing, DockerUnavailable, build_scorer_images, docker_client
from abtest_harness.mesh.containers import MANAGED_BY_LABEL, RUN_ID_LABEL, new_run_id, reap
from abtest_harness.plan import RolloutPlan, load_plan

HOW_TO_ENABLE = (
    "to run the docker tests: start the Docker engine (`dockerd` as root) and build the base image "
    "with `make base-image` (or pass --abtest-base-image=<local image>)"
)


def in_ci() -> bool:
    """Whether this is a CI run, where a skipped docker test would hide that nothing ran."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip the test with how to enable it; in CI fail it instead."""
    if in_ci():
        pytest.fail(f"CI=true and the docker tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"{reason}; {HOW_TO_ENABLE}")


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    """A client of the local Docker engine (skips, or fails in CI, without one)."""
    try:
        return docker_client()
    except DockerUnavailable as exc:
        unavailable(str(exc))
        raise  # unreachable: unavailable() always raises


@pytest.fixture(scope="session")
def rollout_plan() -> RolloutPlan:
    """The plan whose images the tests build (manifests/stages.yaml)."""
    return load_plan()


@pytest.fixture(scope="session")
def scorer_refs(
    docker_engine: docker.DockerClient, rollout_plan: RolloutPlan, pytestconfig: pytest.Config
) -> dict[str, str]:
    """Image key -> ref of the scorer images, built on the local base image (or --abtest-base-image)."""
    base_image = pytestconfig.getoption("abtest_base_image", default=None)
    try:
        return build_scorer_images(rollout_plan, base_image=base_image, client=docker_engine)
    except BaseImageMissing as exc:
        unavailable(str(exc))
        raise


@pytest.fixture
def run_id(docker_engine: docker.DockerClient) -> Iterator[str]:
    """A fresh run id per test; whatever a test leaves under it is removed afterwards."""
    value = "test-" + new_run_id()
    yield value
    reap(value, client=docker_engine)


@pytest.fixture
def containers_of(docker_engine: docker.DockerClient) -> Callable[[str], list[str]]:
    """``containers_of(run_id)``: names of every container (running or not) of that run id.

    The same filter as ``docker ps -a --filter label=app.kubernetes.io/managed-by=abtest-harness``,
    narrowed to one run id so that runs going on beside the tests do not count.
    """

    def names(run_id: str) -> list[str]:
        labels = [f"{MANAGED_BY_LABEL}=abtest-harness", f"{RUN_ID_LABEL}={run_id}"]
        found = docker_engine.containers.list(all=True, filters={"label": labels})
        return sorted(str(c.name) for c in found)

    return names
