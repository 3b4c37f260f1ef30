"""Offline validation of rendered objects: schemas first, then the semantics of the rollout.

Nothing here talks to a cluster. The input is the list of plain dicts that
``render_stage`` returns (as ``kubectl kustomize`` emits them); the output is a list of
:class:`Finding`, each naming a code, a severity, the object, the field path and what is
wrong. Errors make ``abtest validate`` exit non-zero; warnings are printed and tolerated.

Four layers, run in this order on every object:

1. Kubernetes kinds against the JSON schemas of one pinned Kubernetes version
   (:data:`KUBERNETES_VERSION`), in the strict flavour that rejects unknown fields. The
   schemas are the ones bundled with ``kubernetes-validate``; they are loaded once per kind
   and every error is reported (``kubernetes_validate.validate()`` stops at the first one
   and re-reads its 1.8 MB definitions file on every call).
2. Istio ``networking.istio.io`` kinds (VirtualService, DestinationRule, Gateway, ... in
   every API version the release serves) against the schemas of the Istio release in use,
   taken from that release's own CRDs (`abtest_harness.istio_schemas`), with unknown fields
   refused wherever the CRD does not preserve them (``mtach:``). Their ``metadata`` is
   Kubernetes' ObjectMeta and is checked against that schema; ``status`` is not checked.
   CEL rules of the CRDs (``x-kubernetes-validations``) are not evaluated.
   Every schema is compiled once with jsonschema-rs, which decides valid objects in
   microseconds; an invalid one is walked again by ``jsonschema`` to name each field.
3. Semantic checks across objects, in the spirit of ``istioctl analyze``. Where the
   meaning matches an istioctl message, its code is reused; the others are ``ABT0xx``.
4. What the routing oracle would refuse at run time (`abtest_harness.support.check_supported`,
   shared with the Envoy translation): ABT020 and ABT021, every refusal of an object, not
   only the first.

Errors are kept for what Istio (its validation, or Envoy) refuses, what the harness cannot
judge, and references that send requests nowhere; a choice Istio accepts but a reader may
not expect (weights not summing to 100) is a warning that says what Istio does with it.

========  =======  ==========================================================================
code      level    meaning
========  =======  ==========================================================================
IST0106   error    SchemaValidationError: the object does not match its schema (unknown or
                   misspelled field, wrong type, missing required field), or a value Istio's
                   validation refuses that the schema cannot express: a ``regex`` match that
                   RE2 (Envoy's engine) rejects (Istio's ``validateStringMatchRegexp``).
IST0101   error    ReferencedResourceNotFound: a destination host that is no Service (or
                   ServiceEntry host), a host:port the Service does not expose, a subset no
                   DestinationRule defines for that host, a Gateway that does not exist.
                   Istio expands only names without a dot (``svc`` -> ``svc.<ns>.svc.
                   cluster.local``); ``svc.ns`` is looked up as written, so it is reported
                   too, with the FQDN to use.
IST0112   error    VirtualServiceDestinationPortSelectorRequired: no port on a destination
                   whose Service exposes several.
IST0118   warning  PortNameIsNotUnderNamingConvention: a Service port whose name is not
                   ``<protocol>[-<suffix>]`` and that has no appProtocol (istioctl: info). The
                   reference charts' unnamed port is such a case.
IST0127   warning  NoMatchingWorkloadsFound: a Service selector that selects no
                   Deployment's pods: requests to it get 503. Expected at stages where a
                   version does not run. (Istio's analyzers use this code for
                   AuthorizationPolicy selectors only and have no message for a Service.)
IST0173   warning  DestinationRuleSubsetNotSelectPods: a DestinationRule subset that
                   selects none of its Service's pods (its labels contradict the Service's
                   selector, or no Deployment's pods carry them): requests to it get 503.
                   istioctl says error; here warning, since a stage where a version no longer
                   runs may keep its subset, and its ``expect`` table judges the 503.
IST0130   error    VirtualServiceUnreachableRule: an HTTP route after a catch-all route (no
                   match, or a match that admits every request), or whose matches all repeat
                   earlier ones. istioctl says warning; here the route is usually a header
                   route that silently stops pinning requests, so error.
IST0132   warning  VirtualServiceHostNotFoundInGateway: a VirtualService host that no server
                   of its Gateways admits: the ingress answers 404 for it.
ABT001    warning  The weights of a route do not sum to 100. Istio's weights are relative
                   (each destination gets weight / sum; a lone destination gets everything),
                   so this is valid: the finding states the shares Istio routes, e.g.
                   ``weights 3 + 1 = 4, not 100: Istio routes a 75% / b 25%``, which shows a
                   60/50 typo for what it does (54.5% / 45.5%).
ABT002    error    Weights Istio or Envoy refuse: a negative or non-integer weight, a total of
                   0 among several destinations, a total above 4294967295.
ABT003    error    An upper-case header name in a match: Istio's API requires lower-case.
ABT004    error    Two objects with the same kind, namespace and name (the second one wins
                   on apply and hides the first).
ABT005    error    No schema for the kind and apiVersion: it cannot be validated offline.
ABT006    error    Not a Kubernetes object: not a mapping, or no apiVersion, kind or
                   metadata.name.
ABT007    warning  A weight left out in a route with several destinations: Istio reads it as
                   0 and sends that destination nothing.
ABT010    warning  A container pulls ``Always`` (explicitly, or implied by no policy and a
                   ``:latest`` or missing tag): images side-loaded into kind are not found.
ABT011    warning  A container without a readinessProbe: traffic reaches it before it serves.
ABT012    error    A Service targetPort names a port that no container of the selected pods
                   declares: the Service gets no endpoint port.
ABT013    error    A Service's numeric targetPort (or its port, when targetPort is left out)
                   that no container of the selected pods declares as a containerPort: the
                   workloads listen on their declared port only, so every connection is
                   refused and the gateway answers 503 (the oracle reads it the same way).
ABT020    error    A field the routing oracle does not model (``abtest_harness.support.
                   check_supported``: ``fault``, ``mirror``, ``rewrite``, ``consistentHash``,
                   a ServiceEntry, ...): ``abtest run`` would refuse the stage, so validation
                   says so first, naming the object and the field.
ABT021    error    A value the oracle refuses because Istio's own validation does (an empty
                   match entry, ``prefix: ""`` in a header match, a subset defined twice, ...),
                   when no other error already names that field.
========  =======  ==========================================================================

>>> findings = validate_objects([{"apiVersion": "v1", "kind": "Namespace",
...                               "metadata": {"name": "abtesting", "labelz": {}}}])
>>> print(findings[0])
error IST0106 Namespace abtesting: metadata.labelz: unknown field 'labelz' (did you mean 'labels'?)
>>> has_errors(findings)
True
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

import re2

from abtest_harness import istio_schemas, routing, yamlio
from abtest_harness.errors import ConfigError, HarnessError, UnsupportedField
from abtest_harness.support import WeightProblem, check_supported, destination_shares

#: The Kubernetes version whose API schemas every object must match (bundled with
#: kubernetes-validate; kind clusters of the e2e path run this minor version).
KUBERNETES_VERSION = "1.37.0"
#: The cluster domain Istio appends to short host names.
CLUSTER_DOMAIN = "cluster.local"

Severity = Literal["error", "warning"]

ISTIO_NETWORKING_GROUP = "networking.istio.io"
_CLUSTER_SCOPED = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
     "StorageClass", "PersistentVolume", "Node", "IngressClass", "MutatingWebhookConfiguration",
     "ValidatingWebhookConfiguration"}
)
_WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
# Long schema messages quote the whole offending value; a finding is one readable line.
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class Finding:
    """One problem found in the objects, located precisely enough to fix without searching.

    ``obj`` is ``"Kind namespace/name"`` (``"Kind name"`` for cluster-scoped kinds) and
    ``path`` the field inside it, e.g. ``spec.http[2].route[0].weight``.
    """

    code: str
    severity: Severity
    obj: str
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.obj}: {self.path}" if self.path else self.obj
        return f"{self.severity} {self.code} {where}: {self.message}"


class InvalidObjects(ConfigError):
    """Raised by :func:`ensure_valid` when the objects have errors; keeps every finding."""

    def __init__(self, what: str, findings: Sequence[Finding]) -> None:
        self.findings = tuple(findings)
        errors = [f for f in self.findings if f.severity == "error"]
        first = errors[0]
        more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
        super().__init__(first.obj, first.path, f"{first.code} {first.message}{more} in {what}")


def validate_objects(
    objects: Sequence[Mapping[str, Any]], *, istio_version: str = istio_schemas.DEFAULT_MINOR
) -> list[Finding]:
    """Validate rendered objects: schemas of every object, then checks across them.

    Pure: reads only the objects and the bundled schemas (cached after the first call).
    Istio objects are checked against the schemas of ``istio_version`` (a release such as
    "1.30.4" or a minor; default: the one the kind backend installs).
    Findings come in object order, schema findings before semantic ones.
    """
    findings: list[Finding] = []
    wellformed: list[Mapping[str, Any]] = []
    for position, obj in enumerate(objects):
        problem = _malformed(obj)
        if problem:
            findings.append(Finding("ABT006", "error", f"object #{position}", "", problem))
            continue
        wellformed.append(obj)
        findings.extend(_schema_findings(obj, istio_version))
    findings.extend(_duplicate_findings(wellformed))
    index = _Index.build(wellformed)
    for check in _SEMANTIC_CHECKS:
        findings.extend(check(index))
    findings.extend(_oracle_refusals(wellformed, findings))
    return findings


def load_manifests(path: Path) -> list[Any]:
    """The documents of a YAML manifest file, for validating files rather than stages.

    Empty documents are dropped and ``kind: List`` documents are flattened into their
    items, as ``kubectl apply -f`` treats them. The file is read with `abtest_harness.yamlio`'s
    bounds: a missing path, a directory, bytes that are not UTF-8, a YAML syntax error or an
    alias bomb is a one-line ConfigError naming the file (and the line where there is one).
    """
    documents = yamlio.load_documents(path)
    objects: list[Any] = []
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            objects.extend(doc["items"])
        elif doc is not None:
            objects.append(doc)
    return objects


#: The file names read from a directory given to `load_manifest_paths`.
MANIFEST_SUFFIXES = (".yaml", ".yml")
# A directory holding one of these is a kustomization or a Helm chart: its files are inputs of
# a renderer, not objects.
_RENDERER_INPUTS = {"kustomization.yaml": "a kustomization (render it with `kubectl kustomize`)",
                    "kustomization.yml": "a kustomization (render it with `kubectl kustomize`)",
                    "Kustomization": "a kustomization (render it with `kubectl kustomize`)",
                    "Chart.yaml": "a Helm chart (render it with `helm template`)"}


def load_manifest_paths(paths: Iterable[str | Path]) -> list[Any]:
    """The objects of several manifest files and directories, as one set (``abtest validate --file``).

    A file is read as :func:`load_manifests` reads it. A directory contributes every
    ``.yaml``/``.yml`` file below it, in sorted path order; hidden files and directories are
    skipped. References across files resolve, because the checks see all the objects at
    once; the same object in two files is ABT004. A missing path, a directory with no YAML
    file, a kustomization or a Helm chart (inputs of a renderer, not objects) is a one-line
    ConfigError naming the path.
    """
    objects: list[Any] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for file in _manifest_files(path):
                objects.extend(load_manifests(file))
        elif path.exists():
            objects.extend(load_manifests(path))
        else:
            raise ConfigError(str(path), "", "no such file or directory")
    return objects


def _manifest_files(directory: Path) -> list[Path]:
    files: list[Path] = []
    for file in sorted(directory.rglob("*")):
        relative = file.relative_to(directory).parts
        if any(part.startswith(".") for part in relative) or not file.is_file():
            continue
        if file.name in _RENDERER_INPUTS:
            raise ConfigError(str(file.parent), "", f"is {_RENDERER_INPUTS[file.name]}, not a directory of objects")
        if file.suffix in MANIFEST_SUFFIXES:
            files.append(file)
    if not files:
        raise ConfigError(str(directory), "", "is a directory that holds no .yaml/.yml file")
    return files


def has_errors(findings: Iterable[Finding]) -> bool:
    """True when any finding is an error (the CLI then exits non-zero)."""
    return any(f.severity == "error" for f in findings)


def summarize(findings: Sequence[Finding]) -> str:
    """A short verdict for one line of CLI output: ``valid``, ``valid (2 warnings)``, ``invalid: ...``.

    >>> summarize([])
    'valid'
    """
    counts = Counter(f.severity for f in findings)
    warnings = f"{counts['warning']} warning{'s' if counts['warning'] != 1 else ''}"
    if counts["error"]:
        errors = f"{counts['error']} error{'s' if counts['error'] != 1 else ''}"
        return f"invalid: {errors}, {warnings}"
    return f"valid ({warnings})" if counts["warning"] else "valid"


def format_findings(findings: Sequence[Finding]) -> str:
    """All findings, errors first, one per line (what ``abtest validate`` prints)."""
    ordered = sorted(findings, key=lambda f: f.severity != "error")
    return "\n".join(str(f) for f in ordered)


def ensure_valid(objects: Sequence[Mapping[str, Any]], *, what: str) -> list[Finding]:
    """Validate and raise :class:`InvalidObjects` on any error; return the warnings otherwise.

    ``what`` names the input in the error, e.g. ``"stage Blue_50"``. Meant as a gate before
    objects are applied to a mesh.
    """
    findings = validate_objects(objects)
    if has_errors(findings):
        raise InvalidObjects(what, findings)
    return findings


# --------------------------------------------------------------------------- helpers


def _malformed(obj: object) -> str:
    """Why ``obj`` is not a Kubernetes object at all, or "" when it has the basic shape."""
    if not isinstance(obj, Mapping):
        return f"not a mapping but {type(obj).__name__}"
    missing = [k for k in ("apiVersion", "kind") if not isinstance(obj.get(k), str) or not obj.get(k)]
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping) or not isinstance(metadata.get("name"), str):
        missing.append("metadata.name")
    return f"missing {', '.join(missing)}" if missing else ""


def _namespace(obj: Mapping[str, Any]) -> str:
    """The namespace the object lives in ("" for cluster-scoped kinds; "default" if unset)."""
    if obj["kind"] in _CLUSTER_SCOPED:
        return ""
    ns = obj["metadata"].get("namespace")
    return ns if isinstance(ns, str) and ns else "default"


def _label(obj: Mapping[str, Any]) -> str:
    ns = _namespace(obj)
    name = obj["metadata"]["name"]
    return f"{obj['kind']} {ns}/{name}" if ns else f"{obj['kind']} {name}"


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _path(parts: Iterable[str | int]) -> str:
    """``("spec", "http", 2, "route")`` -> ``spec.http[2].route``; odd keys are quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one: semantic checks run on unchecked data."""
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _did_you_mean(word: str, vocabulary: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(set(vocabulary)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------- schemas


def _schema_findings(obj: Mapping[str, Any], istio_version: str) -> list[Finding]:
    api_version, kind = obj["apiVersion"], obj["kind"]
    if api_version.split("/")[0] == ISTIO_NETWORKING_GROUP:
        return _istio_schema_findings(obj, istio_version)
    validator = _kubernetes_validator(kind, api_version)
    if validator is None:
        return [
            Finding("ABT005", "error", _label(obj), "apiVersion",
                    f"no schema for {kind} {api_version} in Kubernetes {KUBERNETES_VERSION} "
                    f"or Istio {istio_schemas.minor_of(istio_version)} ({ISTIO_NETWORKING_GROUP}): "
                    "cannot be validated offline")
        ]
    return [
        Finding("IST0106", "error", _label(obj), path, message)
        for path, message in _jsonschema_problems(validator, obj)
    ]


@lru_cache(maxsize=1)
def _kubernetes_schema_dir() -> Path:
    # Found without importing kubernetes_validate, whose import pulls in python-jsonschema.
    spec = importlib.util.find_spec("kubernetes_validate")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise HarnessError("kubernetes-validate is not installed; install the release pinned in pyproject.toml")
    root = Path(locations[0]) / "kubernetes-json-schema"
    schema_dir = root.joinpath(f"v{KUBERNETES_VERSION}-local-strict")
    if not schema_dir.is_dir():
        raise HarnessError(
            f"kubernetes-validate has no strict schemas for Kubernetes {KUBERNETES_VERSION} "
            f"(looked in {schema_dir}); install the kubernetes-validate release pinned in pyproject.toml"
        )
    return schema_dir


@lru_cache(maxsize=1)
def _kubernetes_definitions() -> dict[str, Any]:
    """The shared definitions every per-kind schema refers to, parsed once (1.8 MB)."""
    definitions: dict[str, Any] = json.loads(_kubernetes_schema_dir().joinpath("_definitions.json").read_text())
    return definitions


@lru_cache(maxsize=1)
def _kubernetes_registry() -> Any:
    """The definitions as a ``referencing`` registry, for the detailed (python-jsonschema) walk."""
    from referencing import Registry, Resource

    definitions = _kubernetes_definitions()
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


@lru_cache(maxsize=1)
def _kubernetes_fast_registry() -> Any:
    import jsonschema_rs

    definitions = _kubernetes_definitions()
    return jsonschema_rs.Registry([(definitions["$id"], definitions)])


def _compile_fast(schema: Mapping[str, Any], kubernetes: bool) -> Any:
    """A compiled jsonschema-rs validator (Draft 2020-12, formats not asserted, as in python-jsonschema)."""
    import jsonschema_rs

    registry = _kubernetes_fast_registry() if kubernetes else None
    return jsonschema_rs.Draft202012Validator(dict(schema), validate_formats=False, registry=registry)


@cache
def _kubernetes_validator(kind: str, api_version: str) -> _Validator | None:
    """A strict validator for one kind, or None when the pinned version has no such kind.

    The bundled files are named ``<kind>-<group prefix>-<version>.json``, e.g.
    ``deployment-apps-v1.json``, ``service-v1.json``, ``ingress-networking-v1.json``.
    """
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema_file = _kubernetes_schema_dir().joinpath(f"{kind.lower()}-{group_version}.json")
    if not schema_file.is_file():
        return None
    return _Validator(json.loads(schema_file.read_text()), kubernetes=True)


@lru_cache(maxsize=1)
def _object_meta_validator() -> _Validator:
    """Kubernetes' strict ObjectMeta schema, for the metadata of Istio objects."""
    definitions_uri = _kubernetes_definitions()["$id"]
    schema = {"$ref": f"{definitions_uri}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    return _Validator(schema, kubernetes=True)


class _Validator:
    """A strict JSON Schema check: a compiled fast check first, the detailed walk only on failure.

    Valid objects (nearly all of them) cost one call of the compiled jsonschema-rs validator;
    an invalid one is walked again by the reference ``jsonschema`` implementation, whose
    errors carry the schema and instance needed to name each field.
    """

    def __init__(self, schema: Mapping[str, Any], *, kubernetes: bool = False) -> None:
        self._schema = schema
        self._kubernetes = kubernetes
        self._fast: Any = None
        self._detailed: Any = None

    def iter_errors(self, instance: Any) -> Iterator[Any]:
        if self._fast is None:
            self._fast = _compile_fast(self._schema, self._kubernetes)
        if self._fast.is_valid(instance):
            return iter(())
        if self._detailed is None:
            import jsonschema

            registry = _kubernetes_registry() if self._kubernetes else None
            self._detailed = (jsonschema.Draft202012Validator(self._schema, registry=registry) if registry
                              else jsonschema.Draft202012Validator(self._schema))
        return iter(self._detailed.iter_errors(instance))


def _jsonschema_problems(
    validator: _Validator, obj: Mapping[str, Any], prefix: Sequence[str | int] = (), *, unknown_where: str = ""
) -> list[tuple[str, str]]:
    """(path, message) for every schema error, sorted by path; unknown fields reported at their own path."""
    problems: list[tuple[str, str]] = []
    for error in validator.iter_errors(obj):
        where = [*prefix, *error.absolute_path]
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            known = error.schema.get("properties", {})
            problems += [(_path([*where, key]), f"unknown field {key!r}{unknown_where}{_did_you_mean(key, known)}")
                         for key in error.instance if key not in known]
        elif error.validator == "required" and isinstance(error.instance, Mapping):
            problems += [(_path([*where, key]), "required field missing")
                         for key in error.validator_value if key not in error.instance]
        else:
            problems.append((_path(where), _short(error.message)))
    return sorted(problems)


def _istio_schema_findings(obj: Mapping[str, Any], istio_version: str) -> list[Finding]:
    api_version, kind = obj["apiVersion"], obj["kind"]
    schemas = istio_schemas.for_version(istio_version)
    validator = _istio_validator(schemas.minor, api_version, kind)
    if validator is None:
        return [
            Finding("ABT005", "error", _label(obj), "apiVersion",
                    f"no Istio {schemas.minor} schema for {kind} {api_version}; known versions: "
                    f"{', '.join(schemas.api_versions)}")
        ]
    # metadata is Kubernetes' ObjectMeta, checked against the Kubernetes schema; status is
    # written by the server and not checked; the CRD schema covers the rest (spec).
    findings = [
        Finding("IST0106", "error", _label(obj), path, message)
        for path, message in _jsonschema_problems(_object_meta_validator(), obj["metadata"], ["metadata"])
    ]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}
    where = f" in the Istio {schemas.minor} {api_version} {kind} schema"
    findings += [
        Finding("IST0106", "error", _label(obj), path, message)
        for path, message in _jsonschema_problems(validator, body, unknown_where=where)
    ]
    return findings


