"""abtest_harness.mesh.istio_xds without Go: what Istio is given, and each rule applied to its output.

The Istio output used here is shaped like what istio-xds prints for the reference charts
(the listener, route configuration ``http.80``, EDS clusters over ADS, endpoint assignments
on pod IPs); the differential tests run the real program.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from abtest_harness.errors import HarnessError
from abtest_harness.mesh import envoy
from abtest_harness.mesh import istio_xds as ix
from tests.unit import objects as k8s

ADS = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _objects() -> list[dict[str, Any]]:
    svc_all = k8s.service(name="model", selector={"app": "model"})
    svc_all["spec"]["ports"] = [{"name": "http", "port": 5001, "targetPort": 5001}]
    bare = k8s.service(name="manual", selector={})
    return [
        k8s.namespace(),
        k8s.deployment("green", replicas=2),
        k8s.deployment("blue", "abtest/scorer-b:dev"),
        k8s.service("green"),
        k8s.service("blue"),
        svc_all,
        bare,
        k8s.gateway(),
        k8s.virtual_service([k8s.weighted_route(50, 50)]),
    ]


def test_deployments_become_pods_and_endpoint_slices() -> None:
    objects = _objects()
    replicas = ix.replicas_from_objects(objects)
    inputs = ix.istio_inputs(objects, replicas)
    kinds = [o["kind"] for o in inputs]
    assert "Deployment" not in kinds
    pods = [o for o in inputs if o["kind"] == "Pod"]
    assert sorted(p["metadata"]["name"] for p in pods) == ["model-blue-0", "model-green-0", "model-green-1"]
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 3 and all(ip.startswith("10.64.") for ip in ips)
    assert all(p["status"]["phase"] == "Running" for p in pods)
    slices = {o["metadata"]["name"]: o for o in inputs if o["kind"] == "EndpointSlice"}
    # one slice per Service with a selector; none for the Service without one
    assert sorted(s["metadata"]["labels"]["kubernetes.io/service-name"] for s in slices.values()) == [
        "model",
        "model-svc-blue",
        "model-svc-green",
    ]
    green = slices["model-svc-green-0"]
    assert green["ports"] == [{"name": "http", "port": 5001, "protocol": "TCP"}]  # named targetPort resolved
    assert len(green["endpoints"]) == 2
    assert len(slices["model-0"]["endpoints"]) == 3  # numeric targetPort: every selected pod
    services = [o for o in inputs if o["kind"] == "Service"]
    assert all(s["spec"]["clusterIP"].startswith("10.96.") for s in services)
    assert len({s["spec"]["clusterIP"] for s in services}) == len(services)
    assert inputs[-1] == ix.attribution_envoy_filter()
    assert ix.attribution_envoy_filter() not in ix.istio_inputs(objects, replicas, attribution=False)


def test_a_named_target_port_the_pod_lacks_gives_no_endpoint() -> None:
    objects = _objects()
    svc = k8s.service(name="odd", selector={"app": "model"})
    svc["spec"]["ports"][0]["targetPort"] = "grpc"
    inputs = ix.istio_inputs([*objects, svc], ix.replicas_from_objects(objects))
    assert not [o for o in inputs if o["kind"] == "EndpointSlice" and o["metadata"]["name"].startswith("odd")]


def test_replicas_sharing_a_name_during_a_rollout_get_distinct_pods() -> None:
    objects = _objects()
    first = ix.replicas_from_objects(objects)
    again = [*first, *first]
    replicas = ix._assign_ips([r.spec for r in again], [("127.0.0.1", 9000 + i) for i in range(len(again))])
    names = [r.pod_name for r in replicas]
    assert len(set(names)) == len(names)
    assert len({r.pod_ip for r in replicas}) == len(replicas)


def _istio_output(replicas: list[ix.Replica]) -> ix.IstioOutput:
    """What istio-xds prints for _objects(): one HTTP listener on 80, http.80, EDS clusters."""
    green = [r for r in replicas if r.spec.labels["model_version"] == "green"]
    blue = [r for r in replicas if r.spec.labels["model_version"] == "blue"]

    def cla(name: str, members: list[ix.Replica]) -> dict[str, Any]:
        return {
            "cluster_name": name,
            "endpoints": [
                {
                    "locality": {},
                    "lb_endpoints": [
                        {
                            "endpoint": {"address": {"socket_address": {"address": r.pod_ip, "port_value": 5001}}},
                            "health_status": "HEALTHY",
                            "load_balancing_weight": 1,
                        }
                        for r in members
                    ],
                }
            ],
        }

    green_name = "outbound|5001||model-svc-green.abtesting.svc.cluster.local"
    blue_name = "outbound|5001||model-svc-blue.abtesting.svc.cluster.local"
    listener = {
        "name": "0.0.0.0_80",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 80}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": "outbound_0.0.0.0_80",
                            "rds": {"config_source": ADS, "route_config_name": "http.80"},
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    routes = {
        "name": "http.80",
        "virtual_hosts": [
            {
                "name": "*:80",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/"},
                        "route": {
                            "weighted_clusters": {
                                "clusters": [{"name": green_name, "weight": 50}, {"name": blue_name, "weight": 50}]
                            }
                        },
                    }
                ],
            }
        ],
    }
    clusters = [
        {"name": "BlackHoleCluster", "type": "STATIC", "connect_timeout": "10s"},
        *(
            {"name": n, "type": "EDS", "eds_cluster_config": {"eds_config": ADS, "service_name": n}}
            for n in (blue_name, green_name)
        ),
    ]
    return ix.IstioOutput((listener,), (routes,), tuple(clusters), (cla(blue_name, blue), cla(green_name, green)))


def _local(replicas: list[ix.Replica], output: ix.IstioOutput | None = None) -> ix.LocalConfig:
    return ix.local_resources(
        output or _istio_output(replicas),
        replicas,
        listener_port=18080,
        rds_path="/x/rds.json",
        eds_path=lambda name: f"/x/eds/{name}.json",
        access_log="/x/access.log",
    )


def _running(objects: list[dict[str, Any]]) -> list[ix.Replica]:
    specs = [r.spec for r in ix.replicas_from_objects(objects)]
    return ix._assign_ips(specs, [("127.0.0.1", 31000 + i) for i in range(len(specs))])


def test_listener_binds_loopback_and_reads_routes_from_the_file() -> None:
    local = _local(_running(_objects()))
    listener = local.resources.listener
    assert listener["name"] == "gateway_18080"
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 18080}}
    hcm = ix._hcm(listener)
    assert hcm["rds"] == {
        "route_config_name": "http.80",
        "config_source": {"path_config_source": {"path": "/x/rds.json"}, "resource_api_version": "V3"},
    }
    assert hcm["access_log"][-1]["typed_config"]["path"] == "/x/access.log"
    assert local.resources.route_configuration["name"] == "http.80"
    assert local.resources.route_configuration["@type"] == envoy.ROUTE_TYPE


def test_endpoints_point_at_the_local_replicas_and_come_from_files() -> None:
    replicas = _running(_objects())
    local = _local(replicas)
    green_name = "outbound|5001||model-svc-green.abtesting.svc.cluster.local"
    cluster = next(c for c in local.resources.clusters if c["name"] == green_name)
    assert cluster["eds_cluster_config"]["eds_config"] == {
        "path_config_source": {"path": f"/x/eds/{green_name}.json"},
        "resource_api_version": "V3",
    }
    want = sorted(r.local for r in replicas if r.spec.labels["model_version"] == "green" and r.local)
    assert list(local.endpoints[green_name]) == want and len(want) == 2
    addresses = [
        lb["endpoint"]["address"]["socket_address"]
        for loc in local.resources.load_assignments[green_name]["endpoints"]
        for lb in loc["lb_endpoints"]
    ]
    assert sorted((a["address"], a["port_value"]) for a in addresses) == want
    # everything else Istio wrote on the endpoint stays
    assert local.resources.load_assignments[green_name]["endpoints"][0]["lb_endpoints"][0]["load_balancing_weight"] == 1
    static = next(c for c in local.resources.clusters if c["name"] == "BlackHoleCluster")
    assert static["type"] == "STATIC" and "eds_cluster_config" not in static


def test_a_replica_not_running_locally_is_left_out_and_noted() -> None:
    replicas = _running(_objects())
    offline = [
        ix.Replica(r.spec, r.pod_ip, r.pod_name, None) if r.spec.deployment == "model-blue" else r for r in replicas
    ]
    local = _local(offline, _istio_output(replicas))
    blue_name = "outbound|5001||model-svc-blue.abtesting.svc.cluster.local"
    assert local.endpoints[blue_name] == ()
    assert any("model-blue-0 does not run locally" in n for n in local.notes)


def test_an_endpoint_on_no_known_pod_is_an_error() -> None:
    replicas = _running(_objects())
    output = _istio_output(replicas)
    bad = copy.deepcopy(output.endpoints[0])
    bad["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["address"] = "10.1.2.3"
    with pytest.raises(HarnessError, match="10.1.2.3:5001 is no known pod"):
        _local(replicas, ix.IstioOutput(output.listeners, output.routes, output.clusters, (bad, output.endpoints[1])))


def test_an_istio_only_extension_is_an_error_naming_it() -> None:
    replicas = _running(_objects())
    output = _istio_output(replicas)
    listener = copy.deepcopy(output.listeners[0])
    ix._hcm(listener)["http_filters"].insert(
        0,
        {
            "name": "istio.metadata_exchange",
            "typed_config": {"@type": "type.googleapis.com/io.istio.http.peer_metadata.Config"},
        },
    )
    with pytest.raises(HarnessError, match=r"http_filters\[0\]\.typed_config: type.googleapis.com/io.istio"):
        _local(replicas, ix.IstioOutput((listener,), output.routes, output.clusters, output.endpoints))


def test_other_listeners_are_not_served_and_are_noted() -> None:
    replicas = _running(_objects())
    output = _istio_output(replicas)
    extra = copy.deepcopy(output.listeners[0])
    extra["name"] = "0.0.0.0_8443"
    ix._hcm(extra)["rds"]["route_config_name"] = "https.443.https.gw.abtesting"
    local = _local(
        replicas, ix.IstioOutput((*output.listeners, extra), output.routes, output.clusters, output.endpoints)
    )
    assert local.resources.listener["name"] == "gateway_18080"
    assert any("0.0.0.0_8443 not served" in n for n in local.notes)


def test_every_rule_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "istio-translation.md").read_text()
    for rule in ix.RULES:
        assert f"`{rule.name}`" in doc, rule.name


def test_missing_program_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("ABTEST_ISTIO_XDS", str(tmp_path / "nope"))
    with pytest.raises(ix.IstioXdsUnavailable, match="make istio-xds"):
        ix.binary()
