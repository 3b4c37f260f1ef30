"""What the harness supports of Istio's routing API, and the rules it shares between readers.

The oracle (:mod:`abtest_harness.routing`), the Envoy translation (:mod:`abtest_harness.mesh.envoy`), the
offline validation (:mod:`abtest_harness.validate`) and the plan (:mod:`abtest_harness.plan`) read their
rules from here, so a manifest cannot be judged by one rule and served by another.

Support (:func:`check_supported`): each allow-list below says which fields the oracle
implements or has judged harmless for the routing decision; any other field in the routing
path raises :class:`~abtest_harness.errors.UnsupportedField` naming the object and the field, and a
value Istio's own validation refuses raises :class:`~abtest_harness.errors.ConfigError` with
Istio's reason. A verdict computed against a half-understood manifest would lie, so nothing
is silently ignored. ``docs/routing.md`` lists what is refused and why.

Weights (:func:`destination_shares`): Istio's API gives a destination ``weight / (sum of all
weights)`` of a route's requests, all of them to a lone destination, none to weight 0
(``HTTPRouteDestination.weight`` in istio/api ``networking/v1alpha3/virtual_service.proto``).
Istio's translation writes the weights as they are into Envoy's ``weighted_clusters``,
dropping weight-0 destinations, and uses a plain ``cluster`` for a lone destination, whose
weight it never reads (``pilot/pkg/networking/core/route/route.go``,
``applyHTTPRouteDestination``); Envoy then picks a cluster with probability weight / sum.
Istio's validation refuses a negative weight and, with several destinations, a total of 0
(``pkg/config/validation/validation.go``, ``validateWeight`` and
``validateHTTPRouteDestinations``); Envoy refuses a total of 0 or one above 4294967295.

>>> [str(s) for s in destination_shares([3, 1])]
['3/4', '1/4']
>>> [str(s) for s in destination_shares([50])]
['1']
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

import re2

from abtest_harness.errors import ConfigError, UnsupportedField

__all__ = [
    "HTTP_PROTOCOLS",
    "MAX_TOTAL_WEIGHT",
    "MESH_GATEWAY",
    "STRING_MATCH_KINDS",
    "WeightProblem",
    "check_supported",
    "compile_regex",
    "destination_shares",
    "object_label",
    "object_name",
    "object_namespace",
    "object_spec",
    "route_weights",
]

#: Envoy refuses a weighted_clusters whose weights sum above this (uint32).
MAX_TOTAL_WEIGHT = 2**32 - 1
#: The API's weight is an int32.
_MAX_WEIGHT = 2**31 - 1


class WeightProblem(ValueError):
    """A route's weights that Istio or Envoy refuse (or, with ``percent``, the plan's format does).

    ``index`` is the destination at fault, or None when the route's weights as a whole are.
    """

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def destination_shares(weights: Sequence[object], *, percent: bool = False) -> tuple[Fraction, ...]:
    """Each destination's share of a route's requests, from its weights (None: omitted).

    Istio's rule (see the module docstring): a lone destination gets everything whatever its
    weight; otherwise an omitted weight is 0, each weight is a non-negative integer, each
    destination gets weight / sum, and a sum of 0 is refused. Raises :class:`WeightProblem`.

    ``percent``: the harness's own plan format, not an Istio rule: every weight given, each a
    whole percent from 0 to 100, summing to exactly 100, so a plan reads as the split it means.
    """
    given: list[int] = []
    for i, weight in enumerate(weights):
        if weight is None and not percent:
            given.append(0)
            continue
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise WeightProblem(i, f"must be a whole number, not {weight!r}")
        if weight < 0:
            raise WeightProblem(i, f"must not be negative, is {weight}")
        if weight > (100 if percent else _MAX_WEIGHT):
            limit = "100 (a percent)" if percent else f"{_MAX_WEIGHT} (an int32)"
            raise WeightProblem(i, f"is {weight}, above {limit}")
        given.append(weight)
    if not given:
        raise WeightProblem(None, "no destination: the route sends traffic nowhere")
    total = sum(given)
    shown = " + ".join(str(w) for w in given)
    if percent and total != 100:
        raise WeightProblem(None, f"{shown} = {total}; the plan's weights are percents summing to 100")
    if len(given) == 1:
        return (Fraction(1),)
    if total == 0:
        raise WeightProblem(None, f"{shown} = 0: no destination would get traffic (Istio refuses a total of 0)")
    if total > MAX_TOTAL_WEIGHT:
        raise WeightProblem(None, f"{shown} = {total}, above {MAX_TOTAL_WEIGHT}, which Envoy refuses")
    return tuple(Fraction(w, total) for w in given)


#: The reserved gateway name that means "the sidecars", not an ingress gateway.
MESH_GATEWAY = "mesh"


# --------------------------------------------------------------------------------------------
# Field support. Each allow-list says which fields the oracle implements or has judged
# harmless for the routing decision; any other field is refused with its path.

# HTTPRoute: `name` only labels stats and logs. `timeout` and `retries` decide whether and
# when a request fails, never which version answers a successful one: Envoy picks the
# weighted cluster once per request and retries stay on that cluster, so they change the
# error count (kept apart by the statistics), not the split.
_HTTP_ROUTE_IMPLEMENTED = {"name", "match", "route", "timeout", "retries"}
# Refused: each changes who answers or what the client sees. redirect/directResponse answer
# at the gateway; delegate moves the routes elsewhere; rewrite changes the path the scorer
# sees; fault aborts or delays; mirror* sends copies to another version; corsPolicy answers
# preflights at the gateway; headers can set or strip response headers, including the
# x-model-version header the harness classifies responses by.
_HTTP_ROUTE_REFUSED = {
    "redirect",
    "directResponse",
    "delegate",
    "rewrite",
    "fault",
    "mirror",
    "mirrors",
    "mirrorPercent",
    "mirror_percent",
    "mirrorPercentage",
    "corsPolicy",
    "headers",
}
# HTTPMatchRequest: `statPrefix` and `name` only label stats/logs.
_MATCH_IMPLEMENTED = {
    "name",
    "uri",
    "method",
    "headers",
    "withoutHeaders",
    "ignoreUriCase",
    "port",
    "gateways",
    "statPrefix",
}
# Refused: scheme/authority depend on how the client connects (the harness does not model
# them); queryParams are not modelled; sourceLabels/sourceNamespace select sidecar clients
# and need the gateway pod's labels, which the manifests do not carry.
_MATCH_REFUSED = {"scheme", "authority", "queryParams", "sourceLabels", "sourceNamespace"}
_DESTINATION_WEIGHT_IMPLEMENTED = {"destination", "weight"}
_DESTINATION_IMPLEMENTED = {"host", "subset", "port"}
_VS_SPEC_IMPLEMENTED = {"hosts", "gateways", "http", "exportTo"}
# tcp/tls routes belong to non-HTTP ports, which the oracle does not model.
_VS_SPEC_REFUSED = {"tcp", "tls"}
STRING_MATCH_KINDS = ("exact", "prefix", "regex")
# Header names Istio documents as ignored ("uri", "scheme", "method", "authority"), pseudo
# headers, Host (Envoy matches it as :authority) and JWT claim routing: each would match
# something else than a plain header of that name.
_HEADER_NAMES_REFUSED = {"uri", "scheme", "method", "authority", "host"}
_GATEWAY_SERVER_IMPLEMENTED = {"port", "hosts", "name"}
HTTP_PROTOCOLS = {"HTTP", "HTTP2", "GRPC"}
# Objects that change routing or endpoints in ways the oracle does not model.
_KINDS_REFUSED = {
    "ServiceEntry",
    "Sidecar",
    "EnvoyFilter",
    "WorkloadEntry",
    "WorkloadGroup",
    "AuthorizationPolicy",
    "RequestAuthentication",
    "WasmPlugin",
    "HTTPRoute",
    "GRPCRoute",
    "Pod",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "ReplicationController",
    "Job",
    "CronJob",
    "Endpoints",
    "EndpointSlice",
    "Ingress",
    "PeerAuthentication",
    "ProxyConfig",
    "Telemetry",
    "TCPRoute",
    "TLSRoute",
    "UDPRoute",
}


def object_name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def object_namespace(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("namespace") or "default")


def object_label(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind', '?')} {object_namespace(obj)}/{object_name(obj)}"


def object_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ConfigError(object_label(obj), "spec", f"must be a mapping, not {type(spec).__name__}")
    return spec


def _check_keys(
    obj: str,
    path: str,
    value: Any,
    implemented: Collection[str],
    refused: Collection[str] = (),
) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(obj, path, f"must be a mapping, not {type(value).__name__}")
    for key, item in value.items():
        if key in implemented or item is None:
            continue
        where = f"{path}.{key}" if path else str(key)
        if key in refused:
            raise UnsupportedField(
                obj,
                where,
                "changes routing in a way the oracle does not model; remove it "
                "or extend abtest_harness.support, abtest_harness.routing and the Envoy translation first",
            )
        raise UnsupportedField(obj, where, "unknown or unmodelled field; the oracle refuses to ignore it")
    return value


def _list(obj: str, path: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(obj, path, f"must be a list, not {type(value).__name__}")
    return value


@lru_cache(maxsize=512)
def compile_regex(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False  # the error goes into our ConfigError, not onto stderr
    return re2.compile(pattern, options)


def _check_regex(obj: str, path: str, pattern: Any) -> None:
    if not isinstance(pattern, str):
        raise ConfigError(obj, path, f"must be a string, not {type(pattern).__name__}")
    try:
        compile_regex(pattern)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ConfigError(obj, path, f"invalid RE2 regex {pattern!r}: {detail}") from None


def _check_string_match(obj: str, path: str, spec: Any, *, where: str) -> None:
    """A StringMatch as Istio's validation admits it (``pkg/config/validation/virtualservice.go``,
    ``validateHTTPRouteMatchRequest``; ``validation.go``, ``validateStringMatch``).

    At most one of exact/prefix/regex, strings, regexes valid RE2. ``where`` is ``uri``,
    ``headers``, ``withoutHeaders`` or ``method``. An empty match is a presence test (for the
    uri: every path). An empty ``prefix`` is refused except on the uri (Envoy's string
    matcher needs one character; a route's path prefix may be empty). ``regex: "*"`` is
    refused except in withoutHeaders, where Istio makes it a presence test (inverted: the
    header is absent); elsewhere Istio compiles it as a regex, which fails.
    """
    spec = _check_keys(obj, path, spec, STRING_MATCH_KINDS)
    kinds = [k for k in STRING_MATCH_KINDS if spec.get(k) is not None]
    if len(kinds) > 1:
        raise ConfigError(obj, path, f"sets {' and '.join(kinds)}; a StringMatch is exactly one of them")
    if not kinds:
        return
    kind = kinds[0]
    value = spec[kind]
    if not isinstance(value, str):
        raise ConfigError(obj, f"{path}.{kind}", f"must be a string, not {type(value).__name__}")
    if kind == "prefix" and not value and where != "uri":
        raise ConfigError(
            obj, f"{path}.prefix", "empty: Istio refuses an empty prefix here (omit the value to test presence)"
        )
    if kind == "regex" and value == "*" and where == "withoutHeaders":
        return  # Istio turns regex "*" into a presence match
    if kind == "regex" and not value:
        raise ConfigError(obj, f"{path}.regex", "empty: Istio refuses an empty regex")
    if kind == "regex":
        _check_regex(obj, f"{path}.regex", value)


def route_weights(route: Sequence[Any]) -> list[Any]:
    return [dest.get("weight") if isinstance(dest, Mapping) else None for dest in route]


def _check_weights(obj: str, path: str, route: list[Any]) -> None:
    """Istio's weight rule (:func:`abtest_harness.support.destination_shares`), errors naming the field."""
    if not route:
        raise ConfigError(obj, f"{path}.route", "empty: the route sends traffic nowhere")
    try:
        destination_shares(route_weights(route))
    except WeightProblem as problem:
        where = f"{path}.route" if problem.index is None else f"{path}.route[{problem.index}].weight"
        raise ConfigError(obj, where, problem.message) from None


def _check_virtual_service(vs: Mapping[str, Any]) -> None:
    obj = object_label(vs)
    spec = _check_keys(obj, "spec", object_spec(vs), _VS_SPEC_IMPLEMENTED, _VS_SPEC_REFUSED)
    hosts = _list(obj, "spec.hosts", spec.get("hosts"))
    if not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(obj, "spec.hosts", "required: at least one host name")
    for i, route in enumerate(_list(obj, "spec.http", spec.get("http"))):
        path = f"spec.http[{i}]"
        route = _check_keys(obj, path, route, _HTTP_ROUTE_IMPLEMENTED, _HTTP_ROUTE_REFUSED)
        for j, match in enumerate(_list(obj, f"{path}.match", route.get("match"))):
            mpath = f"{path}.match[{j}]"
            match = _check_keys(obj, mpath, match, _MATCH_IMPLEMENTED, _MATCH_REFUSED)
            if not match:
                raise ConfigError(
                    obj,
                    mpath,
                    "empty match entry (Istio: HTTPMatchRequest cannot be empty); "
                    "omit `match` to match every request",
                )
            if match.get("uri") is not None:
                _check_string_match(obj, f"{mpath}.uri", match["uri"], where="uri")
            if match.get("method") is not None:
                _check_string_match(obj, f"{mpath}.method", match["method"], where="method")
            for key in ("headers", "withoutHeaders"):
                headers = match.get(key)
                if headers is None:
                    continue
                if not isinstance(headers, Mapping):
                    raise ConfigError(
                        obj, f"{mpath}.{key}", "must be a mapping of header name to StringMatch"
                    )
                for name, string_match in headers.items():
                    hpath = f"{mpath}.{key}.{name}"
                    lowered = str(name).lower()
                    if lowered in _HEADER_NAMES_REFUSED or lowered.startswith((":", "@")):
                        raise UnsupportedField(
                            obj,
                            hpath,
                            "matches a pseudo header, Host or JWT claim, not a plain "
                            "request header; the oracle does not model it",
                        )
                    if string_match is None and key == "headers":
                        raise ConfigError(obj, hpath, "null: Istio refuses a header match without a value")
                    _check_string_match(obj, hpath, string_match, where=key)
            port = match.get("port")
            if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
                raise ConfigError(obj, f"{mpath}.port", f"must be an integer, not {port!r}")
            if match.get("ignoreUriCase") is not None and not isinstance(match["ignoreUriCase"], bool):
                raise ConfigError(obj, f"{mpath}.ignoreUriCase", "must be true or false")
        destinations = _list(obj, f"{path}.route", route.get("route"))
        for k, dest in enumerate(destinations):
            dpath = f"{path}.route[{k}]"
            dest = _check_keys(obj, dpath, dest, _DESTINATION_WEIGHT_IMPLEMENTED, {"headers"})
            inner = _check_keys(
                obj, f"{dpath}.destination", dest.get("destination"), _DESTINATION_IMPLEMENTED
            )
            if not isinstance(inner.get("host"), str) or not inner.get("host"):
                raise ConfigError(obj, f"{dpath}.destination.host", "required")
            port = _check_keys(obj, f"{dpath}.destination.port", inner.get("port"), {"number"})
            number = port.get("number")
            if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
                raise ConfigError(
                    obj, f"{dpath}.destination.port.number", f"must be an integer, not {number!r}"
                )
        _check_weights(obj, path, destinations)


def _check_gateway(gw: Mapping[str, Any]) -> None:
    obj = object_label(gw)
    spec = _check_keys(obj, "spec", object_spec(gw), {"selector", "servers"})
    for i, server in enumerate(_list(obj, "spec.servers", spec.get("servers"))):
        path = f"spec.servers[{i}]"
        if not isinstance(server, Mapping):
            raise ConfigError(obj, path, "must be a mapping")
        port = _check_keys(
            obj, f"{path}.port", server.get("port"), {"number", "protocol", "name", "targetPort"}
        )
        if isinstance(port.get("number"), bool) or not isinstance(port.get("number"), int):
            raise ConfigError(obj, f"{path}.port.number", "required integer")
        if str(port.get("protocol", "")).upper() not in HTTP_PROTOCOLS:
            # HTTPS/TLS/TCP servers carry no plain-HTTP routes; a request on such a port is
            # refused when it is judged (_bindings), not here.
            continue
        # tls (httpsRedirect), bind and defaultEndpoint change how the port answers; the
        # oracle models plain HTTP servers only.
        _check_keys(obj, path, server, _GATEWAY_SERVER_IMPLEMENTED, {"tls", "bind", "defaultEndpoint"})
        if not _list(obj, f"{path}.hosts", server.get("hosts")):
            raise ConfigError(obj, f"{path}.hosts", "required: at least one host")


def _check_destination_rule(dr: Mapping[str, Any]) -> None:
    obj = object_label(dr)
    # workloadSelector scopes a rule to sidecars of some workloads, not the gateway.
    spec = _check_keys(
        obj, "spec", object_spec(dr), {"host", "subsets", "trafficPolicy", "exportTo"}, {"workloadSelector"}
    )
    if not isinstance(spec.get("host"), str) or not spec.get("host"):
        raise ConfigError(obj, "spec.host", "required")
    _check_traffic_policy(obj, "spec.trafficPolicy", spec.get("trafficPolicy"))
    names: set[str] = set()
    for i, subset in enumerate(_list(obj, "spec.subsets", spec.get("subsets"))):
        path = f"spec.subsets[{i}]"
        subset = _check_keys(obj, path, subset, {"name", "labels", "trafficPolicy"})
        name = subset.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(obj, f"{path}.name", "required")
        if name in names:
            raise ConfigError(obj, f"{path}.name", f"subset {name!r} defined twice")
        names.add(name)
        labels = subset.get("labels") or {}
        if not isinstance(labels, Mapping):
            raise ConfigError(obj, f"{path}.labels", "must be a mapping of label to value")
        _check_traffic_policy(obj, f"{path}.trafficPolicy", subset.get("trafficPolicy"))


def _check_traffic_policy(obj: str, path: str, policy: Any) -> None:
    """Refuse consistent hashing anywhere in a traffic policy.

    Hashing makes the pick of an endpoint sticky per client, so requests stop being
    independent trials; the rest (connection pools, outlier detection, TLS, simple LB)
    changes errors or which pod of a subset answers, not which version a destination is.
    """

    def walk(value: Any, where: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key == "consistentHash":
                    raise UnsupportedField(
                        obj,
                        f"{where}.{key}",
                        "sticky endpoint choice breaks the independent-"
                        "trials model of the split; the oracle does not model it",
                    )
                walk(item, f"{where}.{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(policy, path)


def _check_service(svc: Mapping[str, Any]) -> None:
    spec = object_spec(svc)
    if spec.get("type") == "ExternalName":
        raise UnsupportedField(object_label(svc), "spec.type", "ExternalName Services are not modelled")


def check_supported(objects: Sequence[Mapping[str, Any]]) -> None:
    """Raise UnsupportedField/ConfigError for anything in the objects the oracle cannot model.

    Checks every Gateway, DestinationRule and Service, and every VirtualService bound to a
    gateway (one bound only to ``mesh`` applies to sidecars, never to ingress traffic).
    """
    for obj in objects:
        kind = obj.get("kind")
        if kind in _KINDS_REFUSED:
            raise UnsupportedField(
                object_label(obj), "kind", f"{kind} changes routing or endpoints in ways the oracle does not model"
            )
        if kind == "Gateway":
            _check_gateway(obj)
        elif kind == "VirtualService":
            gateways = object_spec(obj).get("gateways") or [MESH_GATEWAY]
            if any(g != MESH_GATEWAY for g in gateways):
                _check_virtual_service(obj)
        elif kind == "DestinationRule":
            _check_destination_rule(obj)
        elif kind == "Service":
            _check_service(obj)
