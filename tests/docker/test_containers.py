"""DockerRunner with real containers: start, ready, stop, close; nothing left behind, even after Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from abtest_harness.mesh.containers import (
    MANAGED_BY_LABEL,
    RUN_ID_LABEL,
    ContainerFailed,
    DockerRunner,
    ImageNotPresent,
    reap,
    register_cleanup,
)
from abtest_harness.mesh.workloads import ReplicaDied, ReplicaNotReady, WorkloadRunner, WorkloadSpec

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parents[2]
ContainersOf = Callable[[str], list[str]]


def spec(image: str, version: str, **env: str) -> WorkloadSpec:
    """A replica as the model-<version> Deployment of the manifests describes it."""
    return WorkloadSpec(
        namespace="abtesting",
        deployment=f"model-{version}",
        replica=0,
        image=image,
        env={"MODEL_VERSION": version, **env},
        labels={"app": "model", "model_version": version},
        container_port=5001,
    )


def score(endpoint: tuple[str, int]) -> tuple[int, str, str]:
    host, port = endpoint
    connection = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        connection.request("GET", "/score")
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("x-model-version") or ""
    finally:
        connection.close()


def test_runner_serves_each_replica_on_loopback_and_leaves_nothing(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    runner = DockerRunner(run_id=run_id, client=docker_engine)
    assert isinstance(runner, WorkloadRunner), "DockerRunner must satisfy the WorkloadRunner protocol"
    with runner:
        green = runner.start(spec(scorer_refs["A"], "green"))
        blue = runner.start(spec(scorer_refs["B"], "blue"))
        for workload in (green, blue):
            runner.wait_ready(workload, timeout=30)
            assert workload.endpoint[0] == "127.0.0.1"
        assert score(green.endpoint) == (200, "New Model A", "green")
        assert score(blue.endpoint) == (200, "New Model B", "blue")
        assert len(containers_of(run_id)) == 2, containers_of(run_id)

        container = docker_engine.containers.get(str(green.handle))
        labels = container.labels
        assert labels[MANAGED_BY_LABEL] == "abtest-harness" and labels[RUN_ID_LABEL] == run_id, labels
        assert labels["app"] == "model" and labels["model_version"] == "green", labels
        bindings = container.attrs["NetworkSettings"]["Ports"]["5001/tcp"]
        assert [b["HostIp"] for b in bindings] == ["127.0.0.1"], f"published beyond loopback: {bindings}"
        assert "answering 'New Model A'" in runner.logs(green), runner.logs(green)

        runner.stop(green)
        assert containers_of(run_id) == [str(docker_engine.containers.get(str(blue.handle)).name)]
        assert "scorer stopped" in runner.logs(green), "logs stay readable after stop, for failure dumps"
        runner.stop(green)  # a second stop is harmless
    assert containers_of(run_id) == [], "close() must remove every container of the run"
    runner.close()  # and a second close too
    assert containers_of(run_id) == []


def test_a_replica_and_its_successor_can_run_side_by_side(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    # make-before-break: the Blue_Green stage starts green on image B before green on A stops.
    with DockerRunner(run_id=run_id, client=docker_engine) as runner:
        old = runner.start(spec(scorer_refs["A"], "green"))
        new = runner.start(spec(scorer_refs["B"], "green"))
        runner.wait_ready(new, timeout=30)
        runner.stop(old)
        assert score(new.endpoint) == (200, "New Model B", "green")
    assert containers_of(run_id) == []


def test_missing_image_is_an_error_that_pulls_nothing(
    docker_engine: docker.DockerClient, run_id: str, containers_of: ContainersOf
) -> None:
    with DockerRunner(run_id=run_id, client=docker_engine) as runner:
        with pytest.raises(ImageNotPresent, match="abtest/scorer-a:0000000000000000.*build_scorer_images"):
            runner.start(spec("abtest/scorer-a:0000000000000000", "green"))
        assert containers_of(run_id) == []


def test_a_container_that_exits_fails_fast_with_its_logs(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    with DockerRunner(run_id=run_id, client=docker_engine) as runner:
        started = time.monotonic()
        with pytest.raises(ReplicaDied) as caught:
            # An error rate above 1 makes the scorer refuse to start (exit 2).
            workload = runner.start(spec(scorer_refs["A"], "green", SCORER_ERROR_RATE="5"))
            runner.wait_ready(workload, timeout=30)
        assert time.monotonic() - started < 15, "an exited container must not wait for the deadline"
        assert isinstance(caught.value, ContainerFailed)
        assert caught.value.exit_code == 2 and "model-green replica 0" in str(caught.value)
        assert "SCORER_ERROR_RATE must be within 0..1" in caught.value.log_tail, str(caught.value)
    assert containers_of(run_id) == []


def test_a_container_that_vanishes_fails_at_once_not_at_the_deadline(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    """Docker's NotFound is no transient error: waiting for a removed container cannot succeed."""
    with DockerRunner(run_id=run_id, client=docker_engine) as runner:
        workload = runner.start(spec(scorer_refs["A"], "green"))
        docker_engine.containers.get(str(workload.handle)).remove(force=True)
        with pytest.raises(ContainerFailed) as caught:
            runner.wait_ready(workload, timeout=10)
        assert "vanished" in str(caught.value) or "no longer" in str(caught.value), str(caught.value)
    assert containers_of(run_id) == []


