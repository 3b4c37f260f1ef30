"""Workload runners: how a Deployment replica becomes something listening on loopback.

A runner starts one replica from a :class:`WorkloadSpec` (the Deployment's container as the
kubelet reads it: image, command, args, env, ports, readinessProbe), waits until its
readiness probe passes, stops it and returns its log. :class:`ProcessRunner` (the default of
the local mesh) runs the sample scorer as a local process; Docker's runner
(``abtest_harness.mesh.containers.DockerRunner``) runs any image and follows the same protocol.

A replica that can never become ready raises :class:`ReplicaNotReady` at once, naming the
probe; one that does not within the timeout raises it then; one that exits raises
:class:`ReplicaDied`. Both are :class:`WorkloadFailed`, which names Deployment and replica.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import requests

from abtest_harness.errors import ConfigError, HarnessError, UnsupportedField, WaitTimeout
from abtest_harness.plan import repository_of
from abtest_harness.wait import wait_until

if TYPE_CHECKING:
    from abtest_harness.plan import RolloutPlan

__all__ = [
    "ProcessRunner",
    "RunningWorkload",
    "WorkloadRunner",
    "WorkloadSpec",
    "free_port",
    "loopback_session",
    "specs_from_objects",
    "start_process",
    "stop_process",
]

log = logging.getLogger(__name__)

#: Where the image of a Deployment is named, for error messages.
IMAGE_FIELD = "spec.template.spec.containers[0].image"
STOP_TIMEOUT_S = 5.0
_BIND_ATTEMPTS = 3


#: The port the sample scorer listens on when its container sets no ``PORT`` (as in its image).
SCORER_DEFAULT_PORT = 5001


class _PortTaken(Exception):
    """A replica exited because its port was taken between choosing and binding it."""


class WorkloadFailed(HarnessError):
    """A replica could not serve: it never became ready, or it exited. Names Deployment and replica.

    Raised by the runners' ``wait_ready`` and by :meth:`LocalMesh.apply`/``converge``; a test
    fixture can catch it once per stage and fail that stage's other tests with the same
    error instead of waiting again.
    """

    def __init__(self, spec: WorkloadSpec, message: str) -> None:
        self.namespace = spec.namespace
        self.deployment = spec.deployment
        self.replica = spec.replica
        self.workload = spec.name
        super().__init__(message)


class ReplicaNotReady(WorkloadFailed):
    """A replica's readiness probe did not pass: `probe` says which, `last_seen` what it got.

    `final` is True when it can never pass (a port nothing listens on, a port name the
    container does not declare, a path the sample scorer does not serve), so no time was
    spent waiting; otherwise the wait ran for `timeout` seconds.
    """

    def __init__(
        self, spec: WorkloadSpec, probe: str, last_seen: str, *, final: bool, waited: float, timeout: float
    ) -> None:
        self.probe = probe
        self.last_seen = last_seen
        self.final = final
        self.waited = waited
        self.timeout = timeout
        how = "can never pass" if final else f"did not pass within {timeout:g}s"
        super().__init__(
            spec,
            f"Deployment {spec.namespace}/{spec.deployment} replica {spec.replica} is not ready: "
            f"{probe} {how} (after {waited:.1f}s); last seen: {last_seen}. As on Kubernetes, a replica "
            "that is not ready gets no endpoints (requests to it would be 503)",
        )


class ReplicaDied(WorkloadFailed):
    """A replica's process or container exited; carries `exit_code` and the last lines of its log."""

    def __init__(self, spec: WorkloadSpec, exit_code: int | None, log_tail: str, when: str) -> None:
        self.exit_code = exit_code
        self.log_tail = log_tail
        code = "an unknown code" if exit_code is None else str(exit_code)
        lines = ("\n  " + "\n  ".join(log_tail.splitlines())) if log_tail.strip() else " (no output)"
        super().__init__(
            spec,
            f"Deployment {spec.namespace}/{spec.deployment} replica {spec.replica} ({spec.image}) exited "
            f"with {code} {when}; last log lines:{lines}",
        )


