"""The rollout spec: a user's rollout described without naming conventions.

A spec file (YAML, ``apiVersion: abtest-harness/v1``, ``kind: Rollout``) names the versions
(each a pod label selector), the request classes the harness sends (method, path, host,
headers), and the stages in order: where each stage's objects come from (plain YAML files or
directories, a kustomize directory, or Helm charts with values) and, optionally, which image
each version runs and the share of each outcome each class must get. Paths are relative to
the spec file. The field reference is ``docs/spec.md``; the structure is checked against
``harness/schemas/rollout.schema.json`` and then the cross-references (classes and versions
named in ``expect`` and ``images``, paths that exist).

Every error is a :class:`~abtest_harness.errors.ConfigError` naming the file, the stage (when there
is one) and the field.

>>> spec = load_spec(DEFAULT_SPEC)
>>> [s.name for s in spec.stages][:3], list(spec.versions)
(['baseline', 'Blue_0', 'Blue_50'], ['green', 'blue'])
>>> dict(spec.stage("Blue_50").expect["weighted"])
{'green': 0.5, 'blue': 0.5}
>>> spec.stage("Blue_Green").images["green"].describe()
'image B (abtest/scorer-b)'

A stage plan in the older ``stages.yaml`` format (versions, images, weights) loads too, as
a spec whose stages are that plan's kustomize overlays (:func:`spec_from_plan`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from abtest_harness import yamlio
from abtest_harness.errors import ConfigError, named
from abtest_harness.plan import MANIFESTS_DIR, ImageSpec, RolloutPlan, parse_plan
from abtest_harness.routing import Request

__all__ = [
    "API_VERSION",
    "DEFAULT_SPEC",
    "FilesSource",
    "GatewaySpec",
    "HelmChart",
    "HelmSource",
    "KustomizeSource",
    "PlanSource",
    "RolloutSpec",
    "StageImage",
    "StageSpec",
    "load_spec",
    "parse_spec",
    "read_text",
    "schema",
    "spec_from_plan",
    "with_files",
]

API_VERSION = "abtest-harness/v1"
KIND = "Rollout"
DEFAULT_SPEC = MANIFESTS_DIR / "rollout.yaml"
#: Outcomes an expectation may name besides a version.
_STATUS = re.compile(r"^status:[1-5][0-9][0-9]$")
#: Headers a class may not set: the request's authority is the class's ``host`` field, so
#: the host the data plane sees and the host the oracle routes are always one and the same.
_RESERVED_HEADERS = {"host", ":authority", "content-length", "transfer-encoding", "connection"}
_SHARE_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class FilesSource:
    """Plain YAML files and directories (every ``*.yaml``/``*.yml`` below, in name order)."""

    paths: tuple[Path, ...]

    def describe(self) -> str:
        return "files " + ", ".join(str(p) for p in self.paths)


@dataclass(frozen=True)
class KustomizeSource:
    """A kustomize directory, rendered with ``kubectl kustomize``."""

    path: Path

    def describe(self) -> str:
        return f"kustomize {self.path}"


@dataclass(frozen=True)
class HelmChart:
    """One ``helm template`` call: a local chart, its release name, values files and ``--set``s."""

    chart: Path
    release: str
    namespace: str | None = None
    values: tuple[Path, ...] = ()
    set: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def describe(self) -> str:
        sets = "".join(f" --set {k}={v}" for k, v in self.set.items())
        values = "".join(f" -f {v}" for v in self.values)
        return f"helm template {self.release} {self.chart}{values}{sets}"


@dataclass(frozen=True)
class HelmSource:
    """Helm charts rendered with ``helm template``, their objects concatenated in order."""

    charts: tuple[HelmChart, ...]

    def describe(self) -> str:
        return "; ".join(c.describe() for c in self.charts)


@dataclass(frozen=True)
class PlanSource:
    """A stage of a ``stages.yaml`` plan: its kustomize base with the stage's images and weights."""

    plan: RolloutPlan
    stage: str

    def describe(self) -> str:
        return f"plan {self.plan.source} stage {self.stage}"


Source = FilesSource | KustomizeSource | HelmSource | PlanSource


@dataclass(frozen=True)
class GatewaySpec:
    """Where requests enter: the Host they carry by default and the Gateway server port."""

    host: str
    port: int = 80