@cache
def _istio_validator(minor: str, api_version: str, kind: str) -> _Validator | None:
    schema = istio_schemas.for_version(minor).schema(api_version, kind)
    return None if schema is None else _Validator(schema)


# --------------------------------------------------------------------------- semantics


@dataclass
class _Index:
    """The objects by what the checks look up: Services, hosts, Gateways, subsets, workloads."""

    objects: list[Mapping[str, Any]]
    services: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    entry_hosts: set[str] = field(default_factory=set)
    gateways: set[tuple[str, str]] = field(default_factory=set)
    gateway_objects: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    subsets: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    pods: list[_Pods] = field(default_factory=list)

    @classmethod
    def build(cls, objects: list[Mapping[str, Any]]) -> _Index:
        index = cls(objects)
        for obj in objects:
            kind, ns, spec = obj["kind"], _namespace(obj), _mapping(obj.get("spec"))
            name = obj["metadata"]["name"]
            if kind == "Service" and obj["apiVersion"] == "v1":
                index.services[(ns, name)] = obj
            elif kind == "ServiceEntry":
                index.entry_hosts.update(h for h in _list(spec.get("hosts")) if isinstance(h, str))
            elif kind == "Gateway" and obj["apiVersion"].startswith(ISTIO_NETWORKING_GROUP):
                index.gateways.add((ns, name))
                index.gateway_objects[(ns, name)] = obj
            elif kind == "DestinationRule":
                target = _service_of_host(str(spec.get("host", "")), ns)
                if target:
                    names = {str(_mapping(s).get("name")) for s in _list(spec.get("subsets"))}
                    index.subsets.setdefault(target, set()).update(names)
            elif kind in _WORKLOAD_KINDS:
                template = _mapping(spec.get("template"))
                labels = _mapping(_mapping(template.get("metadata")).get("labels"))
                pod_spec = _mapping(template.get("spec"))
                index.pods.append(_Pods(ns, labels, _port_names(pod_spec), pod_spec))
            elif kind == "Pod":
                index.pods.append(_Pods(ns, _mapping(obj["metadata"].get("labels")), _port_names(spec), spec))
        return index

    def selected(self, ns: str, selector: Mapping[str, Any]) -> list[_Pods]:
        """The workloads in ``ns`` whose pods carry every label of ``selector``."""
        return [p for p in self.pods
                if p.namespace == ns and all(p.labels.get(k) == v for k, v in selector.items())]

    def selects_pods(self, ns: str, selector: Mapping[str, Any]) -> bool:
        return bool(self.selected(ns, selector))


