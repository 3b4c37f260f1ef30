"""Run Deployment replicas as Docker containers of their real images (``--workloads=docker``).

Each replica is one container of the Deployment's image with the Deployment's environment.
Its port is published on 127.0.0.1 only, on a port Docker picks, so nothing is exposed beyond
the machine and parallel runs never collide. Every container carries two labels: the
``app.kubernetes.io/managed-by=abtest-harness`` of everything the harness creates, and
``abtest-harness/run-id=<run id>``; teardown removes exactly the containers of its run id,
and :func:`reap` finds what a killed run left behind.

>>> with DockerRunner() as runner:                                    # doctest: +SKIP
...     workload = runner.start(spec)
...     runner.wait_ready(workload, timeout=30)
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
from types import TracebackType

import docker
import docker.errors
from docker.models.containers import Container

from harness.errors import HarnessError, WaitTimeout
from harness.images import docker_client
from harness.mesh.workloads import RunningWorkload, WorkloadSpec, wait_http_ok
from harness.signals import teardown_on_sigterm
from harness.wait import wait_until

__all__ = [
    "MANAGED_BY_LABEL",
    "RUN_ID_LABEL",
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


class ImageNotPresent(HarnessError):
    """A workload's image is not in the local image store (nothing is pulled)."""


class ContainerFailed(HarnessError):
    """A workload's container exited or could not start; the message ends with its logs."""


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

    # -- WorkloadRunner --------------------------------------------------------------------------

    def start(self, spec: WorkloadSpec) -> RunningWorkload:
        """Create and start the replica's container; returns once Docker has published its port."""
        if self._closed:
            raise HarnessError(f"DockerRunner {self.run_id} is closed")
        self._require_image(spec.image)
        name = self._container_name(spec)
        port_key = f"{spec.container_port}/tcp"
        labels = {
            **{str(k): str(v) for k, v in spec.labels.items()},
            MANAGED_BY_LABEL: MANAGED_BY,
            RUN_ID_LABEL: self.run_id,
            _WORKLOAD_LABEL: f"{spec.namespace}/{spec.deployment}/{spec.replica}",
            _CREATOR_PID_LABEL: str(os.getpid()),
        }
        _log.info("docker run %s for %s as %s", spec.image, spec.name, name)
        try:
            container = self._client.containers.run(
                spec.image,
                name=name,
                detach=True,
                environment={str(k): str(v) for k, v in spec.env.items()},
                labels=labels,
                # Loopback only, on a port Docker picks: never reachable from other machines.
                ports={port_key: ("127.0.0.1", None)},
            )
        except docker.errors.APIError as exc:
            self._remove_by_name(name)  # created but not started (e.g. a bad env) must not linger
            raise ContainerFailed(f"cannot start {name} from {spec.image}: {exc.explanation or exc}") from exc
        try:
            host_port = self._published_port(container, port_key)
        except BaseException:
            self._remove(container)
            raise
        workload = RunningWorkload(spec=spec, endpoint=("127.0.0.1", host_port), handle=container.id)
        with self._lock:
            self._containers[id(workload)] = (workload, container)
        return workload

    def wait_ready(self, workload: RunningWorkload, timeout: float) -> None:
        """Poll the spec's health path (``/healthz``) through the published port until it answers 200.

        A container that exits meanwhile fails at once (ContainerFailed with its logs) rather
        than at the deadline; a WaitTimeout carries the container's logs as a note.
        """
        container = self._container(workload)
        host, port = workload.endpoint

        def alive() -> None:
            # Asking Docker is no transient matter: a container it no longer knows, or a daemon
            # error, cannot turn into a ready replica by waiting.
            try:
                container.reload()
            except docker.errors.NotFound:
                raise ContainerFailed(f"container {container.name} vanished before it was ready") from None
            except docker.errors.APIError as exc:
                raise ContainerFailed(f"cannot inspect container {container.name}: {exc}") from exc
            state = container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead"):
                raise ContainerFailed(
                    f"container {container.name} exited with {state.get('ExitCode')} before it was ready"
                    f"{self._logs_note(container)}"
                )

        try:
            wait_http_ok(
                f"http://{host}:{port}{workload.spec.health_path}",
                alive,
                timeout,
                what=f"{workload.spec.name} ({container.name}) to answer 200 on "
                f"http://{host}:{port}{workload.spec.health_path}",
                interval=0.05,
                max_interval=0.25,
            )
        except WaitTimeout as exc:
            exc.add_note(f"container logs:{self._logs_note(container)}")
            raise

    def stop(self, workload: RunningWorkload) -> None:
        """Stop (SIGTERM, then SIGKILL after `stop_timeout`) and remove the container; idempotent."""
        with self._lock:
            entry = self._containers.pop(id(workload), None)
        if entry is None:
            return
        _, container = entry
        try:
            container.stop(timeout=max(1, round(self.stop_timeout)))
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

    def _require_image(self, image: str) -> None:
        try:
            self._client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ImageNotPresent(
                f"image {image!r} is not present locally (nothing is pulled): build the scorer "
                "images with harness.images.build_scorer_images (the docker workloads and "
                "`abtest run --workloads=docker` do) and render the stage with their refs"
            ) from None

    def _container_name(self, spec: WorkloadSpec) -> str:
        # A serial keeps names unique when a Deployment's new replica starts before the old one stops.
        raw = f"abtest-{self.run_id}-{spec.namespace}-{spec.deployment}-{spec.replica}-{next(self._serial)}"
        return "".join(c if c.isalnum() or c in "_.-" else "-" for c in raw)

    def _published_port(self, container: Container, port_key: str) -> int:
        """The host port Docker bound on 127.0.0.1; waits briefly, as it is set on start."""

        def bound() -> int | None:
            container.reload()
            if container.status in ("exited", "dead"):
                raise ContainerFailed(
                    f"container {container.name} exited at start{self._logs_note(container)}"
                )
            for binding in (container.attrs["NetworkSettings"].get("Ports") or {}).get(port_key) or []:
                if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
                    return int(binding["HostPort"])
            return None

        return wait_until(bound, what=f"Docker to publish {port_key} of {container.name}", timeout=10.0)

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
    mechanism every backend shares (:func:`harness.signals.teardown_on_sigterm`); the handler
    that was there before is restored by close(). Call it from the main thread of the program
    that owns the process lifecycle (elsewhere only the atexit part applies).
    """
    atexit.register(runner.close)
    runner._sigterm.activate()