@dataclass(frozen=True)
class Probe:
    """A container's readinessProbe: ``httpGet`` (path, port, headers) or ``tcpSocket`` (port).

    `port` is as written (a number or a port name); :meth:`WorkloadSpec.port_number` resolves it.
    """

    kind: str  # "httpGet" or "tcpSocket"
    port: int | str
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()

    def describe(self, spec: WorkloadSpec | None = None) -> str:
        number = spec.port_number(self.port) if spec is not None else None
        port = f"{self.port}" if number is None or number == self.port else f"{self.port} ({number})"
        if self.kind == "httpGet":
            return f"readinessProbe httpGet {self.path} on port {port}"
        return f"readinessProbe tcpSocket on port {port}"


_DEFAULT_PROBE: Any = object()


@dataclass(frozen=True)
class WorkloadSpec:
    """One replica of a Deployment, as a runner needs it: the container as the kubelet sees it."""

    namespace: str
    deployment: str
    replica: int
    image: str
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    container_port: int = 5001
    port_name: str | None = None
    health_path: str = "/healthz"
    #: Every named container port (name -> containerPort); ``container_port`` is the one served.
    ports: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    #: The readinessProbe (None: ready once running, as the kubelet does without one). Left
    #: out, it is ``httpGet`` of `health_path` on `container_port`, the sample scorer's probe.
    probe: Probe | None = cast("Probe", _DEFAULT_PROBE)
    #: Every declared containerPort number (named or not).
    declared_ports: tuple[int, ...] = ()
    #: The container's ``command`` (replaces the image's entrypoint) and ``args`` (its cmd).
    command: tuple[str, ...] | None = None
    args: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.probe is _DEFAULT_PROBE:
            object.__setattr__(self, "probe", Probe("httpGet", self.container_port, self.health_path))

    @property
    def name(self) -> str:
        """``namespace/deployment-replica``: how logs and messages name the replica."""
        return f"{self.namespace}/{self.deployment}-{self.replica}"

    def port_number(self, port: int | str) -> int | None:
        """A port as a probe or a Service's targetPort writes it, as a number: a number stays
        itself, a name is the declared containerPort of that name (None if none has it)."""
        if isinstance(port, int) and not isinstance(port, bool):
            return port
        text = str(port)
        if text.isdigit():
            return int(text)
        return self.ports.get(text)

    def published_ports(self) -> tuple[int, ...]:
        """The container ports a runner makes reachable: every declared one, the served one and
        a probe's numbered port (Kubernetes reaches any port of a pod, declared or not)."""
        numbers = set(self.declared_ports)
        if self.container_port:
            numbers.add(self.container_port)
        if self.probe is not None:
            number = self.port_number(self.probe.port)
            if number:
                numbers.add(number)
        return tuple(sorted(numbers))

    def __hash__(self) -> int:  # Mappings are not hashable; the identity of a replica is enough
        return hash((self.namespace, self.deployment, self.replica, self.image, self.container_port))


@dataclass(eq=False)
class RunningWorkload:
    """A started replica and the loopback addresses Envoy reaches it at.

    `ports` maps a container port number to the loopback port that reaches it; a container
    port missing from it has nothing listening (a Service or probe aimed there gets nothing).
    `endpoint` is the address of the served port (``spec.container_port``). A workload built
    with an endpoint only is reachable on its served port only.
    """

    spec: WorkloadSpec
    endpoint: tuple[str, int]
    handle: object = None  # the runner's own (a Popen, a container id)
    log_path: Path | None = None
    ports: dict[int, int] = field(default_factory=dict)

    def address(self, container_port: int) -> tuple[str, int] | None:
        """The loopback address of `container_port`, or None when nothing listens on it."""
        if not self.ports:
            served = container_port == self.spec.container_port and self.endpoint[1] > 0
            return self.endpoint if served else None
        host_port = self.ports.get(container_port)
        return (self.endpoint[0], host_port) if host_port else None

    def addresses(self) -> list[tuple[str, int]]:
        """Every loopback address of this replica."""
        if not self.ports:
            return [self.endpoint] if self.endpoint[1] > 0 else []
        return sorted((self.endpoint[0], p) for p in set(self.ports.values()))


