"""The routing oracle: which version Istio's ingress gateway sends a request to, from the manifests.

Given the rendered objects of a stage (Gateway, VirtualService, DestinationRule, Service,
Deployment, Namespace as plain dicts) and a request (method, path, headers, Host, port),
:func:`expected_distribution` returns the probability of each outcome: a version name (the
version whose pod label selector, from the rollout spec, the answering pods satisfy; without
a spec, their ``MODEL_VERSION``), ``status:404`` (no VirtualService or route) or
``status:503`` (a destination without ready endpoints). The statistics judge the live data
plane against it, so it follows Istio's documented semantics and nothing looser:

- the request reaches a VirtualService bound to a Gateway (``spec.gateways``: short name in the
  VirtualService's namespace, ``ns/name``, or the legacy ``name.ns.svc.cluster.local``) that
  has a server on the request's port, whose ``hosts`` and the VirtualService's ``hosts`` both
  admit the request's host (``*`` any, ``*.example.com`` a suffix, else exact; the port of
  the Host header is ignored); the most specific host wins, as in Envoy's virtual hosts;
- ``http`` routes are tried in order; the first whose ``match`` list matches wins (OR across
  entries, AND inside one; no ``match`` matches everything);
- ``uri``/``headers``/``method`` string matches: ``exact``, ``prefix`` (a plain string
  prefix, as Envoy's), ``regex`` (RE2, full match, via google-re2 like Envoy); header names
  compare case-insensitively, values case-sensitively; an empty match tests presence, as
  does ``regex: "*"`` in ``withoutHeaders`` (the only place Istio's validation admits it);
  ``withoutHeaders`` inverts the match, reading a missing header as empty except for a
  presence test; the path is matched as the gateway normalizes it (see below);
- weights are relative (:func:`abtest_harness.support.destination_shares`): each request picks a
  destination independently with probability weight / (sum of the route's weights); a lone
  destination gets every request whatever its weight; weight 0 (or omitted) is never picked;
- a destination is a Service (host: dot-free short name resolved in the VirtualService's
  namespace, or ``name.ns.svc.cluster.local``) and port, optionally a subset of the
  DestinationRule that applies to the host (:func:`destination_rules_for`: the most specific
  host, wildcards included). A subset selects among the Service's own endpoints
  (:func:`endpoint_selector`): the pods of the Deployments in the Service's namespace with
  ``replicas > 0`` whose template labels carry both the Service selector and the subset's
  labels. No such pod: 503.

Anything in the routing path that this module does not implement raises
:class:`~abtest_harness.errors.UnsupportedField` naming the object and the field, never silently
ignored: a verdict computed against a half-understood manifest would lie. Which fields are
supported is :func:`abtest_harness.support.check_supported`, shared with the Envoy translation.

Paths are matched as the gateway normalizes them (:func:`normalize_path`: RFC 3986 dot
segments and unreserved escapes, as Istio configures Envoy); a path with characters Envoy
re-encodes or refuses is not modelled. Deliberate limits, outside what the harness sends or
the reference charts use: a header appears at most once per request, and a Deployment with
replicas > 0 counts as ready (readiness is the mesh's convergence check, not the manifests').

>>> from abtest_harness.routing import STANDARD_CLASSES, expected_distribution
>>> # expected_distribution(render_stage(load_plan(), "Blue_50"), STANDARD_CLASSES[0]).shares
>>> # {'green': 0.5, 'blue': 0.5}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, TypeVar

from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.support import (
    HTTP_PROTOCOLS,
    MESH_GATEWAY,
    STRING_MATCH_KINDS,
    check_supported,
    compile_regex,
    destination_shares,
    object_label,
    object_name,
    object_namespace,
    object_spec,
    route_weights,
)

__all__ = [
    "Backend",
    "Destination",
    "Expected",
    "FrozenMap",
    "NO_ENDPOINTS",
    "NO_LISTENER",
    "NO_ROUTE",
    "Request",
    "STANDARD_CLASSES",
    "Versions",
    "backends_behind",
    "check_supported",
    "check_versions",
    "cluster_name",
    "declares_target_port",
    "destination_rules_for",
    "endpoint_selector",
    "expected_distribution",
    "expected_distributions",
    "exported_to",
    "host_matches",
    "hosts_overlap",
    "normalize_path",
    "resolve_gateway_name",
    "resolve_service_host",
    "selects",
    "server_host_parts",
    "string_matches",
    "versions_behind",
]

#: Outcome when no VirtualService or no route matches: Envoy answers 404 itself.
NO_ROUTE = "status:404"
#: Outcome when the chosen destination has no ready endpoint: Envoy answers 503
#: ("no healthy upstream", or "no cluster" for an unknown host, port or subset).
NO_ENDPOINTS = "status:503"
#: Outcome when no Gateway has a server on the request's port: nothing listens there.
NO_LISTENER = "error:connection"

#: The Kubernetes cluster domain Istio appends to short names.
CLUSTER_DOMAIN = "svc.cluster.local"
#: The labels of the ingress gateway pods that serve the Gateways (Istio's default install,
#: the same the local Envoy translation assumes).
DEFAULT_GATEWAY_LABELS: Mapping[str, str] = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
#: Where a pod's version comes from: the container env first, the pod label as a fallback.
VERSION_ENV = "MODEL_VERSION"
VERSION_LABEL = "model_version"

ISTIO_VS_DOC = "https://istio.io/latest/docs/reference/config/networking/virtual-service/"

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable, insertion-ordered mapping.

    Frozen dataclasses below hold mappings; a plain dict would make them unhashable, and a
    Request must be usable as a dict key (per-class counters).

    >>> m = FrozenMap({"x-api-version": "blue"})
    >>> m["x-api-version"], hash(m) == hash(FrozenMap({"x-api-version": "blue"}))
    ('blue', True)
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        # Order-insensitive, like Mapping equality.
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def _empty_headers() -> FrozenMap[str, str]:
    return FrozenMap()


@dataclass(frozen=True)
class Request:
    """One class of requests sent to the gateway: what the routing decision depends on.

    ``headers`` may be given as any mapping; it is stored frozen so a Request is hashable.
    ``authority`` is the Host header; its port, if any, is ignored for host matching.
    ``port`` is the Gateway server port the request arrives on (80 in the reference charts,
    whatever host port the backend maps to it).
    """

    label: str = "weighted"
    path: str = "/score"
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=_empty_headers)
    authority: str = "localhost"
    port: int = 80

    def __post_init__(self) -> None:
        if not isinstance(self.headers, FrozenMap):
            object.__setattr__(self, "headers", FrozenMap(self.headers))

    def header(self, name: str) -> str | None:
        """The value of a header, its name compared case-insensitively (HTTP semantics)."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None

    @property
    def host(self) -> str:
        """The Host header without its port, lower-cased: what virtual host domains match."""
        authority = self.authority.strip().lower()
        if authority.startswith("["):  # [::1]:8080
            return authority.split("]", 1)[0] + "]"
        return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority

    @property
    def route_path(self) -> str:
        """The path the gateway's route matchers see: :func:`normalize_path` of the path
        without its query string. ConfigError for a path the oracle does not model."""
        try:
            return normalize_path(self.path.split("?", 1)[0])
        except ValueError as exc:
            raise ConfigError(f"request {self.label}", "path", str(exc)) from None

    def describe(self) -> str:
        """One line, e.g. ``header-blue: GET /score x-api-version: blue``."""
        headers = "".join(f" {k}: {v}" for k, v in self.headers.items())
        return f"{self.label}: {self.method} {self.path}{headers}"


