"""The rollout spec: loading, errors that name file, stage and field, and rendering each source kind."""

from __future__ import annotations

import copy
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness.errors import ConfigError, ToolNotFound
from abtest_harness.plan import load_plan
from abtest_harness.render import find_helm, render, render_stage, retag
from abtest_harness.spec import (
    DEFAULT_SPEC,
    FilesSource,
    HelmSource,
    KustomizeSource,
    load_spec,
    parse_spec,
    schema,
    with_files,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

MINIMAL = """\
apiVersion: abtest-harness/v1
kind: Rollout
namespace: shop
gateway: {host: shop.example.com}
versions:
  old: {app: cart, track: stable}
  new: {app: cart, track: canary}
classes:
  - {name: plain, path: /cart}
  - {name: beta, path: /cart, headers: {x-beta: "1"}, host: beta.shop.example.com}
stages:
  - name: canary-10
    source: {files: [objects.yaml]}
    expect:
      plain: {old: 0.9, new: 0.1}
"""

OBJECTS = """\
apiVersion: v1
kind: Service
metadata: {name: cart}
spec:
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
# a comment-only document and an empty one are skipped
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {name: settings, namespace: elsewhere}
"""


def _write(tmp_path: Path, spec: str = MINIMAL, objects: str = OBJECTS) -> Path:
    (tmp_path / "objects.yaml").write_text(objects)
    path = tmp_path / "rollout.yaml"
    path.write_text(spec)
    return path


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    return str(info.value)


# ----------------------------------------------------------------------------- loading


def test_a_spec_loads_into_typed_parts(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path))
    assert spec.name == "rollout" and spec.namespace == "shop"
    assert spec.gateway.host == "shop.example.com" and spec.gateway.port == 80
    assert dict(spec.versions["new"]) == {"app": "cart", "track": "canary"}
    plain, beta = spec.classes
    # One request, one host: the class's host is the authority sent and the host routed.
    assert (plain.authority, plain.path, plain.port) == ("shop.example.com", "/cart", 80)
    assert beta.authority == "beta.shop.example.com" and beta.header("X-Beta") == "1"
    stage = spec.stage("canary-10")
    assert isinstance(stage.source, FilesSource) and stage.source.paths == ((tmp_path / "objects.yaml").resolve(),)
    assert stage.expect == {"plain": {"old": 0.9, "new": 0.1}}


def test_the_sample_spec_and_the_stages_plan_describe_the_same_rollout() -> None:
    spec, from_plan = load_spec(DEFAULT_SPEC), load_spec(ROOT / "manifests" / "stages.yaml")
    assert [s.name for s in spec.stages] == [s.name for s in from_plan.stages]
    assert [c.label for c in spec.classes] == [c.label for c in from_plan.classes]
    assert spec.versions == from_plan.versions
    for stage, twin in zip(spec.stages, from_plan.stages, strict=True):
        assert isinstance(stage.source, KustomizeSource)
        assert stage.expect is not None and twin.expect is not None
        assert {k: dict(v) for k, v in stage.expect.items()} == {k: dict(v) for k, v in twin.expect.items()}


