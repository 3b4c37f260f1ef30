"""The one fake Istio ingress-gateway ``config_dump`` of the unit tests, for the reference charts.

Written from Istio's gateway route translation (``pilot/pkg/networking/core/route``), not captured
from a live gateway: route configuration ``http.8080`` for the Gateway's port 80, virtual host
``*:80``, header matchers as ``string_match`` (or the deprecated ``exact_match`` with
`legacy`), ``case_sensitive`` set, a route with one destination as ``cluster`` and one with
several as ``weighted_clusters`` without its weight-0 entries (Istio decides the form by the
number of destinations, then skips zero weights), and the retry policy and metadata istiod adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NAMESPACE = "abtesting"
VIRTUAL_SERVICE = "mlmodel-virtualservice"
PORT = 5001


def _fqdn(version: str) -> str:
    return f"model-svc-{version}.{NAMESPACE}.svc.cluster.local"


def cluster(version: str) -> str:
    """Istio's outbound cluster name for the Service ``model-svc-<version>``."""
    return f"outbound|{PORT}||{_fqdn(version)}"


_ROUTE_EXTRAS: dict[str, Any] = {
    "timeout": "0s",
    "retry_policy": {
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    },
    "max_grpc_timeout": "0s",
}


def route(name: str, match: Mapping[str, Any], weights: Mapping[str, int], operation: str,
          *, legacy: bool = False) -> dict[str, Any]:
    """One route as istiod writes it for a gateway; `weights` are the route's destinations."""
    action: dict[str, Any]
    if len(weights) == 1:
        action = {"cluster": cluster(next(iter(weights)))}
    else:
        picked = [(cluster(v), w) for v, w in weights.items() if w > 0]
        action = {"weighted_clusters": {"clusters": [{"name": c, "weight": w} for c, w in picked]}}
        if legacy:
            action["weighted_clusters"]["total_weight"] = 100
    return {
        "match": dict(match),
        "route": {**action, **_ROUTE_EXTRAS},
        "metadata": {"filter_metadata": {"istio": {
            "config": f"/apis/networking.istio.io/v1/namespaces/{NAMESPACE}/virtual-service/{VIRTUAL_SERVICE}"}}},
        "decorator": {"operation": operation},
        "name": name,
    }


def istio_gateway_dump(weights: Mapping[str, int], *, legacy: bool = False) -> dict[str, Any]:
    """The gateway's config_dump for the reference VirtualService at `weights` (version -> weight)."""

    def header(version: str) -> dict[str, Any]:
        matcher: dict[str, Any] = {"name": "x-api-version"}
        matcher.update({"exact_match": version} if legacy else {"string_match": {"exact": version}})
        return {"prefix": "/score", "case_sensitive": True, "headers": [matcher]}

    routes = [
        route("blue-header", header("blue"), {"blue": 100}, f"{_fqdn('blue')}:{PORT}/score*"),
        route("green-header", header("green"), {"green": 100}, f"{_fqdn('green')}:{PORT}/score*"),
        route("weighted", {"prefix": "/", "case_sensitive": True}, weights, f"{VIRTUAL_SERVICE}:80/*",
              legacy=legacy),
    ]
    route_config = {
        "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        "name": "http.8080",
        "virtual_hosts": [{"name": "*:80", "domains": ["*"], "routes": routes, "include_request_attempt_count": True}],
        "validate_clusters": False,
        "max_direct_response_body_size_bytes": 1048576,
        "ignore_port_in_host_matching": True,
    }
    return {
        "configs": [
            {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {"id": "x"}}},
            {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": []},
            {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": []},
            {"@type": "type.googleapis.com/envoy.admin.v3.ScopedRoutesConfigDump"},
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                "static_route_configs": [{"route_config": {"name": "prometheus_stats", "virtual_hosts": []}}],
                "dynamic_route_configs": [{"version_info": "2026-11-26T10:00:00Z/12", "route_config": route_config,
                                           "last_updated": "2026-11-26T10:00:01.123Z"}],
            },
            {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"},
        ]
    }
