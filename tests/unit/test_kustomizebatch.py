"""abtest-kustomize: ``kubectl kustomize`` for several directories in one process.

The claim is that it prints what the pinned kubectl prints. It is checked against kubectl
itself on every kustomization of this repository (and on one that fails), and the harness
is shown to use it only where that claim holds: the same kustomize release, no error, and
inputs unchanged since it ran. kubectl's runs are counted by a stand-in that appends a line
per call and then runs the real one.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from abtest_harness import kustomizebatch, proc, rendercache
from abtest_harness.errors import CommandError
from abtest_harness.render import render, render_many
from abtest_harness.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def _batch() -> str:
    found = kustomizebatch.find() if os.environ.get(kustomizebatch.ENV) != "off" else None
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("abtest-kustomize must be built in CI (make kustomize-batch)")
        pytest.skip("abtest-kustomize not built (make kustomize-batch)")
    return found


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport os, subprocess, sys\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def kubectl_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A counting kubectl in front of the real one; the render cache off (every stage renders)."""
    real = proc.tool("kubectl")
    calls = tmp_path / "kubectl-calls"
    calls.write_text("")
    script = _script(tmp_path / "bin" / "kubectl", f"""
        with open({str(calls)!r}, "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        os.execv({real!r}, [{real!r}, *sys.argv[1:]])
    """)
    original = proc.tool
    monkeypatch.setattr(proc, "tool", lambda name: str(script) if name == "kubectl" else original(name))
    monkeypatch.setenv(rendercache.CACHE_ENV, "off")
    return calls


def _kustomize_runs(calls: Path) -> list[str]:
    return [line.split()[-1] for line in calls.read_text().splitlines() if line.startswith("kustomize ")]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    copy = tmp_path / "manifests"
    for part in ("base", "stages"):
        shutil.copytree(ROOT / "manifests" / part, copy / part)
    shutil.copy(ROOT / "manifests" / "rollout.yaml", copy / "rollout.yaml")
    return copy


def _kustomizations() -> list[Path]:
    skip = {".venv", ".cache", ".git", "node_modules"}
    found = [p.parent for p in ROOT.rglob("kustomization.yaml") if not skip & set(p.relative_to(ROOT).parts)]
    return sorted(found)


def test_it_prints_what_kubectl_prints_for_every_kustomization_here(tmp_path: Path) -> None:
    batch = _batch()
    kubectl = proc.tool("kubectl")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "kustomization.yaml").write_text("resources: [../nowhere]\n")
    dirs = [*_kustomizations(), broken]
    assert len(dirs) >= 8, dirs  # the sample's base and six stages, at least
    results = json.loads(proc.run([batch, *map(str, dirs)], timeout=120).stdout)
    assert [r["dir"] for r in results] == [str(d) for d in dirs]
    for directory, result in zip(dirs, results, strict=True):
        theirs = proc.run([kubectl, "kustomize", str(directory)], timeout=60, check=False)
        if directory == broken:
            assert theirs.returncode != 0 and result["error"] and not result["yaml"], result
        else:
            assert theirs.returncode == 0, theirs.stderr
            assert (result["error"], result["yaml"]) == ("", theirs.stdout), directory


def test_it_embeds_the_kustomize_release_of_the_pinned_kubectl() -> None:
    batch = _batch()
    kubectl = proc.tool("kubectl")
    theirs = json.loads(proc.run([kubectl, "version", "--client", "-o", "json"], timeout=30).stdout)
    assert proc.run([batch, "-version"], timeout=30).stdout.strip() == f"kustomize {theirs['kustomizeVersion']}"
    assert kustomizebatch.usable(batch, kubectl)


def test_render_many_renders_the_stages_in_one_batch_and_not_with_kubectl(
    kubectl_calls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kustomizebatch.ENV, _batch())
    spec = load_spec()
    together = list(render_many(spec, list(spec.stages)))
    assert _kustomize_runs(kubectl_calls) == [], "every stage came from the batch"
    monkeypatch.setenv(kustomizebatch.ENV, "off")
    assert together == [render(spec, stage) for stage in spec.stages]
    assert len(_kustomize_runs(kubectl_calls)) == len(spec.stages)


def test_a_batch_of_another_kustomize_release_is_not_used(
    kubectl_calls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _script(tmp_path / "other" / "abtest-kustomize", """
        if sys.argv[1:] == ["-version"]:
            print("kustomize v0.0.1")
        else:
            print("[]")
    """)
    monkeypatch.setenv(kustomizebatch.ENV, str(other))
    spec = load_spec()
    list(render_many(spec, list(spec.stages)))
    assert len(_kustomize_runs(kubectl_calls)) == len(spec.stages)


def test_a_directory_the_batch_fails_is_rendered_by_kubectl_with_kubectls_error(
    kubectl_calls: Path, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(kustomizebatch.ENV, _batch())
    (tree / "stages" / "Blue_50" / "kustomization.yaml").write_text("resources: [../../nowhere]\n")
    spec = load_spec(tree / "rollout.yaml")
    names = [s.name for s in spec.stages]
    got: list[str] = []
    with pytest.raises(CommandError, match="kustomize"):
        for stage, _ in zip(spec.stages, render_many(spec, list(spec.stages)), strict=True):
            got.append(stage.name)
    assert got == names[: names.index("Blue_50")]
    assert [Path(p).name for p in _kustomize_runs(kubectl_calls)] == ["Blue_50"]


def test_a_directory_changed_while_the_batch_ran_is_rendered_again(
    kubectl_calls: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _batch()
    blue_0 = tree / "stages" / "Blue_0" / "kustomization.yaml"
    changing = _script(tmp_path / "changing" / "abtest-kustomize", f"""
        done = subprocess.run([{real!r}, *sys.argv[1:]], check=True)
        if sys.argv[1:] != ["-version"]:
            with open({str(blue_0)!r}, "a") as f:
                f.write("# edited while the batch ran\\n")
    """)
    monkeypatch.setenv(kustomizebatch.ENV, str(changing))
    spec = load_spec(tree / "rollout.yaml")
    list(render_many(spec, list(spec.stages)))
    assert [Path(p).name for p in _kustomize_runs(kubectl_calls)] == ["Blue_0"]
