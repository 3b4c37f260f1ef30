"""Drive a rollout through a mesh, stage by stage, and judge every request class.

For each stage: render its objects, apply them, wait until the gateway's live route table
equals the expected one (no sampling before that: most flakes on record come from sampling
a config that had not propagated), then sample each request class once, sequentially, until
every class has a verdict. Nothing is retried until it passes.

What is expected of a class is the stage's ``expect`` table when the spec has one, else what
the routing oracle reads in the rendered manifests. A table is also checked against the
oracle before any traffic: a disagreement is reported with the stage's result, and
``abtest run`` checks it for every stage before it starts a mesh. Answers are credited to a
version by the endpoint the gateway chose (``abtest_harness.attribution``).

A ``stages.yaml`` plan is accepted wherever a spec is (``abtest_harness.spec.spec_from_plan``).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from abtest_harness import proc
from abtest_harness.errors import HarnessError, ToolNotFound
from abtest_harness.plan import RolloutPlan, Stage, repository_of
from abtest_harness.render import render
from abtest_harness.routing import Expected, Request, expected_distributions
from abtest_harness.spec import PlanSource, RolloutSpec, StageSpec, spec_from_plan

if TYPE_CHECKING:  # the mesh, the statistics and the load loop are imported when a run needs them
    from abtest_harness.mesh.base import Mesh
    from abtest_harness.mesh.istio_xds import IstioTranslator
    from abtest_harness.stats import StatsConfig, Verdict
    from abtest_harness.traffic import LoadResult

#: Header that pins a request to one version in the sample plan (the reference guide's A/B header).
VERSION_HEADER = "x-api-version"


class Progress(Protocol):
    def __call__(self, line: str) -> None: ...


def _quiet(line: str) -> None:
    return None


@dataclass(frozen=True)
class ClassResult:
    """The verdict of one request class in one stage."""

    stage: str
    request: Request
    verdict: Verdict

    @property
    def passed(self) -> bool:
        return bool(self.verdict.passed)


@dataclass
class StageResult:
    """Everything one stage produced: timings, verdicts, and any disagreement found.

    ``weights``: the share (in percent) of each version for the stage's first request
    class, as expected; ``images``: version -> the image(s) its pods run.
    """

    stage: StageSpec
    classes: list[ClassResult] = field(default_factory=list)
    answers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    wrong_answers: list[str] = field(default_factory=list)
    manifest_mismatches: list[str] = field(default_factory=list)
    apply_s: float = 0.0
    converge_s: float = 0.0
    sample_s: float = 0.0
    requests: int = 0
    weights: Mapping[str, float] = field(default_factory=dict)
    images: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[str]:
        """Why the stage failed, one line each (empty when it passed): verdicts, answers, manifests."""
        found = [c.verdict.message for c in self.classes if not c.passed]
        found += [*self.wrong_answers, *self.manifest_mismatches]
        return found or ([] if self.classes else ["no request class was sampled"])


@dataclass
class RolloutResult:
    stages: list[StageResult] = field(default_factory=list)
    up_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.stages) and all(s.passed for s in self.stages)


SpecLike = RolloutSpec | RolloutPlan


def as_spec(spec: SpecLike) -> RolloutSpec:
    """A spec as it is, a ``stages.yaml`` plan as the equivalent spec."""
    return spec if isinstance(spec, RolloutSpec) else spec_from_plan(spec)


def _stage_of(spec: RolloutSpec, stage: StageSpec | Stage | str) -> StageSpec:
    if isinstance(stage, StageSpec):
        return stage
    return spec.stage(stage if isinstance(stage, str) else stage.name)


def pinned_version(request: Request) -> str | None:
    """The version an ``x-api-version`` header pins the request to, if any."""
    return request.header(VERSION_HEADER)


def intended_distribution(stage: Stage, request: Request) -> dict[str, float]:
    """What a ``stages.yaml`` plan promises for a request class: outcome -> probability."""
    version = pinned_version(request)
    if version is not None:
        return {version: 1.0} if version in stage.running else {"status:503": 1.0}
    return {v: w / 100 for v, w in stage.weights.items() if w > 0}


# ----------------------------------------------------------------------------- expectations


def _oracle_accepts_versions() -> bool:
    return "versions" in inspect.signature(expected_distributions).parameters


def oracle(
    objects: Sequence[Mapping[str, Any]],
    classes: Sequence[Request],
    versions: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[Request, Expected]:
    """The routing oracle's expectation of each class, versions named by the spec's selectors.

    An oracle that does not take ``versions`` names a version by its pods' ``MODEL_VERSION``
    env (or ``model_version`` label): the same names when the manifests follow that rule.
    """
    if versions is not None and _oracle_accepts_versions():
        found: dict[Request, Expected] = expected_distributions(objects, classes, versions=versions)  # type: ignore[call-arg,unused-ignore]
        return found
    return expected_distributions(objects, classes)


def expected_shares(
    spec: SpecLike,
    stage: StageSpec | Stage | str,
    objects: Sequence[Mapping[str, Any]],
    classes: Sequence[Request] | None = None,
) -> dict[str, dict[str, float]]:
    """Class label -> outcome -> share that traffic must show: the stage's table, else the oracle."""
    spec = as_spec(spec)
    stage = _stage_of(spec, stage)
    classes = spec.classes if classes is None else classes
    if stage.expect is not None and all(c.label in stage.expect for c in classes):
        return {c.label: dict(stage.expect[c.label]) for c in classes}
    found = oracle(objects, classes, spec.versions)
    out: dict[str, dict[str, float]] = {}
    for request in classes:
        if stage.expect is not None and request.label in stage.expect:
            out[request.label] = dict(stage.expect[request.label])
        else:
            out[request.label] = dict(found[request].shares)
    return out


