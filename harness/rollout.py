"""Drive a rollout plan through a mesh, stage by stage, and judge every request class.

For each stage: render its objects, apply them, wait until the gateway's live route table
equals the expected one (no sampling before that: most flakes on record come from sampling
a config that had not propagated), then sample each request class once, sequentially, until
every class has a verdict. Nothing is retried until it passes.

What is expected comes from the plan (the configured weights, and the rule that
``x-api-version: V`` pins a request to V, or gets 503 where V does not run). The routing
oracle's reading of the rendered manifests is compared with that too: a disagreement is
reported with the stage's result, and ``abtest run`` checks it for every stage before it
starts a mesh.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from harness import proc
from harness.errors import HarnessError, ToolNotFound
from harness.mesh.base import Mesh
from harness.plan import RolloutPlan, Stage
from harness.render import render_stage
from harness.routing import STANDARD_CLASSES, Request, expected_distributions
from harness.stats import SequentialTest, StatsConfig, Verdict
from harness.traffic import LoadResult, run_load

if TYPE_CHECKING:
    from harness.mesh.istio_xds import IstioTranslator

#: Header that pins a request to one version (the reference guide's A/B header).
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
    """Everything one stage produced: timings, verdicts, and any disagreement found."""

    stage: Stage
    classes: list[ClassResult] = field(default_factory=list)
    answers: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    wrong_answers: list[str] = field(default_factory=list)
    manifest_mismatches: list[str] = field(default_factory=list)
    apply_s: float = 0.0
    converge_s: float = 0.0
    sample_s: float = 0.0
    requests: int = 0

    @property
    def passed(self) -> bool:
        return (
            bool(self.classes)
            and all(c.passed for c in self.classes)
            and not self.wrong_answers
            and not self.manifest_mismatches
        )


@dataclass
class RolloutResult:
    stages: list[StageResult] = field(default_factory=list)
    up_s: float = 0.0
    elapsed_s: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.stages) and all(s.passed for s in self.stages)


def pinned_version(request: Request) -> str | None:
    """The version an ``x-api-version`` header pins the request to, if any."""
    for name, value in _headers(request):
        if name.lower() == VERSION_HEADER:
            return value
    return None


def _headers(request: Request) -> list[tuple[str, str]]:
    headers: Any = request.headers
    items = headers.items() if hasattr(headers, "items") else headers
    return [(str(k), str(v)) for k, v in items]


def intended_distribution(stage: Stage, request: Request) -> dict[str, float]:
    """What the plan promises for a request class: outcome -> probability."""
    version = pinned_version(request)
    if version is not None:
        return {version: 1.0} if version in stage.running else {"status:503": 1.0}
    return {v: w / 100 for v, w in stage.weights.items() if w > 0}


def intended_answers(plan: RolloutPlan, stage: Stage) -> dict[str, str]:
    """The answer each running version must give in this stage."""
    return {version: plan.images[key].answer for version, key in stage.images.items()}


def manifest_mismatches(
    objects: list[dict[str, Any]], stage: Stage, classes: Sequence[Request]
) -> list[str]:
    """Request classes for which the rendered manifests route otherwise than the plan says."""
    found = []
    expected = expected_distributions(objects, classes)
    for request in classes:
        intended = intended_distribution(stage, request)
        oracle = {k: v for k, v in expected[request].shares.items() if v > 0}
        if set(oracle) != set(intended) or any(abs(oracle[k] - intended[k]) > 1e-9 for k in intended):
            found.append(
                f"{stage.name} {request.label}: manifests route {_shares(oracle)}, the plan says {_shares(intended)}"
            )
    return found


def _shares(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items())) or "nothing"


def sample(
    mesh: Mesh,
    expected: Mapping[str, Mapping[str, float]],
    classes: Sequence[Request],
    config: StatsConfig,
    *,
    deadline_s: float = 120.0,
    concurrency: int = 4,
) -> LoadResult:
    """Sample every class once, sequentially, until each has a verdict (bounded by count and time)."""
    tests = {r.label: SequentialTest(expected[r.label], config, label=r.label) for r in classes}
    cap = sum(t.max_n for t in tests.values())
    return run_load(
        mesh.gateway_url, classes, tests, max_requests=cap, deadline_s=deadline_s, concurrency=concurrency
    )


def check_stage(
    mesh: Mesh,
    plan: RolloutPlan,
    stage: Stage,
    config: StatsConfig,
    *,
    classes: Sequence[Request] = STANDARD_CLASSES,
    image_refs: Mapping[str, str] | None = None,
    expected: Mapping[str, Mapping[str, float]] | None = None,
    objects: list[dict[str, Any]] | None = None,
    converge_timeout: float = 60.0,
    deadline_s: float = 120.0,
    progress: Progress = _quiet,
) -> StageResult:
    """Apply one stage, wait for convergence, sample every class, and judge it.

    `expected` overrides what the plan promises (label -> outcome -> probability), for a
    regression suite that holds its own table of what each stage must do. `objects` are the
    stage's rendered objects when the caller has them already (else rendered here).
    """
    result = StageResult(stage)
    if objects is None:
        objects = render_stage(plan, stage, image_refs=image_refs)
    result.manifest_mismatches = manifest_mismatches(objects, stage, classes) if expected is None else []
    started = time.monotonic()
    mesh.apply(objects)
    result.apply_s = time.monotonic() - started
    started = time.monotonic()
    mesh.converge(objects, timeout=converge_timeout)
    result.converge_s = time.monotonic() - started
    progress(f"{stage.name}: applied in {result.apply_s:.2f}s, converged in {result.converge_s:.2f}s")
    wanted = expected or {r.label: intended_distribution(stage, r) for r in classes}
    started = time.monotonic()
    load = sample(mesh, wanted, classes, config, deadline_s=deadline_s)
    result.sample_s = time.monotonic() - started
    result.requests = load.requests
    result.answers = load.answers
    result.wrong_answers = wrong_answers(intended_answers(plan, stage), load.answers)
    for request in classes:
        result.classes.append(ClassResult(stage.name, request, load.verdicts[request.label]))
    return result


def wrong_answers(intended: Mapping[str, str], given: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Each (version, answer) seen that is not the answer that version's image must give."""
    return [
        f"{version} answered {body!r} x{count}, expected {intended.get(version)!r}"
        for version, bodies in sorted(given.items())
        for body, count in sorted(bodies.items())
        if body != intended.get(version)
    ]


