"""Workload runners: how a Deployment replica becomes something listening on loopback.

A runner starts one replica from a :class:`WorkloadSpec`, waits for its ``/healthz``, stops it
and returns its log. :class:`ProcessRunner` (the default of the local mesh) runs the mock
scorer as a local process, with the answer the plan bakes into the image; Docker's runner
(``harness.mesh.containers.DockerRunner``) runs the real image and follows the same protocol.
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
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

import requests

from harness.errors import ConfigError, HarnessError, UnsupportedField
from harness.plan import repository_of
from harness.wait import wait_until

if TYPE_CHECKING:
    from harness.plan import RolloutPlan

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


class _PortTaken(Exception):
    """A replica exited because its port was taken between choosing and binding it."""


@dataclass(frozen=True)
class WorkloadSpec:
    """One replica of a Deployment, as a runner needs it."""

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

    @property
    def name(self) -> str:
        """``namespace/deployment-replica``: how logs and messages name the replica."""
        return f"{self.namespace}/{self.deployment}-{self.replica}"

    def __hash__(self) -> int:  # Mappings are not hashable; the identity of a replica is enough
        return hash((self.namespace, self.deployment, self.replica, self.image, self.container_port))


@dataclass(eq=False)
class RunningWorkload:
    """A started replica and the loopback address Envoy reaches it at."""

    spec: WorkloadSpec
    endpoint: tuple[str, int]
    handle: object = None  # the runner's own (a Popen, a container id)
    log_path: Path | None = None


@runtime_checkable
class WorkloadRunner(Protocol):
    """Starts, checks and stops replicas; implemented by ProcessRunner and DockerRunner."""

    def start(self, spec: WorkloadSpec) -> RunningWorkload: ...

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None: ...

    def stop(self, workload: RunningWorkload) -> None: ...

    def logs(self, workload: RunningWorkload) -> str: ...

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
    ``harness.proc.run`` runs commands to completion, so long-running ones start here.
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


class ProcessRunner:
    """Runs each replica as ``python -m harness.scorer`` on a free loopback port.

    `plan_images` maps an image repository (``abtest/scorer-a``) to the answer that image
    gives; an image outside it has no local command and is a ConfigError naming the
    Deployment and the field.
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
        from harness.plan import load_plan

        chosen = plan if plan is not None else load_plan()
        return cls({spec.repository: spec.answer for spec in chosen.images.values()}, log_dir=log_dir)

    def answer_for(self, spec: WorkloadSpec) -> str:
        """The answer of the spec's image, or a ConfigError naming Deployment and field."""
        repository = repository_of(spec.image)
        if repository not in self.plan_images:
            known = ", ".join(sorted(self.plan_images)) or "none"
            raise ConfigError(
                f"Deployment {spec.namespace}/{spec.deployment}",
                IMAGE_FIELD,
                f"image {spec.image!r} cannot be run as a local process: its repository is not one of "
                f"the plan's images ({known}); use --workloads=docker to run real images",
            )
        return self.plan_images[repository]

    def start(self, spec: WorkloadSpec) -> RunningWorkload:
        answer = self.answer_for(spec)
        workload = RunningWorkload(spec, ("127.0.0.1", 0))
        self._launch(workload, answer)
        with self._lock:
            self._running[id(workload)] = workload
        return workload

    def _launch(self, workload: RunningWorkload, answer: str) -> None:
        spec = workload.spec
        port = free_port()
        with self._lock:
            self._serial += 1
            serial = self._serial
        log_path = self.log_dir / f"{spec.namespace}_{spec.deployment}-{spec.replica}.{serial}.log"
        env = {
            **os.environ,
            **self.extra_env,
            **spec.env,
            "PORT": str(port),
            "SCORER_HOST": "127.0.0.1",
            "SCORER_ANSWER": answer,
            "PYTHONUNBUFFERED": "1",
        }
        argv = [self.python, "-m", "harness.scorer"]
        # The scorer must import from this checkout even when the caller's cwd is elsewhere.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        workload.handle = start_process(
            argv, env=env, log_path=log_path, what=f"workload {spec.name} on 127.0.0.1:{port}"
        )
        workload.endpoint = ("127.0.0.1", port)
        workload.log_path = log_path

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None:
        """Wait for 200 on the health path; a replica that lost its port to another process
        between choosing and binding it is started again on another port (up to 3 times)."""
        deadline = time.monotonic() + timeout
        for attempt in range(_BIND_ATTEMPTS):
            try:
                self._wait_healthy(workload, max(deadline - time.monotonic(), 0.1))
                return
            except _PortTaken:
                if attempt == _BIND_ATTEMPTS - 1:
                    raise HarnessError(
                        f"workload {workload.spec.name} could not bind a loopback port "
                        f"in {_BIND_ATTEMPTS} tries"
                    ) from None
                log.info(
                    "workload %s lost its port to another process; starting it again", workload.spec.name
                )
                self._launch(workload, self.answer_for(workload.spec))

    def _wait_healthy(self, workload: RunningWorkload, timeout: float) -> None:
        process = workload.handle
        assert isinstance(process, subprocess.Popen)
        host, port = workload.endpoint
        url = f"http://{host}:{port}{workload.spec.health_path}"

        def alive() -> None:
            if process.poll() is not None:
                text = tail(workload.log_path) if workload.log_path else ""
                if "Address already in use" in text:
                    raise _PortTaken()
                raise HarnessError(
                    f"workload {workload.spec.name} exited with {process.returncode} before it was ready; "
                    f"log {workload.log_path}:\n{text}"
                )

        wait_http_ok(url, alive, timeout, what=f"{workload.spec.name} to answer 200 on {url}")

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


def specs_from_objects(objects: Sequence[Mapping[str, Any]]) -> list[WorkloadSpec]:
    """One WorkloadSpec per replica of every Deployment in `objects`.

    Reads what decides routing and answers: replicas, pod labels, the single container's
    image, env, ports (see :func:`_container_ports`) and readiness path; ``replicas: null`` is
    1, as Kubernetes defaults it. Runtime fields (resources, securityContext, imagePullPolicy,
    probe timings) do not change where a request goes and are not read; ``envFrom``, an
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
        probe = (container.get("readinessProbe") or {}).get("httpGet") or {}
        health = str(probe.get("path") or "/healthz")
        container_port, port_name, named = _container_ports(label, container.get("ports") or [], probe)
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
                )
            )
    return specs