@dataclass(frozen=True)
class StageImage:
    """The image a version must run in a stage, and the answer it must give if known.

    Named by a key of the spec's ``images`` (`key` set, `ref` its repository: any tag, since
    ``--workloads docker`` and kind retag by content), or by an image reference (`key` None;
    with a tag or digest the pods must run exactly it, without one any tag of it).
    """

    ref: str
    key: str | None = None
    answer: str | None = None

    def matches(self, image: str) -> bool:
        """True when a container image reference is this image."""
        from abtest_harness.plan import repository_of

        if self.key is not None or repository_of(self.ref) == self.ref:
            return repository_of(image) == repository_of(self.ref)
        return image == self.ref

    def describe(self) -> str:
        return f"image {self.key} ({self.ref})" if self.key is not None else self.ref


@dataclass(frozen=True)
class StageSpec:
    """One stage: where its objects come from and, optionally, what each class must get."""

    name: str
    source: Source
    description: str = ""
    #: class name -> outcome (version or ``status:NNN``) -> share; None: the oracle decides.
    expect: Mapping[str, Mapping[str, float]] | None = None
    #: version -> the image it runs; the versions that run in this stage, exactly.
    #: None: not declared (answers are checked against the images the manifests name).
    images: Mapping[str, StageImage] | None = None


@dataclass(frozen=True)
class RolloutSpec:
    """A whole rollout: versions, request classes, images and ordered stages."""

    name: str
    gateway: GatewaySpec
    versions: Mapping[str, Mapping[str, str]]
    classes: tuple[Request, ...]
    stages: tuple[StageSpec, ...]
    images: Mapping[str, ImageSpec] = field(default_factory=lambda: MappingProxyType({}))
    namespace: str | None = None
    source: Path = DEFAULT_SPEC

    @property
    def base_dir(self) -> Path:
        """The directory relative paths of the spec are resolved against."""
        return self.source.parent

    def stage(self, name: str) -> StageSpec:
        """The stage called `name`; a ConfigError lists the known names."""
        return named(self.stages, name, lambda s: s.name, obj=f"spec {self.source}", field="stages", noun="stage")

    def request_class(self, name: str) -> Request:
        """The request class called `name`; a ConfigError lists the known names."""
        return named(self.classes, name, lambda r: r.label, obj=f"spec {self.source}", field="classes", noun="class")


# ----------------------------------------------------------------------------- loading


def read_text(path: Path, what: str) -> str:
    """A file's text as UTF-8; a ConfigError (missing, a directory, not UTF-8) otherwise."""
    try:
        if path.is_file() and path.stat().st_size > yamlio.MAX_BYTES:
            raise ConfigError(f"{what} {path}", "", f"is larger than {yamlio.MAX_BYTES} bytes; refused")
        data = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{what} {path}", "", "is a directory, not a file") from None
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}", "", "no such file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}", "", f"cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}", "", f"not UTF-8 text (byte {exc.start})") from None


