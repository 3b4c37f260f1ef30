"""Run Deployment replicas as Docker containers of their real images (``--workloads=docker``).

Each replica is one container of the Deployment's image, with its command, args and env
over the image's, as the kubelet runs it. Every declared containerPort (and a probe's
numbered port) is published on 127.0.0.1 only, on a port Docker picks, so nothing is exposed
beyond the machine and parallel runs never collide. Images are never pulled. Every container carries two labels: the
``app.kubernetes.io/managed-by=abtest-harness`` of everything the harness creates, and
``abtest-harness/run-id=<run id>``; teardown removes exactly the containers of its run id,
and :func:`reap` finds what a killed run left behind.

>>> with DockerRunner() as runner:                                    # doctest: +SKIP
...     workload = runner.start(spec)
...     runner.wait_ready(workload, timeout=30)                       # the readinessProbe
...     host, port = workload.endpoint                                 # ("127.0.0.1", 49153)
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from types import TracebackType

import docker
import docker.errors
from docker.models.containers import Container

from abtest_harness.errors import HarnessError, WaitTimeout
from abtest_harness.images import docker_client
from abtest_harness.mesh.workloads import (
    HEALTH_TRANSIENT,
    IMAGE_FIELD,
    ReplicaDied,
    ReplicaNotReady,
    RunningWorkload,
    WorkloadFailed,
    WorkloadSpec,
    probe_http,
    probe_tcp,
)
from abtest_harness.signals import shielded, teardown_on_sigterm
from abtest_harness.wait import wait_until

__all__ = [
    "MANAGED_BY_LABEL",
    "RUN_ID_LABEL",
    "ContainerExited",
    "ContainerFailed",
    "DockerRunner",
    "ImageNotPresent",
    "new_run_id",
    "reap",
    "register_cleanup",
]

_log = logging.getLogger(__name__)

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "abtest-harness"
RUN_ID_LABEL = "abtest-harness/run-id"
# Which Deployment replica a container is, so a person reading `docker ps` can tell.
_WORKLOAD_LABEL = "abtest-harness/workload"
# The process that created it: a container whose creator is gone on this host is an orphan.
_CREATOR_PID_LABEL = "abtest-harness/creator-pid"
_LOG_TAIL_LINES = 40
#: A label only the sample scorer's image carries (images/scorer/Dockerfile).
SCORER_IMAGE_LABEL = "abtest-harness/answer"


class ImageNotPresent(HarnessError):
    """A workload's image is not in the local image store (nothing is pulled)."""


class ContainerFailed(WorkloadFailed):
    """A workload's container could not start or vanished; the message names it."""


class ContainerExited(ReplicaDied, ContainerFailed):
    """A workload's container exited: a ReplicaDied (exit code, last log lines) and a ContainerFailed."""


def _listening_ports(container: Container) -> set[int] | None:
    """The TCP ports the container listens on, read from its network namespace on this host
    (``/proc/<pid>/net/tcp`` and ``tcp6``); None where that cannot be read (a remote engine)."""
    pid = (container.attrs.get("State") or {}).get("Pid")
    if not pid:
        return None
    found: set[int] = set()
    readable = False
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found if readable else None