def test_ready_timeout_names_the_workload_and_attaches_logs(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str
) -> None:
    # The scorer listens on 5002 while the Deployment says 5001: never ready, and known to be
    # so at once for the scorer image, which listens on its PORT only.
    with DockerRunner(run_id=run_id, client=docker_engine) as runner:
        workload = runner.start(spec(scorer_refs["A"], "green", PORT="5002"))
        started = time.monotonic()
        with pytest.raises(ReplicaNotReady) as caught:
            runner.wait_ready(workload, timeout=30)
        assert time.monotonic() - started < 5, "a probe that can never pass must not wait for the deadline"
        error = caught.value
        assert "Deployment abtesting/model-green replica 0 is not ready" in str(error), str(error)
        assert error.probe == "readinessProbe httpGet /healthz on port 5001" and error.final
        assert "the scorer image listens on 5002" in error.last_seen, error.last_seen


# --- interrupted runs ---------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from abtest_harness.mesh.containers import DockerRunner, register_cleanup
    from abtest_harness.mesh.workloads import WorkloadSpec

    run_id, image_a, image_b = sys.argv[1:4]
    runner = DockerRunner(run_id=run_id)
    register_cleanup(runner)
    with runner:
        for version, image in (("green", image_a), ("blue", image_b)):
            spec = WorkloadSpec("abtesting", f"model-{version}", 0, image, {"MODEL_VERSION": version},
                                {"app": "model"}, 5001)
            runner.wait_ready(runner.start(spec), timeout=30)
        print("ready", flush=True)
        time.sleep(60)  # the test signals long before; bounded either way
    """
)


def start_child(run_id: str, refs: dict[str, str]) -> subprocess.Popen[str]:
    """A separate harness process that starts two containers and then waits to be signalled.

    Popen rather than abtest_harness.proc.run: the test must signal the child while it runs.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(  # noqa: S603 - fixed argv: this interpreter and a literal script
        [sys.executable, "-c", CHILD, run_id, refs["A"], refs["B"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        # A job started in the background without job control inherits SIGINT ignored, and
        # Python then installs no Ctrl-C handler: give the child the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], 60.0)
    line = child.stdout.readline() if ready else ""
    if line.strip() != "ready":
        child.kill()
        _, err = child.communicate(timeout=10)
        pytest.fail(f"child did not get ready (said {line!r}); stderr:\n{err}")
    return child


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_run_removes_its_containers(
    scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf, signum: signal.Signals
) -> None:
    child = start_child(run_id, scorer_refs)
    try:
        assert len(containers_of(run_id)) == 2, "the child must have started two containers"
        child.send_signal(signum)
        child.wait(timeout=90)  # stopping two containers; generous for a loaded machine
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)
    assert child.returncode != 0, "an interrupted run must not report success"
    if signum == signal.SIGTERM:
        assert child.returncode == 143, f"SIGTERM must end the run as SystemExit(143), got {child.returncode}"
    assert containers_of(run_id) == [], f"the {signum.name} handler left containers behind"


def test_register_cleanup_holds_sigterm_until_close_then_restores_the_previous_handler(
    docker_engine: docker.DockerClient, run_id: str
) -> None:
    def theirs(signum: int, frame: object) -> None:  # never called: no signal is sent here
        raise AssertionError("not expected")

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        runner = DockerRunner(run_id=run_id, client=docker_engine)
        register_cleanup(runner)
        assert signal.getsignal(signal.SIGTERM) is not theirs, "SIGTERM must tear the runner down"
        runner.close()
        assert signal.getsignal(signal.SIGTERM) is theirs, "close() must restore the previous handler"
        runner.close()
        assert signal.getsignal(signal.SIGTERM) is theirs
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_reap_removes_what_a_killed_run_left(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    child = start_child(run_id, scorer_refs)
    try:
        assert reap(run_id, client=docker_engine, only_orphans=True) == [], "a live run's containers stay"
        child.kill()  # SIGKILL: no handler runs, so its containers stay behind
        child.wait(timeout=10)
    finally:
        child.communicate(timeout=10)
    left = containers_of(run_id)
    assert len(left) == 2, f"SIGKILL cannot clean up, so two containers remain: {left}"
    assert sorted(reap(run_id, client=docker_engine, only_orphans=True)) == left
    assert containers_of(run_id) == []
    assert reap(run_id, client=docker_engine) == [], "reaping twice is harmless"
