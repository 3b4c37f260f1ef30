"""Conformance of the routing oracle to Istio's documented HTTP routing semantics.

Each case of the table names the rule it checks and where it comes from (``rule``: the Istio
or Envoy documentation URL#section, or the Istio/Envoy source file and function that decide
it, and the rule in words). The objects start from a hand-written copy of the reference charts
(``reference()``) and change one thing; the reference manifests themselves, as rendered for
every stage of the plan, are checked at the end against what each stage's weights and running
versions imply, computed from the plan without the oracle.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest

from abtest_harness import routing
from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage
from abtest_harness.routing import (
    NO_ENDPOINTS,
    NO_LISTENER,
    NO_ROUTE,
    STANDARD_CLASSES,
    Destination,
    Expected,
    FrozenMap,
    Request,
    backends_behind,
    expected_distribution,
    exported_to,
    host_matches,
    hosts_overlap,
    resolve_gateway_name,
    resolve_service_host,
    server_host_parts,
    versions_behind,
)
from abtest_harness.validate import validate_objects
from tests.unit import objects as k8s
from tests.unit.objects import NS

Obj = dict[str, Any]

# The documentation the rules come from.
VS = "https://istio.io/latest/docs/reference/config/networking/virtual-service/"
GW = "https://istio.io/latest/docs/reference/config/networking/gateway/"
DR = "https://istio.io/latest/docs/reference/config/networking/destination-rule/"
ENVOY_ROUTE = "https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto"
K8S_SVC = "https://kubernetes.io/docs/concepts/services-networking/service/"
ISTIO_ROUTE_GO = "https://github.com/istio/istio/blob/master/pilot/pkg/networking/core/route/route.go"
ISTIO_VS_VALIDATION_GO = "https://github.com/istio/istio/blob/master/pkg/config/validation/virtualservice.go"
ISTIO_VALIDATION_GO = "https://github.com/istio/istio/blob/master/pkg/config/validation/validation.go"
ENDPOINT_BUILDER_GO = "https://github.com/istio/istio/blob/master/pilot/pkg/xds/endpoints/endpoint_builder.go"
FQDN = "svc.cluster.local"


# --- the reference charts, by hand -----------------------------------------------------------


def reference(green: int = 50, blue: int = 50, running: tuple[str, ...] = ("green", "blue")) -> list[Obj]:
    """The reference charts' objects at a stage with these weights and running versions."""
    objects: list[Obj] = [
        k8s.namespace({"istio-injection": "enabled"}),
        k8s.gateway(),
        k8s.virtual_service(
            [k8s.header_route("blue"), k8s.header_route("green"), k8s.weighted_route(green, blue)]
        ),
        k8s.service("green"),
        k8s.service("blue"),
    ]
    objects += [k8s.deployment(v, "abtest/scorer:dev", readiness=False) for v in running]
    return objects