@dataclass(frozen=True)
class _Pods:
    """The pods of one workload: where they run, their labels, their named container ports, their spec."""

    namespace: str
    labels: Mapping[str, Any]
    port_names: frozenset[str]
    spec: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _port_names(pod_spec: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(
        str(port["name"])
        for container in _list(pod_spec.get("containers"))
        for port in map(_mapping, _list(_mapping(container).get("ports")))
        if "name" in port
    )


def _service_of_host(host: str, namespace: str) -> tuple[str, str] | None:
    """(namespace, name) of the Service a host names as Istio resolves it, else None.

    Istio turns a name without a dot into ``name.<namespace>.svc.<domain>`` and takes every
    other host as written, so only short names and full FQDNs name a Kubernetes Service.
    """
    if not host or host.startswith("*"):
        return None
    if "." not in host:
        return (namespace, host)
    suffix = f".svc.{CLUSTER_DOMAIN}"
    if host.endswith(suffix):
        parts = host[: -len(suffix)].split(".")
        if len(parts) == 2:
            return (parts[1], parts[0])
    return None


def _duplicate_findings(objects: list[Mapping[str, Any]]) -> list[Finding]:
    seen: set[tuple[str, str, str]] = set()
    findings = []
    for obj in objects:
        key = (obj["kind"], _namespace(obj), obj["metadata"]["name"])
        if key in seen:
            findings.append(Finding("ABT004", "error", _label(obj), "metadata.name",
                                    "defined twice: applying both keeps only the last one"))
        seen.add(key)
    return findings


def _virtual_services(index: _Index) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    for obj in index.objects:
        if obj["kind"] == "VirtualService" and obj["apiVersion"].startswith(ISTIO_NETWORKING_GROUP):
            yield obj, _mapping(obj.get("spec"))


def _route_lists(spec: Mapping[str, Any]) -> Iterator[tuple[list[str | int], list[Any]]]:
    """(path of the rule, its destinations) for every http, tcp and tls rule."""
    for protocol in ("http", "tcp", "tls"):
        for i, rule in enumerate(_list(spec.get(protocol))):
            yield [protocol, i], _list(_mapping(rule).get("route"))


def _check_weights(index: _Index) -> Iterator[Finding]:
    """Istio's weight rule (support.destination_shares, shared with the oracle).

    Errors only for what Istio or Envoy refuse (ABT002). Weights are relative, so a route
    whose weights do not sum to 100 is valid: ABT001 says which shares Istio gives, and
    ABT007 that an omitted weight among several destinations counts as 0.
    """
    for vs, spec in _virtual_services(index):
        for rule_path, route in _route_lists(spec):
            where: list[str | int] = ["spec", *rule_path, "route"]
            weights = [_mapping(dest).get("weight") for dest in route]
            try:
                shares = destination_shares(weights) if route else ()
            except WeightProblem as problem:
                at = where if problem.index is None else [*where, problem.index, "weight"]
                yield Finding("ABT002", "error", _label(vs), _path(at), f"weight: {problem.message}")
                continue
            for j, raw in enumerate(weights):
                if raw is None and len(route) > 1:
                    yield Finding("ABT007", "warning", _label(vs), _path([*where, j, "weight"]),
                                  f"weight left out in a route with {len(route)} destinations: Istio reads "
                                  "it as 0 and sends this destination nothing; write the weight")
            given = [w for w in weights if w is not None]
            if not given or sum(given) == 100:
                continue
            terms = " + ".join(str(w) for w in given)
            if len(route) == 1:
                yield Finding("ABT001", "warning", _label(vs), _path(where),
                              f"weight {terms} on a lone destination: Istio sends it every request "
                              "(100%) whatever its weight")
                continue
            split = " / ".join(f"{_destination_name(dest)} {_percent(share)}"
                               for dest, share in zip(route, shares, strict=True))
            yield Finding("ABT001", "warning", _label(vs), _path(where),
                          f"weights {terms} = {sum(given)}, not 100: Istio routes {split} "
                          "(each weight / the sum)")


def _percent(share: Fraction) -> str:
    """A share as a percent, to one decimal where it is not whole: 75%, 54.5%, 33.3%."""
    percent = share * 100
    return f"{int(percent)}%" if percent.denominator == 1 else f"{float(percent):.1f}%"


def _destination_name(dest: Any) -> str:
    """``host`` or ``host/subset`` of one route destination, for messages."""
    inner = _mapping(_mapping(dest).get("destination"))
    host, subset = inner.get("host"), inner.get("subset")
    name = str(host) if isinstance(host, str) else "?"
    return f"{name}/{subset}" if isinstance(subset, str) else name


def _check_destinations(index: _Index) -> Iterator[Finding]:
    for vs, spec in _virtual_services(index):
        ns = _namespace(vs)
        targets: list[tuple[list[str | int], Mapping[str, Any]]] = []
        for rule_path, route in _route_lists(spec):
            targets += [([*rule_path, "route", j, "destination"], _mapping(_mapping(d).get("destination")))
                        for j, d in enumerate(route)]
        for i, rule in enumerate(_list(spec.get("http"))):
            mirror = _mapping(_mapping(rule).get("mirror"))
            if mirror:
                targets.append((["http", i, "mirror"], mirror))
        for where, dest in targets:
            yield from _check_destination(index, vs, ns, ["spec", *where], dest)


def _check_destination(
    index: _Index, vs: Mapping[str, Any], ns: str, where: list[str | int], dest: Mapping[str, Any]
) -> Iterator[Finding]:
    host = dest.get("host")
    if not isinstance(host, str):
        return  # the schema check reports a missing or mistyped host
    if host in index.entry_hosts:
        return  # a ServiceEntry host: its ports are not modelled here
    target = _service_of_host(host, ns)
    service = index.services.get(target) if target else None
    if service is None:
        yield Finding("IST0101", "error", _label(vs), _path([*where, "host"]),
                      _host_not_found(index, host, ns))
        return
    ports = [p.get("port") for p in map(_mapping, _list(_mapping(service.get("spec")).get("ports")))]
    number = _mapping(dest.get("port")).get("number")
    svc = f"Service {target[0]}/{target[1]}" if target else host
    if number is None and len(ports) > 1:
        yield Finding("IST0112", "error", _label(vs), _path([*where, "port"]),
                      f"{svc} exposes ports {ports}: name the port to use")
    elif number is not None and number not in ports:
        yield Finding("IST0101", "error", _label(vs), _path([*where, "port", "number"]),
                      f"referenced host:port not found: {host}:{number} ({svc} exposes {ports})")
    subset = dest.get("subset")
    if isinstance(subset, str) and target and subset not in index.subsets.get(target, set()):
        known = sorted(index.subsets.get(target, set()))
        defined = f"subsets defined: {known}" if known else "no DestinationRule defines subsets for it"
        yield Finding("IST0101", "error", _label(vs), _path([*where, "subset"]),
                      f"referenced host+subset not found: {host}+{subset} ({defined})")


def _host_not_found(index: _Index, host: str, ns: str) -> str:
    parts = host.split(".")
    if len(parts) in (2, 3) and (parts[1], parts[0]) in index.services:
        fqdn = f"{parts[0]}.{parts[1]}.svc.{CLUSTER_DOMAIN}"
        return (f"referenced host not found: {host!r}; Istio expands only names without a dot, "
                f"so this is no Service: write {fqdn!r}")
    names = [f"{n}.{s}.svc.{CLUSTER_DOMAIN}" for s, n in index.services]
    return f"referenced host not found: {host!r} (no such Service in {ns}){_did_you_mean(host, names)}"


def _check_gateways(index: _Index) -> Iterator[Finding]:
    for vs, spec in _virtual_services(index):
        ns = _namespace(vs)
        refs: list[tuple[list[str | int], Any]] = [
            (["spec", "gateways", i], g) for i, g in enumerate(_list(spec.get("gateways")))
        ]
        for i, rule in enumerate(_list(spec.get("http"))):
            for j, match in enumerate(_list(_mapping(rule).get("match"))):
                refs += [(["spec", "http", i, "match", j, "gateways", k], g)
                         for k, g in enumerate(_list(_mapping(match).get("gateways")))]
        for where, ref in refs:
            if not isinstance(ref, str) or ref == "mesh":
                continue
            gw_ns, gw_name = _gateway_key(ref, ns)
            if (gw_ns, gw_name) not in index.gateways:
                names = [n for _, n in index.gateways]
                yield Finding("IST0101", "error", _label(vs), _path(where),
                              f"referenced gateway not found: {ref!r} (in namespace {gw_ns})"
                              f"{_did_you_mean(gw_name, names)}")


def _gateway_key(ref: str, vs_namespace: str) -> tuple[str, str]:
    """(namespace, name) of a Gateway reference, resolved as the oracle and Istio resolve it
    (``name``, ``ns/name``, ``./name``, legacy ``name.ns.svc.cluster.local``)."""
    gw_ns, _, gw_name = routing.resolve_gateway_name(ref, vs_namespace).partition("/")
    return gw_ns, gw_name


def _check_gateway_hosts(index: _Index) -> Iterator[Finding]:
    """A VirtualService host that no server of its Gateways admits is never served (IST0132).

    A server admits the hosts of VirtualServices in the namespace its host names (``ns/``,
    ``./`` or any), and only of those exported to the Gateway's namespace: the oracle's
    binding rules (`routing.server_host_parts`, `routing.exported_to`).
    """
    for vs, spec in _virtual_services(index):
        ns = _namespace(vs)
        admitted: list[str] = []
        names: list[str] = []
        hidden: list[str] = []  # Gateways whose namespace the exportTo leaves out
        for ref in _list(spec.get("gateways")):
            if not isinstance(ref, str) or ref == "mesh":
                continue
            gw_ns, gw_name = _gateway_key(ref, ns)
            gateway = index.gateway_objects.get((gw_ns, gw_name))
            if gateway is None:
                continue  # reported as IST0101
            names.append(ref)
            if not routing.exported_to(spec.get("exportTo"), ns, gw_ns):
                hidden.append(f"{gw_ns}/{gw_name}")
                continue  # the Gateway does not see this VirtualService at all
            for server in map(_mapping, _list(_mapping(gateway.get("spec")).get("servers"))):
                for server_host in _list(server.get("hosts")):
                    if not isinstance(server_host, str):
                        continue
                    host_ns, dns = routing.server_host_parts(server_host, gw_ns)
                    if host_ns in ("*", ns):
                        admitted.append(dns)
        if not names:
            continue
        for i, host in enumerate(_list(spec.get("hosts"))):
            if isinstance(host, str) and not any(routing.hosts_overlap(host, a) for a in admitted):
                unseen = (f"; exportTo {spec.get('exportTo')} hides it from {', '.join(hidden)}"
                          if hidden else "")
                yield Finding("IST0132", "warning", _label(vs), _path(["spec", "hosts", i]),
                              f"host {host!r} is admitted by no server of gateway(s) {', '.join(names)} "
                              f"(they admit {admitted}{unseen}): requests for it get 404")


_STRING_MATCH_FIELDS = ("uri", "scheme", "method", "authority")


def _check_matches(index: _Index) -> Iterator[Finding]:
    """Header names lower-case (ABT003) and every regex valid RE2 (IST0106, as Istio's validation)."""
    for vs, spec in _virtual_services(index):
        for i, rule in enumerate(_list(spec.get("http"))):
            for j, match in enumerate(_list(_mapping(rule).get("match"))):
                match = _mapping(match)
                base: list[str | int] = ["spec", "http", i, "match", j]
                string_matches = [([*base, f], match.get(f)) for f in _STRING_MATCH_FIELDS]
                for group in ("headers", "withoutHeaders", "queryParams"):
                    for name, value in _mapping(match.get(group)).items():
                        string_matches.append(([*base, group, name], value))
                        if group != "queryParams" and name != name.lower():
                            yield Finding("ABT003", "error", _label(vs), _path([*base, group, name]),
                                          f"header name {name!r} must be lower-case "
                                          f"(Istio's API requires it): write {name.lower()!r}")
                for where, value in string_matches:
                    pattern = _mapping(value).get("regex")
                    if isinstance(pattern, str):
                        problem = _re2_problem(pattern)
                        if problem:
                            yield Finding("IST0106", "error", _label(vs), _path([*where, "regex"]),
                                          f"regular expression {pattern!r} is not valid RE2: {problem}")


@lru_cache(maxsize=256)
def _re2_problem(pattern: str) -> str:
    try:
        re2.compile(pattern)
    except re2.error as exc:
        return str(exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc)
    return ""


_EVERYTHING_URI: tuple[Mapping[str, str], ...] = ({"prefix": "/"}, {"regex": ".*"}, {"regex": "/.*"})


def _is_catch_all(match: Any) -> bool:
    """True when one match entry admits every request: no conditions, or only ``uri: {prefix: /}``."""
    entry = _mapping(match)
    if set(entry) - {"name", "uri", "ignoreUriCase"}:
        return False
    return "uri" not in entry or entry["uri"] in _EVERYTHING_URI


def _check_unreachable(index: _Index) -> Iterator[Finding]:
    for vs, spec in _virtual_services(index):
        catch_all: str | None = None
        seen: list[Any] = []
        for i, rule in enumerate(_list(spec.get("http"))):
            rule = _mapping(rule)
            name = f"http[{i}]" + (f" ({rule['name']})" if isinstance(rule.get("name"), str) else "")
            matches = _list(rule.get("match"))
            where = _path(["spec", "http", i])
            if catch_all is not None:
                yield Finding("IST0130", "error", _label(vs), where,
                              f"route {name} is unreachable: route {catch_all} before it matches every "
                              "request; move it before that route")
            elif matches and all(m in seen for m in matches):
                yield Finding("IST0130", "error", _label(vs), where,
                              f"route {name} is unreachable: every one of its matches is repeated "
                              "from an earlier route")
            if catch_all is None and (not matches or any(_is_catch_all(m) for m in matches)):
                catch_all = name
            seen.extend(matches)


def _check_selectors(index: _Index) -> Iterator[Finding]:
    for obj in index.objects:
        spec, ns = _mapping(obj.get("spec")), _namespace(obj)
        if obj["kind"] == "Service" and obj["apiVersion"] == "v1":
            selector = _mapping(spec.get("selector"))
            if selector and not index.selects_pods(ns, selector):
                yield Finding("IST0127", "warning", _label(obj), "spec.selector",
                              f"no workload in {ns} has pods labelled {_labels(selector)}: the Service "
                              "has no endpoints and requests routed to it get 503")
        elif obj["kind"] == "DestinationRule":
            target = _service_of_host(str(spec.get("host", "")), ns)
            service = index.services.get(target) if target else None
            if service is None or target is None:
                continue
            selector = _mapping(_mapping(service.get("spec")).get("selector"))
            for i, subset in enumerate(_list(spec.get("subsets"))):
                subset_labels = _mapping(_mapping(subset).get("labels"))
                # A subset selects among the Service's endpoints (one rule with the oracle).
                labels = routing.endpoint_selector(selector, subset_labels)
                if selector and not labels:
                    yield Finding("IST0173", "warning", _label(obj), _path(["spec", "subsets", i, "labels"]),
                                  f"labels {_labels(subset_labels)} contradict the selector {_labels(selector)} "
                                  "of its Service: no endpoint, requests to this subset get 503")
                elif labels and not index.selects_pods(target[0], labels):
                    yield Finding("IST0173", "warning", _label(obj), _path(["spec", "subsets", i, "labels"]),
                                  f"no workload in {target[0]} has pods labelled {_labels(labels)}: "
                                  "requests to this subset get 503")


# Istio picks a port's protocol from its name, "<protocol>[-<suffix>]", or from appProtocol.
_ISTIO_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql",
                    "redis", "udp")


