"""The scorer images themselves: built on the local base, non-root, answering, stopping on SIGTERM."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

from abtest_harness.images import DIGEST_LABEL, image_exists
from abtest_harness.plan import RolloutPlan
from abtest_harness.wait import wait_until

pytestmark = pytest.mark.docker


def get(port: int, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, str, str]:
    """One request to the container through its published loopback port: status, body, version."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read().decode(), response.getheader("x-model-version") or ""
    finally:
        connection.close()


def published_port(container: Container) -> int:
    container.reload()
    bindings = container.attrs["NetworkSettings"]["Ports"]["5001/tcp"]
    assert bindings and all(b["HostIp"] == "127.0.0.1" for b in bindings), f"loopback only: {bindings}"
    return int(bindings[0]["HostPort"])


def wait_healthy(port: int) -> None:
    wait_until(
        lambda: get(port, "/healthz")[0] == 200,
        what=f"the scorer on 127.0.0.1:{port} to answer /healthz",
        timeout=20.0,
        transient=(OSError, http.client.HTTPException),
    )


@pytest.fixture(params=["A", "B"])
def image_key(request: pytest.FixtureRequest) -> str:
    """Each test runs against image A and image B."""
    return str(request.param)


@pytest.fixture
def scorer(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], image_key: str, run_id: str
) -> Iterator[tuple[Container, int]]:
    """A running container of the image with MODEL_VERSION=blue, and its loopback port."""
    container = docker_engine.containers.run(
        scorer_refs[image_key],
        detach=True,
        environment={"MODEL_VERSION": "blue"},
        labels={"app.kubernetes.io/managed-by": "abtest-harness", "abtest-harness/run-id": run_id},
        ports={"5001/tcp": ("127.0.0.1", None)},
    )
    try:
        port = published_port(container)
        wait_healthy(port)
        yield container, port
    finally:
        container.remove(force=True)


def test_both_images_are_built_with_content_tags_on_the_base(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], rollout_plan: RolloutPlan
) -> None:
    assert set(scorer_refs) == set(rollout_plan.images), scorer_refs
    for key, ref in scorer_refs.items():
        spec = rollout_plan.images[key]
        repository, tag = ref.rsplit(":", 1)
        assert repository == spec.repository and tag != "latest", ref
        assert image_exists(docker_engine, ref), f"{ref} must be in the local store"
        image = docker_engine.images.get(ref)
        assert image.labels.get(DIGEST_LABEL) == tag, f"{ref}: the tag must be the content digest label"
        env = dict(item.split("=", 1) for item in image.attrs["Config"]["Env"])
        assert env.get("SCORER_ANSWER") == spec.answer, f"{ref} bakes {env.get('SCORER_ANSWER')!r}"
        user = image.attrs["Config"]["User"]
        uid = user.split(":", 1)[0]
        assert uid.isdigit() and int(uid) != 0, f"{ref}: USER must be a numeric non-root uid, is {user!r}"
        assert "5001/tcp" in image.attrs["Config"]["ExposedPorts"]


def test_container_runs_as_non_root(scorer: tuple[Container, int]) -> None:
    container, _ = scorer
    # PID 1 is the scorer itself: read its real and effective uids, not those of an exec.
    status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids and all(u != "0" for u in uids), f"the scorer runs with uids {uids}"


def test_container_answers_score_and_healthz(
    scorer: tuple[Container, int], image_key: str, rollout_plan: RolloutPlan
) -> None:
    _, port = scorer
    answer = rollout_plan.images[image_key].answer
    for method, body in (("GET", None), ("POST", b'{"data": [[1, 2, 3]]}')):
        status, text, version = get(port, "/score", method, body)
        assert status == 200, f"{method} /score answered {status}: {text}"
        assert json.loads(text) == answer, f"{method} /score answered {text}, expected {answer!r}"
        assert version == "blue", f"x-model-version must come from MODEL_VERSION, got {version!r}"
    status, text, _ = get(port, "/healthz")
    assert (status, text) == (200, "ok")


def test_container_stops_cleanly_on_sigterm_within_two_seconds(scorer: tuple[Container, int]) -> None:
    container, _ = scorer
    started = time.monotonic()
    container.kill(signal="SIGTERM")
    result = container.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert result["StatusCode"] == 0, f"exit code {result['StatusCode']} after SIGTERM: {container.logs()!r}"
    assert elapsed < 2.0, f"took {elapsed:.2f}s to stop on SIGTERM"
    assert b"scorer stopped" in container.logs(), "the scorer must say it shut down (clean exit)"