_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar without pct-encoded, plus "/": what Envoy's normalization leaves as it is.
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")


def normalize_path(path: str) -> str:
    """The path as Istio's gateway routes it: Envoy's ``normalize_path`` (RFC 3986).

    Istio sets ``normalize_path: true``, no ``merge_slashes`` and
    ``path_with_escaped_slashes_action: KEEP_UNCHANGED`` on the gateway's connection manager
    at its default ``pathNormalization`` (``pilot/pkg/networking/core/listener_builder.go``);
    the local gateway is configured the same. Modelled, as the Envoy 1.40 binary does it:
    percent-encoded unreserved characters are decoded (``%61`` -> ``a``, ``%2E`` -> ``.``),
    other escapes are kept as written (``%2F`` stays, so does its case), a backslash is a
    slash, and dot segments are removed (``/a/../b`` -> ``/b``, ``/..`` -> ``/``); repeated
    slashes stay. Characters Envoy re-encodes or refuses (space, ``"<>^`{|}``, ``#``,
    control and non-ASCII characters) are not modelled: ValueError.

    >>> normalize_path("/x/../sc%6Fre"), normalize_path("/a//b/./"), normalize_path("/a%2fb")
    ('/score', '/a//b/', '/a%2fb')
    """
    out: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char == "%" and i + 2 < len(path) and path[i + 1] in _HEX and path[i + 2] in _HEX:
            decoded = chr(int(path[i + 1 : i + 3], 16))
            out.append(decoded if decoded in _UNRESERVED else path[i : i + 3])
            i += 3
            continue
        if char == "\\":
            out.append("/")
        elif char in _PATH_CHARS or char == "%":
            out.append(char)
        else:
            raise ValueError(
                f"{path!r} has {char!r}, which the gateway re-encodes or refuses; the oracle does not model it"
            )
        i += 1
    return _remove_dot_segments("".join(out))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on an absolute path."""
    output: list[str] = []
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    for k, segment in enumerate(segments):
        last = k == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


#: The three request classes of the A/B test: no header (the weighted route), and one
#: pinned to each version with ``x-api-version``.
STANDARD_CLASSES: tuple[Request, ...] = (
    Request("weighted"),
    Request("header-blue", headers={"x-api-version": "blue"}),
    Request("header-green", headers={"x-api-version": "green"}),
)


def cluster_name(fqdn: str, port: int, subset: str | None = None) -> str:
    """Istio's outbound cluster name, which both backends use: ``outbound|5001||svc.ns.svc.cluster.local``."""
    return f"outbound|{port}|{subset or ''}|{fqdn}"