def load_spec(path: str | Path | None = None) -> RolloutSpec:
    """Read and check a spec file (default ``manifests/rollout.yaml``).

    A file without ``apiVersion`` that has ``stages`` and ``images`` is read as a
    ``stages.yaml`` plan (:func:`spec_from_plan`).
    """
    source = Path(path) if path is not None else DEFAULT_SPEC
    text = read_text(source, "spec")
    documents = yamlio.parse_documents(text, f"spec {source}")  # bounded: size, alias expansion, depth
    if len(documents) > 1:
        raise ConfigError(f"spec {source}", "", f"holds {len(documents)} YAML documents; a spec is one")
    raw = documents[0] if documents else None
    if isinstance(raw, dict) and "apiVersion" not in raw and {"versions", "images", "stages"} <= set(raw):
        return spec_from_plan(parse_plan(raw, source=str(source)))
    return parse_spec(raw, source=source)


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The JSON Schema of a spec file (shipped as ``harness/schemas/rollout.schema.json``)."""
    text = resources.files("abtest_harness").joinpath("schemas/rollout.schema.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def parse_spec(raw: Any, *, source: Path) -> RolloutSpec:
    """Check a spec given as plain data (what ``yaml.safe_load`` returns) and build it."""
    _check_schema(raw, source)
    where = f"spec {source}"
    base = source.parent
    gateway = GatewaySpec(host=str(raw["gateway"]["host"]), port=int(raw["gateway"].get("port", 80)))

    versions = {str(k): MappingProxyType({str(a): str(b) for a, b in v.items()}) for k, v in raw["versions"].items()}
    _check_selectors_distinct(versions, where)

    images: dict[str, ImageSpec] = {}
    for key, image in (raw.get("images") or {}).items():
        images[str(key)] = ImageSpec(str(key), image["repository"], image["answer"])

    classes: list[Request] = []
    for i, entry in enumerate(raw["classes"]):
        name = entry["name"]
        if name in {c.label for c in classes}:
            raise ConfigError(where, f"classes[{i}].name", f"class {name!r} is defined twice")
        headers = dict(entry.get("headers") or {})
        for header in headers:
            if header.lower() in _RESERVED_HEADERS:
                hint = " (set the class's `host` field instead)" if header.lower() in {"host", ":authority"} else ""
                raise ConfigError(where, f"classes[{i}].headers.{header}", f"may not be set by a class{hint}")
        lowered = [h.lower() for h in headers]
        if len(set(lowered)) != len(lowered):
            raise ConfigError(where, f"classes[{i}].headers", "names a header twice (names are case-insensitive)")
        classes.append(
            Request(
                label=name,
                path=entry.get("path", "/"),
                method=entry.get("method", "GET"),
                headers=headers,
                authority=entry.get("host", gateway.host),
                port=gateway.port,
            )
        )

    stages: list[StageSpec] = []
    for i, entry in enumerate(raw["stages"]):
        name = entry["name"]
        obj = f"spec {source} stage {name}"
        if name in {s.name for s in stages}:
            raise ConfigError(obj, f"stages[{i}].name", "duplicate stage name")
        stage_source = _parse_source(entry["source"], base, obj)
        expect = None
        if "expect" in entry:
            expect = _parse_expect(entry["expect"], obj, versions, [c.label for c in classes])
        stage_images = None
        if "images" in entry:
            stage_images = _parse_stage_images(entry["images"], obj, versions, images)
        stages.append(StageSpec(name, stage_source, str(entry.get("description", "")), expect, stage_images))

    return RolloutSpec(
        name=str(raw.get("name") or source.stem),
        gateway=gateway,
        versions=MappingProxyType(versions),
        classes=tuple(classes),
        stages=tuple(stages),
        images=MappingProxyType(images),
        namespace=raw.get("namespace"),
        source=source,
    )


@lru_cache(maxsize=1)
def _fast_validator() -> Any:
    import jsonschema_rs

    return jsonschema_rs.Draft202012Validator(schema(), validate_formats=False)


def _fast_valid(raw: Any) -> bool:
    """True when jsonschema-rs accepts `raw` (a fast yes; python-jsonschema explains a no).

    The schema's patterns are ASCII classes anchored with ``^...$``, on which Rust's regex
    accepts no more than Python's (Python's ``$`` also matches before a final newline), so a
    yes here is a yes from python-jsonschema. Data it cannot take (a YAML timestamp) is a no.
    """
    try:
        return bool(_fast_validator().is_valid(raw))
    except Exception:  # noqa: BLE001 - anything it cannot judge goes to python-jsonschema
        return False


def _check_schema(raw: Any, source: Path) -> None:
    if _fast_valid(raw):
        return
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(raw))
    if not errors:
        return
    error = min(errors, key=lambda e: (len(e.absolute_path), str(list(e.absolute_path))))
    best = jsonschema.exceptions.best_match([error]) or error
    path = list(best.absolute_path)
    obj = f"spec {source}"
    if len(path) >= 2 and path[0] == "stages" and isinstance(raw, dict):
        try:
            name = raw["stages"][path[1]].get("name")
        except (AttributeError, IndexError, KeyError, TypeError):
            name = None
        if isinstance(name, str):
            obj = f"{obj} stage {name}"
    if best.validator == "additionalProperties" and isinstance(best.instance, dict):
        known = (best.schema if isinstance(best.schema, dict) else {}).get("properties", {})
        unknown = sorted(str(k) for k in best.instance if k not in known)
        if unknown and known:
            raise ConfigError(obj, _field([*path, unknown[0]]), f"unknown key (allowed: {', '.join(sorted(known))})")
    raise ConfigError(obj, _field(path) or "(top level)", _message(best))


def _field(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: Any) -> str:
    """A schema error in words: unknown keys and missing keys named, long instances cut."""
    validator = error.validator
    schema_part = error.schema if isinstance(error.schema, dict) else {}
    if validator == "required":
        return str(error.message).replace("is a required property", "is missing")
    if validator in ("minProperties", "maxProperties") and "files" in schema_part.get("properties", {}):
        return "give exactly one of: files, kustomize, helm"
    if validator == "const":
        return f"must be {error.validator_value!r}, got {error.instance!r}"
    if validator == "pattern":
        return f"{error.instance!r} does not have the expected form ({error.validator_value})"
    message = str(error.message)
    return message if len(message) <= 200 else message[:197] + "..."


def _check_selectors_distinct(versions: Mapping[str, Mapping[str, str]], where: str) -> None:
    """Two versions whose selectors could select the same pod cannot be told apart."""
    names = list(versions)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = versions[a], versions[b]
            if all(sa.get(k, sb[k]) == sb[k] for k in sb) and all(sb.get(k, sa[k]) == sa[k] for k in sa):
                raise ConfigError(
                    where,
                    f"versions.{b}",
                    f"selector {dict(sb)} does not exclude version {a}'s {dict(sa)}: "
                    "one pod could be both (give them a label with different values)",
                )


def _existing(base: Path, value: str, obj: str, field_name: str, *, want_dir: bool | None = None) -> Path:
    path = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if not path.exists():
        raise ConfigError(obj, field_name, f"{value!r}: no such file or directory ({path})")
    if want_dir is True and not path.is_dir():
        raise ConfigError(obj, field_name, f"{value!r} is not a directory")
    if want_dir is False and not path.is_file():
        raise ConfigError(obj, field_name, f"{value!r} is a directory, not a file")
    return path


def _parse_source(raw: Mapping[str, Any], base: Path, obj: str) -> Source:
    if "files" in raw:
        return FilesSource(tuple(_existing(base, p, obj, f"source.files[{i}]") for i, p in enumerate(raw["files"])))
    if "kustomize" in raw:
        path = _existing(base, raw["kustomize"], obj, "source.kustomize", want_dir=True)
        if not any((path / n).is_file() for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
            raise ConfigError(obj, "source.kustomize", f"{raw['kustomize']!r} has no kustomization.yaml")
        return KustomizeSource(path)
    charts: list[HelmChart] = []
    for i, entry in enumerate(raw["helm"]):
        where = f"source.helm[{i}]"
        chart = _existing(base, entry["chart"], obj, f"{where}.chart", want_dir=True)
        if not (chart / "Chart.yaml").is_file():
            raise ConfigError(obj, f"{where}.chart", f"{entry['chart']!r} has no Chart.yaml")
        values = tuple(
            _existing(base, v, obj, f"{where}.values[{j}]", want_dir=False)
            for j, v in enumerate(entry.get("values", []))
        )
        sets = {str(k): _set_value(v) for k, v in (entry.get("set") or {}).items()}
        for key in sets:
            if not key or any(c in key for c in "=,\n"):
                raise ConfigError(obj, f"{where}.set.{key}", "a key may not contain '=', ',' or a line break")
        charts.append(
            HelmChart(
                chart=chart,
                release=entry.get("release", chart.name),
                namespace=entry.get("namespace"),
                values=values,
                set=MappingProxyType(sets),
            )
        )
    releases = [c.release for c in charts]
    for i, release in enumerate(releases):
        if releases.index(release) != i:
            raise ConfigError(obj, f"source.helm[{i}].release", f"release {release!r} is named twice")
    return HelmSource(tuple(charts))


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_expect(
    raw: Mapping[str, Mapping[str, float]], obj: str, versions: Mapping[str, Any], classes: Sequence[str]
) -> Mapping[str, Mapping[str, float]]:
    out: dict[str, Mapping[str, float]] = {}
    for name, shares in raw.items():
        if name not in classes:
            raise ConfigError(obj, f"expect.{name}", f"no request class {name!r} (classes: {', '.join(classes)})")
        for outcome in shares:
            if outcome not in versions and not _STATUS.match(outcome):
                raise ConfigError(
                    obj,
                    f"expect.{name}.{outcome}",
                    f"not a version ({', '.join(versions)}) nor a status outcome like status:503",
                )
        total = sum(float(v) for v in shares.values())
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            shown = ", ".join(f"{k} {v:g}" for k, v in shares.items())
            raise ConfigError(obj, f"expect.{name}", f"shares sum to {total:g}, not 1 ({shown})")
        out[name] = MappingProxyType({str(k): float(v) for k, v in shares.items()})
    return MappingProxyType(out)


def _parse_stage_images(
    raw: Mapping[str, str], obj: str, versions: Mapping[str, Any], images: Mapping[str, ImageSpec]
) -> Mapping[str, StageImage]:
    out: dict[str, StageImage] = {}
    for version, value in raw.items():
        if version not in versions:
            raise ConfigError(obj, f"images.{version}", f"not a version ({', '.join(versions)})")
        value = str(value)
        if value in images:
            image = images[value]
            out[str(version)] = StageImage(image.repository, key=value, answer=image.answer)
        elif "/" in value or ":" in value or "@" in value:
            out[str(version)] = StageImage(value)
        else:
            known = ", ".join(images) or "none"
            raise ConfigError(
                obj,
                f"images.{version}",
                f"{value!r} is not a key of the spec's images (known: {known}) nor an image reference "
                "with a '/', ':' or '@' (e.g. docker.io/library/nginx:1.27)",
            )
    return MappingProxyType(out)


# ----------------------------------------------------------------------------- the sample plan

#: The sample plan's conventions: each version's pods carry ``app: model`` and
#: ``model_version: <version>``; a request pinned with ``x-api-version: V`` goes to V.
_PLAN_APP_LABEL = {"app": "model"}
_PLAN_VERSION_LABEL = "model_version"
_PLAN_PIN_HEADER = "x-api-version"


def spec_from_plan(plan: RolloutPlan) -> RolloutSpec:
    """A ``stages.yaml`` plan as a spec: the sample's labels, classes and promised shares.

    Each stage renders the plan's kustomize base with that stage's images and weights
    (:func:`abtest_harness.render.render_stage`); its expectation is what the plan promises: the
    weights for a request without a pin, and ``x-api-version: V`` pinned to V (503 where V
    does not run); its ``images`` are the plan stage's.
    """
    versions = {v: MappingProxyType({**_PLAN_APP_LABEL, _PLAN_VERSION_LABEL: v}) for v in plan.versions}
    classes = (Request("weighted"),) + tuple(
        Request(f"header-{v}", headers={_PLAN_PIN_HEADER: v}) for v in reversed(plan.versions)
    )
    stages = []
    for stage in plan.stages:
        expect: dict[str, Mapping[str, float]] = {
            "weighted": MappingProxyType({v: w / 100 for v, w in stage.weights.items() if w > 0})
        }
        for v in plan.versions:
            expect[f"header-{v}"] = MappingProxyType({v: 1.0} if v in stage.running else {"status:503": 1.0})
        runs = {
            v: StageImage(plan.images[key].repository, key=key, answer=plan.images[key].answer)
            for v, key in stage.images.items()
        }
        stages.append(
            StageSpec(stage.name, PlanSource(plan, stage.name), stage.description, MappingProxyType(expect),
                      MappingProxyType(runs))
        )
    return RolloutSpec(
        name=Path(plan.source).stem,
        gateway=GatewaySpec("localhost", 80),
        versions=MappingProxyType(versions),
        classes=classes,
        stages=tuple(stages),
        images=plan.images,
        namespace=plan.namespace,
        source=Path(plan.source),
    )


# ----------------------------------------------------------------------------- a spec as data


def with_files(spec: RolloutSpec, files: Mapping[str, Sequence[Path]]) -> dict[str, Any]:
    """`spec` as spec-file data, each stage's source replaced by plain YAML files.

    ``files`` maps every stage name to the files that hold its objects (absolute paths, so
    the data can be written anywhere). Everything else (versions, classes, images, each
    stage's ``expect`` and ``images``) is kept: :func:`parse_spec` of the result gives back
    `spec` with only the stages' sources changed. This is how a check runs a suite on objects
    that are not the ones the spec's tools render (``abtest mutate --suite``).
    """
    missing = [s.name for s in spec.stages if s.name not in files]
    if missing:
        raise ValueError(f"no files for stage(s) {', '.join(missing)}")
    classes: list[dict[str, Any]] = []
    for request in spec.classes:
        entry: dict[str, Any] = {"name": request.label, "method": request.method, "path": request.path}
        if request.authority != spec.gateway.host:
            entry["host"] = request.authority
        if request.headers:
            entry["headers"] = dict(request.headers)
        classes.append(entry)
    stages: list[dict[str, Any]] = []
    for stage in spec.stages:
        entry = {"name": stage.name, "source": {"files": [str(Path(f).resolve()) for f in files[stage.name]]}}
        if stage.description:
            entry["description"] = stage.description
        if stage.expect is not None:
            entry["expect"] = {label: dict(shares) for label, shares in stage.expect.items()}
        if stage.images is not None:
            entry["images"] = {v: i.key if i.key is not None else i.ref for v, i in stage.images.items()}
        stages.append(entry)
    data: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": spec.name,
        "gateway": {"host": spec.gateway.host, "port": spec.gateway.port},
        "versions": {name: dict(selector) for name, selector in spec.versions.items()},
        "classes": classes,
        "stages": stages,
    }
    if spec.images:
        data["images"] = {key: {"repository": i.repository, "answer": i.answer} for key, i in spec.images.items()}
    if spec.namespace is not None:
        data["namespace"] = spec.namespace
    return data