def new_run_id() -> str:
    """A run id that sorts by time and is unique on a machine: ``20261126-100501-3fa2c1``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class DockerRunner:
    """The WorkloadRunner that runs each replica as a Docker container.

    `run_id` labels every container (a fresh one by default); `client` defaults to
    ``docker.from_env()`` (DockerUnavailable when the daemon does not answer); `stop_timeout`
    is how long :meth:`stop` waits after SIGTERM before Docker kills the container.
    :meth:`close` removes every container of the run id, is safe to call twice, and runs
    on ``with`` exit; :func:`register_cleanup` also ties it to interpreter exit and SIGTERM.
    """

    def __init__(
        self,
        *,
        run_id: str | None = None,
        client: docker.DockerClient | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        self.run_id = run_id or new_run_id()
        self._client = client if client is not None else docker_client()
        self.stop_timeout = stop_timeout
        self._containers: dict[int, tuple[RunningWorkload, Container]] = {}
        # Logs of stopped replicas, keyed like _containers; the workload is kept so its id stays unique.
        self._final_logs: dict[int, tuple[RunningWorkload, str]] = {}
        self._serial = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False
        self._sigterm = teardown_on_sigterm()  # activated by register_cleanup()
        self._ready: set[int] = set()  # ids of workloads whose readiness passed

    # -- WorkloadRunner --------------------------------------------------------------------------

    def start(self, spec: WorkloadSpec) -> RunningWorkload:
        """Create and start the replica's container; returns once Docker has published its ports.

        The container runs as the kubelet would run it: the image with the Deployment's
        ``command`` as entrypoint and ``args`` as command (each only where given), the
        Deployment's env over the image's, and every declared containerPort (and a probe's
        numbered port) published on 127.0.0.1 at a port Docker picks.
        """
        if self._closed:
            raise HarnessError(f"DockerRunner {self.run_id} is closed")
        self._require_image(spec)
        name = self._container_name(spec)
        container_ports = spec.published_ports()
        labels = {
            **{str(k): str(v) for k, v in spec.labels.items()},
            MANAGED_BY_LABEL: MANAGED_BY,
            RUN_ID_LABEL: self.run_id,
            _WORKLOAD_LABEL: f"{spec.namespace}/{spec.deployment}/{spec.replica}",
            _CREATOR_PID_LABEL: str(os.getpid()),
        }
        options: dict[str, object] = {}
        if spec.command is not None:
            # Kubernetes: command replaces the image's ENTRYPOINT and, without args, its CMD too.
            options["entrypoint"] = list(spec.command)
            options["command"] = list(spec.args) if spec.args is not None else []
        elif spec.args is not None:
            options["command"] = list(spec.args)
        _log.info("docker run %s for %s as %s", spec.image, spec.name, name)
        try:
            container = self._client.containers.run(
                spec.image,
                name=name,
                detach=True,
                environment={str(k): str(v) for k, v in spec.env.items()},
                labels=labels,
                # Loopback only, on ports Docker picks: never reachable from other machines.
                ports={f"{n}/tcp": ("127.0.0.1", None) for n in container_ports},
                **options,
            )
        except docker.errors.APIError as exc:
            self._remove_by_name(name)  # created but not started (e.g. a bad env) must not linger
            raise ContainerFailed(
                spec, f"cannot start {name} from {spec.image} for {spec.name}: {exc.explanation or exc}"
            ) from exc
        try:
            published = self._published_ports(container, spec, container_ports)
        except BaseException:
            self._remove(container)
            raise
        served = published.get(spec.container_port) or (next(iter(published.values())) if published else 0)
        workload = RunningWorkload(
            spec=spec, endpoint=("127.0.0.1", served), handle=container.id, ports=dict(published)
        )
        with self._lock:
            self._containers[id(workload)] = (workload, container)
        return workload

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None:
        """Poll the readinessProbe (httpGet path and port, or tcpSocket) until it passes.

        Without a probe the replica is ready once its container runs, as the kubelet decides.
        A probe port name the container does not declare can never pass and fails at once; a
        container that exits meanwhile fails at once with its exit code and logs (ReplicaDied);
        otherwise ReplicaNotReady after `timeout`, naming the probe, the last answer and, where
        this host can read the container's sockets, the ports it listens on.
        """
        container = self._container(workload)
        spec = workload.spec
        started = time.monotonic()

        def alive() -> None:
            # Asking Docker is no transient matter: a container it no longer knows, or a daemon
            # error, cannot turn into a ready replica by waiting.
            try:
                container.reload()
            except docker.errors.NotFound:
                raise ContainerFailed(
                    spec, f"container {container.name} of {spec.name} vanished before it was ready"
                ) from None
            except docker.errors.APIError as exc:
                raise ContainerFailed(spec, f"cannot inspect container {container.name}: {exc}") from exc
            state = container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead"):
                raise ContainerExited(
                    spec, state.get("ExitCode"), self._log_tail(container), f"before it was ready ({container.name})"
                )

        probe = spec.probe
        if probe is None:
            alive()
            self._mark_ready(workload)
            return
        what = probe.describe(spec)
        number = spec.port_number(probe.port)
        if number is None:
            declared = ", ".join(f"{n} ({p})" for n, p in sorted(spec.ports.items())) or "none"
            raise ReplicaNotReady(
                spec,
                what,
                f"the container declares no port named {probe.port!r} (named ports: {declared})",
                final=True,
                waited=0.0,
                timeout=timeout,
            )
        scorer_port = self._scorer_listen_port(spec)
        if scorer_port is not None and number != scorer_port:
            # The sample scorer's image listens on its PORT and nothing else: known, not guessed.
            raise ReplicaNotReady(
                spec,
                what,
                f"nothing listens on container port {number}: the scorer image listens on {scorer_port} "
                "(its PORT)",
                final=True,
                waited=time.monotonic() - started,
                timeout=timeout,
            )
        address = workload.address(number)
        assert address is not None, "every probe port is published"
        host, port = address
        seen = {"last": "nothing yet"}

        def ready() -> bool:
            alive()
            try:
                if probe.kind == "tcpSocket":
                    listening = _listening_ports(container)
                    if listening is not None:  # docker-proxy accepts on the host whatever listens inside
                        seen["last"] = f"listening on {sorted(listening) or 'no port'}"
                        return number in listening
                    passed, seen["last"] = probe_tcp(host, port)
                    return passed
                passed, seen["last"] = probe_http(host, port, probe.path, probe.headers)
                if not passed and scorer_port is not None and seen["last"].startswith("HTTP 404"):
                    raise ReplicaNotReady(
                        spec,
                        what,
                        f"{seen['last']}: the sample scorer serves /healthz and /score",
                        final=True,
                        waited=time.monotonic() - started,
                        timeout=timeout,
                    )
                return passed
            except HEALTH_TRANSIENT as exc:
                listening = _listening_ports(container)
                where = f"; the container listens on {sorted(listening) or 'no port'}" if listening is not None else ""
                seen["last"] = f"{type(exc).__name__}: {exc}{where}"
                raise

        try:
            wait_until(
                ready,
                what=f"{spec.name} ({container.name}): {what}",
                timeout=timeout,
                interval=0.05,
                max_interval=0.25,
                transient=HEALTH_TRANSIENT,
            )
        except WaitTimeout:
            error = ReplicaNotReady(
                spec, what, seen["last"], final=False, waited=time.monotonic() - started, timeout=timeout
            )
            error.add_note(f"container logs:{self._logs_note(container)}")
            raise error from None
        self._mark_ready(workload)

    def _mark_ready(self, workload: RunningWorkload) -> None:
        with self._lock:
            self._ready.add(id(workload))

    def _scorer_listen_port(self, spec: WorkloadSpec) -> int | None:
        """The port a sample scorer image listens on (its PORT: the Deployment's, else the
        image's); None for any other image, whose ports the harness cannot know in advance."""
        try:
            config = self._client.images.get(spec.image).attrs.get("Config") or {}
        except docker.errors.APIError:
            return None
        if SCORER_IMAGE_LABEL not in (config.get("Labels") or {}):
            return None
        image_env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        raw = spec.env.get("PORT", image_env.get("PORT", "5001"))
        return int(raw) if raw.isdigit() else None

    def exit_code(self, workload: RunningWorkload) -> int | None:
        """None while the container runs; its exit code once it has exited (-1 if Docker lost it)."""
        with self._lock:
            entry = self._containers.get(id(workload))
        if entry is None:
            return None
        container = entry[1]
        try:
            container.reload()
        except docker.errors.NotFound:
            return -1
        except docker.errors.APIError:
            return None  # cannot tell; the next check asks again
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead"):
            return int(state.get("ExitCode", -1))
        return None

    def stop(self, workload: RunningWorkload) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout`) and remove the container; idempotent.

        A replica that never became ready serves nothing to drain and may not handle SIGTERM
        yet (a process that is PID 1 ignores it until it installs a handler): it is killed.
        """
        with self._lock:
            entry = self._containers.pop(id(workload), None)
            was_ready = id(workload) in self._ready
            self._ready.discard(id(workload))
        if entry is None:
            return
        _, container = entry
        try:
            container.stop(timeout=max(1, round(self.stop_timeout)) if was_ready else 0)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            _log.warning("stopping %s: %s; removing it by force", container.name, exc)
        self._final_logs[id(workload)] = (workload, self._read_logs(container))
        self._remove(container)

    def logs(self, workload: RunningWorkload) -> str:
        """The container's stdout and stderr (kept after :meth:`stop` for failure dumps)."""
        with self._lock:
            entry = self._containers.get(id(workload))
        if entry is not None:
            return self._read_logs(entry[1])
        stopped = self._final_logs.get(id(workload))
        return stopped[1] if stopped is not None else ""

    def close(self) -> None:
        """Remove every container of this run id (also ones this object lost track of); idempotent."""
        self._closed = True
        try:
            with shielded():  # a SIGTERM now waits until every container is removed
                with self._lock:
                    self._containers.clear()
                reap(self.run_id, client=self._client)
        finally:
            self._sigterm.deactivate()

    def __enter__(self) -> DockerRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _require_image(self, spec: WorkloadSpec) -> None:
        try:
            self._client.images.get(spec.image)
        except docker.errors.ImageNotFound:
            raise ImageNotPresent(
                f"Deployment {spec.namespace}/{spec.deployment}: {IMAGE_FIELD}: image {spec.image!r} is not "
                "present in the local Docker engine (nothing is pulled): build or pull it first (`docker "
                "pull`, `docker build`); the sample's scorer images are built by "
                "abtest_harness.images.build_scorer_images, as `abtest run --workloads=docker` does"
            ) from None

    def _container_name(self, spec: WorkloadSpec) -> str:
        # A serial keeps names unique when a Deployment's new replica starts before the old one stops.
        raw = f"abtest-{self.run_id}-{spec.namespace}-{spec.deployment}-{spec.replica}-{next(self._serial)}"
        return "".join(c if c.isalnum() or c in "_.-" else "-" for c in raw)

    def _published_ports(self, container: Container, spec: WorkloadSpec, numbers: tuple[int, ...]) -> dict[int, int]:
        """Container port -> the host port Docker bound on 127.0.0.1; waits briefly, as they are set on start."""

        def bound() -> dict[int, int] | None:
            container.reload()
            if container.status in ("exited", "dead"):
                state = container.attrs.get("State", {})
                raise ContainerExited(
                    spec, state.get("ExitCode"), self._log_tail(container), f"at start ({container.name})"
                )
            found: dict[int, int] = {}
            for number in numbers:
                for binding in (container.attrs["NetworkSettings"].get("Ports") or {}).get(f"{number}/tcp") or []:
                    if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
                        found[number] = int(binding["HostPort"])
            return found if len(found) == len(numbers) else None

        if not numbers:
            return {}
        return wait_until(bound, what=f"Docker to publish ports {list(numbers)} of {container.name}", timeout=10.0)

    def _container(self, workload: RunningWorkload) -> Container:
        with self._lock:
            entry = self._containers.get(id(workload))
        if entry is None:
            raise HarnessError(f"workload {workload.spec.name} is not running in run {self.run_id}")
        return entry[1]

    def _read_logs(self, container: Container) -> str:
        try:
            data = container.logs(stdout=True, stderr=True)
        except docker.errors.APIError as exc:
            return f"(logs unavailable: {exc})"
        return data.decode(errors="replace") if isinstance(data, bytes) else str(data)

    def _log_tail(self, container: Container, lines: int = 10) -> str:
        return "\n".join(self._read_logs(container).rstrip().splitlines()[-lines:])

    def _logs_note(self, container: Container) -> str:
        lines = self._read_logs(container).rstrip().splitlines()[-_LOG_TAIL_LINES:]
        return ("\n  " + "\n  ".join(lines)) if lines else " (no output)"

    def _remove(self, container: Container) -> None:
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            pass

    def _remove_by_name(self, name: str) -> None:
        try:
            self._client.containers.get(name).remove(force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            _log.warning("removing %s: %s", name, exc)


def reap(
    run_id: str | None = None,
    *,
    client: docker.DockerClient | None = None,
    only_orphans: bool = False,
) -> list[str]:
    """Remove the harness's containers: those of `run_id`, or with None every one it labelled.

    Returns the names removed; safe to call any number of times. `only_orphans` keeps the
    containers whose creating process still runs on this machine, so a run can clear what
    killed runs left without touching a run going on beside it.
    """
    client = client if client is not None else docker_client()
    labels = [f"{MANAGED_BY_LABEL}={MANAGED_BY}"]
    if run_id is not None:
        labels.append(f"{RUN_ID_LABEL}={run_id}")
    removed: list[str] = []
    for container in client.containers.list(all=True, filters={"label": labels}):
        if only_orphans and _creator_alive(container):
            continue
        try:
            container.remove(force=True, v=True)
        except docker.errors.NotFound:
            continue  # removed concurrently (the other half of a double teardown)
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc):
                continue
            raise
        removed.append(str(container.name))
    if removed:
        whose = run_id or "every run"
        _log.info("removed %d container(s) of %s: %s", len(removed), whose, ", ".join(removed))
    return removed


def _creator_alive(container: Container) -> bool:
    raw = (container.labels or {}).get(_CREATOR_PID_LABEL, "")
    if not raw.isdigit():
        return False
    try:
        os.kill(int(raw), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def register_cleanup(runner: DockerRunner) -> None:
    """Make sure `runner` is closed when the process ends: normal exit, Ctrl-C, or SIGTERM.

    Ctrl-C unwinds as KeyboardInterrupt (``with`` blocks and atexit run). SIGTERM unwinds as
    ``SystemExit(143)`` from now until :meth:`DockerRunner.close` has finished, through the one
    mechanism every backend shares (:func:`abtest_harness.signals.teardown_on_sigterm`); the handler
    that was there before is restored by close(). Call it from the main thread of the program
    that owns the process lifecycle (elsewhere only the atexit part applies).
    """
    atexit.register(runner.close)
    runner._sigterm.activate()
