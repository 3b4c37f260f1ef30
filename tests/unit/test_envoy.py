"""The Envoy translation and the route-table normalizer: pure functions, no processes, no network."""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

import pytest

from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.mesh import envoy
from abtest_harness.mesh.local import endpoints_for
from abtest_harness.mesh.routetable import (
    HeaderMatch,
    PathMatch,
    RouteTable,
    diff_route_tables,
    expected_route_table,
    route_table_from_config_dump,
    route_table_from_route_configs,
)
from abtest_harness.mesh.workloads import RunningWorkload, specs_from_objects
from abtest_harness.routing import cluster_name, string_matches
from tests.unit import objects as k8s
from tests.unit.fakes.istio_config_dump import istio_gateway_dump
from tests.unit.objects import (
    NS,
    fqdn,
    gateway,
    header_route,
    namespace,
    service,
    virtual_service,
    weighted_route,
)

GREEN = fqdn("model-svc-green")
BLUE = fqdn("model-svc-blue")
GREEN_CLUSTER = f"outbound|5001||{GREEN}"
BLUE_CLUSTER = f"outbound|5001||{BLUE}"


# --------------------------------------------------------------------------- objects


def deployment(version: str, image: str = "abtest/scorer-a:dev", replicas: int = 1) -> dict[str, Any]:
    """A model Deployment with the fields the renderer adds (labels, pull policy, memory limit)."""
    return k8s.deployment(
        version, image, replicas=replicas, labelled=True, pull_policy="IfNotPresent", memory_limit="128Mi"
    )


def stage(green: int, blue: int, *, blue_runs: bool = True) -> list[dict[str, Any]]:
    """The reference charts' objects for one stage, as the renderer emits them."""
    objects = [
        namespace(),
        service("blue"),
        service("green"),
        deployment("green"),
        gateway(),
        virtual_service([header_route("blue"), header_route("green"), weighted_route(green, blue)]),
    ]
    if blue_runs:
        objects.insert(3, deployment("blue", "abtest/scorer-b:dev"))
    return objects


def routes_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config = envoy.build_route_configuration(objects)
    assert len(config["virtual_hosts"]) == 1, config
    routes: list[dict[str, Any]] = config["virtual_hosts"][0]["routes"]
    return routes


# --------------------------------------------------------------------------- translation


def test_reference_stage_translates_like_istio_gateway() -> None:
    config = envoy.build_route_configuration(stage(50, 50))
    assert config["name"] == "http.80", "Istio names a gateway port's routes http.<port>"
    (vhost,) = config["virtual_hosts"]
    assert vhost["name"] == "*:80" and vhost["domains"] == ["*"]
    names = [r["name"] for r in vhost["routes"]]
    assert names == ["blue-header", "green-header", "weighted"], "routes must keep the VirtualService order"
    blue = vhost["routes"][0]
    assert blue["match"]["prefix"] == "/score"
    assert blue["match"]["headers"] == [{"name": "x-api-version", "string_match": {"exact": "blue"}}]
    assert blue["route"]["cluster"] == BLUE_CLUSTER
    split = vhost["routes"][2]
    assert split["match"] == {"prefix": "/"}, "a route without match catches everything"
    assert split["route"]["weighted_clusters"] == {
        "clusters": [{"name": GREEN_CLUSTER, "weight": 50}, {"name": BLUE_CLUSTER, "weight": 50}]
    }
    assert "total_weight" not in split["route"]["weighted_clusters"], "total_weight is deprecated in v3"


@pytest.mark.parametrize(("green", "blue", "cluster"), [(100, 0, GREEN_CLUSTER), (0, 100, BLUE_CLUSTER)])
def test_weight_zero_destination_is_dropped_and_one_left_is_a_plain_cluster(
    green: int, blue: int, cluster: str
) -> None:
    action = routes_of(stage(green, blue))[2]["route"]
    assert action.get("cluster") == cluster, action
    assert "weighted_clusters" not in action