@runtime_checkable
class WorkloadRunner(Protocol):
    """Starts, checks and stops replicas; implemented by ProcessRunner and DockerRunner."""

    def start(self, spec: WorkloadSpec) -> RunningWorkload: ...

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None: ...

    def stop(self, workload: RunningWorkload) -> None: ...

    def logs(self, workload: RunningWorkload) -> str: ...

    def exit_code(self, workload: RunningWorkload) -> int | None:
        """None while the replica runs; its exit code once it has exited."""
        ...

    def close(self) -> None: ...


def loopback_session() -> requests.Session:
    """A requests Session for loopback calls: proxy variables (HTTP_PROXY, ...) are ignored.

    A proxy cannot reach this machine's 127.0.0.1, so with ``HTTP_PROXY`` set and 127.0.0.1
    missing from ``NO_PROXY`` every admin or health poll would fail until its deadline.
    """
    session = requests.Session()
    session.trust_env = False
    return session


#: What a health poll retries: the server is not listening yet, resets, is slow, or answers
#: garbage while it starts. Anything else (the replica died, Docker lost it) fails at once.
HEALTH_TRANSIENT: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, http.client.HTTPException)


def wait_http_ok(
    url: str,
    alive: Callable[[], None],
    timeout: float,
    *,
    what: str | None = None,
    interval: float = 0.02,
    max_interval: float = 0.1,
) -> None:
    """Poll ``GET url`` until it answers 200; `alive` is called before each attempt.

    `alive` raises when the server can never answer (its process exited, its container is
    gone); what it raises is never retried, even an error that looks like a socket error.
    Uses http.client, which ignores proxy variables, so a loopback poll never goes to a proxy.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def healthy() -> bool:
        try:
            alive()
        except HEALTH_TRANSIENT as exc:
            raise HarnessError(f"checking that {what or url} can still answer failed: {exc}") from exc
        connection = http.client.HTTPConnection(host, port, timeout=1.0)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        finally:
            connection.close()

    wait_until(
        healthy,
        what=what or f"{url} to answer 200",
        timeout=timeout,
        interval=interval,
        max_interval=max_interval,
        transient=HEALTH_TRANSIENT,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- long-running processes

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the harness is killed outright (SIGKILL, OOM), its children get SIGTERM instead of
    # leaking on a machine others share. Linux only; harmless where prctl is missing.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_process(
    argv: list[str], *, env: Mapping[str, str], log_path: Path, what: str, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a long-running process with its output to `log_path`; logged before it runs.

    The child gets its own session, so a Ctrl-C in the terminal reaches the harness, which
    then stops its children in order; and it dies with the harness if the harness is killed.
    ``abtest_harness.proc.run`` runs commands to completion, so long-running ones start here.
    """
    log.info("start %s: %s", what, " ".join(argv))
    out: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        # A PR_SET_PDEATHSIG child dies when the *thread* that forked it ends, so only the
        # main thread asks for it.
        preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        return subprocess.Popen(  # noqa: S603 - argv list from the harness itself, no shell
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509
        )
    finally:
        out.close()


