"""The rollout plan: which versions run which image, and the weights, stage by stage.

Loaded from ``manifests/stages.yaml`` into typed objects; a bad plan is rejected with an
error that names the stage and the field, before anything is rendered or deployed.

>>> plan = load_plan()
>>> [s.name for s in plan.stages]
['baseline', 'Blue_0', 'Blue_50', 'Blue_100', 'Blue_Green', 'Green_100']
>>> dict(plan.stage("Blue_50").weights)
{'green': 50, 'blue': 50}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from abtest_harness import yamlio
from abtest_harness.errors import ConfigError, named
from abtest_harness.support import WeightProblem, destination_shares

MANIFESTS_DIR = Path(__file__).resolve().parent.parent / "manifests"
DEFAULT_PLAN = MANIFESTS_DIR / "stages.yaml"
#: The namespace of the reference charts; the manifests' Service FQDNs name it.
NAMESPACE = "abtesting"

_PLAN_KEYS = {"versions", "images", "stages", "base"}
_IMAGE_KEYS = {"repository", "answer"}
_STAGE_KEYS = {"name", "description", "images", "weights"}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
# Kubernetes label values and Deployment name parts: the version lands in both.
_VERSION = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True)
class ImageSpec:
    """A scoring image: the repository it is built as and the answer it gives."""

    key: str
    repository: str
    answer: str


@dataclass(frozen=True)
class Stage:
    """One rollout stage: the image of each running version and the weighted route."""

    name: str
    description: str
    images: Mapping[str, str]
    weights: Mapping[str, int]

    @property
    def running(self) -> tuple[str, ...]:
        """The versions that have a Deployment in this stage."""
        return tuple(self.images)

    def summary(self) -> str:
        """One line: weights and images, e.g. ``green 50 (A) / blue 50 (B)``."""
        parts = []
        for version, weight in self.weights.items():
            image = self.images.get(version)
            parts.append(f"{version} {weight} ({image if image else 'absent'})")
        return " / ".join(parts)


@dataclass(frozen=True)
class RolloutPlan:
    """The versions, images and ordered stages of a rollout."""

    versions: tuple[str, ...]
    images: Mapping[str, ImageSpec]
    stages: tuple[Stage, ...]
    namespace: str = NAMESPACE
    source: str = str(DEFAULT_PLAN)
    #: The kustomize base the stages' overlays patch (``base:`` in the plan, relative to it).
    base: Path = MANIFESTS_DIR / "base"

    def stage(self, name: str) -> Stage:
        """The stage called `name`; a ConfigError lists the known names."""
        return named(self.stages, name, lambda s: s.name, obj=f"plan {self.source}", field="stages", noun="stage")

    def image_for(self, ref: str) -> ImageSpec:
        """The image whose repository `ref` names (the tag does not matter)."""
        repository = repository_of(ref)
        for spec in self.images.values():
            if spec.repository == repository:
                return spec
        known = ", ".join(s.repository for s in self.images.values())
        raise ConfigError(f"plan {self.source}", "images", f"no image with repository {repository!r} (known: {known})")


def repository_of(ref: str) -> str:
    """The repository of an image reference: tag and digest dropped, a registry port kept.

    >>> repository_of("abtest/scorer-a:dev"), repository_of("localhost:5000/x/y@sha256:ab")
    ('abtest/scorer-a', 'localhost:5000/x/y')
    """
    name = ref.split("@", 1)[0]
    # A tag follows the last ':' unless that ':' belongs to a registry host:port.
    head, sep, tail = name.rpartition(":")
    return head if sep and "/" not in tail else name


def load_plan(path: str | Path | None = None) -> RolloutPlan:
    """Read and check a plan file (default ``manifests/stages.yaml``)."""
    source = Path(path) if path is not None else DEFAULT_PLAN
    documents = yamlio.load_documents(source, what="plan")  # bounded; bad input is a one-line ConfigError
    if len(documents) > 1:
        raise ConfigError(f"plan {source}", "", f"holds {len(documents)} YAML documents; a plan is one")
    return parse_plan(documents[0] if documents else None, source=str(source), root=source.resolve().parent)


def parse_plan(raw: Any, *, source: str = "<plan>", root: Path | None = None) -> RolloutPlan:
    """Check a plan given as plain data (what ``yaml.safe_load`` returns).

    `root` is the directory a relative ``base`` is resolved against (the plan file's;
    default ``manifests/``); without ``base`` the plan's base is ``<root>/base``.
    """
    where = f"plan {source}"
    _require_mapping(raw, where, "")
    _reject_unknown(raw, _PLAN_KEYS, where, "")
    for key in sorted(_PLAN_KEYS - {"base"}):
        if key not in raw:
            raise ConfigError(where, key, "missing")
    base_raw = raw.get("base", "base")
    if not isinstance(base_raw, str) or not base_raw:
        raise ConfigError(where, "base", "must be a directory path (relative to the plan file)")
    base = (root if root is not None else MANIFESTS_DIR) / base_raw

    versions = raw["versions"]
    if not isinstance(versions, list) or not versions:
        raise ConfigError(where, "versions", "must be a non-empty list of version names")
    for i, version in enumerate(versions):
        if not isinstance(version, str) or not _VERSION.match(version):
            raise ConfigError(where, f"versions[{i}]", f"{version!r} is not a lower-case DNS label")
    if len(set(versions)) != len(versions):
        raise ConfigError(where, "versions", "names a version twice")

    images_raw = raw["images"]
    _require_mapping(images_raw, where, "images")
    images: dict[str, ImageSpec] = {}
    for key, spec in images_raw.items():
        field = f"images.{key}"
        _require_mapping(spec, where, field)
        _reject_unknown(spec, _IMAGE_KEYS, where, field)
        for part in sorted(_IMAGE_KEYS):
            if not isinstance(spec.get(part), str) or not spec[part]:
                raise ConfigError(where, f"{field}.{part}", "must be a non-empty string")
        if ":" in spec["repository"].rsplit("/", 1)[-1]:
            raise ConfigError(where, f"{field}.repository", "give the repository without a tag")
        images[str(key)] = ImageSpec(str(key), spec["repository"], spec["answer"])
    if not images:
        raise ConfigError(where, "images", "must define at least one image")

    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(where, "stages", "must be a non-empty list")
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, entry in enumerate(stages_raw):
        stage = _parse_stage(entry, i, versions, images, where)
        if stage.name in seen:
            raise ConfigError(f"Stage {stage.name}", "name", f"duplicate stage name (stages[{i}])")
        seen.add(stage.name)
        stages.append(stage)
    return RolloutPlan(
        versions=tuple(versions),
        images=MappingProxyType(images),
        stages=tuple(stages),
        source=source,
        base=base,
    )


def _parse_stage(
    entry: Any, index: int, versions: list[str], images: Mapping[str, ImageSpec], where: str
) -> Stage:
    _require_mapping(entry, where, f"stages[{index}]")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(where, f"stages[{index}].name", f"{name!r} is not a valid stage name")
    obj = f"Stage {name}"
    _reject_unknown(entry, _STAGE_KEYS, obj, "")
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(obj, "description", "must be a string")

    stage_images = entry.get("images")
    _require_mapping(stage_images, obj, "images")
    if not stage_images:
        raise ConfigError(obj, "images", "at least one version must run")
    for version, key in stage_images.items():
        if version not in versions:
            raise ConfigError(obj, f"images.{version}", f"unknown version (plan versions: {', '.join(versions)})")
        if key not in images:
            raise ConfigError(obj, f"images.{version}", f"unknown image {key!r} (known: {', '.join(images)})")

    weights = entry.get("weights")
    _require_mapping(weights, obj, "weights")
    for version in weights:
        if version not in versions:
            raise ConfigError(obj, f"weights.{version}", f"unknown version (plan versions: {', '.join(versions)})")
    for version in versions:
        if version not in weights:
            raise ConfigError(obj, f"weights.{version}", "missing: every version needs a weight (0 for none)")
    try:
        # The one weights rule (abtest_harness.support), in the plan's own format: whole percents.
        destination_shares([weights[v] for v in versions], percent=True)
    except WeightProblem as problem:
        if problem.index is not None:
            version = versions[problem.index]
            raise ConfigError(obj, f"weights.{version}", problem.message) from None
        total = sum(weights.values())
        shown = " + ".join(f"{v} {weights[v]}" for v in versions)
        raise ConfigError(obj, "weights", f"sum to {total}, not 100 ({shown})") from None
    for version in versions:
        if weights[version] > 0 and version not in stage_images:
            raise ConfigError(
                obj, f"weights.{version}", f"is {weights[version]} but {version} does not run in this stage (images)"
            )
    return Stage(
        name=name,
        description=description,
        images=MappingProxyType({v: stage_images[v] for v in versions if v in stage_images}),
        weights=MappingProxyType({v: weights[v] for v in versions}),
    )


def _require_mapping(value: Any, obj: str, field: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(obj, field or "(top level)", f"must be a mapping, got {type(value).__name__}")


def _reject_unknown(value: Mapping[str, Any], allowed: set[str], obj: str, field: str) -> None:
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        prefix = f"{field}." if field else ""
        raise ConfigError(
            obj, f"{prefix}{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(allowed))})"
        )