def run_rollout(
    mesh: Mesh,
    plan: RolloutPlan,
    config: StatsConfig,
    *,
    stages: Sequence[Stage] | None = None,
    image_refs: Mapping[str, str] | None = None,
    rendered: Mapping[str, list[dict[str, Any]]] | None = None,
    out: TextIO | None = None,
    on_stage: Callable[[StageResult], None] | None = None,
) -> RolloutResult:
    """Drive `stages` (default: the whole plan) in order on a mesh that is up.

    `rendered` (stage name -> objects) saves rendering again what the caller rendered already.
    """
    result = RolloutResult()
    started = time.monotonic()
    for stage in stages or plan.stages:
        objects = rendered.get(stage.name) if rendered is not None else None
        stage_result = check_stage(mesh, plan, stage, config, image_refs=image_refs, objects=objects)
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
    #: Who computes the local gateway's configuration: "python" (harness.mesh.envoy) or
    #: "istio" (Istio's own code, the istio-xds program; harness.mesh.istio_xds).
    translator: str = "python"


def _translator(options: MeshOptions) -> IstioTranslator | None:
    """The LocalMesh translator `options` ask for (None: the Python translation)."""
    if options.translator == "python":
        return None
    if options.translator != "istio":
        raise HarnessError(f"unknown translator {options.translator!r} (python or istio)")
    from harness.mesh import istio_xds

    try:
        istio_xds.binary()
    except istio_xds.IstioXdsUnavailable as exc:
        raise MeshUnavailable(str(exc)) from exc
    return istio_xds.IstioTranslator()


class MeshSession:
    """A mesh and what it needs besides (image refs, a workload runner), up and down as one.

    ``with open_mesh(plan, options) as session:`` brings the mesh up; leaving the block
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
    plan: RolloutPlan, options: MeshOptions, *, progress: Callable[[str], None] = _quiet
) -> MeshSession:
    """Build (not start) the mesh `options` ask for; MeshUnavailable when this machine cannot run it."""
    if options.mesh == "local":
        from harness.mesh.local import LocalMesh

        translator = _translator(options)
        if options.workloads == "process":
            return MeshSession(LocalMesh(plan=plan, translator=translator))
        if options.workloads != "docker":
            raise HarnessError(f"unknown workload runner {options.workloads!r} (process or docker)")
        from harness import images
        from harness.mesh.containers import DockerRunner, register_cleanup

        try:
            client = images.docker_client()
            progress("building scorer images (cached by content)")
            refs = images.build_scorer_images(plan, base_image=options.base_image, client=client, progress=progress)
        except (images.DockerUnavailable, images.BaseImageMissing) as exc:
            raise MeshUnavailable(str(exc)) from exc
        runner = DockerRunner(client=client)
        register_cleanup(runner)
        return MeshSession(LocalMesh(plan=plan, runner=runner, translator=translator), refs, [runner.close])
    if options.mesh == "kind":
        from harness import images
        from harness.mesh.kind import KindIstioMesh

        try:
            proc.tool("kind")
            images.docker_client()
        except (ToolNotFound, images.DockerUnavailable) as exc:
            raise MeshUnavailable(f"{exc} (`python -m harness.prereqs kind` lists every prerequisite)") from exc
        kind_mesh = KindIstioMesh(
            plan,
            cluster_name=options.cluster_name,
            keep_cluster=options.keep_cluster,
            artifacts_dir=options.artifacts_dir / "kind",
            base_image=options.base_image,
            progress=progress,
        )
        return MeshSession(kind_mesh)
    raise HarnessError(f"unknown mesh {options.mesh!r} (local or kind)")