@dataclass(frozen=True)
class Destination:
    """A routing destination after name resolution: Service FQDN, port and optional subset."""

    host: str
    port: int
    subset: str | None = None

    @property
    def cluster_name(self) -> str:
        """The Envoy cluster name Istio gives this destination."""
        return cluster_name(self.host, self.port, self.subset)

    def __str__(self) -> str:
        subset = f" subset {self.subset}" if self.subset else ""
        return f"{self.host}:{self.port}{subset}"


@dataclass(frozen=True)
class Backend:
    """A Deployment whose pods are ready endpoints of a destination."""

    namespace: str
    deployment: str
    version: str
    replicas: int


@dataclass(frozen=True)
class Expected:
    """What the data plane must do with one request class.

    ``shares``: outcome -> probability, summing to 1; outcomes are versions or
    ``status:404`` / ``status:503`` (``error:connection`` if nothing listens on the port). A
    version behind a weight-0 destination is listed with share 0.0, so a reader (and the
    statistics) know it must never answer.
    ``route``: which rule decided. ``destinations``: destination -> probability of being picked.
    ``notes``: why, in words (match entry, empty destinations, approximations).
    """

    shares: Mapping[str, float]
    route: str
    destinations: Mapping[Destination, float] = field(default_factory=FrozenMap)
    request: Request = field(default_factory=Request)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("shares", "destinations"):
            value = getattr(self, name)
            if not isinstance(value, FrozenMap):
                object.__setattr__(self, name, FrozenMap(value))

    @property
    def certain(self) -> str | None:
        """The outcome every request must have, if the expectation is deterministic."""
        sure = [outcome for outcome, share in self.shares.items() if share == 1.0]
        return sure[0] if sure else None

    def describe(self, *, verbose: bool = False) -> str:
        """One line for a log: ``weighted: green 50%, blue 50% via VirtualService ...``.

        With ``verbose``, one more line per destination and per note.
        """
        shares = ", ".join(f"{outcome} {_percent(share)}" for outcome, share in self.shares.items())
        line = f"{self.request.describe()} -> {shares} via {self.route}"
        if not verbose:
            return line
        lines = [line]
        lines += [f"  {dest.cluster_name}: {_percent(p)}" for dest, p in self.destinations.items()]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _percent(share: float) -> str:
    return f"{share * 100:.4g}%"


# --------------------------------------------------------------------------------------------
# Matching primitives, shared with whoever needs Istio's exact semantics.


def host_matches(pattern: str, host: str) -> bool:
    """Istio/Envoy host matching: ``*`` any, ``*.example.com`` any suffix ``.example.com``
    (not ``example.com`` itself), else exact; case-insensitive (DNS names).

    >>> host_matches("*.example.com", "a.b.example.com"), host_matches("*.example.com", "example.com")
    (True, False)
    """
    pattern, host = pattern.lower(), host.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def hosts_overlap(a: str, b: str) -> bool:
    """Whether two host patterns (``*``, ``*.example.com``, exact) can match the same name.

    >>> hosts_overlap("*.example.com", "*.b.example.com"), hosts_overlap("a.example.com", "example.com")
    (True, False)
    """
    a, b = a.lower(), b.lower()
    return a == b or host_matches(a, b) or host_matches(b, a)


def _specificity(pattern: str) -> tuple[int, int]:
    """Envoy's virtual host order: exact domains first, then longer wildcard suffixes, ``*`` last."""
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*"):
        return (1, len(pattern))
    return (2, len(pattern))


def string_matches(spec: Mapping[str, Any] | None, value: str | None, *, ignore_case: bool = False) -> bool:
    """Istio StringMatch against a value; ``None`` value means "absent".

    Empty spec or ``regex: "*"``: presence. ``exact``/``prefix``: plain string comparison
    (case-insensitive only with ``ignore_case``, Istio's ignoreUriCase). ``regex``: RE2 full
    match (never affected by ``ignore_case``, as Istio documents).
    """
    if value is None:
        return False
    if not spec or all(spec.get(k) is None for k in STRING_MATCH_KINDS):
        return True
    if spec.get("exact") is not None:
        exact = str(spec["exact"])
        return value.lower() == exact.lower() if ignore_case else value == exact
    if spec.get("prefix") is not None:
        prefix = str(spec["prefix"])
        return value.lower().startswith(prefix.lower()) if ignore_case else value.startswith(prefix)
    pattern = str(spec["regex"])
    if pattern == "*":
        return True
    return compile_regex(pattern).fullmatch(value) is not None


