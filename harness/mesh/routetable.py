"""The gateway's route table in a comparable form: what the convergence check compares.

"Converged" means the gateway's live route table, read from its Envoy admin ``/config_dump``,
equals the route table the manifests promise. Both sides go through one normalizer
(:func:`route_table_from_route_configs`), so the comparison ignores everything that does not
decide where a request goes: route names, decorators, metadata, timeouts, retry policies,
per-filter configs, the ``:80``/``:*`` port forms of domains, and which of Envoy's equivalent
spellings a matcher uses (``string_match`` or the deprecated ``exact_match``; ``cluster`` or a
``weighted_clusters`` with one cluster). Whatever it does not know and that could change the
routing (query parameter matchers, runtime fractions, hash policies, ...) is kept verbatim, so
an unexpected field makes the tables differ instead of being silently dropped.

It works on the local Envoy and on a real Istio ingress gateway alike: Istio names the route
configuration ``http.<port>`` (``http.8080`` for the gateway's port 80 on recent releases, as
the ingress gateway listens on 8080) and the virtual host ``*:80``; neither name matters here.

>>> table = route_table_from_route_configs([{
...     "name": "http.80",
...     "virtual_hosts": [{"name": "*:80", "domains": ["*"], "routes": [
...         {"match": {"prefix": "/"}, "route": {"cluster": "outbound|5001||a.ns.svc.cluster.local"}}]}]}])
>>> print(table.describe())
virtual host *
  [0] prefix / -> outbound|5001||a.ns.svc.cluster.local 100%
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from abtest_harness.errors import HarnessError
from abtest_harness.mesh.envoy import build_route_configuration

__all__ = [
    "HeaderMatch",
    "PathMatch",
    "RouteAction",
    "RouteEntry",
    "RouteTable",
    "VirtualHost",
    "diff_route_tables",
    "expected_route_table",
    "route_configs_from_config_dump",
    "route_table_from_config_dump",
    "route_table_from_route_configs",
]


# --------------------------------------------------------------------------- the canonical form


@dataclass(frozen=True, order=True)
class PathMatch:
    """How a route matches the path: ``kind`` is prefix, exact, regex, path_separated_prefix or other."""

    kind: str
    value: str
    case_sensitive: bool = True

    def describe(self) -> str:
        text = f"{self.kind} {self.value}"
        return text if self.case_sensitive else text + " (ignore case)"


@dataclass(frozen=True, order=True)
class HeaderMatch:
    """One header condition; ``name`` is lower-cased (Envoy compares header names case-insensitively).

    ``kind`` is exact, prefix, suffix, contains, regex, present or other (``value`` then holds the
    matcher as JSON).
    """

    name: str
    kind: str
    value: str
    invert: bool = False
    ignore_case: bool = False
    missing_as_empty: bool = False

    def describe(self) -> str:
        text = f"{self.name} {self.kind}" + ("" if self.kind == "present" else f" {self.value!r}")
        flags = [
            f
            for f, on in (
                ("not", self.invert),
                ("ignore case", self.ignore_case),
                ("missing as empty", self.missing_as_empty),
            )
            if on
        ]
        return text + (f" ({', '.join(flags)})" if flags else "")


@dataclass(frozen=True, order=True)
class RouteAction:
    """Where a matched request goes.

    ``clusters`` are (cluster name, percent) with weight-0 clusters dropped and weights scaled to
    percent of their sum, sorted by name; a single cluster is ``((name, 100),)``.
    ``status`` is set for a direct response (for example 404 for Istio's ``block_all``).
    ``other`` keeps, as JSON, an action this module does not model (redirect, cluster_header, ...).
    """

    clusters: tuple[tuple[str, Fraction], ...] = ()
    status: int | None = None
    other: str = ""

    def describe(self) -> str:
        if self.status is not None:
            return f"direct response {self.status}"
        if self.other:
            return f"other action {self.other}"
        return ", ".join(f"{name} {_percent(share)}" for name, share in self.clusters) or "no cluster"


@dataclass(frozen=True, order=True)
class RouteEntry:
    """One Envoy route: its matchers, its action, and any routing-relevant field not modelled."""

    path: PathMatch
    headers: tuple[HeaderMatch, ...]
    action: RouteAction
    extra: str = ""

    def describe(self) -> str:
        conditions = [self.path.describe(), *(h.describe() for h in self.headers)]
        text = " AND ".join(conditions) + f" -> {self.action.describe()}"
        return text + (f" [also {self.extra}]" if self.extra else "")


@dataclass(frozen=True, order=True)
class VirtualHost:
    """A virtual host: its domains (ports stripped, sorted) and its routes in order."""

    domains: tuple[str, ...]
    routes: tuple[RouteEntry, ...]


@dataclass(frozen=True)
class RouteTable:
    """The canonical, comparable route table of a gateway port; virtual hosts sorted by domains."""

    virtual_hosts: tuple[VirtualHost, ...]

    def describe(self) -> str:
        """A readable listing, one line per route; what :func:`diff_route_tables` compares."""
        if not self.virtual_hosts:
            return "(no route configuration)"
        lines: list[str] = []
        for vhost in self.virtual_hosts:
            lines.append(f"virtual host {', '.join(vhost.domains)}")
            for i, route in enumerate(vhost.routes):
                lines.append(f"  [{i}] {route.describe()}")
            if not vhost.routes:
                lines.append("  (no routes: every request 404)")
        return "\n".join(lines)

    @property
    def clusters(self) -> frozenset[str]:
        """Every cluster some route can send a request to."""
        return frozenset(
            name for vh in self.virtual_hosts for r in vh.routes for name, _ in r.action.clusters
        )


def _percent(share: Fraction) -> str:
    return f"{share}%" if share.denominator == 1 else f"{float(share):.4g}%"


# --------------------------------------------------------------------------- normalizer

# Route fields that never change which cluster is picked: Istio adds them to every route.
_ROUTE_IGNORED = {
    "name",
    "decorator",
    "metadata",
    "typed_per_filter_config",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "tracing",
    "per_request_buffer_limit_bytes",
    "stat_prefix",
    "match",
    "route",
    "direct_response",
    "redirect",
    "filter_action",
    "non_forwarding_action",
}
# Route-action fields that do not change the cluster choice (timeouts, retries stay inside the
# chosen cluster; rewrites change what the upstream sees, not which upstream).
_ACTION_IGNORED = {
    "cluster",
    "weighted_clusters",
    "timeout",
    "idle_timeout",
    "retry_policy",
    "max_grpc_timeout",
    "grpc_timeout_offset",
    "max_stream_duration",
    "cors",
    "host_rewrite_literal",
    "auto_host_rewrite",
    "prefix_rewrite",
    "regex_rewrite",
    "request_mirror_policies",
    "retry_policy_typed_config",
    "include_vh_rate_limits",
    "rate_limits",
    "upgrade_configs",
    "internal_redirect_policy",
    "priority",
    "append_x_forwarded_host",
    "cluster_not_found_response_code",
}
_WEIGHTED_IGNORED = {"clusters", "total_weight", "runtime_key_prefix"}
_CLUSTER_WEIGHT_IGNORED = {
    "name",
    "weight",
    "metadata_match",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "typed_per_filter_config",
    "host_rewrite_literal",
}
_MATCH_KNOWN = {"prefix", "path", "safe_regex", "regex", "path_separated_prefix", "headers", "case_sensitive"}
_STRING_KINDS = ("exact", "prefix", "suffix", "contains")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _bool(value: Any, default: bool) -> bool:
    # google.protobuf.BoolValue is rendered as a bare bool in config_dump; accept {"value": x} too.
    if value is None:
        return default
    if isinstance(value, Mapping):
        return bool(value.get("value", default))
    return bool(value)


def _uint(value: Any) -> int:
    if isinstance(value, Mapping):
        value = value.get("value", 0)
    return int(value or 0)


def _regex_of(value: Any) -> str:
    # RegexMatcher {"regex": ..., "google_re2": {}} or the v2-era bare string.
    if isinstance(value, Mapping):
        return str(value.get("regex", ""))
    return str(value)


def _path_match(match: Mapping[str, Any]) -> PathMatch:
    case_sensitive = _bool(match.get("case_sensitive"), True)
    if "prefix" in match:
        return PathMatch("prefix", str(match["prefix"]), case_sensitive)
    if "path" in match:
        return PathMatch("exact", str(match["path"]), case_sensitive)
    if "safe_regex" in match:
        return PathMatch("regex", _regex_of(match["safe_regex"]), case_sensitive)
    if "regex" in match:
        return PathMatch("regex", _regex_of(match["regex"]), case_sensitive)
    if "path_separated_prefix" in match:
        return PathMatch("path_separated_prefix", str(match["path_separated_prefix"]), case_sensitive)
    other = {k: v for k, v in match.items() if k not in _MATCH_KNOWN and k not in _MATCH_EXTRA}
    return PathMatch("other", _json(other), case_sensitive)


# Match fields that select requests but are not modelled; kept verbatim in RouteEntry.extra.
_MATCH_EXTRA = {
    "query_parameters",
    "runtime_fraction",
    "grpc",
    "tls_context",
    "dynamic_metadata",
    "filter_state",
    "cel_expr",
}


def _header_match(raw: Mapping[str, Any]) -> HeaderMatch:
    name = str(raw.get("name", "")).lower()
    invert = _bool(raw.get("invert_match"), False)
    missing = _bool(raw.get("treat_missing_header_as_empty"), False)
    string_match = raw.get("string_match")
    if isinstance(string_match, Mapping):
        ignore_case = _bool(string_match.get("ignore_case"), False)
        for kind in _STRING_KINDS:
            if kind in string_match:
                return HeaderMatch(name, kind, str(string_match[kind]), invert, ignore_case, missing)
        if "safe_regex" in string_match:
            return HeaderMatch(
                name, "regex", _regex_of(string_match["safe_regex"]), invert, ignore_case, missing
            )
        return HeaderMatch(name, "other", _json(dict(string_match)), invert, ignore_case, missing)
    # The deprecated one-of forms (Istio before 1.14, hand-written configs).
    for field, kind in (
        ("exact_match", "exact"),
        ("prefix_match", "prefix"),
        ("suffix_match", "suffix"),
        ("contains_match", "contains"),
    ):
        if field in raw:
            return HeaderMatch(name, kind, str(raw[field]), invert, False, missing)
    for field in ("safe_regex_match", "regex_match"):
        if field in raw:
            return HeaderMatch(name, "regex", _regex_of(raw[field]), invert, False, missing)
    if _bool(raw.get("present_match"), False):
        return HeaderMatch(name, "present", "", invert, False, missing)
    if "present_match" in raw:  # present_match: false means "absent"
        return HeaderMatch(name, "present", "", not invert, False, missing)
    rest = {
        k: v for k, v in raw.items() if k not in {"name", "invert_match", "treat_missing_header_as_empty"}
    }
    if not rest:
        # A matcher with no specifier matches any request that has the header.
        return HeaderMatch(name, "present", "", invert, False, missing)
    return HeaderMatch(name, "other", _json(rest), invert, False, missing)


def _action(route: Mapping[str, Any]) -> tuple[RouteAction, dict[str, Any]]:
    """The action of a route and the routing-relevant action fields it does not model."""
    extra: dict[str, Any] = {}
    if "direct_response" in route:
        return RouteAction(status=_uint(route["direct_response"].get("status"))), extra
    action = route.get("route")
    if not isinstance(action, Mapping):
        kept = {k: route[k] for k in ("redirect", "filter_action", "non_forwarding_action") if k in route}
        return RouteAction(other=_json(kept)), extra
    extra.update({f"route.{k}": v for k, v in action.items() if k not in _ACTION_IGNORED})
    if "cluster" in action:
        return RouteAction(clusters=((str(action["cluster"]), Fraction(100)),)), extra
    weighted = action.get("weighted_clusters")
    if isinstance(weighted, Mapping):
        extra.update({f"weighted_clusters.{k}": v for k, v in weighted.items() if k not in _WEIGHTED_IGNORED})
        picks: dict[str, int] = {}
        for entry in weighted.get("clusters", []):
            weight = _uint(entry.get("weight"))
            for k, v in entry.items():
                if k not in _CLUSTER_WEIGHT_IGNORED:
                    extra[f"weighted_clusters.clusters[{entry.get('name', '')}].{k}"] = v
            if weight > 0:  # Envoy never picks a weight-0 cluster; Istio drops them
                name = str(entry.get("name", ""))
                picks[name] = picks.get(name, 0) + weight
        total = sum(picks.values())
        if total == 0:
            return RouteAction(other=_json({"weighted_clusters": weighted})), extra
        shares = tuple(sorted((name, Fraction(100 * w, total)) for name, w in picks.items()))
        return RouteAction(clusters=shares), extra
    rest = {k: v for k, v in action.items() if k not in _ACTION_IGNORED}
    return RouteAction(other=_json(rest)), {}


def _route_entry(raw: Mapping[str, Any]) -> RouteEntry:
    match = raw.get("match", {}) or {}
    path = _path_match(match)
    headers = tuple(sorted(_header_match(h) for h in match.get("headers", []) or []))
    action, extra = _action(raw)
    extra.update({f"match.{k}": v for k, v in match.items() if k in _MATCH_EXTRA})
    extra.update({k: v for k, v in raw.items() if k not in _ROUTE_IGNORED})
    return RouteEntry(path, headers, action, _json(extra) if extra else "")


_PORT_SUFFIX = re.compile(r":(\d+|\*)$")
_CATCH_ALL_404 = RouteEntry(PathMatch("prefix", "/"), (), RouteAction(status=404))


def _domains(raw: Iterable[Any]) -> tuple[str, ...]:
    # "host", "host:80" and "host:*" are the same virtual host once the port is ignored, which is
    # how Istio's gateway routes (ignore_port_in_host_matching) and how the local mesh is set up.
    out = set()
    for domain in raw:
        text = str(domain).lower()
        if not text.startswith("["):  # leave IPv6 literals alone
            text = _PORT_SUFFIX.sub("", text)
        out.add(text)
    return tuple(sorted(out))


def route_table_from_route_configs(route_configs: Iterable[Mapping[str, Any]]) -> RouteTable:
    """Canonical route table of one or more Envoy RouteConfiguration dicts (their virtual hosts merged)."""
    hosts: list[VirtualHost] = []
    for config in route_configs:
        for vhost in config.get("virtual_hosts", []) or []:
            routes = [_route_entry(r) for r in vhost.get("routes", []) or []]
            # A trailing "everything else: 404" route is what no route does anyway; older Istio
            # wrote one for a port without VirtualServices, newer Istio an empty host.
            while routes and routes[-1] == _CATCH_ALL_404:
                routes.pop()
            hosts.append(VirtualHost(_domains(vhost.get("domains", [])), tuple(routes)))
    return RouteTable(tuple(sorted(hosts, key=lambda v: v.domains)))


def route_configs_from_config_dump(config_dump: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every RouteConfiguration in an admin ``/config_dump`` (full, or ``?resource=...``), by name."""
    found: dict[str, dict[str, Any]] = {}
    for section in config_dump.get("configs", []) or []:
        kind = str(section.get("@type", ""))
        if kind.endswith("RoutesConfigDump"):
            entries = [*section.get("static_route_configs", []), *section.get("dynamic_route_configs", [])]
        elif kind.endswith("RoutesConfigDump.DynamicRouteConfig") or kind.endswith(
            "RoutesConfigDump.StaticRouteConfig"
        ):
            entries = [section]
        else:
            continue
        for entry in entries:
            config = entry.get("route_config")
            if isinstance(config, Mapping) and "name" in config:
                found[str(config["name"])] = dict(config)
    return found


_GATEWAY_ROUTE = re.compile(r"^https?\.\d+$")


def route_table_from_config_dump(
    config_dump: Mapping[str, Any], route_config_name: str | None = None
) -> RouteTable:
    """The canonical route table of the gateway's HTTP port in an Envoy admin ``/config_dump``.

    With `route_config_name` (``"http.80"`` locally, ``"http.8080"`` on Istio's ingress gateway)
    that configuration is read. Without it, the one configuration named ``http.<port>`` is
    used; if there are several, ``http.80`` then ``http.8080``; none gives an empty table (the
    gateway has not received its routes yet), which never equals an expected table.
    """
    configs = route_configs_from_config_dump(config_dump)
    if route_config_name is not None:
        chosen = configs.get(route_config_name)
        return route_table_from_route_configs([chosen] if chosen else [])
    candidates = sorted(name for name in configs if _GATEWAY_ROUTE.match(name))
    if not candidates:
        return RouteTable(())
    if len(candidates) > 1:
        for preferred in ("http.80", "http.8080"):
            if preferred in candidates:
                return route_table_from_route_configs([configs[preferred]])
        raise HarnessError(
            f"several gateway route configurations in the config_dump ({', '.join(candidates)}); "
            "pass route_config_name to pick one"
        )
    return route_table_from_route_configs([configs[candidates[0]]])


def expected_route_table(objects: Sequence[Mapping[str, Any]]) -> RouteTable:
    """The route table the manifests promise on the gateway's HTTP port (via the Envoy translation)."""
    return route_table_from_route_configs([build_route_configuration(objects)])


def diff_route_tables(expected: RouteTable, live: RouteTable) -> str:
    """A unified diff of the two tables' listings; empty when they are equal."""
    if expected == live:
        return ""
    lines = difflib.unified_diff(
        expected.describe().splitlines(),
        live.describe().splitlines(),
        fromfile="expected (manifests)",
        tofile="live (gateway config_dump)",
        lineterm="",
        n=2,
    )
    text = "\n".join(lines)
    # Two tables can list the same but differ in a detail the listing rounds (e.g. 1/3 %).
    return text or f"tables differ in detail:\nexpected {expected!r}\nlive {live!r}"