def test_three_way_split_drops_only_the_zero_weight() -> None:
    third = f"outbound|5001||model-svc-red.{NS}.svc.cluster.local"
    route = weighted_route(30, 70)
    route["route"].append({"destination": {"host": "model-svc-red", "port": {"number": 5001}}, "weight": 0})
    route["route"][0]["weight"] = 30
    objects = [gateway(), virtual_service([route])]
    clusters = routes_of(objects)[0]["route"]["weighted_clusters"]["clusters"]
    assert [c["name"] for c in clusters] == [GREEN_CLUSTER, BLUE_CLUSTER]
    assert third not in str(clusters)


def test_each_match_entry_is_one_route_and_a_catch_all_ends_the_list() -> None:
    http = [
        {
            "name": "either",
            "match": [
                {"name": "exact", "uri": {"exact": "/score"}},
                {"uri": {"regex": "/v[0-9]+/score"}, "ignoreUriCase": True},
                {"uri": {"prefix": "/"}},
                {"uri": {"prefix": "/never"}},
            ],
            "route": [{"destination": {"host": GREEN}}],
        },
        weighted_route(50, 50),
    ]
    routes = routes_of([gateway(), service("green"), virtual_service(http)])
    assert [r["name"] for r in routes] == ["either.exact", "either", "either"], routes
    assert routes[0]["match"]["path"] == "/score"
    assert routes[1]["match"]["safe_regex"] == {"regex": "/v[0-9]+/score"}
    assert routes[1]["match"]["case_sensitive"] is False
    assert routes[2]["match"]["prefix"] == "/"
    assert routes[0]["route"]["cluster"] == GREEN_CLUSTER, "a Service's only port is the default port"


def test_header_matchers_lower_case_names_and_istio_presence_forms() -> None:
    http = [
        {
            "name": "h",
            "match": [
                {
                    "headers": {
                        "X-Api-Version": {"prefix": "bl"},
                        "x-canary": {"regex": "yes|true"},
                        "x-empty": {},
                    },
                    "withoutHeaders": {"x-debug": {"exact": "1"}, "x-any": {"regex": "*"}},
                    "method": {"exact": "POST"},
                }
            ],
            "route": [{"destination": {"host": GREEN, "port": {"number": 5001}}}],
        }
    ]
    headers = routes_of([gateway(), virtual_service(http)])[0]["match"]["headers"]
    by_name = {h["name"]: h for h in headers}
    assert by_name["x-api-version"]["string_match"] == {"prefix": "bl"}
    assert by_name["x-canary"]["string_match"] == {"safe_regex": {"regex": "yes|true"}}
    assert by_name["x-any"] == {"name": "x-any", "present_match": True, "invert_match": True}, (
        "Istio reads regex '*' as presence, inverted in withoutHeaders, without missing-as-empty"
    )
    assert by_name["x-empty"] == {"name": "x-empty", "present_match": True}
    assert by_name["x-debug"]["invert_match"] is True
    assert by_name["x-debug"]["treat_missing_header_as_empty"] is True
    assert by_name[":method"]["string_match"] == {"exact": "POST"}


def test_empty_prefix_on_the_uri_is_passed_on_and_refused_on_headers() -> None:
    """Istio's validation allows ``prefix: ""`` on the uri only (Envoy's string matcher needs one
    character); the route then carries path prefix "" as Istio writes it, matching every path."""
    entry: dict[str, Any] = {"uri": {"prefix": ""}, "headers": {"x-e": {"exact": ""}}}
    http = [{"match": [entry], "route": [{"destination": {"host": GREEN, "port": {"number": 5001}}}]}]
    match = routes_of([gateway(), virtual_service(http)])[0]["match"]
    assert match["prefix"] == ""
    assert match["headers"] == [{"name": "x-e", "string_match": {"exact": ""}}], "exact '' is a valid matcher"
    assert string_matches({"prefix": ""}, "/anything")
    entry["headers"] = {"x-p": {"prefix": ""}}
    with pytest.raises(ConfigError) as caught:
        routes_of([gateway(), virtual_service(http)])
    assert caught.value.field == "spec.http[0].match[0].headers.x-p.prefix", str(caught.value)