def _check_service_ports(index: _Index) -> Iterator[Finding]:
    """Port names Istio can read a protocol from (IST0118), targetPorts the pods declare (ABT012, ABT013).

    Whether a pod declares a targetPort is decided by `routing.declares_target_port`, the
    rule the oracle uses for endpoints, so a finding here is a 503 there.
    """
    for obj in index.objects:
        if obj["kind"] != "Service" or obj["apiVersion"] != "v1":
            continue
        spec, ns = _mapping(obj.get("spec")), _namespace(obj)
        selector = _mapping(spec.get("selector"))
        pods = index.selected(ns, selector) if selector else []
        for i, port in enumerate(map(_mapping, _list(spec.get("ports")))):
            name = port.get("name")
            named = isinstance(name, str) and any(
                name == p or name.startswith(p + "-") for p in _ISTIO_PROTOCOLS)
            if not named and "appProtocol" not in port:
                yield Finding("IST0118", "warning", _label(obj), _path(["spec", "ports", i, "name"]),
                              f"port {port.get('port')} name {name!r} does not follow Istio's "
                              "<protocol>[-<suffix>] convention (e.g. 'http') and has no appProtocol: "
                              "Istio has to guess the protocol")
            target = port.get("targetPort", port.get("port"))
            if not pods or isinstance(target, bool) or not isinstance(target, (int, str)):
                continue  # no pods: IST0127; a target of the wrong type: IST0106
            if any(routing.declares_target_port(p.spec, target) for p in pods):
                continue
            where = _path(["spec", "ports", i, "targetPort"])
            if isinstance(target, str) and not target.isdigit():
                known = sorted(set().union(*(p.port_names for p in pods)))
                yield Finding("ABT012", "error", _label(obj), where,
                              f"targetPort {target!r} names no container port of the selected pods "
                              f"(they name {known}): the Service has no endpoint port")
            else:
                declared = sorted({int(n) for p in pods for n in _container_port_numbers(p.spec)})
                implied = "" if "targetPort" in port else " (targetPort left out: the port number)"
                yield Finding("ABT013", "error", _label(obj), where,
                              f"targetPort {target}{implied} is no containerPort of the selected pods "
                              f"(they declare {declared}): nothing listens there, requests get 503")