def manifest_mismatches(
    objects: Sequence[Mapping[str, Any]],
    stage: StageSpec | Stage,
    classes: Sequence[Request],
    *,
    versions: Mapping[str, Mapping[str, str]] | None = None,
) -> list[str]:
    """Request classes for which the rendered manifests route otherwise than the stage expects.

    A spec stage without an ``expect`` table has nothing to disagree with (the oracle is the
    expectation); a plan stage expects what the plan promises. A stage that declares its
    ``images`` is also checked for the image each version runs (:func:`image_mismatches`).
    """
    found: list[str] = []
    if isinstance(stage, StageSpec):
        if stage.images is not None and versions is not None:
            found += image_mismatches(objects, stage, versions)
        if stage.expect is None:
            return found
        table: Mapping[str, Mapping[str, float]] = stage.expect
        says = "the spec expects"
    else:
        table = {r.label: intended_distribution(stage, r) for r in classes}
        says = "the plan says"
    checked = [r for r in classes if r.label in table]
    if not checked:
        return found
    expected = oracle(objects, checked, versions)
    for request in checked:
        intended = {k: v for k, v in table[request.label].items() if v > 0}
        routed = {k: v for k, v in expected[request].shares.items() if v > 0}
        if set(routed) != set(intended) or any(abs(routed[k] - intended[k]) > 1e-9 for k in intended):
            found.append(
                f"{stage.name} {request.label}: manifests route {_shares(routed)}, {says} {_shares(intended)}"
            )
    return found


def _shares(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items())) or "nothing"


def _pods(objects: Sequence[Mapping[str, Any]]) -> list[tuple[Mapping[str, str], list[str]]]:
    """(pod labels, container images) of every workload with replicas > 0."""
    out: list[tuple[Mapping[str, str], list[str]]] = []
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "StatefulSet", "ReplicaSet"):
            continue
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas", 1)
        if replicas == 0:
            continue
        template = spec.get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        images = [str(c.get("image")) for c in (template.get("spec") or {}).get("containers") or []]
        out.append(({str(k): str(v) for k, v in labels.items()}, images))
    return out


