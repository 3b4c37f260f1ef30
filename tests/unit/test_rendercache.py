"""The render cache: an unchanged tree is not rendered again, any changed byte is.

Tool runs are counted by stand-ins that append a line to a file per call: a kubectl that
then runs the real one (so what is cached is real kustomize output), and a helm that
prints its argv.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from abtest_harness import proc, rendercache
from abtest_harness import render as render_mod
from abtest_harness.errors import CommandError
from abtest_harness.render import render, render_many
from abtest_harness.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
EXAMPLES = ROOT / "examples"


def _counting_tool(tmp_path: Path, name: str, body: str) -> tuple[Path, Path]:
    calls = tmp_path / f"{name}-calls"
    calls.write_text("")
    script = tmp_path / "bin" / name
    script.parent.mkdir(exist_ok=True)
    script.write_text(f"#!{sys.executable}\nimport os, sys\n"
                      f"with open({str(calls)!r}, 'a') as f:\n    f.write(' '.join(sys.argv[1:]) + '\\n')\n"
                      + textwrap.dedent(body))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, calls


def _count(calls: Path) -> int:
    return len(calls.read_text().splitlines())


@pytest.fixture
def kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A kubectl that counts its calls and runs the real one; the cache in tmp_path."""
    real = proc.tool("kubectl")
    script, calls = _counting_tool(tmp_path, "kubectl", f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")
    original = proc.tool
    monkeypatch.setattr(proc, "tool", lambda name: str(script) if name == "kubectl" else original(name))
    monkeypatch.setenv(rendercache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("ABTEST_KUSTOMIZE_BATCH", "off")  # kubectl's own runs are counted here
    return script, calls


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the sample (spec, base, per-stage overlays) that a test may edit."""
    copy = tmp_path / "manifests"
    for part in ("base", "stages"):
        shutil.copytree(MANIFESTS / part, copy / part)
    shutil.copy(MANIFESTS / "rollout.yaml", copy / "rollout.yaml")
    return copy


def _images(objects: list[dict[str, Any]]) -> dict[str, str]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"][0]["image"]
            for o in objects if o["kind"] == "Deployment"}


def test_an_unchanged_tree_is_read_from_the_cache_with_the_same_objects(
    kubectl: tuple[Path, Path], tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, calls = kubectl
    spec = load_spec(tree / "rollout.yaml")
    first = render(spec, "Blue_50")
    assert _count(calls) == 1
    second = render(spec, "Blue_50")
    assert _count(calls) == 1, "an unchanged tree must not run kustomize again"
    assert second == first
    monkeypatch.setenv(rendercache.CACHE_ENV, "off")
    assert render(spec, "Blue_50") == first, "the cached objects are those of an uncached run"
    assert _count(calls) == 2
    assert len(list((tree.parent / "cache").glob("*.out"))) == 1


def _labels(objects: list[dict[str, Any]]) -> set[str]:
    return {str(o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of")) for o in objects}


def _pull(objects: list[dict[str, Any]]) -> str:
    (blue,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "model-blue"]
    return str(blue["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"])


def _weights(objects: list[dict[str, Any]]) -> list[int]:
    (vs,) = [o for o in objects if o["kind"] == "VirtualService"]
    return [d.get("weight", 0) for d in vs["spec"]["http"][-1]["route"]]


@pytest.mark.parametrize(("edited", "old", "new", "seen"), [
    ("base/deployment-blue.yaml", "IfNotPresent", "IfNotPresenT", lambda o: _pull(o) == "IfNotPresenT"),
    ("stages/Blue_50/kustomization.yaml", "value: 50}", "value: 40}", lambda o: _weights(o) == [40, 50]),
    ("base/kustomization.yaml", "part-of: abtest", "part-of: abtesT", lambda o: _labels(o) == {"abtesT"}),
    # Not read by kustomize, but under a directory it reads: a new key all the same.
    ("base/README", "", "x", lambda o: True),
])
def test_one_changed_byte_anywhere_kustomize_may_read_renders_again(
    kubectl: tuple[Path, Path], tree: Path, edited: str, old: str, new: str, seen: Any
) -> None:
    _, calls = kubectl
    spec = load_spec(tree / "rollout.yaml")
    path = tree / edited
    if not path.exists():
        path.write_text("")
    before = render(spec, "Blue_50")
    assert not seen(before) or edited.endswith("README")
    text = path.read_text()
    changed = text.replace(old, new, 1) if old else new
    assert len(changed.encode()) - len(text.encode()) in (0, 1) and changed != text
    path.write_text(changed)
    after = render(spec, "Blue_50")
    assert _count(calls) == 2, f"a change to {edited} must re-render"
    assert seen(after)
    assert render(spec, "Blue_50") == after and _count(calls) == 2


def test_a_changed_tool_is_a_new_key(kubectl: tuple[Path, Path], tree: Path) -> None:
    script, calls = kubectl
    spec = load_spec(tree / "rollout.yaml")
    render(spec, "Blue_0")
    script.write_text(script.read_text() + "# another build\n")
    render(spec, "Blue_0")
    assert _count(calls) == 2


def test_a_failed_render_is_not_stored(kubectl: tuple[Path, Path], tree: Path) -> None:
    _, calls = kubectl
    (tree / "stages" / "Blue_50" / "kustomization.yaml").write_text("resources: [../../nowhere]\n")
    spec = load_spec(tree / "rollout.yaml")
    for _ in range(2):
        with pytest.raises(CommandError):
            render(spec, "Blue_50")
    assert _count(calls) == 2
    assert not list((tree.parent / "cache").glob("*.out"))


def test_inputs_cover_referenced_directories_and_refuse_remote_ones(tree: Path) -> None:
    overlay = tree / "stages" / "Blue_50"
    inputs = rendercache.kustomize_inputs(overlay)
    assert set(inputs) == {p.resolve() for p in [*overlay.rglob("*"), *(tree / "base").rglob("*")] if p.is_file()}
    (overlay / "kustomization.yaml").write_text(
        "resources:\n  - ../../base\n  - https://github.com/example/repo//deploy?ref=v1\n")
    with pytest.raises(rendercache._Uncacheable, match="not a local path"):
        rendercache.kustomize_inputs(overlay)


def test_a_remote_resource_runs_the_tool_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rendercache.CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "kustomization.yaml").write_text("resources: [https://example.invalid/x.yaml]\n")
    runs: list[int] = []

    def run() -> str:
        runs.append(1)
        return "kind: X\n"

    for _ in range(2):
        assert rendercache.cached_output(sys.executable, ["kustomize", str(tmp_path)],
                                         lambda: rendercache.kustomize_inputs(tmp_path), run) == "kind: X\n"
    assert len(runs) == 2


def test_helm_charts_and_values_are_cached_by_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = """\
        import json
        print("apiVersion: v1\\nkind: ConfigMap\\nmetadata: {name: %s}\\ndata: {argv: %s}"
              % (sys.argv[2], json.dumps(json.dumps(sys.argv[1:]))))
        """
    helm, calls = _counting_tool(tmp_path, "helm", body)
    monkeypatch.setenv("ABTEST_HELM", str(helm))
    monkeypatch.setenv(rendercache.CACHE_ENV, str(tmp_path / "cache"))
    example = tmp_path / "reference-helm"
    shutil.copytree(EXAMPLES / "reference-helm", example)
    spec = load_spec(example / "rollout.yaml")
    first = render(spec, "Blue_50")
    assert _count(calls) == 2, "two charts, one helm call each"
    assert render(spec, "Blue_50") == first
    assert _count(calls) == 2
    values = example / "values" / "model-Blue_50.yaml"
    values.write_text(values.read_text() + "\n")
    render(spec, "Blue_50")
    assert _count(calls) == 3, "a changed values file re-renders its chart only"
    templates = sorted((example / "charts" / "abtest-istio").rglob("*.yaml"))
    templates[0].write_text(templates[0].read_text() + "\n")
    render(spec, "Blue_50")
    assert _count(calls) == 4


def test_render_many_yields_each_stage_in_order_as_render_does(
    kubectl: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(rendercache.CACHE_ENV, "off")
    spec = load_spec(MANIFESTS / "rollout.yaml")
    together = list(render_many(spec, list(spec.stages)))
    assert together == [render(spec, stage) for stage in spec.stages]


def test_render_many_raises_at_the_failing_stage_after_the_ones_before(
    kubectl: tuple[Path, Path], tree: Path
) -> None:
    (tree / "stages" / "Blue_50" / "kustomization.yaml").write_text("resources: [../../nowhere]\n")
    spec = load_spec(tree / "rollout.yaml")
    names = [s.name for s in spec.stages]
    got: list[str] = []
    with pytest.raises(CommandError):
        for stage, _ in zip(spec.stages, render_many(spec, list(spec.stages)), strict=True):
            got.append(stage.name)
    assert got == names[: names.index("Blue_50")]


def test_the_cache_can_be_turned_off_and_defaults_under_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rendercache.CACHE_ENV, "off")
    assert rendercache.cache_dir() is None
    monkeypatch.delenv(rendercache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert rendercache.cache_dir() == Path("/somewhere/abtest-harness/render")
    assert render_mod.RENDER_JOBS >= 1
    assert os.sep in str(rendercache.cache_dir())


def test_a_directory_link_loop_is_walked_once(tree: Path) -> None:
    base = tree / "base"
    (base / "loop").symlink_to(base, target_is_directory=True)
    inputs = rendercache.kustomize_inputs(tree / "stages" / "Blue_50")
    assert (base / "kustomization.yaml").resolve() in inputs
    assert len(inputs) == len(set(inputs))