@pytest.mark.parametrize("stage", [s.name for s in load_plan().stages])
def test_each_sample_overlay_renders_exactly_what_the_plan_renders(stage: str) -> None:
    assert render(load_spec(DEFAULT_SPEC), stage) == render_stage(load_plan(), stage)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.update(colour="x"),
         "spec {path}: colour: unknown key (allowed: apiVersion, classes, gateway, images, kind, name"),
        (lambda d: d.pop("gateway"), "spec {path}: (top level): 'gateway' is missing"),
        (lambda d: d.update(apiVersion="v2"), "spec {path}: apiVersion: must be 'abtest-harness/v1', got 'v2'"),
        (lambda d: d["stages"][0].update(weights={}),
         "spec {path} stage canary-10: stages[0].weights: unknown key (allowed: description, expect, images, name, "
         "source)"),
        (lambda d: d["stages"][0].update(images={"newest": "shop/cart:2"}),
         "spec {path} stage canary-10: images.newest: not a version (old, new)"),
        (lambda d: d["stages"][0].update(images={"new": "B"}),
         "spec {path} stage canary-10: images.new: 'B' is not a key of the spec's images (known: none) nor an "
         "image reference"),
        (lambda d: d["stages"][0].update(images={"new": 2}),
         "spec {path} stage canary-10: stages[0].images.new: 2 is not of type 'string'"),
        (lambda d: d["stages"][0]["source"].update(kustomize="."),
         "spec {path} stage canary-10: stages[0].source: give exactly one of: files, kustomize, helm"),
        (lambda d: d["stages"][0]["expect"].update(plain={"old": 0.9, "new": 0.2}),
         "spec {path} stage canary-10: expect.plain: shares sum to 1.1, not 1 (old 0.9, new 0.2)"),
        (lambda d: d["stages"][0]["expect"].update(gamma={"old": 1}),
         "spec {path} stage canary-10: expect.gamma: no request class 'gamma' (classes: plain, beta)"),
        (lambda d: d["stages"][0]["expect"].update(plain={"newest": 1}),
         "spec {path} stage canary-10: expect.plain.newest: not a version (old, new) nor a status outcome"),
        (lambda d: d["stages"][0]["source"].update(files=["nothere.yaml"]),
         "spec {path} stage canary-10: source.files[0]: 'nothere.yaml': no such file or directory"),
        (lambda d: d["stages"].append(copy.deepcopy(d["stages"][0])),
         "spec {path} stage canary-10: stages[1].name: duplicate stage name"),
        (lambda d: d["classes"][0].update(headers={"Host": "a.example.com"}),
         "spec {path}: classes[0].headers.Host: may not be set by a class (set the class's `host` field instead)"),
        (lambda d: d["classes"].append({"name": "plain"}),
         "spec {path}: classes[2].name: class 'plain' is defined twice"),
        (lambda d: d["versions"].update(new={"app": "cart"}),
         "spec {path}: versions.new: selector {{'app': 'cart'}} does not exclude version old's"),
        (lambda d: d["gateway"].update(port=0), "spec {path}: gateway.port: 0 is less than the minimum of 1"),
    ],
)
def test_a_bad_spec_is_one_error_naming_file_stage_and_field(tmp_path: Path, edit: Any, expected: str) -> None:
    raw = yaml.safe_load(MINIMAL)
    edit(raw)
    path = _write(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    message = _error(path)
    assert message.startswith(expected.format(path=path)), message
    assert "\n" not in message


def test_unreadable_specs_are_config_errors(tmp_path: Path) -> None:
    assert _error(tmp_path / "missing.yaml") == f"spec {tmp_path / 'missing.yaml'}: no such file"
    assert _error(tmp_path) == f"spec {tmp_path}: is a directory, not a file"
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert _error(binary) == f"spec {binary}: not UTF-8 text (byte 9)"
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    assert _error(broken).startswith(f"spec {broken}: line 2: not valid YAML: ")


def test_the_schema_ships_with_the_package_and_is_what_the_loader_checks() -> None:
    loaded = schema()
    assert loaded["properties"]["apiVersion"] == {"const": "abtest-harness/v1"}
    assert set(loaded["$defs"]["source"]["properties"]) == {"files", "kustomize", "helm"}


def test_a_helm_source_resolves_charts_and_values_next_to_the_spec() -> None:
    spec = load_spec(EXAMPLES / "reference-helm" / "rollout.yaml")
    source = spec.stage("Blue_50").source
    assert isinstance(source, HelmSource)
    model, istio = source.charts
    assert model.chart == (EXAMPLES / "reference-helm" / "charts" / "abtest-model").resolve()
    assert model.release == "model" and model.values[0].name == "model-Blue_50.yaml"
    assert dict(istio.set) == {"weight.green": "50", "weight.blue": "50"}


def test_a_helm_chart_without_chart_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "chart").mkdir()
    raw = yaml.safe_load(MINIMAL)
    raw["stages"][0]["source"] = {"helm": [{"chart": "chart"}]}
    message = _error(_write(tmp_path, yaml.safe_dump(raw)))
    assert message.endswith("stage canary-10: source.helm[0].chart: 'chart' has no Chart.yaml")


