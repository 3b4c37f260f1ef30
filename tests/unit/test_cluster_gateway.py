"""``--mesh cluster`` from apply to verdict, with stand-ins that keep every request on loopback.

The cluster is the stub Kubernetes API (as in ``test_kind_cluster.py``). The user's gateway
is a server on 127.0.0.2 (127.0.0.0/8 is loopback on Linux, so nothing leaves the machine),
given as ``--gateway-url``: the load goes there as to a remote gateway, through the one URL
the mesh allows. It answers as Istio's gateway with the harness's EnvoyFilter does, naming
in ``x-abtest-upstream-host`` the ``ip:port`` of a pod the stub API runs for the version it
picked. A decoy on 127.0.0.1 at the same port catches any request that goes anywhere but
the URL given.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from abtest_harness.plan import RolloutPlan
from abtest_harness.render import render_stage
from abtest_harness.rollout import as_spec, run_rollout
from abtest_harness.stats import StatsConfig
from tests.unit.fakes.stub_kube_api import StubKubeAPI
from tests.unit.test_kind_cluster import NS, Cluster, stub_cluster

ANSWERS = {"green": "New Model A", "blue": "New Model B"}  # Blue_50: green runs image A, blue image B
CONFIG = StatsConfig(alpha=1e-3, beta=1e-3, delta=0.15)


class StandInGateway(ThreadingHTTPServer):
    """Routes like a gateway at Blue_50 with a weighted split of `blue_in_10` in 10 to blue.

    ``x-api-version: V`` pins a request to V. The chosen version's pods are looked up in the
    stub API; a version without a Ready pod gets 503, as Envoy's "no healthy upstream".
    """

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, api: StubKubeAPI, blue_in_10: int, host: str, port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.api = api
        self.blue_in_10 = blue_in_10
        self.lock = threading.Lock()
        self.weighted = 0
        self.hosts: set[str] = set()
        self.served: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}"

    def choose(self, pinned: str | None) -> str:
        if pinned is not None:
            return pinned
        with self.lock:
            n = self.weighted
            self.weighted += 1
        return "blue" if n % 10 < self.blue_in_10 else "green"


class _Handler(BaseHTTPRequestHandler):
    server: StandInGateway
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return

    def do_GET(self) -> None:  # noqa: N802
        server = self.server
        version = server.choose(self.headers.get("x-api-version"))
        ips = server.api.ready_pod_ips(NS, {"model_version": version})
        with server.lock:
            server.hosts.add(str(self.headers.get("Host")))
            server.served[version if ips else "status:503"] = server.served.get(version if ips else "status:503", 0) + 1
        if not ips:
            body = b"no healthy upstream"
            self.send_response(503)
        else:
            body = json.dumps(ANSWERS[version]).encode()
            self.send_response(200)
            self.send_header("x-abtest-upstream-host", f"{ips[0]}:5001")
            self.send_header("x-abtest-upstream-cluster", f"outbound|5001||model-svc-{version}.{NS}.svc.cluster.local")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan) -> Iterator[Cluster]:
    with stub_cluster(tmp_path, monkeypatch, plan) as stub:
        yield stub


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def gateways(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[tuple[StandInGateway, StandInGateway]]:
    """(the stand-in for the user's gateway on 127.0.0.2, a decoy on 127.0.0.1 at the same port)."""
    blue_in_10 = int(request.param)
    remote = StandInGateway(cluster.api, blue_in_10, "127.0.0.2")
    try:
        decoy = StandInGateway(cluster.api, blue_in_10, "127.0.0.1", remote.server_address[1])
    except OSError:
        remote.server_close()
        pytest.skip("127.0.0.1 has the stand-in's port in use")
    threads = [_serve(remote), _serve(decoy)]
    try:
        yield remote, decoy
    finally:
        for server in (remote, decoy):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5.0)


@pytest.mark.parametrize(
    ("gateways", "passes"),
    [(5, True), (2, False), (8, False)],
    indirect=["gateways"],
    ids=["split-50-50", "split-20-80", "split-80-20"],
)
def test_a_cluster_stage_is_judged_from_traffic_to_the_given_gateway_url(
    cluster: Cluster, gateways: tuple[StandInGateway, StandInGateway], passes: bool
) -> None:
    remote, decoy = gateways
    spec = as_spec(cluster.plan)
    stage = spec.stage("Blue_50")
    objects = render_stage(cluster.plan, cluster.plan.stage("Blue_50"))
    cluster.serve(objects)  # the gateway's config_dump: the stage's routes, the Ready pods' endpoints
    with cluster.mesh(gateway_url=remote.url) as mesh:
        assert mesh.gateway_url == remote.url
        result = run_rollout(mesh, spec, CONFIG, stages=[stage], rendered={"Blue_50": objects})
    (judged,) = result.stages
    verdicts = {c.request.label: c.passed for c in judged.classes}
    assert verdicts == {"weighted": passes, "header-green": True, "header-blue": True}, [
        c.verdict.message for c in judged.classes
    ]
    assert judged.passed is passes and result.passed is passes
    assert not judged.wrong_answers and not judged.manifest_mismatches
    # Every request went to the URL given and was credited to the version of the pod named.
    assert judged.requests > 0 and sum(remote.served.values()) == judged.requests
    assert decoy.served == {}, "a request went to 127.0.0.1 instead of the gateway URL given"
    assert {v: sum(bodies.values()) for v, bodies in judged.answers.items()} == remote.served
    # The Host header is the spec's gateway host, as on the local mesh, not the URL's host.
    assert remote.hosts == {spec.gateway.host}


def test_only_the_cluster_backend_widens_the_load_target() -> None:
    from abtest_harness.mesh.cluster import ClusterMesh
    from abtest_harness.mesh.kind import KindIstioMesh
    from abtest_harness.mesh.kube import KubeMesh
    from abtest_harness.mesh.local import LocalMesh

    assert hasattr(ClusterMesh, "allowed_gateway_url")
    for backend in (LocalMesh, KindIstioMesh, KubeMesh):
        assert not hasattr(backend, "allowed_gateway_url"), f"{backend.__name__} must stay loopback-only"


def test_a_mesh_without_an_allowed_url_cannot_sample_a_remote_gateway() -> None:
    # As a local or kind mesh whose gateway URL were not loopback: refused before any request.
    from abtest_harness.rollout import sample
    from abtest_harness.routing import Request
    from abtest_harness.traffic import NotLoopback

    class Mesh:
        name = "kind"
        gateway_url = "http://192.0.2.50:30080"  # TEST-NET-1: never routed

        def endpoint_labels(self) -> dict[str, dict[str, str]]:
            raise AssertionError("nothing may be read before the target is accepted")

    with pytest.raises(NotLoopback, match="not loopback"):
        sample(Mesh(), {"weighted": {"green": 1.0}}, [Request("weighted")], CONFIG, deadline_s=1.0)  # type: ignore[arg-type]


def test_a_gateway_name_that_does_not_resolve_stops_the_run_before_anything_is_applied(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from abtest_harness.mesh.cluster import ClusterStepError

    real = socket.getaddrinfo
    asked: list[object] = []

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host == "gateway.nowhere.example":
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ClusterStepError) as caught:
        cluster.mesh(gateway_url="http://gateway.nowhere.example:8080").up()
    assert caught.value.step == "connect" and "does not resolve" in str(caught.value)
    assert asked == ["gateway.nowhere.example"]
    assert cluster.api.requests() == [], "nothing may be contacted, let alone applied"
