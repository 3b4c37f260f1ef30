"""The shared fakes behave as the real things they stand for, where tests lean on it."""

from __future__ import annotations

import io
import tarfile

import docker.errors
import pytest

from abtest_harness.errors import WaitTimeout
from abtest_harness.mesh import expected_route_table, route_table_from_config_dump
from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage
from abtest_harness.wait import wait_until
from tests.unit.fakes.clock import FakeClock
from tests.unit.fakes.docker_client import FakeDockerClient
from tests.unit.fakes.istio_config_dump import istio_gateway_dump


def _context(files: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer


def test_docker_fake_builds_tags_and_refuses_like_the_engine() -> None:
    client = FakeDockerClient({"base:1": "sha256:base"})
    assert client.images.get("base:1").id == "sha256:base"
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("app:1")
    chunks = list(client.api.build(tag="app:1", fileobj=_context({"Dockerfile": b"FROM base:1\n"}), buildargs={}))
    assert any("Successfully tagged app:1" in c.get("stream", "") for c in chunks)
    assert client.api.builds[0]["context_files"] == {"Dockerfile": b"FROM base:1\n"}
    assert client.images.store is client.store and "app:1" in client.store
    client.in_use.add("app:1")
    with pytest.raises(docker.errors.APIError):
        client.images.remove("app:1")
    assert [c[0] for c in client.calls] == ["images.get", "images.get", "api.build", "images.remove"]

    failing = FakeDockerClient([], fail_build="base image missing")
    chunks = list(failing.api.build(tag="app:2"))
    assert chunks[-1]["error"] == "base image missing" and "app:2" not in failing.store


def test_fake_clock_passes_time_only_by_sleeping() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout):
        wait_until(lambda: None, what="nothing", timeout=30, clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(30.0) and sum(clock.sleeps) == pytest.approx(30.0)
    ticking = FakeClock(1000.0, tick=0.5)
    assert ticking() == 1000.5 and ticking() == 1001.0


@pytest.mark.parametrize("legacy", [False, True], ids=["string_match", "deprecated-forms"])
@pytest.mark.parametrize("stage", ["Blue_0", "Blue_50", "Blue_100", "Green_100"])
def test_the_istio_config_dump_fake_promises_the_stage_routes(stage: str, legacy: bool) -> None:
    plan = load_plan()
    live = route_table_from_config_dump(istio_gateway_dump(dict(plan.stage(stage).weights), legacy=legacy))
    assert live == expected_route_table(render_stage(plan, stage))
    other = route_table_from_config_dump(istio_gateway_dump({"green": 60, "blue": 40}, legacy=legacy))
    assert other != expected_route_table(render_stage(plan, "Blue_50")), "the fake must follow its weights"
