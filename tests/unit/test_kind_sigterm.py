"""SIGTERM during the kind backend's up(): the cluster this run created is still deleted.

A cancelled CI job sends SIGTERM; its default action ends the process without running any
``with``/``finally``, which would leak the kind cluster. The backend holds
:func:`abtest_harness.signals.teardown_on_sigterm` from up() to the end of down(), which turns it
into SystemExit(143). Tested in a child process (a signal to the pytest process itself would
hit whatever test runs), against the same fake tools and stub API as test_kind_mesh.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from abtest_harness.mesh.kind import KindIstioMesh
from tests.unit.fakes import install_fake_tools
from tests.unit.fakes.stub_kube_api import StubKubeAPI

REPO = Path(__file__).resolve().parents[2]
NAME = "abtest-sigterm"

# The child: a KindIstioMesh against the fakes whose image build announces itself on stdout
# and then blocks, so the parent can signal it in the middle of up().
CHILD = """
import json, shutil, sys, threading
from pathlib import Path

sys.path.insert(0, {repo!r})
from abtest_harness.mesh.kind import KindIstioMesh, KindTimeouts
from tests.unit.fakes.stub_kube_api import StubKubeAPI

tmp = Path(sys.argv[1])


def build(plan, **kwargs):
    print("building", flush=True)
    threading.Event().wait(60)  # bounded: the parent signals within seconds
    return {{}}


with StubKubeAPI() as api:
    (tmp / "tools" / "state.json").write_text(json.dumps({{"clusters": [], "api_server": api.url}}))
    mesh = KindIstioMesh(
        cluster_name={name!r},
        artifacts_dir=tmp / "artifacts",
        cache_dir=tmp / "cache",
        build_images=build,
        resolve_tool=lambda name: str(shutil.which(name)),
        timeouts=KindTimeouts(nodes_ready=5, istio_ready=5, command=30),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    with mesh:
        print("up returned", flush=True)
"""


def _env(tmp: Path) -> dict[str, str]:
    fakes = install_fake_tools(tmp / "bin")
    (tmp / "tools").mkdir()
    env = dict(os.environ)
    env.update(PATH=f"{fakes}{os.pathsep}{env['PATH']}", FAKE_TOOLS_DIR=str(tmp / "tools"), HOME=str(tmp / "home"))
    env.pop("KUBECONFIG", None)
    return env


def test_sigterm_mid_up_deletes_the_cluster_this_run_created(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), name=NAME))
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script; Popen to signal it mid-run
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
        cwd=REPO,
    )
    # A hung child must not hang the suite: kill it after a bound.
    guard = threading.Timer(60, child.kill)
    guard.start()
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "building", f"the child did not reach the images step: {line!r}"
        state = json.loads((tmp_path / "tools" / "state.json").read_text())
        assert state["clusters"] == [NAME], "the cluster must exist when the signal arrives"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        guard.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 143, f"SIGTERM must end the run as SystemExit(143), got {child.returncode}:\n{err}"
    assert "up returned" not in out
    state = json.loads((tmp_path / "tools" / "state.json").read_text())
    assert state["clusters"] == [], f"SIGTERM leaked the cluster:\n{err}"
    calls = [json.loads(c)["argv"] for c in (tmp_path / "tools" / "calls.jsonl").read_text().splitlines()]
    assert calls[-1][:2] == ["delete", "cluster"], f"the last command must be the delete: {calls[-1]}"
    assert not (tmp_path / "cache" / "kind" / f"{NAME}.kubeconfig").exists()


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    env = _env(tmp_path)
    for key in ("PATH", "FAKE_TOOLS_DIR", "HOME"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with StubKubeAPI() as api:
        (tmp_path / "tools" / "state.json").write_text(json.dumps({"clusters": [], "api_server": api.url}))
        yield tmp_path


def _mesh(tmp: Path, seen: dict[str, Any]) -> KindIstioMesh:
    import shutil

    def build(plan: Any, **kwargs: Any) -> dict[str, str]:
        seen["during up"] = signal.getsignal(signal.SIGTERM)
        return {}

    return KindIstioMesh(
        cluster_name=NAME,
        artifacts_dir=tmp / "artifacts",
        cache_dir=tmp / "cache",
        build_images=build,
        resolve_tool=lambda name: str(shutil.which(name)),
        progress=None,
    )


def test_the_sigterm_handler_is_installed_only_while_up_and_then_restored(fakes: Path) -> None:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        seen: dict[str, Any] = {}
        mesh = _mesh(fakes, seen)
        with mesh:
            assert callable(seen["during up"]), "up() must handle SIGTERM when no handler is set"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "down() must restore the default"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_handler_someone_else_set_is_put_back_after_down(fakes: Path) -> None:
    """abtest_harness.signals' rule: while up, SIGTERM tears down; afterwards the previous handler is back."""

    def theirs(signum: int, frame: Any) -> None:
        pass

    previous = signal.signal(signal.SIGTERM, theirs)
    try:
        seen: dict[str, Any] = {}
        with _mesh(fakes, seen):
            pass
        assert seen["during up"] is not theirs, "while up, SIGTERM must tear the mesh down"
        assert signal.getsignal(signal.SIGTERM) is theirs, "down() must put the previous handler back"
    finally:
        signal.signal(signal.SIGTERM, previous)
