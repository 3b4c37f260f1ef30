"""The local mesh with Docker workloads: a user's own image as its Deployment describes it,
probes and dead containers as on Kubernetes, and SIGTERM leaving nothing behind.

Real Envoy, real containers, traffic only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import select
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from abtest_harness.errors import WaitTimeout
from abtest_harness.images import resolve_base_image
from abtest_harness.mesh.containers import DockerRunner
from abtest_harness.mesh.local import LocalMesh
from abtest_harness.mesh.workloads import ReplicaDied, ReplicaNotReady
from abtest_harness.wait import wait_until
from tests.unit import objects as k8s
from tests.unit.fakes.processes import alive

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parents[2]
ContainersOf = Callable[[str], list[str]]

# A model server that is not the sample scorer: another port, another path, another answer,
# and an image CMD that fails, so only the Deployment's command and args can start it.
SERVE = textwrap.dedent(
    """
    import json, os, signal, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ready":
                body, status = b"ready", 200
            elif self.path == "/score":
                body, status = json.dumps({"model": os.environ["MODEL_NAME"], "flag": sys.argv[2]}).encode(), 200
            else:
                body, status = b"no", 404
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.fixture(scope="module")
def own_image(
    docker_engine: docker.DockerClient, scorer_refs: dict[str, str], pytestconfig: pytest.Config
) -> Iterator[str]:
    """An image of a model server of the user's own, on the base the scorer images were built on
    (scorer_refs skips, or fails in CI, where that base is missing)."""
    base_image = resolve_base_image(pytestconfig.getoption("abtest_base_image", default=None))
    dockerfile = f'FROM {base_image}\nCOPY serve.py /srv/serve.py\nCMD ["false"]\n'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, text in (("Dockerfile", dockerfile), ("serve.py", SERVE)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    tag = "abtest-test/own-model:dev"
    docker_engine.images.build(fileobj=buffer, custom_context=True, tag=tag, rm=True, forcerm=True)
    yield tag
    try:
        docker_engine.images.remove(tag, force=True)
    except docker.errors.APIError:
        pass


def _stage(images: dict[str, str]) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [k8s.namespace()]
    for version in ("green", "blue"):
        objects.append(k8s.service(version))
        if version in images:
            objects.append(k8s.deployment(version, images[version]))
    objects.append(k8s.gateway())
    objects.append(
        k8s.virtual_service([*(k8s.header_route(v) for v in ("blue", "green")), k8s.weighted_route(100, 0)])
    )
    return objects


def _container(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    dep = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == name)
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.fixture
def docker_mesh(docker_engine: docker.DockerClient, run_id: str, containers_of: ContainersOf) -> Iterator[LocalMesh]:
    # A long stop timeout: a ready scorer stops on SIGTERM at once, so only a stop that waits
    # for a container that cannot handle it yet would take this long.
    runner = DockerRunner(run_id=run_id, client=docker_engine, stop_timeout=30.0)
    mesh = LocalMesh(runner=runner, ready_timeout=3.0)
    try:
        with mesh:
            yield mesh
    finally:
        runner.close()
    assert containers_of(run_id) == [], "the mesh and runner must remove every container"


def test_a_users_own_image_runs_with_its_command_args_env_ports_and_probe(
    docker_mesh: LocalMesh, own_image: str
) -> None:
    objects = _stage({"green": own_image})
    container = _container(objects, "model-green")
    container.update(
        command=["python3", "/srv/serve.py"],
        args=["8080", "from-args"],
        env=[{"name": "MODEL_NAME", "value": "fraud-v7"}],
        ports=[{"name": "web", "containerPort": 8080}],
        readinessProbe={"httpGet": {"path": "/ready", "port": "web"}},
    )
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "model-svc-green")
    service["spec"]["ports"][0]["targetPort"] = "web"
    docker_mesh.apply(objects)
    docker_mesh.converge(objects, timeout=10)
    r = requests.get(docker_mesh.gateway_url + "/score", timeout=5)
    assert (r.status_code, r.json()) == (200, {"model": "fraud-v7", "flag": "from-args"})
    labels = docker_mesh.endpoint_labels()
    (address,) = labels
    assert labels[address] == {"app": "model", "model_version": "green"}
    assert requests.get(f"http://{address}/score", timeout=5).json()["model"] == "fraud-v7"