def test_invalid_regex_is_a_config_error_naming_the_field() -> None:
    http = [
        {
            "match": [{"uri": {"regex": "(unclosed"}}],
            "route": [{"destination": {"host": GREEN}}],
        }
    ]
    with pytest.raises(ConfigError) as caught:
        envoy.build_route_configuration([gateway(), virtual_service(http)])
    assert caught.value.field == "spec.http[0].match[0].uri.regex", str(caught.value)
    assert "RE2" in str(caught.value)


def test_a_zero_total_weight_is_refused_like_the_oracle() -> None:
    """Istio's validation refuses several destinations weighing 0 in all; Envoy would too."""
    objects = [gateway(), service("green"), service("blue"), virtual_service([weighted_route(0, 0)])]
    with pytest.raises(ConfigError) as caught:
        envoy.build_route_configuration(objects)
    assert caught.value.field == "spec.http[0].route", str(caught.value)
    assert "= 0" in caught.value.message, str(caught.value)


def test_the_oracle_allow_list_is_the_translations() -> None:
    """A field the oracle refuses is refused here with the oracle's path, also in upstreams()."""
    pseudo = virtual_service([{"match": [{"headers": {":authority": {"exact": "x"}}}], **weighted_route(50, 50)}])
    with pytest.raises(UnsupportedField) as caught:
        envoy.build_route_configuration([gateway(), pseudo])
    assert caught.value.field == "spec.http[0].match[0].headers.:authority", str(caught.value)
    rule = {
        "kind": "DestinationRule",
        "metadata": {"name": "dr", "namespace": NS},
        "spec": {"host": GREEN, "workloadSelector": {"matchLabels": {"app": "x"}}},
    }
    with pytest.raises(UnsupportedField) as caught:
        envoy.upstreams([service("green"), rule])
    assert caught.value.field == "spec.workloadSelector", str(caught.value)


