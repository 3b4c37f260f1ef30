"""Where an Envoy route table sends a request class, and which versions answer.

Three sides are compared per request class:

- the oracle: :func:`abtest_harness.routing.expected_distribution`;
- the Python translation: :func:`abtest_harness.mesh.envoy.build_route_configuration` and the
  endpoints the local mesh would give its clusters (:func:`abtest_harness.mesh.local.endpoints_for`);
- Istio: the gateway route configuration and endpoint assignments ``istio-xds`` printed.

The route tables are read through :mod:`abtest_harness.mesh.base`'s canonical form and evaluated
here with Envoy's matching rules (``source/common/router/config_impl.cc`` and
``source/common/http/header_utility.cc`` of Envoy): the virtual host by domain (exact, then
the longest ``*.suffix``, then the longest ``prefix*``, then ``*``), the first route whose
path and header matchers all hold, then the weighted clusters; a header matcher on a missing
header holds only for an absence test, unless it treats a missing header as empty; an
inverted presence test holds when the header is missing. Outcomes are the oracle's:
versions, ``status:404`` (no route), ``status:503`` (no endpoint or no such cluster).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

import re2

from abtest_harness.errors import HarnessError
from abtest_harness.mesh.base import HeaderMatch, PathMatch, RouteEntry, RouteTable, VirtualHost
from abtest_harness.mesh.workloads import WorkloadSpec
from abtest_harness.routing import NO_ENDPOINTS, NO_ROUTE, VERSION_ENV, VERSION_LABEL, Expected, Request

Outcome = dict[str, Fraction]
REFUSED = "refused"


def version_of(spec: WorkloadSpec) -> str:
    """The version a replica answers as: MODEL_VERSION, else its model_version label (as the oracle)."""
    if VERSION_ENV in spec.env:
        return str(spec.env[VERSION_ENV])
    label = spec.labels.get(VERSION_LABEL)
    if label:
        return str(label)
    raise HarnessError(f"{spec.namespace}/{spec.deployment}: no {VERSION_ENV} and no {VERSION_LABEL} label")


@lru_cache(maxsize=1024)
def _compiled(pattern: str, ignore_case: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:  # Envoy would have refused the route: say so rather than guess
        raise HarnessError(f"invalid RE2 regex {pattern!r} in a route table") from exc


def _fullmatch(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """RE2 whole-string match, as Envoy's safe_regex (google_re2) matches."""
    return _compiled(pattern, ignore_case).fullmatch(value) is not None


def _string_match(kind: str, expected: str, value: str, ignore_case: bool) -> bool:
    if ignore_case and kind != "regex":
        expected, value = expected.lower(), value.lower()
    if kind == "exact":
        return value == expected
    if kind == "prefix":
        return value.startswith(expected)
    if kind == "suffix":
        return value.endswith(expected)
    if kind == "contains":
        return expected in value
    if kind == "regex":
        return _fullmatch(expected, value, ignore_case)
    raise HarnessError(f"header matcher {kind} {expected!r} is not evaluated here")


def _header_value(request: Request, name: str) -> str | None:
    if name == ":method":
        return request.method
    if name in (":authority", "host"):
        return request.authority
    if name == ":path":
        return request.path
    return request.header(name)


def header_matches(matcher: HeaderMatch, request: Request) -> bool:
    """One Envoy header matcher (HeaderUtility::matchHeaders) on the request."""
    value = _header_value(request, matcher.name)
    if matcher.kind == "present":
        return (value is not None) != matcher.invert
    if value is None:
        if not matcher.missing_as_empty:
            return False
        value = ""
    return _string_match(matcher.kind, matcher.value, value, matcher.ignore_case) != matcher.invert


def path_matches(match: PathMatch, request: Request) -> bool:
    """The route's path matcher on the request's path (query string excluded)."""
    path = request.route_path
    if match.kind == "regex":  # Envoy ignores case_sensitive for safe_regex
        return _fullmatch(match.value, path)
    value, expected = (path, match.value) if match.case_sensitive else (path.lower(), match.value.lower())
    if match.kind == "prefix":
        return value.startswith(expected)
    if match.kind == "exact":
        return value == expected
    if match.kind == "path_separated_prefix":
        return value == expected or value.startswith(expected.rstrip("/") + "/")
    raise HarnessError(f"path matcher {match.describe()} is not evaluated here")


def _domain_rank(domain: str, host: str) -> tuple[int, int] | None:
    """Envoy's virtual host order: exact (3), suffix wildcard (2), prefix wildcard (1), * (0)."""
    if domain == host:
        return (3, len(domain))
    if domain == "*":
        return (0, 0)
    if domain.startswith("*") and host.endswith(domain[1:]) and len(host) > len(domain) - 1:
        return (2, len(domain))
    if domain.endswith("*") and host.startswith(domain[:-1]) and len(host) > len(domain) - 1:
        return (1, len(domain))
    return None


def virtual_host(table: RouteTable, request: Request) -> VirtualHost | None:
    best: tuple[tuple[int, int], VirtualHost] | None = None
    for vhost in table.virtual_hosts:
        for domain in vhost.domains:
            rank = _domain_rank(domain, request.host)
            if rank is not None and (best is None or rank > best[0]):
                best = (rank, vhost)
    return best[1] if best else None


def chosen_route(table: RouteTable, request: Request) -> RouteEntry | None:
    vhost = virtual_host(table, request)
    if vhost is None:
        return None
    for route in vhost.routes:
        if route.extra:
            raise HarnessError(f"route {route.describe()} has fields not evaluated here")
        if path_matches(route.path, request) and all(header_matches(h, request) for h in route.headers):
            return route
    return None


def outcome(table: RouteTable, request: Request, backends: Callable[[str], Sequence[str]]) -> Outcome:
    """Outcome shares of `request` on `table`; `backends(cluster)` lists the version of each endpoint."""
    route = chosen_route(table, request)
    if route is None:
        return {NO_ROUTE: Fraction(1)}
    action = route.action
    if action.status is not None:
        return {f"status:{action.status}": Fraction(1)}
    if action.other:
        return {f"other:{action.other}": Fraction(1)}
    shares: Outcome = {}
    for cluster, percent in action.clusters:
        share = percent / 100
        versions = list(backends(cluster))
        if not versions:
            shares[NO_ENDPOINTS] = shares.get(NO_ENDPOINTS, Fraction(0)) + share
            continue
        for version in versions:
            shares[version] = shares.get(version, Fraction(0)) + share / len(versions)
    return shares


def from_expected(expected: Expected) -> Outcome:
    """The oracle's shares as fractions, zero shares left out."""
    return {k: Fraction(v).limit_denominator(10**6) for k, v in expected.shares.items() if v > 0}


def same(a: Mapping[str, Fraction], b: Mapping[str, Fraction], tolerance: Fraction = Fraction(1, 10**6)) -> bool:
    keys = set(a) | set(b)
    return all(abs(a.get(k, Fraction(0)) - b.get(k, Fraction(0))) <= tolerance for k in keys)


def describe(o: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {float(v) * 100:.4g}%" for k, v in sorted(o.items())) or "nothing"
