"""Contract tests of ``--mesh cluster`` (an existing cluster) against the stub Kubernetes API.

The kubeconfig names two contexts on the stub: the current one carries a token the stub
refuses, the named one the token it accepts, so any request made with the wrong context
fails. A fake ``kubectl`` first on PATH serves the gateway's config_dump. No traffic is sent:
the gateway URL is a loopback address the tests never dial.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness.errors import ConfigError, WaitTimeout
from abtest_harness.mesh.cluster import ClusterMesh, ClusterStepError, retarget
from abtest_harness.mesh.envoy import build_route_configuration
from abtest_harness.mesh.kube import KubeTimeouts
from abtest_harness.plan import RolloutPlan
from tests.unit.fakes import fake_tools_on_path
from tests.unit.fakes.clock import FakeClock
from tests.unit.fakes.stub_kube_api import StubKubeAPI
from tests.unit.test_kind_mesh import with_attribution_headers

NS = "team-a"
CONTEXT = "staging"
GATEWAY_URL = "http://127.0.0.1:18080"
RUN = "20261130-120000-c1c1c1"
FIELD_MANAGER = ["abtest-harness"]


@dataclass
class Cluster:
    tmp: Path
    api: StubKubeAPI
    plan: RolloutPlan
    kubeconfig: Path
    progress: list[str]

    def mesh(self, **overrides: Any) -> ClusterMesh:
        clock = FakeClock(1000.0, tick=0.001)
        settings: dict[str, Any] = {
            "plan": self.plan,
            "kubeconfig": self.kubeconfig,
            "context": CONTEXT,
            "namespace": NS,
            "gateway_url": GATEWAY_URL,
            "run_id": RUN,
            "artifacts_dir": self.tmp / "artifacts",
            "resolve_tool": lambda name: str(shutil.which(name)),
            "timeouts": KubeTimeouts(rollout=5, prune=5, command=5),
            "progress": self.progress.append,
            "clock": clock,
            "sleep": clock.sleep,
        }
        settings.update(overrides)
        return ClusterMesh(**settings)

    def serve(self, objects: list[dict[str, Any]]) -> None:
        """The gateway's config_dump once it serves `objects` (moved into NS), with the attribution headers."""
        moved = retarget(objects, "abtesting", NS)
        routes = dict(build_route_configuration(moved))
        routes["name"] = "http.8080"
        dump = {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                    "dynamic_route_configs": [{"route_config": routes}],
                }
            ]
        }
        with_attribution_headers(dump)
        from abtest_harness.mesh.envoy import upstreams

        configs = []
        for upstream in upstreams(moved):
            ips = self.api.ready_pod_ips(NS, dict(upstream.selector))
            configs.append(
                {
                    "endpoint_config": {
                        "cluster_name": upstream.name,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": 5001}}}}
                                    for ip in ips
                                ]
                            }
                        ],
                    }
                }
            )
        dump["configs"].append(
            {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": configs}
        )
        target = self.tmp / "config_dump.json"
        target.write_text(json.dumps(dump))
        state = json.loads((self.tmp / "tools" / "state.json").read_text())
        state["config_dump"] = str(target)
        state["live_endpoints"] = True  # the fake gateway lists the Ready pods at each read, as istiod keeps it
        (self.tmp / "tools" / "state.json").write_text(json.dumps(state))

    def stage(self, mesh: ClusterMesh, objects: list[dict[str, Any]]) -> None:
        mesh.apply(objects)
        self.serve(objects)
        mesh.converge(objects, timeout=5)

    def ours(self) -> list[Any]:
        """Every write this harness sent (apply and delete), in order."""
        return [
            r
            for r in self.api.requests()
            if (r.method == "PATCH" and r.query.get("fieldManager") == FIELD_MANAGER) or r.method == "DELETE"
        ]

    def tool_calls(self) -> list[list[str]]:
        path = self.tmp / "tools" / "calls.jsonl"
        return [json.loads(line)["argv"] for line in path.read_text().splitlines()] if path.exists() else []


def _kubeconfig(server: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [
            {"name": "good", "user": {"token": "fake-token"}},
            {"name": "wrong", "user": {"token": "a-token-the-stub-refuses"}},
        ],
        "contexts": [
            {"name": "production", "context": {"cluster": "c", "user": "wrong"}},
            {"name": CONTEXT, "context": {"cluster": "c", "user": "good"}},
        ],
        "current-context": "production",
    }


def _seed(api: StubKubeAPI) -> None:
    """A cluster that already runs Istio's gateway and has the user's namespace, with their own objects."""
    objects = api.state.objects
    objects[f"/api/v1/namespaces/{NS}"] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    objects["/api/v1/namespaces/istio-system/pods/istio-ingressgateway-5c9f-abcde"] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "istio-ingressgateway-5c9f-abcde",
            "namespace": "istio-system",
            "labels": {"istio": "ingressgateway", "app": "istio-ingressgateway"},
        },
        "spec": {"containers": [{"name": "istio-proxy"}]},
        "status": {
            "phase": "Running",
            "podIP": "192.0.2.200",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    objects[f"/api/v1/namespaces/{NS}/configmaps/their-config"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "their-config", "namespace": NS, "labels": {"app": "theirs"}},
    }
    # Another abtest run's object in the same namespace: not this run's to remove.
    objects[f"/apis/apps/v1/namespaces/{NS}/deployments/other-run"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "other-run",
            "namespace": NS,
            "labels": {
                "app.kubernetes.io/managed-by": "abtest-harness",
                "abtest-harness/run-id": "20261129-000000-ffffff",
            },
        },
    }