def resolve_gateway_name(name: str, vs_namespace: str) -> str:
    """``ns/name`` of a Gateway as a VirtualService names it (Istio's resolution rules).

    >>> resolve_gateway_name("mlmodel-gateway", "abtesting")
    'abtesting/mlmodel-gateway'
    >>> resolve_gateway_name("gw.istio-system.svc.cluster.local", "abtesting")
    'istio-system/gw'
    """
    if "/" in name:
        namespace, _, short = name.partition("/")
        return f"{vs_namespace if namespace == '.' else namespace}/{short}"
    if "." in name:
        # Legacy FQDN form name.ns.svc.cluster.local.
        short, _, rest = name.partition(".")
        return f"{rest.split('.', 1)[0]}/{short}"
    return f"{vs_namespace}/{name}"


def resolve_service_host(host: str, namespace: str) -> str:
    """The FQDN Istio makes of a destination or DestinationRule host.

    Only dot-free short names are qualified (with the rule's namespace); anything with a dot
    is taken as written, so ``svc.ns`` stays ``svc.ns``, which names no Kubernetes Service.
    """
    if host == "*" or "." in host:
        return host.lower()
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}".lower()


def exported_to(export_to: Any, owner_namespace: str, consumer_namespace: str) -> bool:
    """Whether an object with this ``exportTo`` (owned by ``owner_namespace``) is visible in
    ``consumer_namespace``: unset means everywhere, ``.`` its own namespace, ``*`` everywhere.
    """
    if not export_to:
        return True
    names = {owner_namespace if n == "." else str(n) for n in export_to}
    return "*" in names or consumer_namespace in names


# --------------------------------------------------------------------------------------------
# Endpoints.


def _service_for(objects: Sequence[Mapping[str, Any]], fqdn: str) -> Mapping[str, Any] | None:
    suffix = f".{CLUSTER_DOMAIN}"
    if not fqdn.endswith(suffix):
        return None
    parts = fqdn[: -len(suffix)].split(".")
    if len(parts) != 2:
        return None
    name, namespace = parts
    for obj in objects:
        if obj.get("kind") == "Service" and object_name(obj) == name and object_namespace(obj) == namespace:
            return obj
    return None


def destination_rules_for(
    objects: Sequence[Mapping[str, Any]], fqdn: str, consumer_namespace: str | None
) -> list[Mapping[str, Any]]:
    """The DestinationRules Istio applies to a Service host, as seen from `consumer_namespace`.

    Of the rules exported to that namespace (None: every rule) whose host (a short name in the
    rule's namespace, an FQDN, or a wildcard such as ``*.ns.svc.cluster.local``) matches
    `fqdn`, those with the most specific host: Istio applies one rule per host, merging rules
    written for the same host. A less specific rule (a wildcard) does not add to a more
    specific one. The oracle and the Envoy translation both take a host's rules from here.
    """
    rules: list[tuple[tuple[int, int], Mapping[str, Any]]] = []
    for dr in objects:
        if dr.get("kind") != "DestinationRule":
            continue
        spec = object_spec(dr)
        if consumer_namespace is not None and not exported_to(
            spec.get("exportTo"), object_namespace(dr), consumer_namespace
        ):
            continue
        host = resolve_service_host(str(spec.get("host", "")), object_namespace(dr))
        if host_matches(host, fqdn):
            rules.append((_specificity(host), dr))
    if not rules:
        return []
    best = max(r[0] for r in rules)
    return [dr for specificity, dr in rules if specificity == best]


def _subset_labels(
    objects: Sequence[Mapping[str, Any]], destination: Destination, consumer_namespace: str | None
) -> tuple[Mapping[str, str] | None, str]:
    """Labels of the destination's subset, or None (with why) if no visible rule defines it."""
    rules = destination_rules_for(objects, destination.host, consumer_namespace)
    if not rules:
        return None, f"no DestinationRule for {destination.host}, so no subset {destination.subset!r}"
    found = [
        (dr, subset)
        for dr in rules
        for subset in object_spec(dr).get("subsets") or []
        if subset.get("name") == destination.subset
    ]
    if not found:
        names = ", ".join(object_label(dr) for dr in rules)
        return None, f"{names} defines no subset {destination.subset!r}"
    if len(found) > 1:
        raise ConfigError(
            ", ".join(object_label(dr) for dr, _ in found),
            "spec.subsets",
            f"subset {destination.subset!r} of {destination.host} is defined "
            "more than once; Istio's merge order would decide",
        )
    return dict(found[0][1].get("labels") or {}), ""


