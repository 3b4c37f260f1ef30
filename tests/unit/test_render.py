"""Rendering through kubectl kustomize: each stage's objects, and the reference charts' faults fixed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from abtest_harness.errors import CommandError, ConfigError
from abtest_harness.plan import load_plan
from abtest_harness.render import BASE_DIR, render_stage, render_yaml

PLAN = load_plan()


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _weights(objects: list[dict[str, Any]]) -> dict[str, int]:
    vs = _by_kind(objects, "VirtualService")["mlmodel-virtualservice"]
    weighted = vs["spec"]["http"][-1]
    assert "match" not in weighted, "the weighted route must be the last, catch-all route"
    return {d["destination"]["host"].split(".")[0]: d["weight"] for d in weighted["route"]}


def _image(deployment: dict[str, Any]) -> str:
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert isinstance(image, str)
    return image


@pytest.mark.parametrize("stage", [s.name for s in PLAN.stages])
def test_each_stage_renders_its_weights_and_images(stage: str) -> None:
    plan_stage = PLAN.stage(stage)
    objects = render_stage(PLAN, stage)
    assert _weights(objects) == {f"model-svc-{v}": w for v, w in plan_stage.weights.items()}
    deployments = _by_kind(objects, "Deployment")
    assert set(deployments) == {f"model-{v}" for v in plan_stage.running}
    for version, key in plan_stage.images.items():
        assert _image(deployments[f"model-{version}"]) == f"{PLAN.images[key].repository}:dev"
    # Both Services stay at every stage: a request pinned to an absent version gets 503, not 404.
    assert set(_by_kind(objects, "Service")) == {"model-svc-green", "model-svc-blue"}


def test_blue_green_runs_image_b_on_both_with_weights_0_100() -> None:
    objects = render_stage(PLAN, "Blue_Green")
    deployments = _by_kind(objects, "Deployment")
    assert {n: _image(d) for n, d in deployments.items()} == {
        "model-green": "abtest/scorer-b:dev",
        "model-blue": "abtest/scorer-b:dev",
    }
    assert _weights(objects) == {"model-svc-green": 0, "model-svc-blue": 100}
    text = render_yaml(objects)
    assert text.count("image: abtest/scorer-b:dev") == 2


def test_reference_chart_faults_are_fixed() -> None:
    objects = render_stage(PLAN, "Blue_50")
    for name, deployment in _by_kind(objects, "Deployment").items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["imagePullPolicy"] == "IfNotPresent", name
        assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert {"name": "MODEL_VERSION", "value": name.removeprefix("model-")} in container["env"]
    for name, service in _by_kind(objects, "Service").items():
        assert service["spec"]["ports"] == [{"name": "http", "port": 5001, "targetPort": "http"}], name
    for obj in objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "abtest-harness", obj["metadata"]
    # The selector must not carry the managed-by label: selectors are immutable once applied.
    for deployment in _by_kind(objects, "Deployment").values():
        assert "app.kubernetes.io/managed-by" not in deployment["spec"]["selector"]["matchLabels"]


def test_header_routes_come_before_the_weighted_route() -> None:
    vs = _by_kind(render_stage(PLAN, "Blue_0"), "VirtualService")["mlmodel-virtualservice"]
    assert vs["spec"]["gateways"] == ["mlmodel-gateway"]
    names = [r.get("name") for r in vs["spec"]["http"]]
    assert names == ["blue-header", "green-header", "weighted"]
    for route, version in zip(vs["spec"]["http"][:2], ["blue", "green"], strict=True):
        assert route["match"] == [{"uri": {"prefix": "/score"}, "headers": {"x-api-version": {"exact": version}}}]
        assert route["route"][0]["destination"]["host"] == f"model-svc-{version}.abtesting.svc.cluster.local"


def test_content_derived_refs_replace_the_default_tag() -> None:
    refs = {"A": "abtest/scorer-a:0123abcd", "B": "abtest/scorer-b:4567ef01"}
    deployments = _by_kind(render_stage(PLAN, "Blue_50", image_refs=refs), "Deployment")
    assert _image(deployments["model-green"]) == refs["A"]
    assert _image(deployments["model-blue"]) == refs["B"]


def _copy_base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    shutil.copytree(BASE_DIR, base)
    return base


def test_base_without_weighted_route_is_a_config_error(tmp_path: Path) -> None:
    base = _copy_base(tmp_path)
    vs = base / "virtualservice.yaml"
    vs.write_text(vs.read_text().replace("name: weighted", "name: split"))
    expected = r"VirtualService mlmodel-virtualservice: spec.http: no route named 'weighted'"
    with pytest.raises(ConfigError, match=expected):
        render_stage(PLAN, "Blue_50", base_dir=base)


def test_broken_base_yaml_fails_with_kubectls_message(tmp_path: Path) -> None:
    base = _copy_base(tmp_path)
    (base / "services.yaml").write_text("kind: Service\n  metadata: [\n")
    with pytest.raises(CommandError, match="kubectl"):
        render_stage(PLAN, "Blue_50", base_dir=base)


def test_base_without_a_versions_deployment_names_the_base(tmp_path: Path) -> None:
    base = _copy_base(tmp_path)
    kustomization = base / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - deployment-blue.yaml\n", ""))
    with pytest.raises(ConfigError, match=rf"kustomize base {base}: Deployment model-blue: missing for version blue"):
        render_stage(PLAN, "Blue_50", base_dir=base)


def test_the_base_cache_sees_a_change_in_a_subdirectory(tmp_path: Path) -> None:
    # The overlay's patch indexes come from a cached render of the base; a stale cache would
    # patch the wrong route after an edit in a nested kustomization.
    from abtest_harness.render import _base_objects

    base = _copy_base(tmp_path)
    (base / "extra").mkdir()
    (base / "extra" / "kustomization.yaml").write_text("resources: [cm.yaml]\n")
    note = base / "extra" / "cm.yaml"
    note.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: note}\ndata: {v: '1'}\n")
    kustomization = base / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("resources:\n", "resources:\n  - extra\n"))

    def value() -> str:
        config_map = next(o for o in _base_objects(base) if o["kind"] == "ConfigMap")
        return str(config_map["data"]["v"])

    first = value()
    note.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: note}\ndata: {v: '2'}\n")
    os.utime(note, (note.stat().st_atime, note.stat().st_mtime + 5))  # a distinct mtime, whatever the clock
    assert (first, value()) == ("1", "2")