@contextmanager
def stub_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan) -> Iterator[Cluster]:
    """An existing cluster as the cluster backend sees it: the fake tools, a seeded stub API, a kubeconfig."""
    tools = fake_tools_on_path(tmp_path, monkeypatch)
    with StubKubeAPI() as api:
        _seed(api)
        kubeconfig = tmp_path / "user.kubeconfig"
        kubeconfig.write_text(json.dumps(_kubeconfig(api.url)))
        (tools / "state.json").write_text(json.dumps({"api_server": api.url}))
        yield Cluster(tmp_path, api, plan, kubeconfig, [])


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan) -> Iterator[Cluster]:
    with stub_cluster(tmp_path, monkeypatch, plan) as stub:
        yield stub


def test_stages_go_into_the_named_namespace_and_teardown_removes_exactly_this_runs_objects(
    cluster: Cluster, stages: dict[str, list[dict[str, Any]]]
) -> None:
    before = set(cluster.api.state.objects)
    with cluster.mesh() as mesh:
        assert mesh.gateway_url == GATEWAY_URL
        cluster.stage(mesh, stages["Blue_Green"])
        cluster.stage(mesh, stages["Green_100"])
        deployments = cluster.api.names(f"/apis/apps/v1/namespaces/{NS}/deployments")
        assert deployments == ["model-green", "other-run"], "Green_100 prunes this run's model-blue only"
    after = set(cluster.api.state.objects)
    assert after == before, (
        f"teardown must leave the cluster as found: added {after - before}, removed {before - after}"
    )
    writes = cluster.ours()
    assert writes, "nothing was applied"
    applied = [r.path for r in writes if r.method == "PATCH"]
    assert not any(p.startswith("/api/v1/namespaces/") and p.count("/") == 4 for p in applied), (
        "no Namespace may be applied: nothing cluster-wide"
    )
    outside = [p for p in applied if f"/namespaces/{NS}/" not in p]
    envoyfilter = (
        f"/apis/networking.istio.io/v1alpha3/namespaces/istio-system/envoyfilters/abtest-upstream-headers-{RUN}"
    )
    assert outside == [envoyfilter], f"the only object outside {NS} is this run's attribution EnvoyFilter: {outside}"
    vs = yaml.safe_load(next(r.body for r in writes if r.path.endswith("/virtualservices/mlmodel-virtualservice")))
    hosts = {d["destination"]["host"] for route in vs["spec"]["http"] for d in route["route"]}
    assert hosts == {f"model-svc-green.{NS}.svc.cluster.local", f"model-svc-blue.{NS}.svc.cluster.local"}
    deleted = [r.path for r in writes if r.method == "DELETE"]
    assert all(f"/namespaces/{NS}/" in p or "/envoyfilters/" in p for p in deleted)
    assert not any("their-config" in p or "other-run" in p for p in deleted), deleted
    selectors = {
        r.query["labelSelector"][0]
        for r in cluster.api.requests("GET")
        if r.query.get("labelSelector") and "/pods" not in r.path
    }
    assert selectors == {f"app.kubernetes.io/managed-by=abtest-harness,abtest-harness/run-id={RUN}"}, (
        f"prune and teardown must select this run's objects only: {selectors}"
    )


def test_the_named_context_is_used_never_the_current_one(
    cluster: Cluster, stages: dict[str, list[dict[str, Any]]]
) -> None:
    with cluster.mesh() as mesh:
        cluster.stage(mesh, stages["Blue_50"])
    assert all(r.authorization == "Bearer fake-token" for r in cluster.api.requests()), (
        "a request went out with the current context's credentials"
    )
    execs = [argv for argv in cluster.tool_calls() if "exec" in argv]
    assert execs and all(
        argv[:4] == ["--kubeconfig", str(cluster.kubeconfig), "--context", CONTEXT] for argv in execs
    ), execs
    with pytest.raises(ClusterStepError) as caught:
        cluster.mesh(context="production").up()
    assert caught.value.step == "connect" and "401" in str(caught.value)


def test_an_object_this_run_did_not_apply_is_never_taken_over(
    cluster: Cluster, stages: dict[str, list[dict[str, Any]]]
) -> None:
    theirs = f"/api/v1/namespaces/{NS}/services/model-svc-green"
    cluster.api.state.objects[theirs] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "model-svc-green", "namespace": NS, "labels": {"app": "theirs"}},
        "spec": {"ports": [{"port": 5001}]},
    }
    with cluster.mesh() as mesh:
        with pytest.raises(ClusterStepError) as caught:
            mesh.apply(stages["Blue_50"])
    assert caught.value.step == "apply" and isinstance(caught.value.cause, ConfigError)
    assert f"Service {NS}/model-svc-green" in str(caught.value) and "someone else" in str(caught.value)
    assert [r.path for r in cluster.ours() if f"/namespaces/{NS}/" in r.path] == [], "nothing may be applied"
    assert cluster.api.state.objects[theirs]["metadata"]["labels"] == {"app": "theirs"}, "their Service was changed"