def _deployment_version(obj: Mapping[str, Any]) -> str:
    template = obj.get("spec", {}).get("template", {})
    for container in template.get("spec", {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == VERSION_ENV and isinstance(env.get("value"), str):
                return str(env["value"])
    label = (template.get("metadata", {}).get("labels") or {}).get(VERSION_LABEL)
    if isinstance(label, str) and label:
        return label
    raise ConfigError(
        object_label(obj),
        "spec.template",
        f"no container env {VERSION_ENV} and no pod label "
        f"{VERSION_LABEL}: cannot tell which version its pods are",
    )


#: Version name -> pod label selector, as a rollout spec defines its versions.
Versions = Mapping[str, Mapping[str, str]]


def check_versions(versions: Versions) -> None:
    """Refuse a version map the harness cannot attribute by: each selector a non-empty mapping."""
    if not isinstance(versions, Mapping) or not versions:
        raise ConfigError("versions", "(all)", "must map each version name to a pod label selector")
    for name, selector in versions.items():
        if not isinstance(selector, Mapping) or not selector:
            raise ConfigError(
                "versions",
                str(name),
                "must be a non-empty mapping of pod label to value (an empty one selects every pod)",
            )


def _spec_version(obj: Mapping[str, Any], versions: Versions) -> str:
    """The version of a Deployment's pods by the spec's selectors: exactly one must select them."""
    template = obj.get("spec", {}).get("template", {})
    labels = template.get("metadata", {}).get("labels") or {}
    found = [name for name, selector in versions.items() if selects(endpoint_selector(selector), labels)]
    if len(found) == 1:
        return str(found[0])
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
    if not found:
        raise ConfigError(
            object_label(obj),
            "spec.template.metadata.labels",
            f"pod labels ({shown}) match no version of the spec ({', '.join(versions)}): "
            "its answers could not be attributed",
        )
    raise ConfigError(
        object_label(obj),
        "spec.template.metadata.labels",
        f"pod labels ({shown}) match several versions of the spec ({', '.join(found)})",
    )


def declares_target_port(pod_spec: Mapping[str, Any], target: Any) -> bool:
    """Whether a pod with this spec backs a Service port with this targetPort.

    A name (IANA_SVC_NAME: never all digits) must be a declared container port's name, as
    Kubernetes resolves it per pod; without it the pod is no endpoint. A number (or a string
    of digits, as manifests sometimes quote it) must be a declared containerPort: Kubernetes
    would list the pod anyway (declarations are informational), but the workloads here
    listen on their declared port only, so every connection to another port is refused and
    the gateway answers 503, the same outcome as no endpoint.
    """
    ports = [p for c in pod_spec.get("containers") or [] for p in c.get("ports") or []]
    if isinstance(target, bool):
        return False
    if isinstance(target, str) and not target.isdigit():
        return any(p.get("name") == target for p in ports)
    try:
        number = int(target)
    except (TypeError, ValueError):
        return False
    return any(p.get("containerPort") == number for p in ports)


def endpoint_selector(
    service_selector: Mapping[str, Any], subset_labels: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The labels a pod needs to be an endpoint of a Service port, optionally narrowed to a subset.

    Kubernetes lists the pods the Service selector picks (an empty selector picks none); Istio
    keeps, for a subset's cluster, those of them whose labels include the subset's labels
    (``pilot/pkg/xds/endpoints/endpoint_builder.go``, ``BuildClusterLoadAssignment``:
    ``subsetLabels.SubsetOf(ep.Labels)``). A subset therefore selects among the Service's own
    endpoints: both sets of labels must hold. Where they set one label to different values no
    pod can satisfy both, and the result is empty, which selects no pod (status 503).

    The oracle (:func:`backends_behind`) and the Envoy translation
    (``abtest_harness.mesh.envoy.upstreams``) both take a destination's endpoints from here.

    >>> endpoint_selector({"app": "model", "v": "blue"}, {"v": "green"})
    {}
    >>> endpoint_selector({"app": "model"}, {"v": "green"})
    {'app': 'model', 'v': 'green'}
    """
    selector = {str(k): str(v) for k, v in service_selector.items()}
    for key, value in (subset_labels or {}).items():
        if selector.setdefault(str(key), str(value)) != str(value):
            return {}
    return selector


def selects(selector: Mapping[str, str], pod_labels: Mapping[str, Any]) -> bool:
    """Whether a pod with these labels is an endpoint for this :func:`endpoint_selector` result.

    An empty selector selects nothing, as a Service without selector gets no pod endpoints.
    """
    return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())


def _backends(
    objects: Sequence[Mapping[str, Any]],
    destination: Destination,
    consumer_namespace: str | None,
    versions: Versions | None = None,
) -> tuple[tuple[Backend, ...], str]:
    service = _service_for(objects, destination.host)
    if service is None:
        return (), f"no Service {destination.host} in the objects (Istio resolves only dot-free short names)"
    spec = object_spec(service)
    ports = [p for p in spec.get("ports") or [] if p.get("port") == destination.port]
    if not ports:
        return (), f"{object_label(service)} has no port {destination.port}"
    target = ports[0].get("targetPort", destination.port)
    service_selector = dict(spec.get("selector") or {})
    if not service_selector:
        return (), f"{object_label(service)} has no selector, so no pod endpoints"
    labels: Mapping[str, str] | None = None
    if destination.subset is not None:
        labels, why = _subset_labels(objects, destination, consumer_namespace)
        if labels is None:
            return (), why
    selector = endpoint_selector(service_selector, labels)
    if not selector:
        clash = ", ".join(
            f"{k}={v} (Service: {service_selector[k]})"
            for k, v in (labels or {}).items()
            if k in service_selector and str(service_selector[k]) != str(v)
        )
        return (), (
            f"subset {destination.subset!r} asks for {clash}, which no endpoint of "
            f"{object_label(service)} has (a subset selects among the Service's own endpoints)"
        )
    found = []
    undeclared: list[str] = []
    for obj in objects:
        if obj.get("kind") != "Deployment" or object_namespace(obj) != object_namespace(service):
            continue
        replicas = obj.get("spec", {}).get("replicas", 1)
        replicas = 1 if replicas is None else replicas
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigError(
                object_label(obj), "spec.replicas", f"must be a non-negative integer, not {replicas!r}"
            )
        pod_labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
        if replicas == 0 or not selects(selector, pod_labels):
            continue
        # A targetPort that the pod does not declare (by name or number) leaves it out of the endpoints.
        if not declares_target_port(obj.get("spec", {}).get("template", {}).get("spec", {}), target):
            undeclared.append(object_name(obj))
            continue
        version = _deployment_version(obj) if versions is None else _spec_version(obj, versions)
        found.append(Backend(object_namespace(obj), object_name(obj), version, replicas))
    if not found and undeclared:
        return (
            (),
            f"{object_label(service)} port {destination.port} targets {target!r}, which no container of "
            f"Deployment {', '.join(undeclared)} declares (no endpoint; connections refused)",
        )
    if not found:
        wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
        return (
            (),
            f"no Deployment with replicas > 0 and pod labels {wanted} in namespace {object_namespace(service)}",
        )
    return tuple(found), ""


def backends_behind(
    objects: Sequence[Mapping[str, Any]], destination: Destination, versions: Versions | None = None
) -> tuple[Backend, ...]:
    """The Deployments whose pods are the ready endpoints of a destination (empty: 503).

    ``versions`` (name -> pod label selector) names each Deployment's version; None reads it
    from the pods' ``MODEL_VERSION`` env (or ``model_version`` label).
    """
    return _backends(objects, destination, None, versions)[0]


def versions_behind(
    objects: Sequence[Mapping[str, Any]], destination: Destination, versions: Versions | None = None
) -> dict[str, int]:
    """Version -> ready replicas behind a destination; empty when it would answer 503."""
    out: dict[str, int] = {}
    for backend in backends_behind(objects, destination, versions):
        out[backend.version] = out.get(backend.version, 0) + backend.replicas
    return out


# --------------------------------------------------------------------------------------------
# The oracle.


@dataclass(frozen=True)
class _Binding:
    """A VirtualService reachable for the request through one Gateway server."""

    specificity: tuple[int, int]
    domain: str
    vs: Mapping[str, Any]
    gateway: str  # ns/name


def _gateway_applies(gw: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = object_spec(gw).get("selector")
    # A Gateway without a selector applies to every gateway workload.
    return not selector or all(labels.get(k) == v for k, v in selector.items())


def server_host_parts(host: str, gateway_namespace: str) -> tuple[str, str]:
    """(namespace, dns) of a Gateway server host: ``ns/dns``, ``./dns`` (the Gateway's own
    namespace) or a bare ``dns`` (``*``: VirtualServices of any namespace may bind).
    """
    namespace, sep, dns = host.partition("/")
    if not sep:
        return "*", host
    return (gateway_namespace if namespace == "." else namespace), dns


def _bindings(
    objects: Sequence[Mapping[str, Any]], request: Request, labels: Mapping[str, str]
) -> tuple[list[_Binding], list[str]]:
    servers: list[tuple[str, Mapping[str, Any]]] = []
    for gw in objects:
        if gw.get("kind") != "Gateway" or not _gateway_applies(gw, labels):
            continue
        for i, server in enumerate(object_spec(gw).get("servers") or []):
            port = server.get("port", {})
            if port.get("number") != request.port:
                continue
            if str(port.get("protocol", "")).upper() not in HTTP_PROTOCOLS:
                raise UnsupportedField(
                    object_label(gw),
                    f"spec.servers[{i}].port.protocol",
                    f"{port.get('protocol')!r} "
                    f"on port {request.port}: the oracle models plain HTTP servers only",
                )
            servers.append((f"{object_namespace(gw)}/{object_name(gw)}", server))
    gateways = sorted({name for name, _ in servers})
    bindings: list[_Binding] = []
    for gateway, server in servers:
        gw_namespace = gateway.split("/", 1)[0]
        for vs in objects:
            if vs.get("kind") != "VirtualService":
                continue
            spec = object_spec(vs)
            vs_ns = object_namespace(vs)
            bound = {resolve_gateway_name(str(g), vs_ns) for g in spec.get("gateways") or [MESH_GATEWAY]}
            if gateway not in bound or not exported_to(spec.get("exportTo"), vs_ns, gw_namespace):
                continue
            for vs_host in spec.get("hosts") or []:
                vs_host = str(vs_host)
                if not host_matches(vs_host, request.host):
                    continue
                for server_host in server.get("hosts") or []:
                    namespace, dns = server_host_parts(str(server_host), gw_namespace)
                    if namespace not in ("*", vs_ns) or not host_matches(dns, request.host):
                        continue
                    # Istio's virtual host domain is the narrower of the two patterns.
                    domain = max(vs_host, dns, key=_specificity)
                    bindings.append(_Binding(_specificity(domain), domain.lower(), vs, gateway))
    return bindings, gateways


def _match_applies(match: Mapping[str, Any], request: Request, gateway: str, vs_namespace: str) -> bool:
    """One HTTPMatchRequest: every condition in it must hold (AND)."""
    port = match.get("port")
    if port and port != request.port:
        return False
    gateways = match.get("gateways")
    if gateways and gateway not in {resolve_gateway_name(str(g), vs_namespace) for g in gateways}:
        return False
    ignore_case = bool(match.get("ignoreUriCase"))
    if match.get("uri") is not None and not string_matches(
        match["uri"], request.route_path, ignore_case=ignore_case
    ):
        return False
    if match.get("method") is not None and not string_matches(match["method"], request.method):
        return False
    for name, spec in (match.get("headers") or {}).items():
        if not string_matches(spec, request.header(str(name))):
            return False
    for name, spec in (match.get("withoutHeaders") or {}).items():
        # Istio inverts the matcher and treats a missing header as empty, except for a
        # presence test, where a missing header is simply "not present".
        value = request.header(str(name))
        presence = (
            not spec or all(spec.get(k) is None for k in STRING_MATCH_KINDS) or spec.get("regex") == "*"
        )
        if value is None and not presence:
            value = ""
        if string_matches(spec, value):
            return False
    return True


def _resolve_destination(
    dest: Mapping[str, Any], vs_namespace: str, objects: Sequence[Mapping[str, Any]], listener_port: int
) -> Destination:
    host = resolve_service_host(str(dest["host"]), vs_namespace)
    number = (dest.get("port") or {}).get("number")
    if number is None:
        # Istio: a Service with a single port needs none; otherwise the listener port is used.
        service = _service_for(objects, host)
        ports = (object_spec(service).get("ports") or []) if service is not None else []
        number = ports[0].get("port") if len(ports) == 1 else listener_port
    subset = dest.get("subset")
    return Destination(host, int(number), str(subset) if subset else None)


def expected_distribution(
    objects: Sequence[Mapping[str, Any]],
    request: Request,
    versions: Versions | None = None,
    *,
    gateway_labels: Mapping[str, str] = DEFAULT_GATEWAY_LABELS,
) -> Expected:
    """The outcome distribution Istio's ingress gateway promises for a request class.

    ``versions`` maps each version name to the pod label selector that defines it (a rollout
    spec's versions): a pod is of the one version whose selector its labels satisfy, and a
    destination whose endpoints span several versions is a ConfigError naming it, since a
    response is attributed by the endpoint that answered and the destination's share could
    not be split between its versions. ``None`` reads the version from each pod's
    ``MODEL_VERSION`` env (or ``model_version`` label), and a destination over several
    versions shares its weight between them by replicas, an approximation: Istio's default
    balancer (least request, round robin at equal load) spreads requests evenly over
    endpoints rather than at random.

    ``gateway_labels`` are the labels of the gateway workload: only Gateways whose selector
    they satisfy apply. Raises UnsupportedField/ConfigError for manifests it cannot judge.
    """
    check_supported(objects)
    if versions is not None:
        check_versions(versions)
    return _expected(objects, request, gateway_labels, versions)


def expected_distributions(
    objects: Sequence[Mapping[str, Any]],
    requests: Iterable[Request] = STANDARD_CLASSES,
    versions: Versions | None = None,
    *,
    gateway_labels: Mapping[str, str] = DEFAULT_GATEWAY_LABELS,
) -> dict[Request, Expected]:
    """`expected_distribution` of each request class, with the objects checked once.

    For callers that judge every class of one stage: `check_supported` walks every object,
    about a quarter of the cost of one `expected_distribution` on the reference charts.
    """
    check_supported(objects)
    if versions is not None:
        check_versions(versions)
    return {request: _expected(objects, request, gateway_labels, versions) for request in requests}


def _expected(
    objects: Sequence[Mapping[str, Any]],
    request: Request,
    gateway_labels: Mapping[str, str],
    versions: Versions | None = None,
) -> Expected:
    """`expected_distribution` of objects that passed `check_supported`."""
    bindings, gateways = _bindings(objects, request, gateway_labels)
    if not gateways:
        return Expected(
            {NO_LISTENER: 1.0},
            f"no Gateway server on port {request.port}",
            request=request,
            notes=(f"no Gateway selecting {dict(gateway_labels)} has a server on port {request.port}",),
        )
    if not bindings:
        return Expected(
            {NO_ROUTE: 1.0},
            f"no VirtualService for host {request.host!r}",
            request=request,
            notes=(
                f"no VirtualService bound to {', '.join(gateways)} admits host {request.host!r} "
                "(VirtualService.hosts, Gateway servers[].hosts)",
            ),
        )
    best = max(b.specificity for b in bindings)
    top = [b for b in bindings if b.specificity == best]
    chosen = {(object_namespace(b.vs), object_name(b.vs)) for b in top}
    if len(chosen) > 1:
        names = ", ".join(f"VirtualService {ns}/{n}" for ns, n in sorted(chosen))
        raise ConfigError(
            names,
            "spec.hosts",
            f"all claim host {top[0].domain!r} on port {request.port}; Istio "
            "merges them in creation order, which the manifests do not fix",
        )
    vs = top[0].vs
    vs_gateways = sorted({b.gateway for b in top})
    obj = object_label(vs)
    vs_namespace = object_namespace(vs)
    notes: list[str] = [f"virtual host {top[0].domain!r} on {', '.join(vs_gateways)}"]
    for i, route in enumerate(object_spec(vs).get("http") or []):
        matches = route.get("match") or []
        hit: int | None = None
        if matches:
            hit = next(
                (
                    j
                    for j, m in enumerate(matches)
                    if any(_match_applies(m, request, g, vs_namespace) for g in vs_gateways)
                ),
                None,
            )
            if hit is None:
                continue
            notes.append(f"matched spec.http[{i}].match[{hit}]")
        else:
            notes.append(f"spec.http[{i}] has no match: it takes every request that reaches it")
        name = f" ({route['name']})" if route.get("name") else ""
        return _route_outcome(
            objects,
            request,
            obj,
            f"{obj} http[{i}]{name}",
            f"spec.http[{i}]",
            route,
            vs_namespace,
            vs_gateways,
            notes,
            versions,
        )
    return Expected(
        {NO_ROUTE: 1.0},
        f"{obj}: no http route matches",
        request=request,
        notes=(*notes, "no spec.http route matched the request"),
    )


def _route_outcome(
    objects: Sequence[Mapping[str, Any]],
    request: Request,
    obj: str,
    route_label: str,
    path: str,
    route: Mapping[str, Any],
    vs_namespace: str,
    gateways: list[str],
    notes: list[str],
    versions: Versions | None = None,
) -> Expected:
    entries = route.get("route") or []
    consumer_namespace = gateways[0].split("/", 1)[0]
    destinations: dict[Destination, Fraction] = {}
    shares: dict[str, Fraction] = {}
    zero_versions: list[str] = []
    picks = destination_shares(route_weights(entries))  # checked by check_supported
    for k, (entry, weight) in enumerate(zip(entries, picks, strict=True)):
        dest = _resolve_destination(entry["destination"], vs_namespace, objects, request.port)
        destinations[dest] = destinations.get(dest, Fraction(0)) + weight
        backends, why = _backends(objects, dest, consumer_namespace, versions)
        spanned = sorted({b.version for b in backends})
        if versions is not None and weight > 0 and len(spanned) > 1:
            deployments = ", ".join(f"{b.deployment} ({b.version})" for b in backends)
            raise ConfigError(
                obj,
                f"{path}.route[{k}].destination",
                f"{dest} has endpoints of several versions ({deployments}); a response is "
                "attributed by the endpoint that answered, so this destination's share cannot be "
                "split between its versions: route to one version per destination (a subset)",
            )
        if weight == 0:
            # Istio drops weight-0 clusters: they never answer. Name their versions with share 0.
            zero_versions += [b.version for b in backends]
            continue
        if not backends:
            shares[NO_ENDPOINTS] = shares.get(NO_ENDPOINTS, Fraction(0)) + weight
            notes.append(f"{dest}: {why} -> 503")
            continue
        total = sum(b.replicas for b in backends)
        for backend in backends:
            shares[backend.version] = shares.get(backend.version, Fraction(0)) + weight * Fraction(
                backend.replicas, total
            )
        if len({b.version for b in backends}) > 1:
            notes.append(
                f"{dest}: several versions behind one destination, shares by replicas (approximation "
                "of the balancer's even spread)"
            )
    for version in zero_versions:
        shares.setdefault(version, Fraction(0))
    assert sum(shares.values()) == 1, (route_label, shares)  # guaranteed by the weight checks
    return Expected(
        {k: float(v) for k, v in shares.items()},
        route_label,
        {d: float(p) for d, p in destinations.items()},
        request=request,
        notes=tuple(notes),
    )