def image_mismatches(
    objects: Sequence[Mapping[str, Any]], stage: StageSpec, versions: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """Where the rendered workloads run other versions or images than the stage's ``images`` say.

    Each workload with replicas > 0 whose pod labels select a version must run (in one of its
    containers) the image the stage names for that version; a version the stage does not name
    must not run, and a version it names must run. Nothing is checked without ``images``.
    """
    from abtest_harness.attribution import version_of

    if stage.images is None:
        return []
    found: list[str] = []
    running: set[str] = set()
    for labels, images in _pods(objects):
        version = version_of(labels, versions)
        if version is None:
            continue
        running.add(version)
        shown = ", ".join(images) or "no container"
        wanted = stage.images.get(version)
        if wanted is None:
            found.append(f"{stage.name} images: {version} runs {shown}, the stage's images do not name {version}")
        elif not any(wanted.matches(image) for image in images):
            found.append(f"{stage.name} images: {version} runs {shown}, the spec says {wanted.describe()}")
    for version, wanted in stage.images.items():
        if version not in running:
            found.append(f"{stage.name} images: no workload runs {version}, the spec says {wanted.describe()}")
    return found


def version_images(spec: SpecLike, objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Version -> the image(s) its running pods have, e.g. ``{"green": "abtest/scorer-a:dev"}``."""
    from abtest_harness.attribution import version_of

    spec = as_spec(spec)
    found: dict[str, list[str]] = {}
    for labels, images in _pods(objects):
        version = version_of(labels, spec.versions)
        if version is not None:
            for image in images:
                if image not in found.setdefault(version, []):
                    found[version].append(image)
    return {v: ", ".join(found[v]) for v in spec.versions if v in found}


def intended_answers(spec: SpecLike, stage: StageSpec | Stage | Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The answer each running version must give: that of the spec image its pods run.

    Given a plan stage, from the plan; given rendered objects, from the images in them (a
    version whose pods run an image outside ``spec.images``, or several, is not checked).
    """
    if isinstance(stage, Stage):
        known = spec.images if isinstance(spec, RolloutPlan) else as_spec(spec).images
        return {version: known[key].answer for version, key in stage.images.items()}
    if isinstance(stage, StageSpec):
        raise TypeError("intended_answers needs the stage's rendered objects")
    spec = as_spec(spec)
    by_repository = {image.repository: image.answer for image in spec.images.values()}
    from abtest_harness.attribution import version_of

    answers: dict[str, set[str]] = {}
    unknown: set[str] = set()
    for labels, images in _pods(stage):
        version = version_of(labels, spec.versions)
        if version is None:
            continue
        for ref in images:
            answer = by_repository.get(repository_of(ref))
            if answer is None:
                unknown.add(version)
            else:
                answers.setdefault(version, set()).add(answer)
    return {v: next(iter(a)) for v, a in answers.items() if len(a) == 1 and v not in unknown}


def _stage_answers(spec: RolloutSpec, stage: StageSpec, objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The answers a stage's versions must give: what its ``images`` say, else the objects' images."""
    if stage.images is not None:
        return {v: image.answer for v, image in stage.images.items() if image.answer is not None}
    source = stage.source
    if isinstance(source, PlanSource):
        return intended_answers(source.plan, source.plan.stage(source.stage))
    return intended_answers(spec, objects)


def wrong_answers(intended: Mapping[str, str], given: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Each (version, answer) seen that is not the answer that version's image must give."""
    return [
        f"{version} answered {body!r} x{count}, expected {intended.get(version)!r}"
        for version, bodies in sorted(given.items())
        for body, count in sorted(bodies.items())
        if version in intended and body != intended[version]
    ]


# ----------------------------------------------------------------------------- driving a stage


def sample(
    mesh: Mesh,
    expected: Mapping[str, Mapping[str, float]],
    classes: Sequence[Request],
    config: StatsConfig,
    *,
    deadline_s: float = 120.0,
    concurrency: int = 4,
    versions: Mapping[str, Mapping[str, str]] | None = None,
) -> LoadResult:
    """Sample every class once, sequentially, until each has a verdict (bounded by count and time).

    Answers are credited by the endpoint the gateway chose, `versions` naming the version of
    each pod (None: the sample's ``model_version`` label).
    """
    from abtest_harness.attribution import for_mesh
    from abtest_harness.stats import SequentialTest
    from abtest_harness.traffic import allowed_url_of, run_load

    tests = {r.label: SequentialTest(expected[r.label], config, label=r.label) for r in classes}
    cap = sum(t.max_n for t in tests.values())
    return run_load(
        mesh.gateway_url, classes, tests, max_requests=cap, deadline_s=deadline_s, concurrency=concurrency,
        attribute=for_mesh(mesh, versions), allowed_url=allowed_url_of(mesh),
    )


def check_stage(
    mesh: Mesh,
    spec: SpecLike,
    stage: StageSpec | Stage | str,
    config: StatsConfig,
    *,
    classes: Sequence[Request] | None = None,
    image_refs: Mapping[str, str] | None = None,
    expected: Mapping[str, Mapping[str, float]] | None = None,
    objects: list[dict[str, Any]] | None = None,
    converge_timeout: float = 60.0,
    deadline_s: float = 120.0,
    progress: Progress = _quiet,
) -> StageResult:
    """Apply one stage, wait for convergence, sample every class, and judge it.

    `classes` default to the spec's. `expected` overrides the stage's expectation (label ->
    outcome -> probability), for a regression suite that holds its own table of what each
    stage must do. `objects` are the stage's rendered objects when the caller has them
    already (else rendered here).
    """
    spec = as_spec(spec)
    stage = _stage_of(spec, stage)
    classes = list(spec.classes if classes is None else classes)
    result = StageResult(stage)
    if objects is None:
        objects = render(spec, stage, image_refs=image_refs)
    if expected is None:
        result.manifest_mismatches = manifest_mismatches(objects, stage, classes, versions=spec.versions)
        wanted = expected_shares(spec, stage, objects, classes)
    else:
        wanted = {label: dict(shares) for label, shares in expected.items()}
    result.weights = MappingProxyType({k: 100 * v for k, v in wanted[classes[0].label].items()})
    result.images = MappingProxyType(version_images(spec, objects))
    started = time.monotonic()
    mesh.apply(objects)
    result.apply_s = time.monotonic() - started
    started = time.monotonic()
    mesh.converge(objects, timeout=converge_timeout)
    result.converge_s = time.monotonic() - started
    progress(f"{stage.name}: applied in {result.apply_s:.2f}s, converged in {result.converge_s:.2f}s")
    started = time.monotonic()
    load = sample(mesh, wanted, classes, config, deadline_s=deadline_s, versions=spec.versions)
    result.sample_s = time.monotonic() - started
    result.requests = load.requests
    result.answers = load.answers
    result.wrong_answers = wrong_answers(_stage_answers(spec, stage, objects), load.answers)
    for request in classes:
        result.classes.append(ClassResult(stage.name, request, load.verdicts[request.label]))
    return result


def run_rollout(
    mesh: Mesh,
    spec: SpecLike,
    config: StatsConfig,
    *,
    stages: Sequence[StageSpec | Stage] | None = None,
    image_refs: Mapping[str, str] | None = None,
    rendered: Mapping[str, list[dict[str, Any]]] | None = None,
    out: TextIO | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> RolloutResult:
    """Drive `stages` (default: the whole rollout) in order on a mesh that is up.

    `rendered` (stage name -> objects) saves rendering again what the caller rendered already.
    """
    spec = as_spec(spec)
    result = RolloutResult()
    started = time.monotonic()
    for stage in stages or spec.stages:
        objects = rendered.get(stage.name) if rendered is not None else None
        stage_result = check_stage(mesh, spec, stage, config, image_refs=image_refs, objects=objects)
        result.stages.append(stage_result)
        if out is not None:
            write_stage(stage_result, out)
        if on_stage is not None:
            on_stage(stage_result)
    result.elapsed_s = time.monotonic() - started
    return result


def verdict_line(stage: str, verdict: Verdict) -> str:
    """One line per stage and class for CI logs: expected, observed with interval, n, verdict."""
    return f"{stage:<11} {verdict.message}"


def write_stage(result: StageResult, out: TextIO) -> None:
    for mismatch in result.manifest_mismatches:
        out.write(f"{result.stage.name:<11} MANIFEST {mismatch}\n")
    for cls in result.classes:
        out.write(verdict_line(result.stage.name, cls.verdict) + "\n")
    for wrong in result.wrong_answers:
        out.write(f"{result.stage.name:<11} FAIL answer: {wrong}\n")
    out.flush()


# ----------------------------------------------------------------------------- opening a mesh


class MeshUnavailable(HarnessError):
    """The chosen backend cannot run on this machine (no Docker engine, no base image, no kind)."""


@dataclass(frozen=True)
class MeshOptions:
    """How to build the mesh; the same names as the CLI flags and pytest options."""

    mesh: str = "local"
    workloads: str = "process"
    artifacts_dir: Path = Path("artifacts")
    keep_cluster: bool = False
    cluster_name: str = "abtest"
    base_image: str | None = None
    # mesh="cluster": an existing cluster (abtest_harness.mesh.cluster); all but judge_live required there.
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str | None = None
    gateway_url: str | None = None
    judge_live: bool = False
    #: Who computes the local gateway's configuration: "python" (abtest_harness.mesh.envoy) or
    #: "istio" (Istio's own code, the istio-xds program; abtest_harness.mesh.istio_xds).
    translator: str = "python"


def _translator(options: MeshOptions) -> IstioTranslator | None:
    """The LocalMesh translator `options` ask for (None: the Python translation)."""
    if options.translator == "python":
        return None
    if options.translator != "istio":
        raise HarnessError(f"unknown translator {options.translator!r} (python or istio)")
    from abtest_harness.mesh import istio_xds

    try:
        istio_xds.binary()
    except istio_xds.IstioXdsUnavailable as exc:
        raise MeshUnavailable(str(exc)) from exc
    return istio_xds.IstioTranslator()


class MeshSession:
    """A mesh and what it needs besides (image refs, a workload runner), up and down as one.

    ``with open_mesh(spec, options) as session:`` brings the mesh up; leaving the block
    stops the mesh, then closes what else was opened, in reverse order, even on Ctrl-C.
    """

    def __init__(
        self,
        mesh: Mesh,
        image_refs: Mapping[str, str] | None = None,
        closers: Sequence[Callable[[], None]] = (),
    ) -> None:
        self.mesh = mesh
        self._image_refs = dict(image_refs) if image_refs is not None else None
        self._closers = list(closers)

    @property
    def image_refs(self) -> Mapping[str, str] | None:
        """Image key -> ref the stages must be rendered with (None: the manifests' defaults)."""
        if self._image_refs is not None:
            return self._image_refs
        refs = getattr(self.mesh, "image_refs", None)
        return dict(refs) if refs else None

    def __enter__(self) -> MeshSession:
        try:
            self.mesh.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the mesh and close the rest; safe to call twice."""
        try:
            self.mesh.down()
        finally:
            while self._closers:
                self._closers.pop()()


def open_mesh(
    spec: SpecLike, options: MeshOptions, *, progress: Callable[[str], None] = _quiet
) -> MeshSession:
    """Build (not start) the mesh `options` ask for; MeshUnavailable when this machine cannot run it.

    The process runner runs the spec's ``images`` (the sample scorer) as local processes;
    docker and kind build those images and run every other image as it is.
    """
    if options.mesh == "local":
        from abtest_harness.mesh.local import LocalMesh

        translator = _translator(options)
        if options.workloads == "process":
            if isinstance(spec, RolloutPlan):
                return MeshSession(LocalMesh(plan=spec, translator=translator))
            from abtest_harness.mesh.workloads import ProcessRunner

            process_runner = ProcessRunner({i.repository: i.answer for i in spec.images.values()})
            return MeshSession(LocalMesh(runner=process_runner, translator=translator), None, [process_runner.close])
        if options.workloads != "docker":
            raise HarnessError(f"unknown workload runner {options.workloads!r} (process or docker)")
        from abtest_harness import images
        from abtest_harness.mesh.containers import DockerRunner, register_cleanup

        try:
            client = images.docker_client()
            refs: dict[str, str] = {}
            if spec.images:
                progress("building scorer images (cached by content)")
                refs = images.build_scorer_images(
                    spec, base_image=options.base_image, client=client, progress=progress
                )
        except (images.DockerUnavailable, images.BaseImageMissing) as exc:
            raise MeshUnavailable(str(exc)) from exc
        runner = DockerRunner(client=client)
        register_cleanup(runner)
        return MeshSession(LocalMesh(runner=runner, translator=translator), refs, [runner.close])
    if options.mesh == "kind":
        from abtest_harness import images
        from abtest_harness.mesh.kind import KindIstioMesh

        try:
            proc.tool("kind")
            images.docker_client()
        except (ToolNotFound, images.DockerUnavailable) as exc:
            raise MeshUnavailable(f"{exc} (`python -m abtest_harness.prereqs kind` lists every prerequisite)") from exc
        kind_mesh = KindIstioMesh(
            spec,
            cluster_name=options.cluster_name,
            keep_cluster=options.keep_cluster,
            artifacts_dir=options.artifacts_dir / "kind",
            base_image=options.base_image,
            progress=progress,
        )
        return MeshSession(kind_mesh)
    if options.mesh == "cluster":
        from abtest_harness.mesh.cluster import cluster_mesh

        return MeshSession(cluster_mesh(spec, options, progress=progress))
    raise HarnessError(f"unknown mesh {options.mesh!r} (local, kind or cluster)")