def test_judge_live_applies_nothing_and_judges_the_stage_the_gateway_serves(
    cluster: Cluster, stages: dict[str, list[dict[str, Any]]]
) -> None:
    with cluster.mesh(judge_live=True) as mesh:
        mesh.apply(stages["Blue_50"])
        cluster.serve(stages["Blue_50"])
        mesh.converge(stages["Blue_50"], timeout=2)
        cluster.serve(stages["Blue_100"])
        with pytest.raises(WaitTimeout) as caught:
            mesh.converge(stages["Blue_50"], timeout=2)
        assert "expected (manifests)" in str(caught.value), "the verdict must show how the live stage differs"
    writes = [r for r in cluster.api.requests() if r.method in ("PATCH", "POST", "PUT", "DELETE")]
    assert writes == [], f"judge-live must write nothing: {[(r.method, r.path) for r in writes]}"


def test_endpoint_labels_map_pod_ip_and_port_to_the_pods_labels(
    cluster: Cluster, stages: dict[str, list[dict[str, Any]]]
) -> None:
    with cluster.mesh() as mesh:
        cluster.stage(mesh, stages["Blue_50"])
        labels = mesh.endpoint_labels()
        green = cluster.api.ready_pod_ips(NS, {"app": "model", "model_version": "green"})
        blue = cluster.api.ready_pod_ips(NS, {"app": "model", "model_version": "blue"})
    assert green and blue
    assert {k: v["model_version"] for k, v in labels.items()} == {
        **{f"{ip}:5001": "green" for ip in green},
        **{f"{ip}:5001": "blue" for ip in blue},
    }


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("kubeconfig", "/nonexistent/kubeconfig", "--kubeconfig"),
        ("context", "", "--context"),
        ("namespace", "Team_A", "--namespace"),
        ("gateway_url", "ftp://gw.example", "--gateway-url"),
        ("gateway_url", "https://gw.example", "--gateway-url"),
        ("gateway_url", "http://gw.example/score", "--gateway-url"),
    ],
)
def test_bad_options_are_refused_naming_the_option(cluster: Cluster, field: str, value: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        cluster.mesh(**{field: value})
    assert named in str(caught.value)
    assert cluster.api.requests() == [], "nothing may be contacted before the options are valid"


def test_a_namespace_that_does_not_exist_is_not_created(cluster: Cluster) -> None:
    with pytest.raises(ClusterStepError) as caught:
        cluster.mesh(namespace="not-there").up()
    assert caught.value.step == "connect" and "creates nothing cluster-wide" in str(caught.value)
    assert cluster.ours() == [], "nothing may be applied, not even the EnvoyFilter"


def test_retarget_moves_hosts_and_gateway_references_only() -> None:
    vs: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "v", "namespace": "abtesting"},
        "spec": {
            "hosts": ["*", "api.abtesting.svc.cluster.local"],
            "gateways": ["abtesting/gw", "other/gw", "gw"],
            "http": [
                {"route": [{"destination": {"host": "a.abtesting.svc.cluster.local"}}, {"destination": {"host": "b"}}]}
            ],
        },
    }
    ns: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "abtesting"}}
    (moved,) = retarget([ns, vs], "abtesting", NS)
    assert moved["metadata"]["namespace"] == NS
    assert moved["spec"]["hosts"] == ["*", f"api.{NS}.svc.cluster.local"]
    assert moved["spec"]["gateways"] == [f"{NS}/gw", "other/gw", "gw"]
    assert [d["destination"]["host"] for d in moved["spec"]["http"][0]["route"]] == [f"a.{NS}.svc.cluster.local", "b"]
    assert vs["metadata"]["namespace"] == "abtesting", "the input must not be changed"


def test_open_mesh_names_the_first_missing_cluster_option(plan: RolloutPlan, tmp_path: Path) -> None:
    from abtest_harness.rollout import MeshOptions, open_mesh

    with pytest.raises(ConfigError, match="--kubeconfig.*missing: --kubeconfig, --context, --namespace, --gateway-url"):
        open_mesh(plan, MeshOptions(mesh="cluster"))
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("{}")
    options = MeshOptions(
        mesh="cluster", kubeconfig=kubeconfig, context=CONTEXT, namespace=NS, gateway_url=GATEWAY_URL, judge_live=True
    )
    session = open_mesh(plan, options)
    mesh = session.mesh
    assert isinstance(mesh, ClusterMesh) and mesh.judge_live and mesh.gateway_url == GATEWAY_URL


def test_abtest_run_refuses_a_cluster_run_without_its_options_with_exit_2(tmp_path: Path) -> None:
    import io

    from abtest_harness.cli import main

    out = io.StringIO()
    code = main(["run", "--mesh", "cluster", "--artifacts-dir", str(tmp_path)], out=out)
    assert code == 2, out.getvalue()
