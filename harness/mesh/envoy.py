"""Rendered Kubernetes/Istio objects -> Envoy v3 resources, with Istio's ingress-gateway semantics.

Pure functions over plain dicts; no files, no processes. :func:`translate` gives the listener,
route configuration, clusters and endpoint assignments that :mod:`abtest_harness.mesh.local` writes
for its Envoy; :func:`build_route_configuration` alone is what the convergence check compares
against (also on a real Istio gateway, through :mod:`abtest_harness.mesh.routetable`).

What follows Istio's gateway translation (``pilot/pkg/networking/core/route``):

- a Gateway applies when its selector picks the ingress gateway (``istio: ingressgateway``);
  one route configuration ``http.<port>`` for its HTTP server port, one virtual host per host
  a bound VirtualService shares with the server (``*`` matches any, ``*.x`` a suffix);
  no VirtualService bound: Istio's ``blackhole`` host answering 404 to everything;
- HTTP routes in order, one Envoy route per ``match`` entry, nothing after a catch-all;
  ``uri`` exact/prefix/regex become ``path``/``prefix``/``safe_regex`` (RE2, whole path),
  headers become ``string_match`` matchers (names lower-cased; regex ``*`` or an empty match
  means "present", as in Istio), ``ignoreUriCase`` sets ``case_sensitive: false``;
- one destination is a ``cluster``; several are ``weighted_clusters`` with weight-0 ones
  dropped (one remaining is written as a plain ``cluster``: the same routing);
- clusters are named ``outbound|<port>|<subset>|<fqdn>``, one per Service port and one per
  DestinationRule subset and port; a short destination host is completed with the
  VirtualService's namespace; a destination without endpoints has a cluster without
  endpoints (Envoy answers 503); nothing matched is Envoy's 404;
- every route configuration adds the response headers ``x-abtest-upstream-host``
  (``%UPSTREAM_HOST%``, the endpoint that answered) and ``x-abtest-upstream-cluster``
  (``%UPSTREAM_CLUSTER%``), by which the harness attributes a response to a version. They are
  the harness's addition, not Istio's; the route-table comparison ignores them.

Which kinds and fields exist is the oracle's decision: every entry point runs
:func:`abtest_harness.support.check_supported` first, so a manifest the oracle refuses is refused
here with the same field path. What the oracle accepts but Envoy cannot be given (non-HTTP
Gateway servers, unknown retry fields or balancer names)
raises :class:`~abtest_harness.errors.UnsupportedField` naming the field, so a rule the translation
would ignore can never make a verdict lie.

>>> from abtest_harness.routing import cluster_name
>>> cluster_name("model-svc-blue.abtesting.svc.cluster.local", 5001)
'outbound|5001||model-svc-blue.abtesting.svc.cluster.local'
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.routing import (
    cluster_name,
    destination_rules_for,
    endpoint_selector,
    exported_to,
    host_matches,
    resolve_gateway_name,
    resolve_service_host,
)
from abtest_harness.support import check_supported

__all__ = [
    "ATTRIBUTION_HEADERS",
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "GATEWAY_LABELS",
    "LISTENER_TYPE",
    "ROUTE_TYPE",
    "UPSTREAM_CLUSTER_HEADER",
    "UPSTREAM_HOST_HEADER",
    "EndpointKey",
    "Upstream",
    "XdsResources",
    "bootstrap",
    "build_cluster",
    "build_listener",
    "build_load_assignment",
    "build_route_configuration",
    "discovery_response",
    "gateway_port",
    "resolve_host",
    "route_config_name",
    "translate",
    "upstreams",
]

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_FILE_LOG_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_PREVIOUS_HOSTS_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)

#: Response headers the gateway adds to every answer it routed to an upstream: the endpoint
#: (``ip:port``) and the cluster that answered. A response is attributed to a version by the
#: endpoint, not by anything the workload says about itself. Envoy leaves a header out when
#: its value is empty: no upstream host on a 503 without endpoints, neither on a 404.
UPSTREAM_HOST_HEADER = "x-abtest-upstream-host"
UPSTREAM_CLUSTER_HEADER = "x-abtest-upstream-cluster"
ATTRIBUTION_HEADERS: tuple[dict[str, Any], ...] = (
    {
        "header": {"key": UPSTREAM_HOST_HEADER, "value": "%UPSTREAM_HOST%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    },
    {
        "header": {"key": UPSTREAM_CLUSTER_HEADER, "value": "%UPSTREAM_CLUSTER%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    },
)

#: The labels of Istio's ingress gateway pods; a Gateway whose selector is a subset applies.
GATEWAY_LABELS: Mapping[str, str] = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
CLUSTER_DOMAIN = "svc.cluster.local"
DEFAULT_GATEWAY_PORT = 80

#: (service FQDN, service port, subset or None): how live endpoints are keyed.
EndpointKey = tuple[str, int, str | None]

# Which fields exist is decided once, by the oracle (abtest_harness.support.check_supported), which
# every entry point below runs first. What remains here are the fields the oracle accepts but
# this translation cannot build; they raise UnsupportedField naming the field.
_RETRIES = {"attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"}
_PROTOCOLS = {"HTTP", "HTTP2", "GRPC"}
_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_STRING_MATCH_KINDS = ("exact", "prefix", "regex")
_LB_POLICIES = {
    "ROUND_ROBIN": "ROUND_ROBIN",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "RANDOM": "RANDOM",
    "LEAST_CONN": "LEAST_REQUEST",
    "UNSPECIFIED": "ROUND_ROBIN",
}

# Istio's default retry policy on every route; retries stay inside the chosen cluster, so the
# split is unchanged, but a request racing a stopped workload is retried on a live one.
_RETRY_POLICY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {"@type": _PREVIOUS_HOSTS_TYPE},
        }
    ],
    "host_selection_retry_max_attempts": "5",
}


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _label(obj: Mapping[str, Any]) -> str:
    namespace, name = _meta(obj)
    return f"{obj.get('kind', 'object')} {namespace}/{name}"


def _reject_unknown(obj: Mapping[str, Any], value: Any, allowed: set[str], path: str) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(_label(obj), path, f"must be a mapping, got {type(value).__name__}")
    for key in sorted(value):
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise UnsupportedField(
                _label(obj),
                where,
                f"not supported by the local Envoy translation (supported: {', '.join(sorted(allowed))})",
            )


def _of_kind(objects: Sequence[Mapping[str, Any]], kind: str) -> list[Mapping[str, Any]]:
    return [o for o in objects if isinstance(o, Mapping) and o.get("kind") == kind]


def resolve_host(host: str, namespace: str) -> str:
    """Istio's short-name rule: a host without dots is a Service in `namespace`; others are kept.

    >>> resolve_host("model-svc-blue", "abtesting")
    'model-svc-blue.abtesting.svc.cluster.local'
    >>> resolve_host("model-svc-blue.abtesting.svc.cluster.local", "other")
    'model-svc-blue.abtesting.svc.cluster.local'
    """
    return resolve_service_host(host.strip(), namespace)


# --------------------------------------------------------------------------- Services and subsets


@dataclass(frozen=True)
class Upstream:
    """One cluster: a Service port, optionally narrowed to a DestinationRule subset.

    ``selector`` is what a pod's labels must include to be an endpoint: the Service selector and
    the subset's labels (:func:`abtest_harness.routing.endpoint_selector`, which the oracle uses too);
    empty selects no pod (a Service without selector, or a subset asking a label the Service
    selector sets otherwise). ``target_port`` is the Service port's targetPort (a number or a
    container port name).
    """

    fqdn: str
    port: int
    subset: str | None
    selector: Mapping[str, str]
    target_port: int | str
    lb_policy: str = "ROUND_ROBIN"
    service: str = ""

    @property
    def key(self) -> EndpointKey:
        return (self.fqdn, self.port, self.subset)

    @property
    def name(self) -> str:
        return cluster_name(self.fqdn, self.port, self.subset)


@dataclass(frozen=True)
class _ServicePort:
    fqdn: str
    port: int
    target_port: int | str
    selector: Mapping[str, str]
    service: str


def _service_ports(objects: Sequence[Mapping[str, Any]]) -> list[_ServicePort]:
    out = []
    for svc in _of_kind(objects, "Service"):
        namespace, name = _meta(svc)
        spec = svc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not isinstance(selector, Mapping):
            raise ConfigError(_label(svc), "spec.selector", "must be a mapping of labels")
        for i, port in enumerate(spec.get("ports") or []):
            if str(port.get("protocol", "TCP")).upper() != "TCP":
                continue  # Istio builds no HTTP cluster for UDP/SCTP ports
            number = port.get("port")
            if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
                raise ConfigError(
                    _label(svc), f"spec.ports[{i}].port", f"must be a port number, got {number!r}"
                )
            target = port.get("targetPort", number)
            out.append(
                _ServicePort(
                    f"{name}.{namespace}.{CLUSTER_DOMAIN}",
                    number,
                    target,
                    {str(k): str(v) for k, v in selector.items()},
                    f"{namespace}/{name}",
                )
            )
    return out


def _lb_policy(obj: Mapping[str, Any], policy: Any, path: str, port: int) -> str | None:
    """Envoy's lb_policy for `port` from a DestinationRule traffic policy; None when it sets none.

    Only ``loadBalancer.simple`` (top level, or in ``portLevelSettings`` for this port, which
    wins) is translated. The rest of a traffic policy (connection pools, outlier detection,
    TLS, locality and warm-up settings) changes which pod of a destination answers or how a
    request fails, never which destination a request goes to, so it is accepted and not
    written; consistent hashing the oracle has already refused.
    """
    if not isinstance(policy, Mapping):
        return None
    chosen, where = (policy.get("loadBalancer") or {}).get("simple"), f"{path}.loadBalancer.simple"
    for i, setting in enumerate(policy.get("portLevelSettings") or []):
        if (setting.get("port") or {}).get("number") == port and (setting.get("loadBalancer") or {}).get(
            "simple"
        ):
            chosen = setting["loadBalancer"]["simple"]
            where = f"{path}.portLevelSettings[{i}].loadBalancer.simple"
    if chosen is None:
        return None
    simple = str(chosen).upper()
    if simple not in _LB_POLICIES:
        raise UnsupportedField(
            _label(obj), where, f"{simple!r} is not translated (supported: {', '.join(sorted(_LB_POLICIES))})"
        )
    return _LB_POLICIES[simple]


def _visible_to_gateway(dr: Mapping[str, Any], consumers: set[str]) -> bool:
    """Whether the gateway sees a DestinationRule (its exportTo names the gateway's namespace).

    The oracle looks rules up from the namespace of the Gateway; a rule it cannot see defines
    no subset there (503). Gateways in several namespaces seeing different rules would need
    one route configuration per namespace, which this single gateway does not have.
    """
    namespace, _ = _meta(dr)
    export_to = (dr.get("spec") or {}).get("exportTo")
    seen = {exported_to(export_to, namespace, consumer) for consumer in consumers} or {True}
    if len(seen) > 1:
        raise UnsupportedField(
            _label(dr),
            "spec.exportTo",
            f"exported to some of the Gateway namespaces {sorted(consumers)} and not others; "
            "the local gateway has one view of DestinationRules",
        )
    return seen.pop()


def upstreams(objects: Sequence[Mapping[str, Any]]) -> list[Upstream]:
    """Every cluster the objects define: each Service port, and each DestinationRule subset of it.

    A Service takes its subsets and traffic policy from the rules Istio applies to its host
    (:func:`abtest_harness.routing.destination_rules_for`: the most specific host among the rules the
    gateway sees, wildcards such as ``*.ns.svc.cluster.local`` included), the same lookup the
    oracle makes; a subset's endpoints are the Service's own endpoints that carry its labels
    (:func:`abtest_harness.routing.endpoint_selector`).
    """
    check_supported(objects)
    ports = _service_ports(objects)
    consumers = {server.gateway[0] for server in _served_gateways(objects)}
    visible = [dr for dr in _of_kind(objects, "DestinationRule") if _visible_to_gateway(dr, consumers)]
    out: list[Upstream] = []
    seen: set[EndpointKey] = set()
    for p in ports:
        rules = destination_rules_for(visible, p.fqdn, None)
        # Rules for one host merge; the first traffic policy given applies.
        policy = next(((dr, (dr.get("spec") or {})["trafficPolicy"]) for dr in rules
                       if (dr.get("spec") or {}).get("trafficPolicy") is not None), None)
        service_lb = "ROUND_ROBIN"
        if policy is not None:
            service_lb = _lb_policy(policy[0], policy[1], "spec.trafficPolicy", p.port) or "ROUND_ROBIN"
        out.append(Upstream(p.fqdn, p.port, None, p.selector, p.target_port, service_lb, p.service))
        for dr in rules:
            for i, subset in enumerate((dr.get("spec") or {}).get("subsets") or []):
                name = str(subset["name"])
                labels = {str(k): str(v) for k, v in (subset.get("labels") or {}).items()}
                # A subset's policy overrides the rule's (Istio merges it over).
                lb = _lb_policy(dr, subset.get("trafficPolicy"), f"spec.subsets[{i}].trafficPolicy", p.port)
                upstream = Upstream(
                    p.fqdn,
                    p.port,
                    name,
                    endpoint_selector(p.selector, labels),
                    p.target_port,
                    lb or service_lb,
                    p.service,
                )
                if upstream.key in seen:
                    raise ConfigError(_label(dr), f"spec.subsets[{i}].name", f"subset {name!r} is defined twice")
                seen.add(upstream.key)
                out.append(upstream)
    return sorted(out, key=lambda u: u.name)


# --------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class _Server:
    gateway: tuple[str, str]  # (namespace, name)
    port: int
    hosts: tuple[str, ...]


def _served_gateways(objects: Sequence[Mapping[str, Any]]) -> list[_Server]:
    servers: list[_Server] = []
    for gw in _of_kind(objects, "Gateway"):
        spec = gw.get("spec") or {}
        selector = spec.get("selector") or {}
        if any(GATEWAY_LABELS.get(str(k)) != str(v) for k, v in selector.items()):
            continue  # meant for another gateway workload
        for i, server in enumerate(spec.get("servers") or []):
            port = server.get("port") or {}
            protocol = str(port.get("protocol", "")).upper()
            if protocol not in _PROTOCOLS:
                raise UnsupportedField(
                    _label(gw),
                    f"spec.servers[{i}].port.protocol",
                    f"{protocol or 'missing'}: only HTTP servers are translated",
                )
            number = port.get("number")
            if not isinstance(number, int) or isinstance(number, bool):
                raise ConfigError(
                    _label(gw), f"spec.servers[{i}].port.number", f"must be a port number, got {number!r}"
                )
            hosts = server.get("hosts") or []
            if not hosts:
                raise ConfigError(_label(gw), f"spec.servers[{i}].hosts", "must name at least one host")
            servers.append(_Server(_meta(gw), number, tuple(str(h) for h in hosts)))
    ports = sorted({s.port for s in servers})
    if len(ports) > 1:
        raise UnsupportedField(
            "Gateway",
            "spec.servers[].port.number",
            f"the local gateway serves one HTTP port; the Gateways use {ports}",
        )
    return servers


def gateway_port(objects: Sequence[Mapping[str, Any]]) -> int:
    """The HTTP port the Gateways serve (80 when there is none)."""
    servers = _served_gateways(objects)
    return servers[0].port if servers else DEFAULT_GATEWAY_PORT


def route_config_name(port: int) -> str:
    """Istio's name for a gateway port's route configuration."""
    return f"http.{port}"


def _shared_host(vs_host: str, gw_host: str) -> str | None:
    """The virtual host a VirtualService host and a Gateway server host have in common (the narrower)."""
    vs_host, gw_host = vs_host.lower(), gw_host.lower()
    if vs_host == gw_host or host_matches(gw_host, vs_host):
        return vs_host
    if host_matches(vs_host, gw_host):
        return gw_host
    return None


def _gateway_ref(server: _Server) -> str:
    return f"{server.gateway[0]}/{server.gateway[1]}"


def _binds(vs: Mapping[str, Any], server: _Server) -> bool:
    namespace, _ = _meta(vs)
    refs = (vs.get("spec") or {}).get("gateways") or []
    return _gateway_ref(server) in {resolve_gateway_name(str(r), namespace) for r in refs if str(r) != "mesh"}


def _duration(vs: Mapping[str, Any], value: Any, path: str) -> str:
    """An Istio duration ("5s", "250ms", "1m") as protobuf JSON ("0.250s")."""
    text = str(value).strip()
    for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
        number = text[: -len(unit)]
        if text.endswith(unit) and number.replace(".", "", 1).isdigit():
            return f"{float(number) * _DURATION_UNITS[unit]:.9g}s"
    raise ConfigError(_label(vs), path, f"{value!r} is not a duration like 5s or 250ms")


def _retry_policy(vs: Mapping[str, Any], retries: Any, path: str) -> dict[str, Any] | None:
    """Istio's HTTPRetry as an Envoy retry policy (attempts 0: none)."""
    if retries is None:
        return _RETRY_POLICY
    _reject_unknown(vs, retries, _RETRIES, path)
    attempts = retries.get("attempts", 0)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise ConfigError(_label(vs), f"{path}.attempts", f"must be a whole number >= 0, got {attempts!r}")
    if attempts == 0:
        return None
    policy = dict(_RETRY_POLICY, num_retries=attempts)
    if retries.get("retryOn"):
        tokens = [t.strip() for t in str(retries["retryOn"]).split(",") if t.strip()]
        codes = [int(t) for t in tokens if t.isdigit()]
        names = [t for t in tokens if not t.isdigit()]
        if codes and "retriable-status-codes" not in names:
            names.append("retriable-status-codes")
        policy["retry_on"] = ",".join(names)
        policy["retriable_status_codes"] = codes
        if not codes:
            del policy["retriable_status_codes"]
    if retries.get("perTryTimeout") is not None:
        policy["per_try_timeout"] = _duration(vs, retries["perTryTimeout"], f"{path}.perTryTimeout")
    return policy


def _string_match(value: Any) -> tuple[str, str]:
    """(kind, text) of an Istio StringMatch the oracle has checked; kind "present" is a presence test.

    As Istio's ``canBeConvertedToPresentMatch`` (route.go): an empty match and ``regex: "*"``
    become Envoy's ``present_match``; anything else is passed on as written (``exact: ""`` is
    an exact match of the empty value; an empty ``prefix`` reaches here only for the uri,
    where Envoy's path prefix "" matches every path). The oracle has refused what Istio's
    validation refuses (an empty prefix on a header or method, ``regex: "*"`` outside
    withoutHeaders).
    """
    kinds = [k for k in _STRING_MATCH_KINDS if (value or {}).get(k) is not None]
    if not kinds:
        return ("present", "")
    kind = kinds[0]
    text = str(value[kind])
    if kind == "regex" and text == "*":
        return ("present", "")
    return (kind, text)


def _header_matcher(name: str, value: Any) -> dict[str, Any]:
    kind, text = _string_match(value)
    header: dict[str, Any] = {"name": name}
    if kind == "present":
        header["present_match"] = True
    elif kind == "regex":
        header["string_match"] = {"safe_regex": {"regex": text}}
    else:
        header["string_match"] = {kind: text}
    return header


def _route_match(
    vs: Mapping[str, Any], match: Mapping[str, Any] | None, path: str, server: _Server
) -> dict[str, Any] | None:
    """The Envoy RouteMatch of one match entry; None when the entry excludes this gateway port."""
    out: dict[str, Any] = {"prefix": "/"}
    if match is None:
        return out
    if match.get("port") and match["port"] != server.port:
        return None  # Istio drops a match entry meant for another port
    if match.get("gateways"):
        wanted = {resolve_gateway_name(str(g), _meta(vs)[0]) for g in match["gateways"]}
        if _gateway_ref(server) not in wanted:
            return None
    uri = match.get("uri")
    if uri is not None:
        kind, text = _string_match(uri)
        if kind == "present":
            pass  # an empty uri match (or prefix "") matches every path
        elif kind == "exact":
            out = {"path": text}
        elif kind == "prefix":
            out = {"prefix": text}
        else:
            out = {"safe_regex": {"regex": text}}
    out["case_sensitive"] = not bool(match.get("ignoreUriCase", False))
    headers = []
    for field_name, invert in (("headers", False), ("withoutHeaders", True)):
        raw_headers = match.get(field_name) or {}
        if not isinstance(raw_headers, Mapping):
            raise ConfigError(_label(vs), f"{path}.{field_name}", "must be a mapping of header name to match")
        for name in sorted(raw_headers, key=lambda n: str(n).lower()):
            header = _header_matcher(str(name).lower(), raw_headers[name])
            if invert:
                header["invert_match"] = True
                if "present_match" not in header:
                    header["treat_missing_header_as_empty"] = True  # as Istio does for withoutHeaders
            headers.append(header)
    headers.sort(key=lambda h: str(h["name"]))
    if match.get("method") is not None:
        headers.append(_header_matcher(":method", match["method"]))
    if headers:
        out["headers"] = headers
    return out


def _is_catch_all(match: Mapping[str, Any]) -> bool:
    # Istio's IsCatchAllRoute (route.go): path prefix "/" (or path_separated_prefix "/", or
    # regex ".*") and no header or query parameter condition.
    regex = (match.get("safe_regex") or {}).get("regex")
    path = match.get("prefix") == "/" or match.get("path_separated_prefix") == "/" or regex == ".*"
    return path and not match.get("headers") and not match.get("query_parameters")


def _route_action(
    vs: Mapping[str, Any],
    route: Sequence[Any],
    path: str,
    services: Mapping[str, list[_ServicePort]],
    port: int,
    timeout: Any = None,
    retries: Any = None,
) -> dict[str, Any]:
    namespace, _ = _meta(vs)
    picks: list[tuple[str, int]] = []
    # check_supported has applied Istio's weight rule (abtest_harness.support.destination_shares). As
    # Istio's applyHTTPRouteDestination does, the weights go to Envoy unscaled (Envoy picks a
    # cluster with probability weight / sum), a lone destination is a plain cluster whatever
    # its weight, and weight-0 destinations are dropped.
    for entry in route:
        destination = entry["destination"]
        fqdn = resolve_host(str(destination["host"]), namespace)
        number = (destination.get("port") or {}).get("number")
        if number is None:
            # Istio: the Service's only port, else the gateway's listener port.
            known = services.get(fqdn, [])
            number = known[0].port if len(known) == 1 else port
        subset = destination.get("subset") or None
        weight = 1 if len(route) == 1 else int(entry.get("weight") or 0)
        picks.append((cluster_name(fqdn, number, subset), weight))
    action: dict[str, Any] = {"timeout": "0s", "retry_policy": _RETRY_POLICY}
    if timeout is not None:
        action["timeout"] = _duration(vs, timeout, f"{path.rsplit('.', 1)[0]}.timeout")
    retry = _retry_policy(vs, retries, f"{path.rsplit('.', 1)[0]}.retries")
    if retry is None:
        del action["retry_policy"]
    else:
        action["retry_policy"] = retry
    if len(picks) == 1:
        action["cluster"] = picks[0][0]
        return action
    kept = [(name, weight) for name, weight in picks if weight > 0]  # Istio drops weight 0
    if len(kept) == 1:
        action["cluster"] = kept[0][0]
    else:
        action["weighted_clusters"] = {"clusters": [{"name": n, "weight": w} for n, w in kept]}
    return action


def build_route_configuration(objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The RouteConfiguration ``http.<port>`` of the ingress gateway for these objects.

    The objects pass :func:`abtest_harness.support.check_supported` first, so the translation accepts
    exactly what the oracle judges (one allow-list), and refuses with UnsupportedField only
    what it cannot build on top of that (non-HTTP servers, unknown retry fields).
    """
    check_supported(objects)
    servers = _served_gateways(objects)
    port = servers[0].port if servers else DEFAULT_GATEWAY_PORT
    services: dict[str, list[_ServicePort]] = {}
    for sp in _service_ports(objects):
        services.setdefault(sp.fqdn, []).append(sp)
    # domain -> routes, in the order the VirtualServices are given (Istio: creation order).
    vhosts: dict[str, list[dict[str, Any]]] = {}
    for vs in _of_kind(objects, "VirtualService"):
        spec = vs.get("spec") or {}
        domains: list[str] = []
        bound: _Server | None = None
        for server in servers:
            if not _binds(vs, server) or not exported_to(
                spec.get("exportTo"), _meta(vs)[0], server.gateway[0]
            ):
                continue
            bound = server
            for gw_host in server.hosts:
                host_ns, _, gw_pattern = gw_host.rpartition("/")
                if (
                    host_ns not in {"", "*"}
                    and (server.gateway[0] if host_ns == "." else host_ns) != _meta(vs)[0]
                ):
                    continue
                for vs_host in spec.get("hosts") or []:
                    shared = _shared_host(str(vs_host), gw_pattern)
                    if shared is not None and shared not in domains:
                        domains.append(shared)
        if not domains or bound is None:
            continue
        routes = _routes_of(vs, spec, services, bound)
        for domain in domains:
            vhosts.setdefault(domain, []).extend(routes)
    # Istio (CombineVHostRoutes) moves catch-all routes behind the others when several
    # VirtualServices share a host; with one VirtualService the catch-all is already last.
    virtual_hosts = [
        {
            "name": f"{domain}:{port}",
            "domains": [domain],
            "routes": [r for r in routes if not _is_catch_all(r["match"])]
            + [r for r in routes if _is_catch_all(r["match"])],
        }
        for domain, routes in vhosts.items()
    ]
    if not virtual_hosts:
        # What Istio sends a gateway port without VirtualServices: a host without routes, so
        # Envoy answers 404 to everything (older releases wrote a direct 404 route instead).
        virtual_hosts = [{"name": f"blackhole:{port}", "domains": ["*"], "routes": []}]
    return {
        "@type": ROUTE_TYPE,
        "name": route_config_name(port),
        "virtual_hosts": virtual_hosts,
        # On every response, whichever route (or none) decided it; an upstream's own header of
        # the same name is overwritten, so a workload cannot claim another endpoint.
        "response_headers_to_add": copy.deepcopy(list(ATTRIBUTION_HEADERS)),
        # The local listener is not on port 80, so a Host header carries another port.
        "ignore_port_in_host_matching": True,
        "validate_clusters": False,
    }


def _routes_of(
    vs: Mapping[str, Any],
    spec: Mapping[str, Any],
    services: Mapping[str, list[_ServicePort]],
    server: _Server,
) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = []
    for i, http in enumerate(spec.get("http") or []):
        path = f"spec.http[{i}]"
        name = str(http.get("name") or "")
        action = _route_action(
            vs,
            http.get("route") or [],
            f"{path}.route",
            services,
            server.port,
            http.get("timeout"),
            http.get("retries"),
        )
        matches = http.get("match") or [None]
        catch_all = False
        for k, match in enumerate(matches):
            envoy_match = _route_match(vs, match, f"{path}.match[{k}]", server)
            if envoy_match is None:
                continue
            match_name = (match or {}).get("name")
            entry: dict[str, Any] = {
                "name": f"{name}.{match_name}" if match_name else name,
                "match": envoy_match,
                "route": action,
            }
            routes.append(entry)
            if _is_catch_all(envoy_match):
                catch_all = True
                break  # later entries could never match; Istio omits them
        if catch_all:
            break
    return routes


# --------------------------------------------------------------------------- listener, clusters


def _config_source(path: str) -> dict[str, Any]:
    return {"path_config_source": {"path": path}, "resource_api_version": "V3"}


def build_listener(
    *, rds_path: str, route_name: str, port: int, address: str = "127.0.0.1", access_log: str | None = None
) -> dict[str, Any]:
    """The gateway listener: an HTTP connection manager whose routes come from `rds_path` (RDS)."""
    hcm: dict[str, Any] = {
        "@type": _HCM_TYPE,
        "stat_prefix": "gateway",
        "codec_type": "AUTO",
        # Istio's gateway at its default pathNormalization (listener_builder.go): RFC 3986
        # normalization, no merging of slashes, escaped slashes left as they are. The oracle
        # matches the same normalized path (abtest_harness.routing.normalize_path).
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "rds": {"route_config_name": route_name, "config_source": _config_source(rds_path)},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}],
    }
    if access_log:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _FILE_LOG_TYPE,
                    "path": access_log,
                    "log_format": {
                        "text_format_source": {
                            "inline_string": (
                                "[%START_TIME%] %REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% "
                                "%RESPONSE_FLAGS% %UPSTREAM_CLUSTER% %UPSTREAM_HOST% %DURATION%ms "
                                "x-api-version=%REQ(X-API-VERSION)%\n"
                            )
                        }
                    },
                },
            }
        ]
    return {
        "@type": LISTENER_TYPE,
        "name": f"gateway_{port}",
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }


def build_load_assignment(name: str, endpoints: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """A ClusterLoadAssignment; no endpoints means Envoy answers 503 (no healthy upstream)."""
    lb_endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for host, port in sorted(endpoints)
    ]
    return {"@type": ENDPOINT_TYPE, "cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]}


def build_cluster(
    upstream: Upstream, *, eds_path: str | None = None, endpoints: Sequence[tuple[str, int]] = ()
) -> dict[str, Any]:
    """An EDS cluster reading `eds_path`, or (without it) a STATIC one holding `endpoints`."""
    cluster: dict[str, Any] = {
        "@type": CLUSTER_TYPE,
        "name": upstream.name,
        "connect_timeout": "1s",
        "lb_policy": upstream.lb_policy,
    }
    if eds_path is None:
        cluster["type"] = "STATIC"
        cluster["load_assignment"] = build_load_assignment(upstream.name, endpoints)
    else:
        cluster["type"] = "EDS"
        cluster["eds_cluster_config"] = {
            "service_name": upstream.name,
            "eds_config": _config_source(eds_path),
        }
    return cluster


@dataclass(frozen=True)
class XdsResources:
    """Everything the gateway Envoy needs for one set of objects."""

    listener: dict[str, Any]
    route_configuration: dict[str, Any]
    clusters: tuple[dict[str, Any], ...]
    load_assignments: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    upstreams: tuple[Upstream, ...] = ()


def translate(
    objects: Sequence[Mapping[str, Any]],
    endpoints: Mapping[EndpointKey, Sequence[tuple[str, int]]],
    *,
    listener_port: int,
    rds_path: str,
    eds_paths: Mapping[str, str] | None = None,
    listener_address: str = "127.0.0.1",
    access_log: str | None = None,
) -> XdsResources:
    """The listener, routes, clusters and endpoint assignments for `objects` and live `endpoints`.

    `eds_paths` maps a cluster name to the file its endpoints are read from (EDS); clusters
    without an entry are STATIC with their endpoints inline.
    """
    route_configuration = build_route_configuration(objects)
    ups = upstreams(objects)
    eds = eds_paths or {}
    clusters = tuple(
        build_cluster(u, eds_path=eds.get(u.name), endpoints=endpoints.get(u.key, ())) for u in ups
    )
    assignments = {u.name: build_load_assignment(u.name, endpoints.get(u.key, ())) for u in ups}
    listener = build_listener(
        rds_path=rds_path,
        route_name=route_configuration["name"],
        port=listener_port,
        address=listener_address,
        access_log=access_log,
    )
    return XdsResources(listener, route_configuration, clusters, assignments, tuple(ups))


def discovery_response(resources: Sequence[Mapping[str, Any]], version: str) -> dict[str, Any]:
    """A DiscoveryResponse, the form of a file-based xDS resource file."""
    return {"version_info": version, "resources": [dict(r) for r in resources]}


def bootstrap(
    *, admin_port: int, lds_path: str, cds_path: str, node_id: str, admin_address: str = "127.0.0.1"
) -> dict[str, Any]:
    """An Envoy bootstrap: admin on loopback, listeners and clusters from files (watched for moves)."""
    return {
        "node": {"id": node_id, "cluster": "abtest-gateway"},
        "admin": {"address": {"socket_address": {"address": admin_address, "port_value": admin_port}}},
        "dynamic_resources": {"lds_config": _config_source(lds_path), "cds_config": _config_source(cds_path)},
    }