def stop_process(process: subprocess.Popen[bytes], what: str, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit code. Safe on a dead process."""
    if process.poll() is not None:
        return process.returncode
    log.info("stop %s (pid %d)", what, process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", what, process.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return process.wait(timeout=timeout)


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- the process runner


#: Variables the process runner takes from the harness's own environment; everything else a
#: replica sees comes from its Deployment (a shell's PORT or MODEL_VERSION must not leak in).
_INHERITED_ENV = (
    "PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "VIRTUAL_ENV", "PYTHONHOME", "LD_LIBRARY_PATH",
)


def probe_http(host: str, port: int, path: str, headers: Sequence[tuple[str, str]] = ()) -> tuple[bool, str]:
    """One HTTP readiness check as the kubelet makes it: success is a status from 200 to 399.

    Returns (passed, what was seen); connection errors propagate (the caller decides whether
    they are transient).
    """
    connection = http.client.HTTPConnection(host, port, timeout=1.0)
    try:
        connection.request("GET", path, headers=dict(headers))
        status = connection.getresponse().status
    finally:
        connection.close()
    return 200 <= status < 400, f"HTTP {status} from GET {path}"


def probe_tcp(host: str, port: int) -> tuple[bool, str]:
    """One TCP readiness check: the port accepts a connection."""
    with socket.create_connection((host, port), timeout=1.0):
        return True, "connection accepted"


class ProcessRunner:
    """Runs each replica as ``python -m abtest_harness.scorer`` on loopback: the sample scorer only.

    `plan_images` maps an image repository (``abtest/scorer-a``) to the answer that image
    gives; an image outside it cannot be run as a process, and :meth:`start` says so naming
    the Deployment, the image and the field (``--workloads=docker`` runs real images).

    How a replica's container is honoured, as the kubelet would:

    * env: the Deployment's env, as written. ``SCORER_ANSWER`` defaults to the answer the plan
      bakes into the image (as the image's own ENV would), and is the Deployment's where it
      sets one. Of the harness's environment only PATH, HOME, locale and temp directory
      variables pass, so a ``PORT`` or ``MODEL_VERSION`` in the caller's shell cannot leak in.
    * ports: each replica has a network namespace of its own in a cluster; here it has a port
      map. The scorer listens on its container's ``PORT`` (5001 where unset, as in the image);
      the runner starts it on a free loopback port and maps that container port number to it.
      A Service or probe reaches container port N at the loopback port mapped to N; a port
      nothing listens on (a declared containerPort the scorer does not listen on, say) has no
      mapping, so a Service aimed there has no endpoints and the gateway answers 503.
    * readinessProbe: httpGet (path, port by number or name, headers; 200-399 passes) or
      tcpSocket, polled until it passes. Without a probe the replica is ready once it listens.
      A probe that can never pass fails at once, naming the probe: a port name the container
      does not declare, a port nothing listens on, a path the scorer answers 404 to.
    """

    def __init__(
        self,
        plan_images: Mapping[str, str],
        *,
        log_dir: Path | None = None,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.plan_images = dict(plan_images)
        self._own_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="abtest-workloads-")) if log_dir is None else log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.extra_env = dict(extra_env or {})
        self._running: dict[int, RunningWorkload] = {}
        self._lock = threading.RLock()  # stop() may run from a signal handler
        self._serial = 0

    @classmethod
    def from_plan(cls, plan: RolloutPlan | None = None, *, log_dir: Path | None = None) -> ProcessRunner:
        """A runner for the images of a rollout plan (default: ``manifests/stages.yaml``)."""
        from abtest_harness.plan import load_plan

        chosen = plan if plan is not None else load_plan()
        return cls({spec.repository: spec.answer for spec in chosen.images.values()}, log_dir=log_dir)

    def answer_for(self, spec: WorkloadSpec) -> str:
        """The answer of the spec's image, or a ConfigError naming Deployment, image and field."""
        repository = repository_of(spec.image)
        if repository not in self.plan_images:
            known = ", ".join(sorted(self.plan_images)) or "none"
            raise ConfigError(
                f"Deployment {spec.namespace}/{spec.deployment}",
                IMAGE_FIELD,
                f"image {spec.image!r} cannot be run as a local process: the process runner runs only "
                f"the sample scorer's images ({known}); use --workloads=docker to run this image",
            )
        return self.plan_images[repository]

    def check(self, spec: WorkloadSpec) -> None:
        """Refuse, before anything starts, a container this runner cannot run as written."""
        self.answer_for(spec)
        label = f"Deployment {spec.namespace}/{spec.deployment}"
        for name, value in (("command", spec.command), ("args", spec.args)):
            if value is not None:
                raise ConfigError(
                    label,
                    f"spec.template.spec.containers[0].{name}",
                    f"the process runner runs the sample scorer as `python -m abtest_harness.scorer` and "
                    f"cannot run {name} {list(value)!r} of image {spec.image!r}; use --workloads=docker",
                )
        listen = self._listen_port(spec)
        if listen is None:
            raise ConfigError(
                label,
                "spec.template.spec.containers[0].env[PORT]",
                f"must be a port number, got {spec.env.get('PORT')!r}",
            )

    @staticmethod
    def _listen_port(spec: WorkloadSpec) -> int | None:
        raw = spec.env.get("PORT", str(SCORER_DEFAULT_PORT))
        return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else None

    def start(self, spec: WorkloadSpec) -> RunningWorkload:
        self.check(spec)
        workload = RunningWorkload(spec, ("127.0.0.1", 0))
        self._launch(workload)
        with self._lock:
            self._running[id(workload)] = workload
        return workload

    def _launch(self, workload: RunningWorkload) -> None:
        spec = workload.spec
        answer = self.answer_for(spec)
        listen = self._listen_port(spec)
        assert listen is not None  # check() refused it otherwise
        port = free_port()
        with self._lock:
            self._serial += 1
            serial = self._serial
        log_path = self.log_dir / f"{spec.namespace}_{spec.deployment}-{spec.replica}.{serial}.log"
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.update(self.extra_env)
        env["SCORER_ANSWER"] = answer  # the image's baked-in answer; the Deployment's env may override it
        env.update(spec.env)
        # The runner's translation of the container's network namespace: the port it listens on
        # in its container becomes its own loopback port, and it binds loopback only.
        env["PORT"] = str(port)
        env["SCORER_HOST"] = "127.0.0.1"
        env["PYTHONUNBUFFERED"] = "1"
        argv = [self.python, "-m", "abtest_harness.scorer"]
        # The scorer must import from this checkout even when the caller's cwd is elsewhere.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        workload.handle = start_process(
            argv,
            env=env,
            log_path=log_path,
            what=f"workload {spec.name} (container port {listen}) on 127.0.0.1:{port}",
        )
        workload.ports = {listen: port}
        workload.endpoint = ("127.0.0.1", port)
        workload.log_path = log_path

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None:
        """Wait until the readiness probe passes (ReplicaNotReady naming it otherwise, at once when
        it can never pass); a replica that lost its port to another process between choosing
        and binding it is started again on another port (up to 3 times)."""
        deadline = time.monotonic() + timeout
        for attempt in range(_BIND_ATTEMPTS):
            try:
                self._wait_ready(workload, max(deadline - time.monotonic(), 0.1), timeout)
                return
            except _PortTaken:
                if attempt == _BIND_ATTEMPTS - 1:
                    raise HarnessError(
                        f"workload {workload.spec.name} could not bind a loopback port in {_BIND_ATTEMPTS} tries"
                    ) from None
                log.info("workload %s lost its port to another process; starting it again", workload.spec.name)
                self._launch(workload)

    def _wait_ready(self, workload: RunningWorkload, timeout: float, full_timeout: float) -> None:
        process = workload.handle
        assert isinstance(process, subprocess.Popen)
        spec = workload.spec
        started = time.monotonic()
        probe = spec.probe
        listen = next(iter(workload.ports))
        if probe is None:
            probe = Probe("tcpSocket", listen)
            what = f"container port {listen} to accept connections (no readinessProbe)"
        else:
            what = probe.describe(spec)
        number = spec.port_number(probe.port)

        def never(seen: str) -> ReplicaNotReady:
            return ReplicaNotReady(
                spec, what, seen, final=True, waited=time.monotonic() - started, timeout=full_timeout
            )

        if number is None:
            declared = ", ".join(f"{n} ({p})" for n, p in sorted(spec.ports.items())) or "none"
            raise never(f"the container declares no port named {probe.port!r} (named ports: {declared})")
        address = workload.address(number)
        if address is None:
            raise never(
                f"nothing listens on container port {number}: the scorer listens on {listen} "
                "(its PORT; 5001 when unset)"
            )
        host, port = address
        seen = {"last": "nothing yet"}

        def alive() -> None:
            code = process.poll()
            if code is not None:
                text = tail(workload.log_path) if workload.log_path else ""
                if "Address already in use" in text:
                    raise _PortTaken()
                raise ReplicaDied(
                    spec, code, tail(workload.log_path, 10) if workload.log_path else "", "before it was ready"
                )

        def ready() -> bool:
            alive()
            if probe.kind == "tcpSocket":
                passed, seen["last"] = probe_tcp(host, port)
                return passed
            passed, seen["last"] = probe_http(host, port, probe.path, probe.headers)
            if not passed and seen["last"].startswith("HTTP 404"):
                # The sample scorer's routes are fixed: a path it answers 404 to stays a 404.
                raise never(f"{seen['last']}: the sample scorer serves /healthz and /score")
            return passed

        try:
            wait_until(
                ready,
                what=f"{spec.name}: {what}",
                timeout=timeout,
                interval=0.02,
                max_interval=0.1,
                transient=HEALTH_TRANSIENT,
                describe=lambda _: seen["last"],
            )
        except WaitTimeout as exc:
            raise ReplicaNotReady(
                spec, what, exc.last_seen, final=False, waited=time.monotonic() - started, timeout=full_timeout
            ) from None

    def exit_code(self, workload: RunningWorkload) -> int | None:
        process = workload.handle
        return process.poll() if isinstance(process, subprocess.Popen) else None

    def stop(self, workload: RunningWorkload) -> None:
        process = workload.handle
        if isinstance(process, subprocess.Popen):
            stop_process(process, f"workload {workload.spec.name}")
        with self._lock:
            self._running.pop(id(workload), None)

    def logs(self, workload: RunningWorkload) -> str:
        if workload.log_path is None:
            return ""
        try:
            return workload.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop every replica this runner started and still runs; remove the log directory
        it created itself (one passed in is the caller's). Safe to call twice."""
        with self._lock:
            running = list(self._running.values())
        for workload in running:
            self.stop(workload)
        if self._own_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)


# --------------------------------------------------------------------------- Deployments -> specs


def _container_ports(
    label: str, ports: Sequence[Mapping[str, Any]], probe: Mapping[str, Any]
) -> tuple[int, str | None, dict[str, int]]:
    """(served containerPort, its name, every named port) of the one container.

    A replica serves one port: the one its readiness probe polls (by name or number) when it
    declares it, else the first declared port. All names are kept, so a Service whose named
    targetPort is the container's second port still finds its endpoints.
    """
    named: dict[str, int] = {}
    numbers: list[tuple[int, str | None]] = []
    for i, port in enumerate(ports):
        number = port.get("containerPort", 0)
        if not isinstance(number, int) or isinstance(number, bool):
            raise ConfigError(
                label,
                f"spec.template.spec.containers[0].ports[{i}].containerPort",
                f"must be a port number, got {number!r}",
            )
        name = port.get("name")
        if name:
            named[str(name)] = number
        numbers.append((number, str(name) if name else None))
    if not numbers:
        return 0, None, named
    wanted = probe.get("port")
    for number, name in numbers:
        if wanted is not None and (wanted == name or wanted == number):
            return number, name, named
    return numbers[0][0], numbers[0][1], named


_PROBE_FIELD = "spec.template.spec.containers[0].readinessProbe"


def _probe(label: str, raw: Any) -> Probe | None:
    """The readinessProbe as a Probe; a kind the runners cannot check is an UnsupportedField."""
    if not raw:
        return None
    if not isinstance(raw, Mapping):
        raise ConfigError(label, _PROBE_FIELD, f"must be a mapping, got {raw!r}")
    for kind in ("exec", "grpc"):
        if kind in raw:
            raise UnsupportedField(
                label,
                f"{_PROBE_FIELD}.{kind}",
                "the local runners check httpGet and tcpSocket readiness probes only",
            )
    if "tcpSocket" in raw:
        port = (raw.get("tcpSocket") or {}).get("port")
        if port is None:
            raise ConfigError(label, f"{_PROBE_FIELD}.tcpSocket.port", "missing")
        return Probe("tcpSocket", port)
    get = raw.get("httpGet")
    if not isinstance(get, Mapping):
        raise ConfigError(label, _PROBE_FIELD, "has no httpGet or tcpSocket handler")
    if "port" not in get:
        raise ConfigError(label, f"{_PROBE_FIELD}.httpGet.port", "missing (Kubernetes requires it)")
    if str(get.get("scheme", "HTTP")).upper() != "HTTP":
        raise UnsupportedField(label, f"{_PROBE_FIELD}.httpGet.scheme", "only HTTP probes are checked locally")
    if get.get("host"):
        raise UnsupportedField(
            label, f"{_PROBE_FIELD}.httpGet.host", "a probe of another host than the pod is not checked locally"
        )
    headers = tuple((str(h.get("name")), str(h.get("value", ""))) for h in get.get("httpHeaders") or [])
    path = str(get.get("path") or "/")
    return Probe("httpGet", get["port"], path if path.startswith("/") else "/" + path, headers)


def _strings(label: str, container: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = container.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise ConfigError(label, f"spec.template.spec.containers[0].{key}", f"must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def specs_from_objects(objects: Sequence[Mapping[str, Any]]) -> list[WorkloadSpec]:
    """One WorkloadSpec per replica of every Deployment in `objects`.

    Reads what decides routing and answers: replicas, pod labels, the single container's
    image, command, args, env, ports (see :func:`_container_ports`) and readinessProbe
    (httpGet or tcpSocket); ``replicas: null`` is 1, as Kubernetes defaults it. Runtime
    fields (resources, securityContext, imagePullPolicy, probe timings) do not change where a
    request goes and are not read; an exec or grpc probe, ``envFrom``, an
    ``env`` entry with ``valueFrom`` or a second container is an UnsupportedField.
    """
    specs: list[WorkloadSpec] = []
    for obj in objects:
        if not isinstance(obj, Mapping) or obj.get("kind") != "Deployment":
            continue
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        label = f"Deployment {namespace}/{name}"
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas", 1)
        replicas = 1 if replicas is None else replicas  # Kubernetes defaults a null replicas to 1
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ConfigError(label, "spec.replicas", f"must be a whole number >= 0, got {replicas!r}")
        template = spec.get("template") or {}
        labels = {str(k): str(v) for k, v in ((template.get("metadata") or {}).get("labels") or {}).items()}
        containers = (template.get("spec") or {}).get("containers") or []
        if len(containers) != 1:
            raise UnsupportedField(
                label,
                "spec.template.spec.containers",
                f"the local mesh runs exactly one container per pod, found {len(containers)}",
            )
        container = containers[0]
        image = container.get("image")
        if not isinstance(image, str) or not image:
            raise ConfigError(label, IMAGE_FIELD, "missing")
        if container.get("envFrom"):
            raise UnsupportedField(
                label,
                "spec.template.spec.containers[0].envFrom",
                "environment from ConfigMaps/Secrets is not resolved locally (it could set "
                "MODEL_VERSION or the answer); list the variables under env",
            )
        env: dict[str, str] = {}
        for i, item in enumerate(container.get("env") or []):
            if "valueFrom" in item:
                raise UnsupportedField(
                    label,
                    f"spec.template.spec.containers[0].env[{i}].valueFrom",
                    "only literal values are supported locally",
                )
            env[str(item.get("name"))] = str(item.get("value", ""))
        readiness = _probe(label, container.get("readinessProbe"))
        probe = {"port": readiness.port} if readiness is not None else {}
        health = readiness.path if readiness is not None and readiness.kind == "httpGet" else "/healthz"
        container_port, port_name, named = _container_ports(label, container.get("ports") or [], probe)
        declared = tuple(
            p["containerPort"] for p in container.get("ports") or [] if isinstance(p.get("containerPort"), int)
        )
        command, args = (_strings(label, container, key) for key in ("command", "args"))
        for replica in range(replicas):
            specs.append(
                WorkloadSpec(
                    namespace=namespace,
                    deployment=name,
                    replica=replica,
                    image=image,
                    env=MappingProxyType(dict(env)),
                    labels=MappingProxyType(dict(labels)),
                    container_port=container_port,
                    port_name=port_name,
                    health_path=health,
                    ports=MappingProxyType(named),
                    probe=readiness,
                    declared_ports=declared,
                    command=command,
                    args=args,
                )
            )
    return specs


# --------------------------------------------------------------------------- pods -> endpoint labels


def endpoint_labels_of_pods(pods: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """``"podIP:containerPort"`` -> pod labels, for every Ready pod with an IP, as endpoints list them.

    For a cluster backend: the gateway reports the endpoint it chose as ``podIP:port``, where
    the port is the container port a Service's targetPort reaches; every declared port of
    every container is listed. Pods that are not Ready get no endpoints, so they are left out.
    """
    labels: dict[str, dict[str, str]] = {}
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        if not ip or not ready or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        pod_labels = {str(k): str(v) for k, v in ((pod.get("metadata") or {}).get("labels") or {}).items()}
        for container in (pod.get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                number = port.get("containerPort")
                if isinstance(number, int) and (port.get("protocol") or "TCP") == "TCP":
                    labels[f"{ip}:{number}"] = dict(pod_labels)
    return labels