@pytest.mark.parametrize(
    ("objects", "field"),
    [
        (
            [gateway(), virtual_service([{"redirect": {"uri": "/x"}, "route": []}])],
            "spec.http[0].redirect",
        ),
        (
            [gateway(), virtual_service([dict(weighted_route(50, 50), fault={"abort": {"httpStatus": 500}})])],
            "spec.http[0].fault",
        ),
        ([gateway(), virtual_service([weighted_route(50, 50)], tcp=[{}])], "spec.tcp"),
        (
            [
                gateway(),
                virtual_service([{"match": [{"queryParams": {"a": {"exact": "1"}}}], **weighted_route(1, 99)}]),
            ],
            "spec.http[0].match[0].queryParams",
        ),
        (
            [
                gateway(servers=[{"port": {"number": 443, "protocol": "HTTPS", "name": "https"}, "hosts": ["*"]}]),
                virtual_service([weighted_route(50, 50)]),
            ],
            "spec.servers[0].port.protocol",
        ),
        (
            [
                gateway(),
                {
                    "kind": "DestinationRule",
                    "metadata": {"name": "dr", "namespace": NS},
                    "spec": {
                        "host": GREEN,
                        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
                    },
                },
                service("green"),
            ],
            "spec.trafficPolicy.loadBalancer.consistentHash",
        ),
    ],
)
def test_untranslatable_fields_are_named(objects: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(UnsupportedField) as caught:
        envoy.build_route_configuration(objects)
        envoy.upstreams(objects)
    assert caught.value.field == field, str(caught.value)


@pytest.mark.parametrize(
    "objects",
    [
        [gateway()],
        [gateway(), virtual_service([weighted_route(50, 50)], gateways=["other-gateway"])],
        [gateway(selector={"istio": "egressgateway"}), virtual_service([weighted_route(50, 50)])],
        [gateway(), virtual_service([weighted_route(50, 50)], gateways=["mesh"])],
    ],
    ids=["no-virtualservice", "bound-elsewhere", "other-gateway-workload", "mesh-only"],
)
def test_nothing_bound_is_istios_blackhole_404(objects: list[dict[str, Any]]) -> None:
    (vhost,) = envoy.build_route_configuration(objects)["virtual_hosts"]
    assert vhost["domains"] == ["*"]
    assert vhost["routes"] == [], "a host without routes: Envoy answers 404 to everything"
    older_istio = {
        "name": "http.80",
        "virtual_hosts": [
            {
                "name": "blackhole:80",
                "domains": ["*"],
                "routes": [{"name": "block_all", "match": {"prefix": "/"}, "direct_response": {"status": 404}}],
            }
        ],
    }
    assert expected_route_table(objects) == route_table_from_route_configs([older_istio]), (
        "older Istio's explicit 404 route and an empty host are the same routing"
    )


def test_virtual_host_is_the_narrower_of_gateway_and_virtualservice_hosts() -> None:
    objects = [
        gateway(servers=[{"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "hosts": ["*.example.com"]}]),
        virtual_service([weighted_route(50, 50)], hosts=["api.example.com", "other.org", "*"]),
    ]
    domains = [v["domains"] for v in envoy.build_route_configuration(objects)["virtual_hosts"]]
    assert domains == [["api.example.com"], ["*.example.com"]], domains


def test_destination_rule_subsets_become_clusters_with_merged_selectors() -> None:
    objects = [
        {
            "kind": "Service",
            "metadata": {"name": "model", "namespace": NS},
            "spec": {"ports": [{"port": 5001, "targetPort": "http"}], "selector": {"app": "model"}},
        },
        {
            "kind": "DestinationRule",
            "metadata": {"name": "model", "namespace": NS},
            "spec": {
                "host": "model",
                "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                "subsets": [
                    {"name": "green", "labels": {"model_version": "green"}},
                    {"name": "blue", "labels": {"model_version": "blue"}},
                ],
            },
        },
    ]
    ups = {u.name: u for u in envoy.upstreams(objects)}
    fqdn = f"model.{NS}.svc.cluster.local"
    assert set(ups) == {f"outbound|5001||{fqdn}", f"outbound|5001|green|{fqdn}", f"outbound|5001|blue|{fqdn}"}
    assert dict(ups[f"outbound|5001|blue|{fqdn}"].selector) == {"app": "model", "model_version": "blue"}
    assert ups[f"outbound|5001|blue|{fqdn}"].lb_policy == "RANDOM"


def _model_rule(**spec: Any) -> dict[str, Any]:
    rule = k8s.destination_rule("model", {"v-green": "green", "v-blue": "blue"})
    rule["spec"].update(spec)
    return rule


def _subset_clusters(objects: list[dict[str, Any]]) -> dict[str | None, str]:
    return {u.subset: u.lb_policy for u in envoy.upstreams(objects) if u.fqdn == fqdn("model")}


def test_wildcard_destination_rule_hosts_apply_to_each_service_they_match() -> None:
    """Istio applies to a Service the rule with its most specific matching host, wildcards included."""
    wide = _model_rule(host=f"*.{NS}.svc.cluster.local", trafficPolicy={"loadBalancer": {"simple": "RANDOM"}})
    wide["metadata"]["name"] = "wide"
    objects = [gateway(), service(name="model", selector={"app": "model"}), service("blue"), wide]
    assert _subset_clusters(objects) == {None: "RANDOM", "v-green": "RANDOM", "v-blue": "RANDOM"}
    blue = {u.subset: u for u in envoy.upstreams(objects) if u.fqdn == BLUE}
    assert set(blue) == {None, "v-green", "v-blue"}
    assert blue["v-green"].selector == {}, "subset v-green of the blue Service selects no pod"
    # A rule naming the Service is more specific: the wildcard's subsets and policy do not apply.
    narrow = k8s.destination_rule("model", {"only": "green"}, name="narrow")
    assert _subset_clusters([*objects, narrow]) == {None: "ROUND_ROBIN", "only": "ROUND_ROBIN"}
    assert {u.subset for u in envoy.upstreams([*objects, narrow]) if u.fqdn == BLUE} == {None, "v-green", "v-blue"}


def test_destination_rule_the_gateway_cannot_see_defines_no_subset() -> None:
    """As the oracle: a rule not exported to the Gateway's namespace gives 503 for its subsets."""
    base = [gateway(), service(name="model", selector={"app": "model"})]
    assert set(_subset_clusters([*base, _model_rule(exportTo=["."])])) == {None, "v-green", "v-blue"}
    assert set(_subset_clusters([*base, _model_rule(exportTo=["other-ns"])])) == {None}, (
        "a rule exported elsewhere must not give the gateway its subsets"
    )


def test_traffic_policy_the_oracle_accepts_translates_or_names_the_field() -> None:
    base = [gateway(), service(name="model", selector={"app": "model"})]
    harmless = _model_rule(
        trafficPolicy={
            "connectionPool": {"http": {"http1MaxPendingRequests": 10}},
            "outlierDetection": {"consecutive5xxErrors": 5},
            "portLevelSettings": [{"port": {"number": 5001}, "loadBalancer": {"simple": "RANDOM"}}],
        }
    )
    harmless["spec"]["subsets"][1]["trafficPolicy"] = {"loadBalancer": {"simple": "LEAST_REQUEST"}}
    assert _subset_clusters([*base, harmless]) == {
        None: "RANDOM",
        "v-green": "RANDOM",
        "v-blue": "LEAST_REQUEST",
    }, "port-level settings apply to the port; a subset's own policy overrides the rule's"
    untranslatable = _model_rule(trafficPolicy={"loadBalancer": {"simple": "PASSTHROUGH"}})
    with pytest.raises(UnsupportedField) as caught:
        envoy.upstreams([*base, untranslatable])
    assert caught.value.field == "spec.trafficPolicy.loadBalancer.simple", str(caught.value)


def test_translate_gives_eds_clusters_endpoints_and_a_loopback_listener() -> None:
    objects = stage(50, 50)
    eps: dict[envoy.EndpointKey, list[tuple[str, int]]] = {
        (GREEN, 5001, None): [("127.0.0.1", 40001)],
        (BLUE, 5001, None): [],
    }
    resources = envoy.translate(
        objects, eps, listener_port=18080, rds_path="/x/rds.json", eds_paths={GREEN_CLUSTER: "/x/g.json"}
    )
    address = resources.listener["address"]["socket_address"]
    assert address == {"address": "127.0.0.1", "port_value": 18080}
    hcm = resources.listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "http.80"
    assert hcm["rds"]["config_source"]["path_config_source"]["path"] == "/x/rds.json"
    clusters = {c["name"]: c for c in resources.clusters}
    assert clusters[GREEN_CLUSTER]["type"] == "EDS"
    assert clusters[BLUE_CLUSTER]["type"] == "STATIC"
    assert clusters[BLUE_CLUSTER]["load_assignment"]["endpoints"] == [{"lb_endpoints": []}], "no endpoint: 503"
    lb = resources.load_assignments[GREEN_CLUSTER]["endpoints"][0]["lb_endpoints"]
    assert lb[0]["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 40001}


def test_bootstrap_binds_admin_on_loopback_and_reads_files() -> None:
    boot = envoy.bootstrap(admin_port=0, lds_path="/x/lds.json", cds_path="/x/cds.json", node_id="n")
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert boot["dynamic_resources"]["lds_config"]["path_config_source"]["path"] == "/x/lds.json"
    assert envoy.discovery_response([{"a": 1}], "7") == {"version_info": "7", "resources": [{"a": 1}]}


# --------------------------------------------------------------------------- workloads and endpoints


def test_specs_follow_deployments_replicas_and_env() -> None:
    objects = stage(50, 50)
    objects[3] = deployment("blue", "abtest/scorer-b:dev", replicas=2)
    specs = specs_from_objects(objects)
    assert sorted((s.deployment, s.replica) for s in specs) == [
        ("model-blue", 0),
        ("model-blue", 1),
        ("model-green", 0),
    ]
    blue = next(s for s in specs if s.deployment == "model-blue")
    assert blue.image == "abtest/scorer-b:dev" and dict(blue.env) == {"MODEL_VERSION": "blue"}
    assert blue.port_name == "http" and blue.health_path == "/healthz"


def test_env_value_from_is_unsupported_locally() -> None:
    dep = deployment("green")
    dep["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
    )
    with pytest.raises(UnsupportedField) as caught:
        specs_from_objects([dep])
    assert caught.value.field == "spec.template.spec.containers[0].env[1].valueFrom"


def test_env_from_is_unsupported_locally() -> None:
    dep = deployment("green")
    dep["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "model"}}]
    with pytest.raises(UnsupportedField) as caught:
        specs_from_objects([dep])
    assert caught.value.field == "spec.template.spec.containers[0].envFrom", str(caught.value)


def test_null_replicas_is_one_as_kubernetes_defaults_it() -> None:
    dep = deployment("green")
    dep["spec"]["replicas"] = None
    assert [s.replica for s in specs_from_objects([dep])] == [0]


def test_a_named_target_port_may_name_the_second_container_port() -> None:
    dep = deployment("blue", "abtest/scorer-b:dev")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["ports"] = [{"name": "metrics", "containerPort": 9090}, {"name": "http", "containerPort": 5001}]
    (spec,) = specs_from_objects([dep])
    assert (spec.container_port, spec.port_name) == (5001, "http"), "the port the readiness probe polls is served"
    assert dict(spec.ports) == {"metrics": 9090, "http": 5001}
    running = [RunningWorkload(spec, ("127.0.0.1", 42000))]
    assert endpoints_for(envoy.upstreams([service("blue")]), running) == {(BLUE, 5001, None): [("127.0.0.1", 42000)]}


def test_endpoints_follow_selectors_namespaces_and_named_ports() -> None:
    objects = stage(50, 50)
    specs = {s.deployment: s for s in specs_from_objects(objects)}
    running = [
        RunningWorkload(specs["model-green"], ("127.0.0.1", 41000)),
        RunningWorkload(specs["model-blue"], ("127.0.0.1", 42000)),
    ]
    eps = endpoints_for(envoy.upstreams(objects), running)
    assert eps == {(GREEN, 5001, None): [("127.0.0.1", 41000)], (BLUE, 5001, None): [("127.0.0.1", 42000)]}
    renamed = copy.deepcopy(objects)
    renamed[1]["spec"]["ports"][0]["targetPort"] = "grpc"  # model-svc-blue names a port nobody declares
    assert endpoints_for(envoy.upstreams(renamed), running)[(BLUE, 5001, None)] == []

    def blue_endpoints(target_port: int | str) -> list[tuple[str, int]]:
        numbered = copy.deepcopy(objects)
        numbered[1]["spec"]["ports"][0]["targetPort"] = target_port
        return endpoints_for(envoy.upstreams(numbered), running)[(BLUE, 5001, None)]

    assert blue_endpoints(5002) == [], "targetPort 5002 in front of containerPort 5001 reaches nothing: 503"
    assert blue_endpoints(5001) == blue_endpoints("5001") == [("127.0.0.1", 42000)]


# --------------------------------------------------------------------------- the normalizer


@pytest.mark.parametrize("legacy", [False, True], ids=["string_match", "deprecated-forms"])
@pytest.mark.parametrize(("green", "blue"), [(100, 0), (50, 50), (0, 100)])
def test_istio_gateway_config_dump_equals_the_expected_table(green: int, blue: int, legacy: bool) -> None:
    live = route_table_from_config_dump(istio_gateway_dump({"green": green, "blue": blue}, legacy=legacy))
    expected = expected_route_table(stage(green, blue))
    assert diff_route_tables(expected, live) == ""
    assert live == expected


def test_a_wrong_split_shows_in_the_diff() -> None:
    live = route_table_from_config_dump(istio_gateway_dump({"green": 70, "blue": 30}))
    diff = diff_route_tables(expected_route_table(stage(50, 50)), live)
    assert "70%" in diff and "50%" in diff, diff
    assert diff.startswith("--- expected"), diff


def test_no_routes_yet_never_equals_an_expectation() -> None:
    live = route_table_from_config_dump({"configs": []})
    assert live == RouteTable(())
    assert "(no route configuration)" in diff_route_tables(expected_route_table(stage(50, 50)), live)


def test_resource_filtered_dump_and_explicit_names() -> None:
    config = envoy.build_route_configuration(stage(50, 50))
    other = {"name": "http.9090", "virtual_hosts": []}
    dump = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
                "route_config": c,
            }
            for c in (other, config)
        ]
    }
    assert route_table_from_config_dump(dump) == expected_route_table(stage(50, 50)), "http.80 preferred"
    assert route_table_from_config_dump(dump, "http.9090") == RouteTable(())


def test_equivalent_spellings_normalize_equal() -> None:
    def table(route: dict[str, Any], domains: list[str]) -> RouteTable:
        return route_table_from_route_configs([{"virtual_hosts": [{"domains": domains, "routes": [route]}]}])

    one = table({"match": {"prefix": "/"}, "route": {"cluster": "c"}}, ["*"])
    assert one == table(
        {
            "match": {"prefix": "/"},
            "route": {"weighted_clusters": {"clusters": [{"name": "c", "weight": 7}]}},
        },
        ["*"],
    )
    half = table(
        {
            "match": {"prefix": "/"},
            "route": {
                "weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": {"value": 1}}]}
            },
        },
        ["x.org", "x.org:*", "x.org:80"],
    )
    route = half.virtual_hosts[0].routes[0]
    assert half.virtual_hosts[0].domains == ("x.org",)
    assert route.action.clusters == (("a", Fraction(50)), ("b", Fraction(50)))
    assert route.path == PathMatch("prefix", "/")
    regex = (
        table(
            {
                "match": {
                    "safe_regex": {"google_re2": {}, "regex": "/a.*"},
                    "headers": [{"name": "X-A", "safe_regex_match": {"regex": "b+"}}],
                },
                "route": {"cluster": "c"},
            },
            ["*"],
        )
        .virtual_hosts[0]
        .routes[0]
    )
    assert regex.path == PathMatch("regex", "/a.*")
    assert regex.headers == (HeaderMatch("x-a", "regex", "b+"),)