def test_docker_honours_the_deployments_answer_and_a_wrong_port_never_gets_ready(
    docker_mesh: LocalMesh, scorer_refs: dict[str, str]
) -> None:
    objects = _stage({"green": scorer_refs["A"]})
    _container(objects, "model-green")["env"].append({"name": "SCORER_ANSWER", "value": "New Model X"})
    docker_mesh.apply(objects)
    docker_mesh.converge(objects, timeout=10)
    assert requests.get(docker_mesh.gateway_url + "/score", timeout=5).json() == "New Model X"

    wrong = copy.deepcopy(objects)
    _container(wrong, "model-green")["env"].append({"name": "PORT", "value": "5002"})
    started = time.monotonic()
    with pytest.raises(ReplicaNotReady) as caught:
        docker_mesh.apply(wrong)
    took = time.monotonic() - started
    assert took < 10, f"the never-ready container must be known at once and killed, not drained: {took:.1f}s"
    assert caught.value.probe == "readinessProbe httpGet /healthz on port http (5001)" and caught.value.final
    assert "the scorer image listens on 5002" in caught.value.last_seen, caught.value.last_seen
    docker_mesh.converge(objects, timeout=10)  # the old replica still serves


def test_an_own_image_whose_probe_port_has_no_listener_times_out_naming_what_it_listens_on(
    docker_mesh: LocalMesh, own_image: str
) -> None:
    objects = _stage({"green": own_image})
    _container(objects, "model-green").update(
        command=["python3", "/srv/serve.py"],
        args=["8080", "x"],
        env=[{"name": "MODEL_NAME", "value": "m"}],
        readinessProbe={"httpGet": {"path": "/ready", "port": "http"}},  # http is 5001; it listens on 8080
    )
    with pytest.raises(ReplicaNotReady) as caught:
        docker_mesh.apply(objects)
    error = caught.value
    assert not error.final and error.timeout == docker_mesh.ready_timeout
    assert error.probe == "readinessProbe httpGet /ready on port http (5001)"
    assert "the container listens on [8080]" in error.last_seen, error.last_seen
    notes = "\n".join(getattr(error, "__notes__", []))
    assert "container logs:" in notes, notes
    assert docker_mesh.endpoint_labels() == {}


def test_a_dead_container_is_named_not_reused(
    docker_mesh: LocalMesh, docker_engine: docker.DockerClient, scorer_refs: dict[str, str]
) -> None:
    stage = _stage({"green": scorer_refs["A"]})
    docker_mesh.apply(stage)
    (green,) = docker_mesh.workloads
    docker_engine.containers.get(str(green.handle)).kill()
    with pytest.raises(ReplicaDied) as caught:
        docker_mesh.converge(stage, timeout=10)
    assert (caught.value.deployment, caught.value.replica, caught.value.exit_code) == ("model-green", 0, 137)
    docker_mesh.apply(stage)
    docker_mesh.converge(stage, timeout=10)
    assert requests.get(docker_mesh.gateway_url + "/score", timeout=5).status_code == 200


CHILD = textwrap.dedent(
    """
    import json, sys, threading
    from abtest_harness.mesh.containers import DockerRunner, register_cleanup
    from abtest_harness.mesh.local import LocalMesh
    from tests.docker.test_docker_mesh import _stage

    run_id, image = sys.argv[1:3]
    runner = DockerRunner(run_id=run_id)
    register_cleanup(runner)
    mesh = LocalMesh(runner=runner)
    mesh.up()
    stage = _stage({"green": image, "blue": image})
    mesh.apply(stage)
    pids = [mesh.envoy_pid]
    print(json.dumps([pids, str(mesh.workdir)]), flush=True)
    threading.Event().wait(60)   # bounded: the test signals within seconds
    """
)


def test_sigterm_ends_a_docker_mesh_with_143_leaving_no_container_process_or_directory(
    scorer_refs: dict[str, str], run_id: str, containers_of: ContainersOf
) -> None:
    child = subprocess.Popen(  # noqa: S603 - this interpreter and a literal script; Popen to signal it
        [sys.executable, "-c", CHILD, run_id, scorer_refs["A"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        cwd=REPO_ROOT,
    )
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 90.0)
        line = child.stdout.readline() if ready else ""
        if not line:
            child.kill()
            pytest.fail(f"the child mesh did not come up:\n{child.communicate(timeout=10)[1]}")
        pids, workdir = json.loads(line)
        assert len(containers_of(run_id)) == 2
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    assert child.returncode == 143, f"SIGTERM must end the run with 143, got {child.returncode}:\n{err}"
    assert containers_of(run_id) == [], "SIGTERM left containers behind"
    with contextlib.suppress(WaitTimeout):  # the assertion below says what is left
        wait_until(lambda: not any(alive(p) for p in pids), what="envoy to end", timeout=5)
    assert not [p for p in pids if alive(p)], "SIGTERM left envoy running"
    assert not Path(workdir).exists(), f"SIGTERM left {workdir}"