def _container_port_numbers(pod_spec: Mapping[str, Any]) -> list[int]:
    return [port["containerPort"]
            for container in _list(pod_spec.get("containers"))
            for port in map(_mapping, _list(_mapping(container).get("ports")))
            if isinstance(port.get("containerPort"), int)]


def _labels(labels: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def _check_workloads(index: _Index) -> Iterator[Finding]:
    for obj in index.objects:
        if obj["kind"] not in _WORKLOAD_KINDS:
            continue
        pod = _mapping(_mapping(_mapping(obj.get("spec")).get("template")).get("spec"))
        for group in ("initContainers", "containers"):
            for i, container in enumerate(_list(pod.get(group))):
                container = _mapping(container)
                base: list[str | int] = ["spec", "template", "spec", group, i]
                policy, image = container.get("imagePullPolicy"), str(container.get("image", ""))
                if policy == "Always":
                    yield Finding("ABT010", "warning", _label(obj), _path([*base, "imagePullPolicy"]),
                                  "imagePullPolicy Always: images side-loaded into kind are pulled from a "
                                  "registry and fail; use IfNotPresent")
                elif policy is None and _defaults_to_always(image):
                    yield Finding("ABT010", "warning", _label(obj), _path([*base, "image"]),
                                  f"image {image!r} has no tag or ':latest' and no imagePullPolicy, so "
                                  "Kubernetes pulls Always; pin a tag or set IfNotPresent")
                if group == "containers" and "readinessProbe" not in container:
                    yield Finding("ABT011", "warning", _label(obj), _path([*base, "readinessProbe"]),
                                  f"container {container.get('name')!r} has no readinessProbe: it gets "
                                  "traffic before it serves")


def _defaults_to_always(image: str) -> bool:
    if "@" in image:
        return False
    last = image.rsplit("/", 1)[-1]
    return ":" not in last or last.endswith(":latest")


_SEMANTIC_CHECKS = (
    _check_weights,
    _check_destinations,
    _check_gateways,
    _check_gateway_hosts,
    _check_matches,
    _check_unreachable,
    _check_selectors,
    _check_service_ports,
    _check_workloads,
)


# --------------------------------------------------------------------------- the oracle's refusals

#: At most this many refusals are reported per object (each costs a copy and a re-check).
_MAX_REFUSALS_PER_OBJECT = 50
_PATH_TOKEN = re.compile(r"^([^.\[\]]+)((?:\[\d+\])*)$")


def _oracle_refusals(objects: Sequence[Mapping[str, Any]], earlier: Sequence[Finding]) -> list[Finding]:
    """What the routing oracle would refuse at run time, as findings (ABT020, ABT021).

    The oracle, the Envoy translation and the plan all start with
    `abtest_harness.support.check_supported`; it stops at the first problem, so each object is
    checked again without the field at fault until nothing more is found. A field the
    oracle does not model is ABT020; a value Istio's own validation refuses is ABT021,
    unless an earlier error already names the same field (a negative weight is ABT002,
    a ``regex: "*"`` header match IST0106). Objects with schema errors may be too broken
    for the oracle's walk; what it cannot read there is covered by those errors.
    """
    taken = {(f.obj, f.path) for f in earlier if f.severity == "error"}
    broken = {f.obj for f in earlier if f.code in ("IST0106", "ABT005")}
    findings: list[Finding] = []
    for obj in objects:
        label = _label(obj)
        for problem in _refusals(obj, tolerate=label in broken):
            if isinstance(problem, UnsupportedField):
                findings.append(Finding("ABT020", "error", label, problem.field,
                                        f"the routing oracle refuses it: {problem.message}"))
            elif (label, problem.field) not in taken:
                findings.append(Finding("ABT021", "error", label, problem.field, problem.message))
            taken.add((label, problem.field))
    return findings


def _refusals(obj: Mapping[str, Any], *, tolerate: bool) -> list[ConfigError]:
    """Every refusal of `check_supported` in one object, in the order it finds them."""
    problems: list[ConfigError] = []
    current: Mapping[str, Any] | None = obj
    while current is not None and len(problems) < _MAX_REFUSALS_PER_OBJECT:
        try:
            check_supported([current])
        except ConfigError as exc:
            if any(p.field == exc.field for p in problems):
                break  # removing the field did not help (a required field): reported once
            problems.append(exc)
            current = _without(current, exc.field)
        except (AttributeError, KeyError, TypeError, ValueError):
            if not tolerate:
                raise
            break
        else:
            break
    return problems


def _without(obj: Mapping[str, Any], where: str) -> Mapping[str, Any] | None:
    """A copy of ``obj`` without the mapping key at ``where`` (``spec.http[0].fault``).

    None when there is nothing sensible to remove: the whole object is refused (``kind``),
    the path ends at a list item (removing it would shift the paths of the next ones), or
    the path does not lead to a mapping key (a header name with a dot in it).
    """
    keys: list[str | int] = []
    for part in where.split("."):
        token = _PATH_TOKEN.match(part)
        if token is None:
            return None
        keys.append(token.group(1))
        keys += [int(i) for i in re.findall(r"\d+", token.group(2))]
    if keys == ["kind"] or not isinstance(keys[-1], str):
        return None
    copied = copy.deepcopy(dict(obj))
    parent: Any = copied
    for key in keys[:-1]:
        if isinstance(key, int):
            if not isinstance(parent, list) or key >= len(parent):
                return None
        elif not isinstance(parent, dict) or key not in parent:
            return None
        parent = parent[key]
    if not isinstance(parent, dict) or keys[-1] not in parent:
        return None
    del parent[keys[-1]]
    return copied