def find(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    """The one object of a kind (and name) in the list, to change it in place."""
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def vs_spec(objects: list[Obj]) -> Obj:
    spec: Obj = find(objects, "VirtualService")["spec"]
    return spec


def http(objects: list[Obj]) -> list[Obj]:
    routes: list[Obj] = vs_spec(objects)["http"]
    return routes


def changed(change: Callable[[list[Obj]], object], **ref: Any) -> Callable[[], list[Obj]]:
    """Objects: the reference (with ``ref`` arguments), then ``change`` applied in place."""

    def build() -> list[Obj]:
        objects = reference(**ref)
        change(objects)
        return objects

    return build


def put(target: Callable[[list[Obj]], Obj], key: str, value: Any) -> Callable[[list[Obj]], None]:
    """A change that sets ``key`` of the mapping ``target`` picks out."""

    def change(objects: list[Obj]) -> None:
        target(objects)[key] = copy.deepcopy(value)

    return change


def both(*changes: Callable[[list[Obj]], object]) -> Callable[[list[Obj]], None]:
    def change(objects: list[Obj]) -> None:
        for one in changes:
            one(objects)

    return change


def route0(objects: list[Obj]) -> Obj:
    return http(objects)[0]


def match00(objects: list[Obj]) -> Obj:
    match: Obj = http(objects)[0]["match"][0]
    return match


def weighted(objects: list[Obj]) -> Obj:
    return http(objects)[2]


def server0(objects: list[Obj]) -> Obj:
    server: Obj = find(objects, "Gateway")["spec"]["servers"][0]
    return server


def only_routes(*routes: Obj) -> Callable[[list[Obj]], None]:
    """A change that replaces the VirtualService's http routes."""

    def change(objects: list[Obj]) -> None:
        vs_spec(objects)["http"] = copy.deepcopy(list(routes))

    return change


def add(*extra: Obj) -> Callable[[list[Obj]], None]:
    def change(objects: list[Obj]) -> None:
        objects.extend(copy.deepcopy(list(extra)))

    return change


def drop(kind: str, name: str) -> Callable[[list[Obj]], None]:
    def change(objects: list[Obj]) -> None:
        objects.remove(find(objects, kind, name))

    return change


to = k8s.destination


def extra_vs(name: str, hosts: list[str], version: str, namespace: str = NS, **spec: Any) -> Obj:
    return k8s.virtual_service(
        [{"route": [to(version)]}],
        name=name,
        namespace=namespace,
        hosts=hosts,
        gateways=[f"{NS}/mlmodel-gateway"],
        **spec,
    )


def route1(objects: list[Obj]) -> Obj:
    """The green-header route (``spec.http[1]``)."""
    return http(objects)[1]


def green_subset_rule(host: str = "model-svc-blue") -> Obj:
    """DestinationRule on ``host`` with a subset ``green`` = pods labelled model_version: green."""
    return k8s.destination_rule(host, {"green": "green"}, name="subset-green")


def green_subset_of_blue() -> Obj:
    """A destination: subset ``green`` of the blue Service, whose selector says model_version: blue."""
    return {"destination": {"host": "model-svc-blue", "subset": "green", "port": {"number": 5001}}}


def one_service_with_subsets(objects: list[Obj]) -> None:
    """Destinations as subsets of one Service ``model-svc`` (selector app=model) via a DestinationRule."""
    objects.append(k8s.service(name="model-svc", selector={"app": "model"}))
    objects.append(k8s.destination_rule("model-svc", {"v-green": "green", "v-blue": "blue"}))
    weighted(objects)["route"] = [
        {"destination": {"host": "model-svc", "subset": "v-green", "port": {"number": 5001}}, "weight": 30},
        {"destination": {"host": "model-svc", "subset": "v-blue", "port": {"number": 5001}}, "weight": 70},
    ]


# --- the table -------------------------------------------------------------------------------

PLAIN = Request("plain")
BLUE = Request("header-blue", headers={"x-api-version": "blue"})
GREEN = Request("header-green", headers={"x-api-version": "green"})


@dataclass(frozen=True)
class Case:
    """One conformance case: objects, a request, and the outcome the cited rule implies."""

    id: str
    rule: str
    objects: Callable[[], list[Obj]]
    request: Request = PLAIN
    expect: Mapping[str, float] | None = None
    raises: tuple[type[Exception], str] | None = None  # error type, field path it must name
    route: str | None = None  # substring of Expected.route


CASES: tuple[Case, ...] = (
    # Ordered routes, OR/AND, catch-all.
    Case(
        "weighted-split",
        f"{VS}#HTTPRouteDestination: weights give each destination's share of traffic",
        reference,
        PLAIN,
        {"green": 0.5, "blue": 0.5},
        route="http[2] (weighted)",
    ),
    Case(
        "header-pins-blue",
        f"{VS}#HTTPMatchRequest-headers: exact header value selects the route",
        reference,
        BLUE,
        {"blue": 1.0},
        route="http[0] (blue-header)",
    ),
    Case(
        "header-pins-green",
        f"{VS}#HTTPMatchRequest-headers: exact header value selects the route",
        reference,
        GREEN,
        {"green": 1.0},
        route="http[1] (green-header)",
    ),
    Case(
        "first-matching-route-wins",
        f"{VS}#VirtualService-http: ordered list, the first rule matching is used",
        changed(only_routes({"route": [to("green")]}, {"route": [to("blue")]})),
        PLAIN,
        {"green": 1.0},
        route="http[0]",
    ),
    Case(
        "no-match-list-matches-all",
        f"{VS}#HTTPRoute-match: a route without match conditions matches every request",
        changed(only_routes({"name": "all", "route": [to("blue")]})),
        BLUE,
        {"blue": 1.0},
    ),
    Case(
        "match-entries-are-or",
        f"{VS}#HTTPRoute-match: the list of match blocks has OR semantics",
        changed(
            only_routes(
                {"match": [{"uri": {"exact": "/nope"}}, {"uri": {"prefix": "/sc"}}], "route": [to("blue")]},
                {"route": [to("green")]},
            )
        ),
        PLAIN,
        {"blue": 1.0},
    ),
    Case(
        "conditions-in-entry-are-and",
        f"{VS}#HTTPRoute-match: all conditions inside one match block have AND semantics",
        reference,
        Request("blue-other-path", path="/healthz", headers={"x-api-version": "blue"}),
        {"green": 0.5, "blue": 0.5},
        route="(weighted)",
    ),
    Case(
        "no-route-matches-404",
        f"{VS}#VirtualService-http: a request no rule matches is not routed (Envoy 404)",
        changed(only_routes(k8s.header_route("blue"))),
        PLAIN,
        {NO_ROUTE: 1.0},
    ),
    # StringMatch semantics.
    Case(
        "header-name-case-insensitive",
        f"{VS}#HTTPMatchRequest-headers: header names are case-insensitive (HTTP)",
        reference,
        Request("caps", headers={"X-Api-Version": "blue"}),
        {"blue": 1.0},
    ),
    Case(
        "header-value-case-sensitive",
        f"{VS}#HTTPMatchRequest-headers: header values are case-sensitive",
        reference,
        Request("caps-value", headers={"x-api-version": "Blue"}),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "uri-prefix-is-string-prefix",
        f"{VS}#StringMatch-prefix and {ENVOY_ROUTE}#config-route-v3-routematch: "
        "prefix is a plain string prefix",
        reference,
        Request("scorecard", path="/scorecard", headers={"x-api-version": "blue"}),
        {"blue": 1.0},
    ),
    Case(
        "uri-ignores-query",
        f"{ENVOY_ROUTE}#config-route-v3-routematch: path matching excludes the query string",
        changed(put(match00, "uri", {"exact": "/score"})),
        Request("q", path="/score?id=7", headers={"x-api-version": "blue"}),
        {"blue": 1.0},
    ),
    Case(
        "uri-exact",
        f"{VS}#StringMatch-exact: exact string match",
        changed(put(match00, "uri", {"exact": "/score"})),
        Request("slash", path="/score/", headers={"x-api-version": "blue"}),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "uri-regex-full-match",
        f"{VS}#StringMatch-regex: RE2 regex, matched against the whole path",
        changed(put(match00, "uri", {"regex": "/sc.re"})),
        BLUE,
        {"blue": 1.0},
    ),
    Case(
        "uri-regex-not-a-search",
        f"{VS}#StringMatch-regex: RE2 full match, a partial match does not count",
        changed(put(match00, "uri", {"regex": "/sc"})),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "header-regex-full-match",
        f"{VS}#StringMatch-regex: RE2 full match on the header value",
        changed(put(match00, "headers", {"x-api-version": {"regex": "lu"}})),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "header-regex-alternation",
        f"{VS}#StringMatch-regex: RE2 syntax (alternation)",
        changed(put(match00, "headers", {"x-api-version": {"regex": "blue|canary"}})),
        Request("canary", headers={"x-api-version": "canary"}),
        {"blue": 1.0},
    ),
    Case(
        "header-prefix",
        f"{VS}#StringMatch-prefix: prefix match on the header value",
        changed(put(match00, "headers", {"x-api-version": {"prefix": "bl"}})),
        Request("blu", headers={"x-api-version": "blueberry"}),
        {"blue": 1.0},
    ),
    Case(
        "header-presence",
        f"{VS}#HTTPMatchRequest-headers: an empty match checks only the header's presence",
        changed(put(match00, "headers", {"x-canary": {}})),
        Request("present", headers={"x-canary": ""}),
        {"blue": 1.0},
    ),
    Case(
        "header-absent-no-match",
        f"{VS}#HTTPMatchRequest-headers: a header match needs the header",
        changed(put(match00, "headers", {"x-canary": {}})),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "header-regex-star-refused",
        f'{ISTIO_VS_VALIDATION_GO} validateHTTPRouteMatchRequest: regex "*" is exempt from the regex '
        "check in withoutHeaders only; in headers it fails to compile",
        changed(put(match00, "headers", {"x-canary": {"regex": "*"}})),
        Request("any", headers={"x-canary": "x"}),
        raises=(ConfigError, "spec.http[0].match[0].headers.x-canary.regex"),
    ),
    Case(
        "header-empty-prefix-refused",
        f'{ISTIO_VALIDATION_GO} validateStringMatch: "prefix string match should not be empty"',
        changed(put(match00, "headers", {"x-canary": {"prefix": ""}})),
        Request("any", headers={"x-canary": "x"}),
        raises=(ConfigError, "spec.http[0].match[0].headers.x-canary.prefix"),
    ),
    Case(
        "header-null-refused",
        f'{ISTIO_VS_VALIDATION_GO} validateHTTPRouteMatchRequest: "header match cannot be null"',
        changed(put(match00, "headers", {"x-canary": None})),
        Request("any", headers={"x-canary": "x"}),
        raises=(ConfigError, "spec.http[0].match[0].headers.x-canary"),
    ),
    Case(
        "without-headers-empty-prefix-refused",
        f"{ISTIO_VS_VALIDATION_GO} validateHTTPRouteMatchRequest: withoutHeaders values pass "
        'validateStringMatch, which refuses an empty prefix (Envoy\'s string matcher needs one character)',
        changed(both(put(match00, "headers", {}), put(match00, "withoutHeaders", {"x-opt-out": {"prefix": ""}}))),
        PLAIN,
        raises=(ConfigError, "spec.http[0].match[0].withoutHeaders.x-opt-out.prefix"),
    ),
    Case(
        "without-headers-regex-star-means-absent",
        f'{ISTIO_ROUTE_GO} TranslateRouteMatch: regex "*" in withoutHeaders is an inverted present_match '
        "without treat_missing_header_as_empty: the route applies when the header is absent",
        changed(both(put(match00, "headers", {}), put(match00, "withoutHeaders", {"x-opt-out": {"regex": "*"}}))),
        PLAIN,
        {"blue": 1.0},
        route="http[0]",
    ),
    Case(
        "without-headers-regex-star-excludes-present",
        f'{ISTIO_ROUTE_GO} TranslateRouteMatch: regex "*" in withoutHeaders excludes any value, even empty',
        changed(both(put(match00, "headers", {}), put(match00, "withoutHeaders", {"x-opt-out": {"regex": "*"}}))),
        Request("opted-out", headers={"x-opt-out": ""}),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "method-empty-prefix-refused",
        f'{ISTIO_VS_VALIDATION_GO} validateHTTPRouteMatchRequest: the method passes validateStringMatch',
        changed(put(match00, "method", {"prefix": ""})),
        BLUE,
        raises=(ConfigError, "spec.http[0].match[0].method.prefix"),
    ),
    Case(
        "uri-empty-prefix-matches-every-path",
        f"{ISTIO_VS_VALIDATION_GO} validateHTTPRouteMatchRequest: the uri allows an empty prefix; "
        "Envoy's path prefix \"\" matches every path",
        changed(put(match00, "uri", {"prefix": ""})),
        Request("other", path="/other", headers={"x-api-version": "blue"}),
        {"blue": 1.0},
        route="http[0]",
    ),
    Case(
        "without-headers-excludes",
        f"{VS}#HTTPMatchRequest-without_headers: a matching header excludes the request",
        changed(
            both(
                put(match00, "headers", {}),
                put(match00, "withoutHeaders", {"x-api-version": {"exact": "green"}}),
            )
        ),
        GREEN,
        {"green": 1.0},
        route="http[1]",
    ),
    Case(
        "without-headers-missing-is-empty",
        f"{VS}#HTTPMatchRequest-without_headers: a missing header does not match",
        changed(
            both(
                put(match00, "headers", {}),
                put(match00, "withoutHeaders", {"x-api-version": {"exact": "green"}}),
            )
        ),
        PLAIN,
        {"blue": 1.0},
        route="http[0]",
    ),
    Case(
        "without-headers-absent",
        f"{VS}#HTTPMatchRequest-without_headers: an absent header is not matched, so the route applies",
        changed(both(put(match00, "headers", {}), put(match00, "withoutHeaders", {"x-opt-out": {}}))),
        PLAIN,
        {"blue": 1.0},
    ),
    Case(
        "method-exact",
        f"{VS}#HTTPMatchRequest-method: case-sensitive exact method match",
        changed(put(match00, "method", {"exact": "POST"})),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "method-post",
        f"{VS}#HTTPMatchRequest-method: case-sensitive exact method match",
        changed(put(match00, "method", {"exact": "POST"})),
        Request("post", method="POST", headers={"x-api-version": "blue"}),
        {"blue": 1.0},
    ),
    Case(
        "ignore-uri-case",
        f"{VS}#HTTPMatchRequest-ignore_uri_case: exact/prefix compare case-insensitively",
        changed(both(put(match00, "uri", {"exact": "/SCORE"}), put(match00, "ignoreUriCase", True))),
        BLUE,
        {"blue": 1.0},
    ),
    Case(
        "ignore-uri-case-not-regex",
        f"{VS}#HTTPMatchRequest-ignore_uri_case: ignored for regex matches",
        changed(both(put(match00, "uri", {"regex": "/SCORE"}), put(match00, "ignoreUriCase", True))),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "match-port-other",
        f"{VS}#HTTPMatchRequest-port: the match applies only to the given port",
        changed(put(match00, "port", 8080)),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "match-gateways-other",
        f"{VS}#HTTPMatchRequest-gateways: the match applies only on the named gateways",
        changed(put(match00, "gateways", ["istio-system/other-gateway"])),
        BLUE,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "match-gateways-this",
        f"{VS}#HTTPMatchRequest-gateways: names resolve like VirtualService.gateways",
        changed(put(match00, "gateways", ["mlmodel-gateway"])),
        BLUE,
        {"blue": 1.0},
    ),
    # Weights.
    Case(
        "weight-zero-never-picked",
        f"{VS}#HTTPRouteDestination-weight: if weight is 0, the destination will not receive any traffic",
        changed(lambda o: None, green=100, blue=0),
        PLAIN,
        {"green": 1.0, "blue": 0.0},
    ),
    Case(
        "omitted-weight-single-destination",
        f"{VS}#HTTPRouteDestination-weight: a lone destination receives all traffic",
        changed(put(weighted, "route", [to("blue")])),
        PLAIN,
        {"blue": 1.0},
    ),
    Case(
        "weights-80-20",
        f"{VS}#HTTPRouteDestination-weight: a destination receives weight/(sum of all weights)",
        changed(lambda o: None, green=80, blue=20),
        PLAIN,
        {"green": 0.8, "blue": 0.2},
    ),
    Case(
        "weights-relative-3-1",
        f"{VS}#HTTPRouteDestination-weight: weight/(sum of all weights); {ISTIO_ROUTE_GO} "
        "applyHTTPRouteDestination writes the weights unscaled into weighted_clusters",
        changed(lambda o: None, green=3, blue=1),
        PLAIN,
        {"green": 0.75, "blue": 0.25},
    ),
    Case(
        "weights-sum-over-100",
        f"{VS}#HTTPRouteDestination-weight: weight/(sum of all weights), any sum",
        changed(lambda o: None, green=60, blue=50),
        PLAIN,
        {"green": 60 / 110, "blue": 50 / 110},
    ),
    Case(
        "weights-omitted-among-several-is-zero",
        f"{VS}#HTTPRouteDestination-weight: int32, so an omitted weight is 0; 0 gets no traffic",
        changed(put(weighted, "route", [to("green"), to("blue", 7)])),
        PLAIN,
        {"green": 0.0, "blue": 1.0},
    ),
    Case(
        "weights-total-zero",
        f"{ISTIO_VALIDATION_GO} validateHTTPRouteDestinations: several destinations with a total "
        "weight of 0 are refused",
        changed(lambda o: None, green=0, blue=0),
        PLAIN,
        raises=(ConfigError, "spec.http[2].route"),
    ),
    Case(
        "weights-total-at-uint32-limit",
        f"{VS}#HTTPRouteDestination-weight: int32 weights; Envoy accepts a total up to 4294967295",
        changed(lambda o: None, green=2**31 - 1, blue=2**31 - 1),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "weights-total-above-uint32",
        "https://github.com/envoyproxy/envoy/blob/main/source/common/router/weighted_cluster_specifier.cc: Envoy "
        "refuses a route whose weighted clusters sum above 4294967295 (checked on the 1.40 binary)",
        changed(put(weighted, "route", [to("green", 2**31 - 1), to("blue", 2**31 - 1), to("green", 2)])),
        PLAIN,
        raises=(ConfigError, "spec.http[2].route"),
    ),
    Case(
        "weight-negative",
        f"{ISTIO_VALIDATION_GO} validateWeight: a weight below 0 is refused",
        changed(lambda o: None, green=110, blue=-10),
        PLAIN,
        raises=(ConfigError, "spec.http[2].route[1].weight"),
    ),
    Case(
        "weight-not-integer",
        f"{VS}#HTTPRouteDestination-weight: int32",
        changed(put(weighted, "route", [{**to("green"), "weight": "50"}, to("blue", 50)])),
        PLAIN,
        raises=(ConfigError, "spec.http[2].route[0].weight"),
    ),
    Case(
        "weight-single-destination-ignored",
        f"{VS}#HTTPRouteDestination-weight: if there is only one destination it receives all traffic; "
        f"{ISTIO_ROUTE_GO} processDestination writes a plain cluster and never reads the weight",
        changed(put(weighted, "route", [to("blue", 50)])),
        PLAIN,
        {"blue": 1.0},
    ),
    # Hosts and Gateway binding.
    Case(
        "vs-host-wildcard-suffix",
        f"{VS}#VirtualService-hosts: a wildcard prefix matches any subdomain",
        changed(put(vs_spec, "hosts", ["*.example.com"])),
        Request("api", authority="api.example.com"),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "vs-host-wildcard-not-apex",
        f"{GW}#Server-hosts: *.foo.com matches bar.foo.com, not foo.com itself",
        changed(put(vs_spec, "hosts", ["*.example.com"])),
        Request("apex", authority="example.com"),
        {NO_ROUTE: 1.0},
    ),
    Case(
        "vs-host-exact-port-ignored",
        f"{VS}#VirtualService-hosts: the Host header's port does not take part",
        changed(put(vs_spec, "hosts", ["api.example.com"])),
        Request("port", authority="API.example.com:8080"),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "vs-host-exact-other",
        f"{VS}#VirtualService-hosts: the addressed host must be one of the hosts",
        changed(put(vs_spec, "hosts", ["api.example.com"])),
        Request("other", authority="web.example.com"),
        {NO_ROUTE: 1.0},
    ),
    Case(
        "gateway-hosts-restrict",
        f"{GW}#Server-hosts: only hosts exposed by the server are reachable through it",
        changed(put(server0, "hosts", ["api.example.com"])),
        Request("other", authority="web.example.com"),
        {NO_ROUTE: 1.0},
    ),
    Case(
        "gateway-hosts-admit",
        f"{GW}#Server-hosts: the server exposes the VirtualService hosts it matches",
        changed(put(server0, "hosts", ["api.example.com"])),
        Request("api", authority="api.example.com"),
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "gateway-hosts-namespace",
        f"{GW}#Server-hosts: namespace/dnsName selects VirtualServices of that namespace only",
        changed(put(server0, "hosts", ["other/*"])),
        PLAIN,
        {NO_ROUTE: 1.0},
    ),
    Case(
        "gateway-hosts-dot-namespace",
        f"{GW}#Server-hosts: ./dnsName is the Gateway's own namespace",
        changed(put(server0, "hosts", ["./*"])),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "vs-without-gateways-is-mesh",
        f"{VS}#VirtualService-gateways: omitted means the mesh sidecars only",
        changed(put(vs_spec, "gateways", None)),
        PLAIN,
        {NO_ROUTE: 1.0},
    ),
    Case(
        "vs-gateway-ns-name",
        f"{VS}#VirtualService-gateways: <gateway namespace>/<gateway name>",
        changed(put(vs_spec, "gateways", [f"{NS}/mlmodel-gateway"])),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "vs-gateway-short-name-is-own-namespace",
        f"{VS}#VirtualService-gateways: no namespace means the VirtualService's namespace",
        changed(put(vs_spec, "gateways", ["istio-system/mlmodel-gateway"])),
        PLAIN,
        {NO_ROUTE: 1.0},
    ),
    Case(
        "vs-export-to-hides",
        f"{VS}#VirtualService-export_to: a VirtualService not exported to the gateway's "
        "namespace is not used there",
        changed(put(vs_spec, "exportTo", ["elsewhere"])),
        PLAIN,
        {NO_ROUTE: 1.0},
    ),
    Case(
        "no-server-on-port",
        f"{GW}#Server-port: the gateway listens only on its servers' ports",
        reference,
        Request("port-8080", port=8080),
        {NO_LISTENER: 1.0},
    ),
    Case(
        "gateway-selector-other-workload",
        f"{GW}#Gateway-selector: a Gateway applies to the workloads it selects",
        changed(put(lambda o: find(o, "Gateway")["spec"], "selector", {"istio": "egressgateway"})),
        PLAIN,
        {NO_LISTENER: 1.0},
    ),
    Case(
        "gateway-selector-subset-of-pod-labels",
        f"{GW}#Gateway-selector: one or more labels; the gateway pods carry istio and app labels",
        changed(put(lambda o: find(o, "Gateway")["spec"], "selector", {"app": "istio-ingressgateway"})),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
    Case(
        "most-specific-host-wins",
        f"{VS}#VirtualService-hosts and {ENVOY_ROUTE}#config-route-v3-virtualhost: "
        "an exact domain beats a wildcard",
        changed(add(extra_vs("api", ["api.example.com"], "blue"))),
        Request("api", authority="api.example.com"),
        {"blue": 1.0},
        route="abtesting/api",
    ),
    Case(
        "two-vs-same-host",
        "https://istio.io/latest/docs/ops/best-practices/traffic-management/#split-virtual-services:"
        " merged in creation order, which manifests do not fix",
        changed(add(extra_vs("dup", ["*"], "blue"))),
        PLAIN,
        raises=(ConfigError, "spec.hosts"),
    ),
    # Destinations and endpoints.
    Case(
        "destination-short-name",
        f"{VS}#Destination-host: a short name resolves in the rule's namespace",
        changed(put(weighted, "route", [{"destination": {"host": "model-svc-blue"}}])),
        PLAIN,
        {"blue": 1.0},
    ),
    Case(
        "destination-dotted-not-fqdn",
        f"{VS}#Destination-host: only short names are qualified; name.ns names no registry host (503)",
        changed(put(weighted, "route", [{"destination": {"host": "model-svc-blue.abtesting"}}])),
        PLAIN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "destination-port-missing",
        f"{VS}#Destination-port and {K8S_SVC}: the Service must expose the port",
        changed(
            put(weighted, "route", [{"destination": {"host": "model-svc-blue", "port": {"number": 8080}}}])
        ),
        PLAIN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "destination-other-namespace",
        f"{VS}#Destination-host: an FQDN ignores the rule's namespace",
        changed(
            both(
                put(lambda o: find(o, "Service", "model-svc-blue")["metadata"], "namespace", "team-b"),
                put(lambda o: find(o, "Deployment", "model-blue")["metadata"], "namespace", "team-b"),
                put(weighted, "route", [{"destination": {"host": f"model-svc-blue.team-b.{FQDN}"}}]),
            )
        ),
        PLAIN,
        {"blue": 1.0},
    ),
    Case(
        "subsets-of-one-service",
        f"{DR}#Subset-labels: subset labels select endpoints of the host's service",
        changed(one_service_with_subsets),
        PLAIN,
        {"green": 0.3, "blue": 0.7},
    ),
    Case(
        "subset-undefined-503",
        f"{VS}#Destination-subset: the subset must be defined in a DestinationRule",
        changed(
            both(
                one_service_with_subsets,
                put(weighted, "route", [{"destination": {"host": "model-svc", "subset": "v-red"}}]),
            )
        ),
        PLAIN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "subset-only-in-less-specific-rule",
        f"{DR}#DestinationRule-host: the rule for the most specific host applies, not a wildcard one",
        changed(
            both(
                one_service_with_subsets,
                add(k8s.destination_rule(f"*.{NS}.{FQDN}", {"v-red": "blue"}, name="wide")),
                put(weighted, "route", [{"destination": {"host": "model-svc", "subset": "v-red"}}]),
            )
        ),
        PLAIN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "subset-defined-twice",
        f"{DR}#DestinationRule-host: rules for one host merge in creation order, which manifests do not fix",
        changed(
            both(
                one_service_with_subsets,
                add(
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "DestinationRule",
                        "metadata": {"name": "again", "namespace": NS},
                        "spec": {"host": "model-svc", "subsets": [{"name": "v-blue", "labels": {"x": "y"}}]},
                    }
                ),
            )
        ),
        PLAIN,
        raises=(ConfigError, "spec.subsets"),
    ),
    Case(
        "subset-adds-to-selector",
        f"{DR}#Subset-labels: the subset filters the Service's endpoints further",
        changed(
            both(
                one_service_with_subsets,
                put(lambda o: find(o, "Service", "model-svc")["spec"], "selector", {"app": "other"}),
            )
        ),
        PLAIN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "subset-clashing-with-service-selector-503",
        f"{DR}#Subset-labels: labels filter the endpoints of the host's service; "
        f"{ENDPOINT_BUILDER_GO} BuildClusterLoadAssignment keeps an endpoint only if "
        "subsetLabels.SubsetOf(ep.Labels), so a subset never reaches pods its Service does not select",
        changed(both(add(green_subset_rule()), put(route1, "route", [green_subset_of_blue()]))),
        GREEN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "subset-within-service-selector",
        f"{DR}#Subset-labels: a subset agreeing with the Service's selector keeps its endpoints",
        changed(
            both(
                add(green_subset_rule(host="model-svc-green")),
                put(route1, "route", [{"destination": {"host": "model-svc-green", "subset": "green"}}]),
            )
        ),
        GREEN,
        {"green": 1.0},
    ),
    Case(
        "wildcard-rule-subsets",
        f"{DR}#DestinationRule-host: a wildcard host applies to every Service it matches "
        "(the most specific matching rule applies)",
        changed(
            both(
                add(k8s.destination_rule(f"*.{NS}.{FQDN}", {"g": "green"}, name="wide")),
                put(route1, "route", [{"destination": {"host": "model-svc-green", "subset": "g"}}]),
            )
        ),
        GREEN,
        {"green": 1.0},
    ),
    Case(
        "wildcard-rule-subset-clashing-503",
        f"{DR}#Subset-labels with a wildcard host: the subset still selects among each Service's endpoints",
        changed(
            both(
                add(k8s.destination_rule(f"*.{NS}.{FQDN}", {"g": "green"}, name="wide")),
                put(route1, "route", [{"destination": {"host": "model-svc-blue", "subset": "g"}}]),
            )
        ),
        GREEN,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "no-deployment-503",
        f"{VS}#Destination: traffic to a destination with no instances fails (Envoy 503)",
        changed(lambda o: None, running=("green",)),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "replicas-zero-503",
        f"{K8S_SVC}: endpoints are the ready pods the selector matches; zero replicas, none",
        changed(put(lambda o: find(o, "Deployment", "model-blue")["spec"], "replicas", 0)),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "weighted-to-absent-version",
        f"{VS}#HTTPRouteDestination-weight: the share of a destination without endpoints fails with 503",
        changed(lambda o: None, running=("green",)),
        PLAIN,
        {"green": 0.5, NO_ENDPOINTS: 0.5},
    ),
    Case(
        "replicas-proportional",
        f"{K8S_SVC}: every ready pod of the selector is an endpoint (shares by replicas)",
        changed(
            both(
                put(lambda o: find(o, "Service", "model-svc-blue")["spec"], "selector", {"app": "model"}),
                put(lambda o: find(o, "Deployment", "model-blue")["spec"], "replicas", 3),
            ),
            green=0,
            blue=100,
        ),
        PLAIN,
        {"green": 0.25, "blue": 0.75},
    ),
    Case(
        "named-target-port-missing",
        f"{K8S_SVC}#defining-a-service: a named targetPort the pod does not declare gives no endpoint",
        changed(
            put(lambda o: find(o, "Service", "model-svc-blue")["spec"]["ports"][0], "targetPort", "grpc")
        ),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "numeric-target-port-undeclared",
        f"{K8S_SVC}#defining-a-service: targetPort 5002 in front of containerPort 5001 reaches no "
        "listener (connections refused, Envoy 503)",
        changed(put(lambda o: find(o, "Service", "model-svc-blue")["spec"]["ports"][0], "targetPort", 5002)),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "numeric-target-port-quoted-undeclared",
        f"{K8S_SVC}#defining-a-service: a quoted number is a number, not a port name",
        changed(put(lambda o: find(o, "Service", "model-svc-blue")["spec"]["ports"][0], "targetPort", "5002")),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    Case(
        "numeric-target-port-declared",
        f"{K8S_SVC}#defining-a-service: targetPort 5001, the declared containerPort, reaches the pods",
        changed(put(lambda o: find(o, "Service", "model-svc-blue")["spec"]["ports"][0], "targetPort", 5001)),
        BLUE,
        {"blue": 1.0},
    ),
    Case(
        "service-without-selector",
        f"{K8S_SVC}#services-without-selectors: no selector, no pod endpoints",
        changed(put(lambda o: find(o, "Service", "model-svc-blue")["spec"], "selector", None)),
        BLUE,
        {NO_ENDPOINTS: 1.0},
    ),
    # Fields the oracle refuses, and those it judges harmless.
    *(
        Case(
            f"refuses-route-{key}",
            f"{VS}#HTTPRoute-{snake}: changes who answers or what the client sees",
            changed(put(route0, key, value)),
            BLUE,
            raises=(UnsupportedField, f"spec.http[0].{key}"),
        )
        for key, snake, value in (
            ("fault", "fault", {"abort": {"httpStatus": 500, "percentage": {"value": 10}}}),
            ("rewrite", "rewrite", {"uri": "/v2/score"}),
            ("redirect", "redirect", {"uri": "/elsewhere"}),
            ("mirror", "mirror", {"host": "model-svc-green"}),
            ("corsPolicy", "cors_policy", {"allowOrigins": [{"exact": "https://a.example"}]}),
            ("headers", "headers", {"response": {"remove": ["x-model-version"]}}),
            ("directResponse", "direct_response", {"status": 503}),
            ("delegate", "delegate", {"name": "other"}),
        )
    ),
    *(
        Case(
            f"refuses-match-{key}",
            f"{VS}#HTTPMatchRequest-{snake}: not modelled by the oracle",
            changed(put(match00, key, value)),
            BLUE,
            raises=(UnsupportedField, f"spec.http[0].match[0].{key}"),
        )
        for key, snake, value in (
            ("queryParams", "query_params", {"debug": {"exact": "1"}}),
            ("sourceLabels", "source_labels", {"app": "client"}),
            ("authority", "authority", {"exact": "api.example.com"}),
            ("scheme", "scheme", {"exact": "https"}),
        )
    ),
    Case(
        "refuses-destination-headers",
        f"{VS}#HTTPRouteDestination-headers: may strip the x-model-version header",
        changed(
            put(lambda o: weighted(o)["route"][0], "headers", {"response": {"set": {"x-model-version": "?"}}})
        ),
        PLAIN,
        raises=(UnsupportedField, "spec.http[2].route[0].headers"),
    ),
    Case(
        "refuses-unknown-field",
        f"{VS}#HTTPRoute: a misspelt field is not silently ignored",
        changed(put(route0, "macth", [{"uri": {"prefix": "/"}}])),
        BLUE,
        raises=(UnsupportedField, "spec.http[0].macth"),
    ),
    Case(
        "refuses-tcp-routes",
        f"{VS}#VirtualService-tcp: non-HTTP routes are not modelled",
        changed(put(vs_spec, "tcp", [{"route": [to("blue")]}])),
        PLAIN,
        raises=(UnsupportedField, "spec.tcp"),
    ),
    Case(
        "refuses-pseudo-header-match",
        f"{VS}#HTTPMatchRequest-headers: keys uri/scheme/method/authority are not plain headers",
        changed(put(match00, "headers", {"authority": {"exact": "x"}})),
        BLUE,
        raises=(UnsupportedField, "spec.http[0].match[0].headers.authority"),
    ),
    Case(
        "refuses-consistent-hash",
        f"{DR}#LoadBalancerSettings-consistent_hash: sticky picks are not independent trials",
        changed(
            both(
                one_service_with_subsets,
                put(
                    lambda o: find(o, "DestinationRule")["spec"],
                    "trafficPolicy",
                    {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
                ),
            )
        ),
        PLAIN,
        raises=(UnsupportedField, "spec.trafficPolicy.loadBalancer.consistentHash"),
    ),
    Case(
        "refuses-https-redirect",
        f"{GW}#ServerTLSSettings-https_redirect: the gateway answers 301 itself",
        changed(put(server0, "tls", {"httpsRedirect": True})),
        PLAIN,
        raises=(UnsupportedField, "spec.servers[0].tls"),
    ),
    Case(
        "refuses-https-server-on-port",
        f"{GW}#Port-protocol: a TLS server on the request's port is not plain HTTP",
        changed(put(server0, "port", {"number": 80, "name": "https", "protocol": "HTTPS"})),
        PLAIN,
        raises=(UnsupportedField, "spec.servers[0].port.protocol"),
    ),
    Case(
        "refuses-service-entry",
        "https://istio.io/latest/docs/reference/config/networking/service-entry/: "
        "adds registry hosts the oracle does not model",
        changed(
            add(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "ServiceEntry",
                    "metadata": {"name": "x", "namespace": NS},
                    "spec": {"hosts": ["x.example.com"]},
                }
            )
        ),
        PLAIN,
        raises=(UnsupportedField, "kind"),
    ),
    Case(
        "invalid-regex",
        "https://istio.io/latest/docs/reference/config/analysis/ist0122/: regexes use RE2 syntax",
        changed(put(match00, "uri", {"regex": "[A-Z"})),
        BLUE,
        raises=(ConfigError, "spec.http[0].match[0].uri.regex"),
    ),
    Case(
        "string-match-oneof",
        f"{VS}#StringMatch: exactly one of exact, prefix, regex",
        changed(put(match00, "uri", {"exact": "/score", "prefix": "/"})),
        BLUE,
        raises=(ConfigError, "spec.http[0].match[0].uri"),
    ),
    Case(
        "empty-match-entry",
        f"{VS}#HTTPMatchRequest: HTTPMatchRequest cannot be empty",
        changed(put(route0, "match", [{}])),
        BLUE,
        raises=(ConfigError, "spec.http[0].match[0]"),
    ),
    Case(
        "harmless-name-timeout-retries",
        f"{VS}#HTTPRoute-timeout and #HTTPRoute-retries: failure handling, "
        "not the pick of the cluster (retries stay on the picked cluster)",
        changed(
            both(
                put(route0, "timeout", "2s"),
                put(route0, "retries", {"attempts": 3, "perTryTimeout": "1s"}),
                put(match00, "name", "pinned"),
            )
        ),
        BLUE,
        {"blue": 1.0},
    ),
    Case(
        "mesh-only-vs-not-checked",
        f"{VS}#VirtualService-gateways: a mesh-only rule never applies at the gateway",
        changed(
            add(
                {
                    **extra_vs("internal", ["model-svc-blue"], "blue"),
                    "spec": {
                        "hosts": ["model-svc-blue"],
                        "http": [{"fault": {"delay": {"fixedDelay": "1s"}}, "route": [to("blue")]}],
                    },
                }
            )
        ),
        PLAIN,
        {"green": 0.5, "blue": 0.5},
    ),
)


def test_table_is_large_and_cites_rules() -> None:
    ids = [c.id for c in CASES]
    assert len(CASES) >= 40, f"only {len(CASES)} conformance cases"
    assert len(ids) == len(set(ids)), f"duplicate case ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    uncited = [c.id for c in CASES if "https://" not in c.rule]
    assert not uncited, f"cases without a cited documentation rule: {uncited}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conformance(case: Case) -> None:
    objects = case.objects()
    if case.raises is not None:
        error, field = case.raises
        with pytest.raises(error) as info:
            expected_distribution(objects, case.request)
        assert isinstance(info.value, ConfigError)
        assert info.value.field == field, (
            f"[{case.rule}] error names {info.value.field!r}, not {field!r}: {info.value}"
        )
        assert " " in info.value.obj and "/" in info.value.obj, (
            f"error does not name the object: {info.value}"
        )
        return
    assert case.expect is not None
    got = expected_distribution(objects, case.request)
    assert dict(got.shares) == pytest.approx(dict(case.expect)), (
        f"[{case.rule}]\n{got.describe(verbose=True)}"
    )
    assert sum(got.shares.values()) == pytest.approx(1.0)
    if case.route is not None:
        assert case.route in got.route, f"[{case.rule}] decided by {got.route!r}, expected {case.route!r}"


# --- the reference manifests at every stage ----------------------------------------------------

PLAN = load_plan()


@cache
def rendered(stage: str) -> list[dict[str, Any]]:
    return render_stage(PLAN, stage)


def stage_expectation(stage_name: str, request: Request) -> dict[str, float]:
    """What a stage must do, computed from the plan independently of the oracle."""
    stage = PLAN.stage(stage_name)
    pinned = request.header("x-api-version")
    if pinned is not None:
        return {pinned: 1.0} if pinned in stage.running else {NO_ENDPOINTS: 1.0}
    out: dict[str, float] = {}
    for version, weight in stage.weights.items():
        if version in stage.running:
            out[version] = out.get(version, 0.0) + weight / 100
        elif weight:
            out[NO_ENDPOINTS] = out.get(NO_ENDPOINTS, 0.0) + weight / 100
    return out


STAGE_CASES = [(s.name, r) for s in PLAN.stages for r in STANDARD_CLASSES]


@pytest.mark.parametrize(
    ("stage", "request_class"), STAGE_CASES, ids=[f"{s}-{r.label}" for s, r in STAGE_CASES]
)
def test_reference_manifests(stage: str, request_class: Request) -> None:
    """Each stage's split and header pinning, on the rendered reference manifests.

    Rules: VS#HTTPRouteDestination-weight (the split), VS#HTTPMatchRequest-headers (the pins),
    and 503 for a version whose Deployment does not run in the stage.
    """
    got = expected_distribution(rendered(stage), request_class)
    assert dict(got.shares) == pytest.approx(stage_expectation(stage, request_class)), got.describe(
        verbose=True
    )


def test_blue_zero_names_blue_with_share_zero() -> None:
    got = expected_distribution(rendered("Blue_0"), STANDARD_CLASSES[0])
    assert got.shares == {"green": 1.0, "blue": 0.0}, got.describe()
    assert got.certain == "green"


def test_header_route_to_absent_blue_is_503_and_says_why() -> None:
    got = expected_distribution(rendered("baseline"), STANDARD_CLASSES[1])
    assert got.certain == NO_ENDPOINTS
    assert "http[0] (blue-header)" in got.route
    assert any("no Deployment" in note and "model_version=blue" in note for note in got.notes), got.notes


def test_undeclared_numeric_target_port_says_why() -> None:
    objects = reference()
    find(objects, "Service", "model-svc-blue")["spec"]["ports"][0]["targetPort"] = 5002
    got = expected_distribution(objects, BLUE)
    assert got.certain == NO_ENDPOINTS, got.describe()
    assert any("targets 5002" in note and "model-blue" in note for note in got.notes), got.notes


# --- API details ---------------------------------------------------------------------------------


def test_request_is_hashable_and_headers_frozen() -> None:
    a = Request("x", headers={"x-api-version": "blue"})
    b = Request("x", headers={"x-api-version": "blue"})
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert isinstance(a.headers, FrozenMap)
    with pytest.raises(TypeError):
        a.headers["x"] = "y"  # type: ignore[index]


def test_request_host_strips_port() -> None:
    assert Request(authority="API.Example.com:8080").host == "api.example.com"
    assert Request(authority="[::1]:80").host == "[::1]"
    assert Request(authority="localhost").host == "localhost"


def test_standard_classes() -> None:
    labels = [r.label for r in STANDARD_CLASSES]
    assert labels == ["weighted", "header-blue", "header-green"]
    assert [r.header("x-api-version") for r in STANDARD_CLASSES] == [None, "blue", "green"]
    assert all(r.path == "/score" and r.method == "GET" and r.port == 80 for r in STANDARD_CLASSES)


def test_expected_describe_and_destinations() -> None:
    got = expected_distribution(reference(green=80, blue=20), STANDARD_CLASSES[0])
    line = got.describe()
    assert line.startswith("weighted: GET /score -> green 80%, blue 20% via VirtualService abtesting/"), line
    assert "\n" not in line
    green = Destination(f"model-svc-green.{NS}.{FQDN}", 5001)
    assert got.destinations[green] == pytest.approx(0.8)
    assert green.cluster_name == f"outbound|5001||model-svc-green.{NS}.{FQDN}"
    verbose = got.describe(verbose=True)
    assert green.cluster_name in verbose and "note:" in verbose
    assert isinstance(hash(got), int)


def test_expected_is_printable_without_listener_or_route() -> None:
    got = expected_distribution(reference(), Request("x", authority="h"), gateway_labels={"istio": "other"})
    assert got.shares == {NO_LISTENER: 1.0}
    assert "port 80" in got.describe()
    objects = reference()
    vs_spec(objects)["hosts"] = ["api.example.com"]
    got = expected_distribution(objects, Request("web", authority="web.example.com"))
    assert got.describe().startswith("web: GET /score -> status:404 100% via no VirtualService for host"), (
        got.describe()
    )
    assert any("abtesting/mlmodel-gateway" in note for note in got.notes), got.notes


def test_versions_behind_and_backends() -> None:
    objects = reference()
    find(objects, "Service", "model-svc-blue")["spec"]["selector"] = {"app": "model"}
    find(objects, "Deployment", "model-green")["spec"]["replicas"] = 2
    dest = Destination(f"model-svc-blue.{NS}.{FQDN}", 5001)
    assert versions_behind(objects, dest) == {"green": 2, "blue": 1}
    assert {b.deployment for b in backends_behind(objects, dest)} == {"model-green", "model-blue"}
    assert versions_behind(objects, Destination(f"model-svc-blue.{NS}.{FQDN}", 9999)) == {}


def test_version_from_label_when_env_missing() -> None:
    objects = reference()
    find(objects, "Deployment", "model-blue")["spec"]["template"]["spec"]["containers"][0]["env"] = []
    assert expected_distribution(objects, BLUE).shares == {"blue": 1.0}
    del find(objects, "Deployment", "model-blue")["spec"]["template"]["metadata"]["labels"]["model_version"]
    find(objects, "Service", "model-svc-blue")["spec"]["selector"] = {"app": "model"}
    with pytest.raises(ConfigError, match="MODEL_VERSION"):
        expected_distribution(objects, BLUE)


def test_replicas_default_to_one() -> None:
    objects = reference()
    del find(objects, "Deployment", "model-blue")["spec"]["replicas"]
    assert expected_distribution(objects, BLUE).shares == {"blue": 1.0}


def test_error_message_names_object_and_field() -> None:
    objects = reference()
    http(objects)[0]["fault"] = {"abort": {"httpStatus": 500}}
    with pytest.raises(UnsupportedField) as info:
        expected_distribution(objects, BLUE)
    assert str(info.value).startswith(f"VirtualService {NS}/mlmodel-virtualservice: spec.http[0].fault: "), (
        str(info.value)
    )


def test_invalid_regex_is_not_logged_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    objects = reference()
    http(objects)[0]["match"][0]["uri"] = {"regex": "(a)\\1"}
    with pytest.raises(ConfigError, match="invalid RE2 regex"):
        expected_distribution(objects, BLUE)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("green", range(0, 101, 5))
def test_shares_always_sum_to_one(green: int) -> None:
    got = expected_distribution(reference(green=green, blue=100 - green), STANDARD_CLASSES[0])
    assert sum(got.shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert got.shares["green"] == pytest.approx(green / 100)


def test_helpers() -> None:
    assert host_matches("*", "anything") and host_matches("*.a.com", "x.y.a.com")
    assert not host_matches("*.a.com", "a.com") and not host_matches("a.com", "b.a.com")
    assert resolve_gateway_name("./gw", "ns") == "ns/gw"
    assert resolve_gateway_name("other/gw", "ns") == "other/gw"
    assert resolve_service_host("svc", "ns") == f"svc.ns.{FQDN}"
    assert resolve_service_host("svc.other", "ns") == "svc.other"
    # The binding helpers validate shares with the oracle.
    assert hosts_overlap("*.a.com", "*.b.a.com") and hosts_overlap("X.A.com", "*.a.com")
    assert not hosts_overlap("a.com", "*.a.com") and not hosts_overlap("a.com", "b.com")
    assert exported_to(None, "ns", "other") and exported_to(["."], "ns", "ns")
    assert not exported_to(["."], "ns", "other") and exported_to(["*"], "ns", "other")
    assert server_host_parts("./x.com", "gw-ns") == ("gw-ns", "x.com")
    assert server_host_parts("x.com", "gw-ns") == ("*", "x.com")


def test_expected_distributions_checks_the_objects_once(monkeypatch: pytest.MonkeyPatch) -> None:
    objects = rendered("Blue_50")
    one_by_one = {request: expected_distribution(objects, request) for request in STANDARD_CLASSES}
    calls: list[int] = []
    check = routing.check_supported

    def counted(objs: list[Obj]) -> None:
        calls.append(1)
        check(objs)

    monkeypatch.setattr(routing, "check_supported", counted)
    together = routing.expected_distributions(objects, STANDARD_CLASSES)
    assert together == one_by_one
    assert len(calls) == 1, f"check_supported ran {len(calls)} times for {len(STANDARD_CLASSES)} classes"
    bad = copy.deepcopy(objects)
    vs_spec(bad)["http"][0]["fault"] = {"abort": {"httpStatus": 500}}
    with pytest.raises(UnsupportedField, match=r"spec\.http\[0\]\.fault"):
        routing.expected_distributions(bad)


def test_expected_accepts_plain_dicts() -> None:
    e = Expected({"green": 1.0}, "r")
    assert isinstance(e.shares, FrozenMap) and e.certain == "green"


@pytest.mark.parametrize("kind", ["Job", "CronJob", "Ingress", "PeerAuthentication", "Telemetry", "TCPRoute"])
def test_kinds_that_add_pods_or_routes_the_oracle_does_not_model_are_refused(kind: str) -> None:
    # A Job's pods can match a Service selector and answer requests; a PeerAuthentication can
    # turn answers into resets: the oracle would then promise what the data plane does not do.
    objects = [*reference(), {"apiVersion": "v1", "kind": kind, "metadata": {"name": "x", "namespace": NS}}]
    with pytest.raises(UnsupportedField, match=rf"{kind} abtesting/x: kind: {kind} changes routing"):
        routing.check_supported(objects)


def test_offline_validation_reads_subsets_as_the_oracle_does() -> None:
    """`abtest validate` warns (IST0173) about the subset the oracle answers 503 for."""
    objects = reference()
    objects.append(green_subset_rule())
    route1(objects)["route"] = [green_subset_of_blue()]
    assert expected_distribution(objects, GREEN).certain == NO_ENDPOINTS
    findings = [f for f in validate_objects(objects) if f.code == "IST0173"]
    assert [(f.obj, f.path) for f in findings] == [
        (f"DestinationRule {NS}/subset-green", "spec.subsets[0].labels")
    ], findings
    assert "contradict" in findings[0].message


# --- versions from the spec ---------------------------------------------------------------------

BY_LABEL = {"green": {"model_version": "green"}, "blue": {"model_version": "blue"}}


def test_versions_from_selectors_agree_with_the_env_reading() -> None:
    for request in STANDARD_CLASSES:
        objects = reference(80, 20)
        assert expected_distribution(objects, request, BY_LABEL) == expected_distribution(objects, request)


def test_versions_are_named_by_the_spec() -> None:
    renamed = {"current": {"model_version": "green"}, "candidate": {"model_version": "blue"}}
    got = expected_distribution(reference(70, 30), PLAIN, renamed)
    assert dict(got.shares) == pytest.approx({"current": 0.7, "candidate": 0.3})
    together = routing.expected_distributions(reference(70, 30), [PLAIN, BLUE], renamed)
    assert together[BLUE].certain == "candidate"


def _one_destination_over_both_versions() -> list[Obj]:
    objects = reference()
    objects.append(k8s.service(name="model-svc", selector={"app": "model"}))
    weighted(objects)["route"] = [{"destination": {"host": "model-svc"}}]
    return objects


def test_a_destination_spanning_versions_is_an_error_naming_it() -> None:
    objects = _one_destination_over_both_versions()
    # Without the spec's versions, replicas share the destination's weight (an approximation).
    assert dict(expected_distribution(objects, PLAIN).shares) == {"green": 0.5, "blue": 0.5}
    with pytest.raises(ConfigError) as info:
        expected_distribution(objects, PLAIN, BY_LABEL)
    assert info.value.obj == f"VirtualService {NS}/mlmodel-virtualservice"
    assert info.value.field == "spec.http[2].route[0].destination"
    assert "model-green (green)" in info.value.message and "model-blue (blue)" in info.value.message
    # The header routes' destinations each hold one version: those classes are fine.
    assert expected_distribution(objects, BLUE, BY_LABEL).certain == "blue"


def test_a_weight_zero_destination_may_span_versions() -> None:
    objects = _one_destination_over_both_versions()
    weighted(objects)["route"] = [
        {"destination": {"host": "model-svc"}, "weight": 0},
        {**k8s.destination("green"), "weight": 100},
    ]
    assert dict(expected_distribution(objects, PLAIN, BY_LABEL).shares) == {"green": 1.0, "blue": 0.0}


@pytest.mark.parametrize(
    ("versions", "message"),
    [
        ({"green": {"model_version": "green"}}, "match no version of the spec (green)"),
        ({**BY_LABEL, "any-model": {"app": "model"}}, "match several versions of the spec (blue, any-model)"),
    ],
    ids=["unmatched", "ambiguous"],
)
def test_pods_must_match_exactly_one_version(versions: dict[str, dict[str, str]], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        expected_distribution(reference(), BLUE, versions)
    assert info.value.field == "spec.template.metadata.labels"
    assert message in info.value.message, info.value


@pytest.mark.parametrize("versions", [{}, {"green": {}}, {"green": "model_version=green"}])
def test_versions_must_be_label_selectors(versions: Any) -> None:
    with pytest.raises(ConfigError) as info:
        expected_distribution(reference(), PLAIN, versions)
    assert info.value.obj == "versions"


# --- path normalization ---------------------------------------------------------------------

# Request path -> the :path the Envoy 1.40 binary routes on with Istio's default settings
# (normalize_path: true, path_with_escaped_slashes_action: KEEP_UNCHANGED, no merge_slashes),
# observed by echoing %REQ(:PATH)% from a direct response. Not derived from normalize_path.
ENVOY_NORMALIZED = {
    "/a/./b": "/a/b",
    "/a/../a/b": "/a/b",
    "/./a/b": "/a/b",
    "/a/b/.": "/a/b/",
    "/a/b/..": "/a/",
    "/../a/b": "/a/b",
    "/..": "/",
    "/a/b/../../..": "/",
    "/a/.../b": "/a/.../b",
    "/a/..b": "/a/..b",
    "/a//b": "/a//b",
    "/%61/b": "/a/b",
    "/%41": "/A",
    "/a/%7e": "/a/~",
    "/a/%2e/b": "/a/b",
    "/a/%2E%2E/c": "/c",
    "/a/.%2E/b": "/b",
    "/a%2e/b": "/a./b",
    "/a%2fb": "/a%2fb",
    "/a%2Fb": "/a%2Fb",
    "/a/..%2fb": "/a/..%2fb",
    "/%2F..%2F": "/%2F..%2F",
    "/a%20b": "/a%20b",
    "/a%3ab": "/a%3ab",
    "/a%zzb": "/a%zzb",
    "/a%C3%A9": "/a%C3%A9",
    "/a\\b": "/a/b",
    "/%5C": "/%5C",
    "/a:b@c": "/a:b@c",
    "/a!$&'()*+,;=b": "/a!$&'()*+,;=b",
}


@pytest.mark.parametrize(("sent", "routed"), ENVOY_NORMALIZED.items(), ids=list(ENVOY_NORMALIZED))
def test_paths_are_normalized_as_the_gateway_does(sent: str, routed: str) -> None:
    assert Request("p", path=sent + "?q=/../x").route_path == routed


@pytest.mark.parametrize("path", ["/a b", "/a|b", "/a{b}", "/\u00e9", "/a#frag", "/a\x00b"])
def test_paths_envoy_reencodes_or_refuses_are_not_modelled(path: str) -> None:
    with pytest.raises(ConfigError) as info:
        expected_distribution(reference(), Request("odd", path=path))
    assert (info.value.obj, info.value.field) == ("request odd", "path")


def test_dot_segments_reach_the_exact_route() -> None:
    objects = reference()
    match00(objects)["uri"] = {"exact": "/score"}
    pinned = {"x-api-version": "blue"}
    assert expected_distribution(objects, Request("dots", path="/x/../sc%6fre", headers=pinned)).certain == "blue"
    assert expected_distribution(objects, Request("slashes", path="//score", headers=pinned)).certain is None