def test_routing_relevant_fields_it_does_not_model_make_tables_differ() -> None:
    base = {"match": {"prefix": "/"}, "route": {"cluster": "c"}}
    with_query = {"match": {"prefix": "/", "query_parameters": [{"name": "a"}]}, "route": {"cluster": "c"}}
    sticky = {
        "match": {"prefix": "/"},
        "route": {"cluster": "c", "hash_policy": [{"header": {"header_name": "u"}}]},
    }

    def table(route: dict[str, Any]) -> RouteTable:
        return route_table_from_route_configs([{"virtual_hosts": [{"domains": ["*"], "routes": [route]}]}])

    assert table(base) != table(with_query)
    assert table(base) != table(sticky)
    assert "query_parameters" in table(with_query).describe()


def test_cluster_names_follow_istio() -> None:
    assert cluster_name(GREEN, 5001) == GREEN_CLUSTER
    assert cluster_name(GREEN, 5001, "v1") == f"outbound|5001|v1|{GREEN}"
    assert envoy.resolve_host("model-svc-green", NS) == GREEN
    assert envoy.resolve_host("model-svc-green.abtesting", "x") == "model-svc-green.abtesting", (
        "Istio keeps dotted names"
    )


def test_catch_all_routes_go_last_when_virtualservices_share_a_host() -> None:
    first = virtual_service([{"name": "all-green", "route": [{"destination": {"host": GREEN}}]}])
    second = virtual_service([header_route("blue")])
    second["metadata"]["name"] = "second"
    routes = routes_of([gateway(), first, second])
    assert [r["name"] for r in routes] == ["blue-header", "all-green"], "Istio moves the catch-all behind"


