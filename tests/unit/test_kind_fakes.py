"""The fake kind keeps the real one's output streams, so the contract tests cannot lean on a difference.

kind writes progress through its logger to stderr and keeps stdout for what callers capture:
``kind export logs`` prints only the directory there ("the path is the output of this command to
be captured by calling tools", sigs.k8s.io/kind pkg/cmd/kind/export/logs/logs.go) and
``kind load docker-image`` prints nothing there (pkg/cmd/kind/load/docker-image/docker-image.go).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from abtest_harness import proc
from tests.unit.fakes import install_fake_tools


def _run_fake_kind(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    bin_dir = install_fake_tools(tmp_path / "bin")
    state_dir = tmp_path / "tools"
    state_dir.mkdir(exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps({"clusters": ["abtest"]}))
    return proc.run(
        [str(bin_dir / "kind"), *argv], timeout=30, env={"FAKE_TOOLS_DIR": str(state_dir)}, check=False
    )


def test_fake_kind_export_logs_prints_only_the_directory_on_stdout(tmp_path: Path) -> None:
    target = tmp_path / "kind-logs"
    done = _run_fake_kind(tmp_path, "export", "logs", str(target), "--name", "abtest")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{target}\n", f"stdout must be the directory alone, as kind prints it: {done.stdout!r}"
    assert 'Exporting logs for cluster "abtest"' in done.stderr, "kind logs the message to stderr"
    assert target.is_dir()


def test_fake_kind_load_docker_image_keeps_stdout_empty(tmp_path: Path) -> None:
    done = _run_fake_kind(tmp_path, "load", "docker-image", "abtest/scorer:a-0123", "--name", "abtest")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "", f"kind logs load progress to stderr only, got stdout {done.stdout!r}"
    assert "not yet present on node" in done.stderr