# ----------------------------------------------------------------------------- rendering


def test_files_render_every_document_and_get_the_spec_namespace(tmp_path: Path) -> None:
    objects = render(load_spec(_write(tmp_path)), "canary-10")
    assert [(o["kind"], o["metadata"].get("namespace")) for o in objects] == [
        ("Namespace", None),  # added: the spec's namespace must exist, as helm --create-namespace
        ("Service", "shop"),
        ("ConfigMap", "elsewhere"),  # an object's own namespace is kept
    ]


def test_a_directory_source_reads_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    objects_dir = tmp_path / "objects"
    objects_dir.mkdir()
    (objects_dir / "b.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
    (objects_dir / "a.yml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    (objects_dir / "notes.txt").write_text("not a manifest")
    raw = yaml.safe_load(MINIMAL)
    raw["stages"][0]["source"] = {"files": ["objects"]}
    del raw["namespace"]
    objects = render(load_spec(_write(tmp_path, yaml.safe_dump(raw))), "canary-10")
    assert [o["metadata"]["name"] for o in objects] == ["a", "b"]


def test_a_manifest_that_is_not_utf8_or_not_an_object_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, objects="")
    (tmp_path / "objects.yaml").write_bytes(b"kind: \xff\n")
    with pytest.raises(ConfigError, match=r"manifest .*objects.yaml: not UTF-8 text"):
        render(load_spec(path), "canary-10")
    (tmp_path / "objects.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"objects.yaml: document 1: is not a Kubernetes object"):
        render(load_spec(path), "canary-10")


def test_image_refs_replace_images_of_the_spec_repositories_only() -> None:
    spec = load_spec(DEFAULT_SPEC)
    objects = render(spec, "Blue_Green", image_refs={"B": "abtest/scorer-b:0123abcd"})
    pods = [o["spec"]["template"]["spec"] for o in objects if o["kind"] == "Deployment"]
    images = [c["image"] for pod in pods for c in pod["containers"]]
    assert images == ["abtest/scorer-b:0123abcd", "abtest/scorer-b:0123abcd"]
    other = {"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"image": "nginx:1"}]}}}}
    assert retag([other], {"abtest/scorer-b": "x"}) == [other]


def _fake_helm(tmp_path: Path) -> Path:
    """A stand-in for helm that prints its argv as a ConfigMap, one object per call."""
    script = tmp_path / "helm"
    script.write_text(textwrap.dedent("""\
        #!/usr/bin/env python3
        import json, sys
        print("apiVersion: v1\\nkind: ConfigMap\\nmetadata: {name: %s}\\ndata: {argv: %s}"
              % (sys.argv[2], json.dumps(json.dumps(sys.argv[1:]))))
        """))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_helm_is_called_once_per_chart_with_namespace_values_and_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.setenv("ABTEST_HELM", str(_fake_helm(tmp_path)))
    spec = load_spec(EXAMPLES / "reference-helm" / "rollout.yaml")
    objects = render(spec, "Blue_50")
    calls = {o["metadata"]["name"]: json.loads(o["data"]["argv"]) for o in objects if o["kind"] == "ConfigMap"}
    base = EXAMPLES / "reference-helm"
    assert calls == {
        "model": ["template", "model", str((base / "charts/abtest-model").resolve()), "--namespace", "model-scoring",
                  "--values", str((base / "values/model-Blue_50.yaml").resolve())],
        "scoring": ["template", "scoring", str((base / "charts/abtest-istio").resolve()), "--namespace",
                    "model-scoring", "--set", "weight.green=50", "--set", "weight.blue=50"],
    }


def test_no_helm_anywhere_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import abtest_harness.render as render_module

    monkeypatch.delenv("ABTEST_HELM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(render_module, "MANIFESTS_DIR", tmp_path / "manifests")
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    with pytest.raises(ToolNotFound, match=r"'helm' not found .*make helm.*helm.sh/helm/v3/cmd/helm@v3\.22\.0"):
        find_helm()
    monkeypatch.setenv("ABTEST_HELM", str(tmp_path / "nohelm"))
    with pytest.raises(ToolNotFound, match="ABTEST_HELM="):
        find_helm()


def _real_helm() -> str:
    try:
        return find_helm()
    except ToolNotFound as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"helm must be available in CI: {exc}")
        pytest.skip(f"no helm: {exc}")


def test_the_helm_example_renders_with_real_helm_per_stage() -> None:
    _real_helm()
    spec = load_spec(EXAMPLES / "reference-helm" / "rollout.yaml")
    blue50 = render(spec, "Blue_50")
    kinds = sorted(o["kind"] for o in blue50)
    assert kinds == ["Deployment", "Deployment", "Gateway", "Namespace", "Service", "Service", "VirtualService"]
    vs = next(o for o in blue50 if o["kind"] == "VirtualService")
    assert vs["metadata"]["namespace"] == "model-scoring"
    weighted = vs["spec"]["http"][-1]["route"]
    assert [(d["destination"]["host"], d["weight"]) for d in weighted] == [
        ("model-svc-green.model-scoring.svc.cluster.local", 50),
        ("model-svc-blue.model-scoring.svc.cluster.local", 50),
    ]
    green100 = render(spec, "Green_100")
    assert [o["metadata"]["name"] for o in green100 if o["kind"] == "Deployment"] == ["model-green"]


def test_parse_spec_takes_plain_data_too(tmp_path: Path) -> None:
    _write(tmp_path)
    spec = parse_spec(yaml.safe_load(MINIMAL), source=tmp_path / "inline.yaml")
    assert spec.name == "inline" and spec.stage("canary-10").expect is not None


def test_an_alias_bomb_in_a_spec_or_its_sources_is_refused_at_once(tmp_path: Path) -> None:
    # Nine levels of nine aliases: a few hundred bytes that expand to 387 million nodes when
    # anything walks them (validation does); refused by harness.yamlio before that.
    lines = ['  a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  {name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    bomb = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n" + "\n".join(lines) + "\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    spec = tmp_path / "rollout.yaml"
    spec.write_text(
        "apiVersion: abtest-harness/v1\nkind: Rollout\nnamespace: ns\ngateway: {host: h.example}\n"
        "versions: {v1: {app: a}}\nclasses: [{name: c, path: /}]\n"
        "stages: [{name: s, source: {files: [bomb.yaml]}}]\n"
    )
    from abtest_harness.render import render

    loaded = load_spec(spec)
    with pytest.raises(ConfigError, match="alias bomb"):
        render(loaded, loaded.stages[0])
    spec.write_text("x: &x [1, 2]\n" + bomb.replace("apiVersion: v1\nkind: ConfigMap\n", ""))
    assert "alias bomb" in _error(spec)


@pytest.mark.parametrize("path", [DEFAULT_SPEC, DEFAULT_SPEC.with_name("stages.yaml"),
                                  EXAMPLES / "bookinfo-reviews" / "rollout.yaml"])
def test_a_spec_written_with_files_reads_back_as_itself_with_only_the_sources_changed(
    tmp_path: Path, path: Path
) -> None:
    import dataclasses

    spec = load_spec(path)
    files = {}
    for i, stage in enumerate(spec.stages):
        files[stage.name] = [tmp_path / f"{i}.yaml"]
        files[stage.name][0].write_text(yaml.safe_dump_all(render(spec, stage)))
    written = tmp_path / "spec" / "copy.yaml"
    written.parent.mkdir()
    written.write_text(yaml.safe_dump(with_files(spec, files), sort_keys=False))
    copy_ = load_spec(written)
    # Stage by stage: the same objects from the files, everything else equal field for field.
    for stage, again in zip(spec.stages, copy_.stages, strict=True):
        assert again.source == FilesSource((files[stage.name][0].resolve(),))
        assert render(copy_, again) == render(spec, stage)
        assert dataclasses.replace(again, source=stage.source) == stage
    assert dataclasses.replace(copy_, stages=spec.stages, source=spec.source, name=spec.name) == spec
    assert copy_.name == spec.name


def test_a_spec_with_files_needs_files_for_every_stage() -> None:
    spec = load_spec(DEFAULT_SPEC)
    with pytest.raises(ValueError, match="Blue_0"):
        with_files(spec, {"baseline": [Path("x.yaml")]})