def test_a_subset_selects_among_its_services_endpoints() -> None:
    """Subset ``green`` of the blue Service: the blue Service selects no green pod, so no endpoint.

    Istio keeps, for a subset's cluster, the Service's endpoints whose labels include the
    subset's (pilot/pkg/xds/endpoints/endpoint_builder.go, BuildClusterLoadAssignment); the
    subset's labels never replace the Service's selector.
    """
    objects = stage(50, 50)
    objects.append(k8s.destination_rule("model-svc-blue", {"green": "green", "blue": "blue"}, name="subsets"))
    specs = {s.deployment: s for s in specs_from_objects(objects)}
    running = [
        RunningWorkload(specs["model-green"], ("127.0.0.1", 41000)),
        RunningWorkload(specs["model-blue"], ("127.0.0.1", 42000)),
    ]
    eps = endpoints_for(envoy.upstreams(objects), running)
    assert eps[(BLUE, 5001, "green")] == [], "subset green of the blue Service reaches a green pod"
    assert eps[(BLUE, 5001, "blue")] == [("127.0.0.1", 42000)]


# --------------------------------------------------------------------------- attribution headers


def _without_attribution(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    del out["response_headers_to_add"]
    return out


@pytest.mark.parametrize("objects", [stage(50, 50), [namespace(), gateway()]], ids=["routes", "blackhole"])
def test_every_route_configuration_names_the_upstream_in_response_headers(objects: list[dict[str, Any]]) -> None:
    config = envoy.build_route_configuration(objects)
    added = {h["header"]["key"]: h["header"]["value"] for h in config["response_headers_to_add"]}
    assert added == {"x-abtest-upstream-host": "%UPSTREAM_HOST%", "x-abtest-upstream-cluster": "%UPSTREAM_CLUSTER%"}
    # An upstream's own header of that name must not survive: the gateway's value replaces it.
    assert {h["append_action"] for h in config["response_headers_to_add"]} == {"OVERWRITE_IF_EXISTS_OR_ADD"}


def test_route_table_comparison_ignores_the_attribution_headers_wherever_they_sit() -> None:
    """A gateway that adds them at another level (virtual host, route) or not at all routes the same."""
    config = envoy.build_route_configuration(stage(50, 50))
    expected = route_table_from_route_configs([config])
    bare = _without_attribution(config)
    per_vhost = _without_attribution(config)
    for vhost in per_vhost["virtual_hosts"]:
        vhost["response_headers_to_add"] = list(envoy.ATTRIBUTION_HEADERS)
        for route in vhost["routes"]:
            route["response_headers_to_add"] = list(envoy.ATTRIBUTION_HEADERS)
    assert route_table_from_route_configs([bare]) == expected
    assert route_table_from_route_configs([per_vhost]) == expected
    # ... while a routing difference still shows.
    moved = copy.deepcopy(bare)
    moved["virtual_hosts"][0]["routes"].reverse()
    assert route_table_from_route_configs([moved]) != expected


def test_weights_are_relative_and_written_unscaled() -> None:
    """Istio writes the weights as given (applyHTTPRouteDestination); Envoy picks weight / sum."""
    config = envoy.build_route_configuration(stage(3, 1))
    weighted = config["virtual_hosts"][0]["routes"][-1]["route"]["weighted_clusters"]["clusters"]
    assert {c["name"]: c["weight"] for c in weighted} == {GREEN_CLUSTER: 3, BLUE_CLUSTER: 1}
    table = route_table_from_route_configs([config])
    assert table.virtual_hosts[0].routes[-1].action.clusters == (
        (BLUE_CLUSTER, Fraction(25)),
        (GREEN_CLUSTER, Fraction(75)),
    )
