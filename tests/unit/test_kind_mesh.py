"""Contract tests of the kind backend at its process and API boundaries.

Fake ``kind``, ``istioctl`` and ``kubectl`` executables (tests/unit/fakes) come first on
PATH and record every argv; the kubernetes client talks real HTTP to a stub API server on
127.0.0.1; the images are "built" by abtest_harness.images against a fake docker client. No Docker,
no cluster, no network beyond loopback, no sleeping (the waits get a fake clock).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness import istioctl as istioctl_mod
from abtest_harness.errors import ConfigError, HarnessError, ToolNotFound, WaitTimeout
from abtest_harness.images import BaseImageMissing
from abtest_harness.mesh.envoy import build_route_configuration, upstreams
from abtest_harness.mesh.kind import KindIstioMesh, KindStepError, KindTimeouts, endpoints_from_config_dump
from abtest_harness.mesh.kube import object_path
from abtest_harness.plan import RolloutPlan
from tests.unit.fakes import fake_tools_on_path
from tests.unit.fakes.clock import FakeClock
from tests.unit.fakes.docker_client import FakeDockerClient
from tests.unit.fakes.istio_config_dump import istio_gateway_dump
from tests.unit.fakes.stub_kube_api import StubKubeAPI

NAME = "abtest-test"
BASE_IMAGE = "abtest/base-python:bookworm"
OPERATOR = Path(__file__).resolve().parents[2] / "manifests" / "istio" / "operator.yaml"
KIND_CONFIG = Path(__file__).resolve().parents[2] / "manifests" / "kind" / "cluster.yaml"

# A converge that must succeed gets a generous deadline: it returns as soon as the gateway matches,
# so a loaded machine costs time, never a false failure. Tests of the timeout itself keep short ones.
CONVERGES = 60


@dataclass
class Rig:
    """Everything one test needs: the stub API, the fake tools' state and the mesh factory."""

    tmp: Path
    api: StubKubeAPI
    plan: RolloutPlan
    docker: FakeDockerClient
    progress: list[str]

    @property
    def state_file(self) -> Path:
        return self.tmp / "tools" / "state.json"

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_file.read_text()))

    def set_state(self, **changes: Any) -> None:
        state = self.state()
        state.update(changes)
        self.state_file.write_text(json.dumps(state))

    def calls(self) -> list[tuple[str, ...]]:
        path = self.tmp / "tools" / "calls.jsonl"
        if not path.exists():
            return []
        return [tuple([c["tool"], *c["argv"]]) for c in map(json.loads, path.read_text().splitlines())]

    def call_env(self) -> list[dict[str, Any]]:
        path = self.tmp / "tools" / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    @property
    def kubeconfig(self) -> Path:
        return self.tmp / "cache" / "kind" / f"{NAME}.kubeconfig"

    @property
    def artifacts(self) -> Path:
        return self.tmp / "artifacts"

    def mesh(self, **overrides: Any) -> KindIstioMesh:
        clock = FakeClock(1000.0, tick=0.001)  # each reading takes 1 ms: a probe that never sleeps still ends
        settings: dict[str, Any] = {
            "plan": self.plan,
            "cluster_name": NAME,
            "artifacts_dir": self.artifacts,
            "cache_dir": self.tmp / "cache",
            "base_image": BASE_IMAGE,
            "docker_client": self.docker,
            # PATH lookup (the fakes are first), not the venv-first proc.tool: the venv has a real kubectl.
            "resolve_tool": lambda name: str(shutil.which(name)),
            "timeouts": KindTimeouts(nodes_ready=5, istio_ready=5, rollout=5, prune=5, command=30),
            "progress": self.progress.append,
            "clock": clock,
            "sleep": clock.sleep,
        }
        settings.update(overrides)
        return KindIstioMesh(**settings)

    def write_config_dump(
        self,
        objects: list[dict[str, Any]],
        *,
        dump: dict[str, Any] | None = None,
        drop_ip: str | None = None,
        attribution: bool = True,
        live_endpoints: bool = False,
    ) -> None:
        """What the gateway's admin endpoint returns once it serves `objects` (or `dump`).

        The endpoints section lists the stub's Ready pods now, as istiod would push them;
        `drop_ip` leaves one out, as when the push has not arrived yet. With `attribution`,
        the route configurations carry the two headers the attribution EnvoyFilter merges in.
        With `live_endpoints`, the fake gateway lists the Ready pods at each read instead (as
        istiod keeps the gateway's endpoints current, e.g. after a prune).
        """
        if dump is None:
            routes = dict(build_route_configuration(objects))
            routes["name"] = "http.8080"  # Istio's gateway listens on the Service's targetPort
            # The local translation adds the attribution headers itself; Istio's routes carry them
            # only once the EnvoyFilter is merged in (below).
            routes.pop("response_headers_to_add", None)
            dump = {
                "configs": [
                    {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
                    {
                        "@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
                        "dynamic_route_configs": [
                            {"version_info": "2026-11-26T10:00:00Z/7", "route_config": routes}
                        ],
                    },
                ]
            }
        if attribution:
            with_attribution_headers(dump)
        dump["configs"].append(self.endpoints_section(objects, drop_ip))
        target = self.tmp / "config_dump.json"
        target.write_text(json.dumps(dump))
        self.set_state(config_dump=str(target), live_endpoints=live_endpoints)

    def stage(self, mesh: KindIstioMesh, objects: list[dict[str, Any]]) -> None:
        """Apply a stage, let the gateway serve it, and converge (which prunes what it dropped)."""
        mesh.apply(objects)
        self.write_config_dump(objects, live_endpoints=True)
        mesh.converge(objects, timeout=CONVERGES)

    def existing_cluster(self, *, host_ip: str = "127.0.0.1", host_port: str = "30080") -> None:
        """A cluster named NAME made before the run, publishing 30080/tcp on `host_ip`:`host_port`."""
        self.set_state(
            clusters=[NAME],
            port_bindings={
                f"{NAME}-control-plane": {
                    "6443/tcp": [{"HostIp": "127.0.0.1", "HostPort": "40001"}],
                    "30080/tcp": [{"HostIp": host_ip, "HostPort": host_port}],
                }
            },
        )

    def endpoints_section(self, objects: list[dict[str, Any]], drop_ip: str | None) -> dict[str, Any]:
        configs = []
        for upstream in upstreams(objects):
            ips = self.api.ready_pod_ips(upstream.fqdn.split(".")[1], dict(upstream.selector))
            lb_endpoints = [
                {
                    "endpoint": {"address": {"socket_address": {"address": ip, "port_value": 5001}}},
                    "health_status": "HEALTHY",
                    "load_balancing_weight": 1,
                }
                for ip in ips
                if ip != drop_ip
            ]
            configs.append(
                {
                    "endpoint_config": {
                        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                        "cluster_name": upstream.name,
                        "endpoints": [{"locality": {}, "lb_endpoints": lb_endpoints}],
                    }
                }
            )
        return {
            "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
            "dynamic_endpoint_configs": configs,
        }


def with_attribution_headers(dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` with the attribution EnvoyFilter's merge applied to its HTTP route configurations,
    as the gateway's config_dump shows it once istiod has pushed the filter."""
    headers = [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in (
            ("x-abtest-upstream-host", "%UPSTREAM_HOST%"),
            ("x-abtest-upstream-cluster", "%UPSTREAM_CLUSTER_RAW%"),
        )
    ]
    for section in dump["configs"]:
        for entry in section.get("dynamic_route_configs", []):
            if str(entry["route_config"].get("name", "")).startswith("http."):
                entry["route_config"]["response_headers_to_add"] = headers
    return dump


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: RolloutPlan) -> Iterator[Rig]:
    tools = fake_tools_on_path(tmp_path, monkeypatch)
    with StubKubeAPI() as api:
        (tools / "state.json").write_text(json.dumps({"clusters": [], "api_server": api.url}))
        yield Rig(tmp_path, api, plan, FakeDockerClient([BASE_IMAGE]), [])


def built_refs(rig: Rig) -> list[str]:
    return sorted(b["tag"] for b in rig.docker.api.builds)


def assert_nothing_left(rig: Rig) -> None:
    assert rig.state()["clusters"] == [], f"a kind cluster was left behind: {rig.state()['clusters']}"
    assert not rig.kubeconfig.exists(), f"the kubeconfig {rig.kubeconfig} was left behind"
    assert not (rig.tmp / "home" / ".kube").exists(), "~/.kube was touched"


# ----------------------------------------------------------------------------- happy paths


def test_fresh_run_runs_exactly_the_documented_commands(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = stages["Blue_50"]
    with rig.mesh() as mesh:
        assert mesh.gateway_url == "http://127.0.0.1:30080"
        mesh.apply(objects)
        rig.write_config_dump(objects)
        mesh.converge(objects, timeout=CONVERGES)
    kc = str(rig.kubeconfig)
    refs = built_refs(rig)
    assert len(refs) == 2 and all(
        ref.startswith("abtest/scorer-") and not ref.endswith(":latest") for ref in refs
    )
    assert rig.calls() == [
        ("kind", "get", "clusters"),
        (
            "kind",
            "create",
            "cluster",
            "--name",
            NAME,
            "--wait",
            "120s",
            "--config",
            str(KIND_CONFIG),
            "--kubeconfig",
            kc,
        ),
        ("kind", "get", "clusters"),
        ("istioctl", "version", "--remote=false", "-o", "json"),
        ("istioctl", "install", "-y", "-f", str(OPERATOR)),
        ("kind", "load", "docker-image", refs[0], "--name", NAME),
        ("kind", "load", "docker-image", refs[1], "--name", NAME),
        (
            "kubectl",
            "--kubeconfig",
            kc,
            "-n",
            "istio-system",
            "exec",
            _gateway_pod(rig),
            "-c",
            "istio-proxy",
            "--",
            "pilot-agent",
            "request",
            "GET",
            "config_dump?include_eds",
        ),
        ("kind", "delete", "cluster", "--name", NAME, "--kubeconfig", kc),
    ], "the fresh-run command sequence changed"
    envs = {c["tool"]: c["kubeconfig_env"] for c in rig.call_env()}
    assert envs["istioctl"] == kc, "istioctl must get the harness's kubeconfig through KUBECONFIG"
    assert envs["kind"] is None and envs["kubectl"] is None, "kind and kubectl get --kubeconfig, not the env"
    assert_nothing_left(rig)


def _gateway_pod(rig: Rig) -> str:
    pods = [
        p
        for p in rig.api.names("/api/v1/namespaces/istio-system/pods")
        if p.startswith("istio-ingressgateway")
    ]
    assert len(pods) == 1, pods
    return pods[0]


def test_apply_is_server_side_with_our_field_manager_and_survives_star_hosts(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = stages["Blue_50"]
    with rig.mesh(keep_cluster=True) as mesh:
        mesh.apply(objects)
        refs = dict(mesh.image_refs)
    ours = [
        r
        for r in rig.api.requests("PATCH")
        if r.query.get("fieldManager") == ["abtest-harness"] and "/envoyfilters/" not in r.path
    ]
    assert len(ours) == len(objects), f"one apply per object, got {[r.path for r in ours]}"
    assert all(
        r.content_type == "application/apply-patch+yaml" and r.query.get("force") == ["true"] for r in ours
    )
    assert all(r.authorization == "Bearer fake-token" for r in ours), (
        "the kubeconfig's credentials were not sent"
    )
    assert ours[0].path == "/api/v1/namespaces/abtesting", (
        "the Namespace must be applied before what lives in it"
    )
    vs = yaml.safe_load(
        next(r.body for r in ours if r.path.endswith("/virtualservices/mlmodel-virtualservice"))
    )
    assert vs["spec"]["hosts"] == ["*"], (
        "the '*' host must reach the API intact (pytest-kubernetes' echo breaks it)"
    )
    deployments = {
        r.path.rsplit("/", 1)[-1]: yaml.safe_load(r.body) for r in ours if "/deployments/" in r.path
    }
    images = {
        name: d["spec"]["template"]["spec"]["containers"][0]["image"] for name, d in deployments.items()
    }
    assert images == {"model-green": refs["A"], "model-blue": refs["B"]}, (
        "Deployments must run the side-loaded refs"
    )
    assert all(
        d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
        for d in deployments.values()
    ), "side-loaded images need imagePullPolicy IfNotPresent"
    assert rig.state()["clusters"] == [NAME], "keep_cluster must keep the cluster"


def test_reused_cluster_exports_its_kubeconfig_and_skips_a_matching_istio(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    # A first run with keep_cluster leaves a cluster with Istio behind ...
    with rig.mesh(keep_cluster=True):
        pass
    first = len(rig.calls())
    # ... which the next run reuses: no create, no istioctl install, and no delete at the end
    # even without keep_cluster: the cluster was not this run's to delete.
    with rig.mesh() as mesh:
        assert mesh.created_cluster is False
    kc = str(rig.kubeconfig)
    refs = built_refs(rig)
    assert rig.calls()[first:] == [
        ("kind", "get", "clusters"),
        ("docker", "inspect", "--format", "{{json .HostConfig.PortBindings}}", f"{NAME}-control-plane"),
        ("kind", "export", "kubeconfig", "--name", NAME, "--kubeconfig", kc),
        ("kind", "load", "docker-image", refs[0], "--name", NAME),
        ("kind", "load", "docker-image", refs[1], "--name", NAME),
    ]
    assert any("reusing existing" in line for line in rig.progress), rig.progress
    assert rig.state()["clusters"] == [NAME], "a reused cluster must be left as it was found"
    assert rig.kubeconfig.is_file(), "the kubeconfig of a cluster that still exists must stay"
    assert any("not created by this run" in line for line in rig.progress), rig.progress


def test_a_cluster_that_existed_before_the_run_is_never_deleted(rig: Rig) -> None:
    rig.existing_cluster()  # made by someone else: another run, or a person
    mesh = rig.mesh()
    mesh.up()
    mesh.down()
    mesh.down()
    assert not any(c[:3] == ("kind", "delete", "cluster") for c in rig.calls()), rig.calls()
    assert rig.state()["clusters"] == [NAME]


@pytest.mark.parametrize("keep", [False, True], ids=["delete", "keep"])
def test_a_failed_up_on_a_reused_cluster_leaves_the_cluster(rig: Rig, keep: bool) -> None:
    rig.existing_cluster()
    _fail(rig, "istioctl install", "Error: failed to install manifests: context deadline exceeded")
    with pytest.raises(KindStepError) as caught:
        rig.mesh(keep_cluster=keep).up()
    assert caught.value.step == "istio"
    assert not any(c[:3] == ("kind", "delete", "cluster") for c in rig.calls()), rig.calls()
    assert rig.state()["clusters"] == [NAME], "a failed run must not delete a cluster it did not create"


def test_a_failed_lookup_of_existing_clusters_deletes_nothing(rig: Rig) -> None:
    # `kind get clusters` failed: whether the cluster exists is unknown, so it is not ours to delete.
    rig.set_state(clusters=[NAME])
    _fail(rig, "kind get clusters", "ERROR: failed to list clusters: permission denied")
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    assert caught.value.step == "cluster" and "permission denied" in str(caught.value)
    assert not any(c[:3] == ("kind", "delete", "cluster") for c in rig.calls()), rig.calls()
    assert rig.state()["clusters"] == [NAME]


def test_a_created_cluster_is_deleted_after_a_failed_up_unless_kept(rig: Rig) -> None:
    _fail(rig, "kind load docker-image", "ERROR: no nodes found")
    with pytest.raises(KindStepError):
        rig.mesh().up()
    deletes = [c for c in rig.calls() if c[:3] == ("kind", "delete", "cluster")]
    assert len(deletes) == 1, deletes
    assert_nothing_left(rig)
    _fail(rig, "kind load docker-image", "ERROR: no nodes found")
    with pytest.raises(KindStepError):
        rig.mesh(keep_cluster=True).up()
    assert rig.state()["clusters"] == [NAME], "keep_cluster keeps a created cluster after a failure too"


def test_reused_cluster_with_another_istio_version_is_reinstalled(rig: Rig) -> None:
    with rig.mesh(keep_cluster=True):
        pass
    rig.set_state(istioctl_version="1.29.0")
    with rig.mesh(keep_cluster=True, istio_version="1.29.0"):
        pass
    installs = [c for c in rig.calls() if c[:2] == ("istioctl", "install")]
    assert len(installs) == 2, "an Istio of another version must be reinstalled, not reused"


def test_keep_cluster_leaves_cluster_and_kubeconfig_and_says_how_to_delete(rig: Rig) -> None:
    with rig.mesh(keep_cluster=True):
        pass
    assert not any(c[:3] == ("kind", "delete", "cluster") for c in rig.calls())
    assert rig.state()["clusters"] == [NAME]
    assert rig.kubeconfig.is_file()
    assert any(f"kind delete cluster --name {NAME}" in line for line in rig.progress), rig.progress
    assert not (rig.tmp / "home" / ".kube").exists()


def test_every_command_gets_a_deadline_sized_for_it(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest_harness import proc

    seen: list[tuple[str, float]] = []
    real_run = proc.run

    def spy(argv: Any, *, timeout: float, **kwargs: Any) -> Any:
        seen.append((f"{Path(argv[0]).name} {argv[1]} {argv[2]}", timeout))
        return real_run(argv, timeout=timeout, **kwargs)

    monkeypatch.setattr(proc, "run", spy)
    timeouts = KindTimeouts(create_cluster=901, istio_install=902, load_image=903, command=31, nodes_ready=5)
    with rig.mesh(timeouts=timeouts):
        pass
    deadlines = dict(seen)
    assert deadlines["kind create cluster"] == 901, (
        "a first create pulls the node image: minutes, not seconds"
    )
    assert deadlines["istioctl install -y"] == 902
    assert deadlines["kind load docker-image"] == 903
    assert deadlines["kind get clusters"] == 31
    assert all(timeout > 0 for _, timeout in seen)


def test_down_is_idempotent_and_does_nothing_before_up(rig: Rig) -> None:
    mesh = rig.mesh()
    mesh.down()
    assert rig.calls() == [], "down() before up() must run nothing"
    mesh.up()
    mesh.down()
    mesh.down()
    deletes = [c for c in rig.calls() if c[:3] == ("kind", "delete", "cluster")]
    assert len(deletes) == 1, f"down() twice must delete once, got {deletes}"
    assert_nothing_left(rig)


def test_progress_lines_carry_elapsed_time_for_each_long_step(rig: Rig) -> None:
    with rig.mesh():
        pass
    for step in ("cluster", "istio", "images"):
        assert any(line.startswith("[kind +") and f"{step}: done in" in line for line in rig.progress), (
            step,
            rig.progress,
        )


# ----------------------------------------------------------------------------- prune


def test_green_100_prunes_blue_only_after_the_gateway_stopped_routing_to_it(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    """Make-before-break at Blue_Green -> Green_100: apply, converge, and only then prune."""
    deployments = DEPLOYMENTS
    blue = f"{deployments}/model-blue"
    with rig.mesh() as mesh:
        rig.stage(mesh, stages["Blue_Green"])
        assert rig.api.names(deployments) == ["model-blue", "model-green"]
        before = len(rig.api.requests())
        mesh.apply(stages["Green_100"])
        assert not [r for r in rig.api.requests()[before:] if r.method == "DELETE"], (
            "apply() must not prune: the gateway may still send weighted traffic to blue"
        )
        assert "model-blue" in rig.api.names(deployments)
        # The gateway still serves Blue_Green's routes (istiod has not pushed Green_100 yet):
        # converge does not pass, and nothing is deleted meanwhile.
        rig.write_config_dump(stages["Blue_Green"])
        with pytest.raises(WaitTimeout):
            mesh.converge(stages["Green_100"], timeout=2)
        assert not [r for r in rig.api.requests()[before:] if r.method == "DELETE"], (
            "nothing may be pruned before the gateway serves the new stage"
        )
        assert "model-blue" in rig.api.names(deployments)
        # Now the gateway routes as Green_100 says: converge passes, then prunes model-blue
        # (and waits until the gateway's endpoints, kept current as istiod does, drop it).
        rig.write_config_dump(stages["Green_100"], live_endpoints=True)
        mesh.converge(stages["Green_100"], timeout=CONVERGES)
        after = rig.api.requests()[before:]
        assert rig.api.names(deployments) == ["model-green"], "model-blue must be pruned at Green_100"
        assert rig.api.names("/api/v1/namespaces/abtesting/services") == [
            "model-svc-blue",
            "model-svc-green",
        ], "both Services exist at every stage; prune must keep them"
        pods = rig.api.names("/api/v1/namespaces/abtesting/pods")
        assert pods and not any(p.startswith("model-blue") for p in pods), f"blue pods left: {pods}"
    deletes = [r for r in after if r.method == "DELETE"]
    assert [r.path for r in deletes] == [blue], "only model-blue may be deleted"
    assert json.loads(deletes[0].body)["propagationPolicy"] == "Foreground"
    lists = [r for r in after if r.method == "GET" and r.query.get("labelSelector") and "/pods" not in r.path]
    assert lists and all(
        r.query["labelSelector"] == ["app.kubernetes.io/managed-by=abtest-harness"] for r in lists
    ), "prune must select the harness's objects only"
    assert any("converge: gateway routes and endpoints match" in line for line in rig.progress)
    matched = max(i for i, line in enumerate(rig.progress) if "converge: gateway routes and endpoints match" in line)
    pruned = min(i for i, line in enumerate(rig.progress) if "prune: deleting Deployment abtesting/model-blue" in line)
    assert matched < pruned, "the prune must come after the gateway matched the new stage"


def test_a_stage_never_converged_prunes_nothing(rig: Rig, stages: dict[str, list[dict[str, Any]]]) -> None:
    deployments = DEPLOYMENTS
    with rig.mesh(keep_cluster=True) as mesh:
        rig.stage(mesh, stages["Blue_Green"])
        mesh.apply(stages["Green_100"])
    assert rig.api.names(deployments) == ["model-blue", "model-green"], (
        "without a converge that passed, nothing the stage dropped may be deleted"
    )
    assert not rig.api.requests("DELETE")[1:], [r.path for r in rig.api.requests("DELETE")]


DEPLOYMENTS = "/apis/apps/v1/namespaces/abtesting/deployments"


def _earlier_run_kept_at_blue_green(rig: Rig, stages: dict[str, list[dict[str, Any]]]) -> None:
    """Run A (id 20261126-000000-aaaaaa) stops at Blue_Green and keeps the cluster: model-blue stays, with A's id."""
    with rig.mesh(keep_cluster=True, run_id="20261126-000000-aaaaaa") as mesh:
        rig.stage(mesh, stages["Blue_Green"])


def test_a_kept_clusters_leftover_from_an_earlier_run_is_pruned(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    deployments = DEPLOYMENTS
    _earlier_run_kept_at_blue_green(rig, stages)
    # Run B reuses it and starts at baseline: A's model-blue would answer blue-pinned requests
    # that baseline must turn away with 503, so it must go although it carries A's id.
    with rig.mesh(keep_cluster=True, run_id="20261126-000001-bbbbbb") as mesh:
        rig.stage(mesh, stages["baseline"])
        assert rig.api.names(deployments) == ["model-green"], "the earlier run's model-blue must be pruned"
        labels = rig.api.state.objects[f"{deployments}/model-green"]["metadata"]["labels"]
        assert labels["abtest-harness/run-id"] == "20261126-000001-bbbbbb", "re-applied objects carry the new id"
    ours = [
        yaml.safe_load(r.body) for r in rig.api.requests("PATCH") if r.query.get("fieldManager") == ["abtest-harness"]
    ]
    assert ours and all(o["metadata"]["labels"].get("abtest-harness/run-id") for o in ours), (
        "every object applied must carry a run id"
    )


def test_objects_of_an_earlier_run_in_a_reused_cluster_are_taken_over(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    deployments = DEPLOYMENTS
    _earlier_run_kept_at_blue_green(rig, stages)
    with rig.mesh(keep_cluster=True, run_id="20261126-000001-cccccc") as mesh:
        assert mesh.created_cluster is False
        rig.stage(mesh, stages["Blue_Green"])
        ids = {
            name: rig.api.state.objects[f"{deployments}/{name}"]["metadata"]["labels"]["abtest-harness/run-id"]
            for name in rig.api.names(deployments)
        }
        assert ids == {"model-blue": "20261126-000001-cccccc", "model-green": "20261126-000001-cccccc"}, (
            "re-applied objects must carry the new run's id"
        )
        rig.stage(mesh, stages["Green_100"])
        assert rig.api.names(deployments) == ["model-green"], "a taken-over object is this run's to prune"


def test_each_mesh_gets_its_own_run_id(rig: Rig) -> None:
    first, second = rig.mesh().run_id, rig.mesh().run_id
    assert first != second, "two runs must not share a run id"
    assert len(first) <= 63 and first[0].isalnum() and first[-1].isalnum(), f"not a label value: {first}"


def test_prune_leaves_objects_without_our_label_alone(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    with rig.mesh() as mesh:
        rig.stage(mesh, stages["Blue_Green"])
        foreign = "/apis/apps/v1/namespaces/abtesting/deployments/someone-else"
        rig.api.state.objects[foreign] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "someone-else", "namespace": "abtesting", "labels": {"app": "x"}},
        }
        rig.stage(mesh, stages["Green_100"])
        assert foreign in rig.api.state.objects, "an object without managed-by=abtest-harness was pruned"


def test_apply_refuses_objects_without_the_managed_by_label(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = [json.loads(json.dumps(o)) for o in stages["Blue_50"]]
    del objects[-1]["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    with pytest.raises(KindStepError) as caught, rig.mesh() as mesh:
        mesh.apply(objects)
    assert caught.value.step == "apply"
    assert isinstance(caught.value.cause, ConfigError)
    assert "app.kubernetes.io/managed-by" in str(caught.value)
    stage_applies = [
        r.path
        for r in rig.api.requests("PATCH")
        if r.query.get("fieldManager") == ["abtest-harness"] and "/envoyfilters/" not in r.path
    ]
    assert stage_applies == [], "nothing of the stage may be applied"
    assert_nothing_left(rig)


# ----------------------------------------------------------------------------- failures, step by step


def _fail(rig: Rig, prefix: str, stderr: str) -> None:
    rig.set_state(fail={prefix: {"rc": 1, "stderr": stderr}})


@pytest.mark.parametrize("keep", [False, True], ids=["delete", "keep"])
def test_failed_cluster_create_names_the_step_and_leaves_nothing(rig: Rig, keep: bool) -> None:
    _fail(
        rig, "kind create cluster", "ERROR: failed to create cluster: could not find a log line that matches"
    )
    with pytest.raises(KindStepError) as caught:
        rig.mesh(keep_cluster=keep).up()
    err = caught.value
    assert err.step == "cluster" and "step 'cluster' failed" in str(err)
    assert "could not find a log line" in str(err), "the tool's stderr must reach the message"
    assert err.artifacts == rig.artifacts / "failure-cluster" and err.artifacts.is_dir()
    assert "kind export logs" in (err.artifacts / "dump-errors.txt").read_text()
    deletes = [c for c in rig.calls() if c[:3] == ("kind", "delete", "cluster")]
    assert len(deletes) == (0 if keep else 1), "a failed create is cleaned up unless the cluster is kept"
    assert rig.state()["clusters"] == []


def test_missing_kind_fails_the_cluster_step_with_how_to_install_it(rig: Rig) -> None:
    def without_kind(name: str) -> str:
        if name == "kind":
            raise ToolNotFound("'kind' not found in /venv/bin or on PATH: see https://kind.sigs.k8s.io/")
        return str(shutil.which(name))

    with pytest.raises(KindStepError) as caught:
        rig.mesh(resolve_tool=without_kind).up()
    assert caught.value.step == "cluster" and "kind.sigs.k8s.io" in str(caught.value)
    assert rig.calls() == [], "nothing may run without kind"


def test_failed_istio_install_dumps_diagnostics_and_deletes_the_cluster(rig: Rig) -> None:
    _fail(rig, "istioctl install", "Error: failed to install manifests: context deadline exceeded")
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    err = caught.value
    assert err.step == "istio" and "context deadline exceeded" in str(err)
    where = rig.artifacts / "failure-istio"
    assert (where / "kind-logs" / "kind-version.txt").is_file(), "kind export logs must run before the delete"
    assert "stub event in istio-system" in (where / "events-istio-system.txt").read_text()
    calls = rig.calls()
    export = calls.index(("kind", "export", "logs", str(where / "kind-logs"), "--name", NAME))
    delete = calls.index(("kind", "delete", "cluster", "--name", NAME, "--kubeconfig", str(rig.kubeconfig)))
    assert export < delete
    assert not any(c[:3] == ("kind", "load", "docker-image") for c in calls), (
        "no step may run after a failure"
    )
    assert_nothing_left(rig)


def test_istiod_that_never_becomes_available_times_out_with_what_was_seen(rig: Rig) -> None:
    rig.api.state.never_ready.add("istiod")
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    err = caught.value
    assert err.step == "istio" and isinstance(err.cause, WaitTimeout)
    assert "Deployment istio-system/istiod" in str(err) and "available 0" in str(err), str(err)
    assert_nothing_left(rig)


def test_missing_base_image_fails_the_images_step(rig: Rig) -> None:
    rig.docker.images.store.clear()
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    assert caught.value.step == "images" and isinstance(caught.value.cause, BaseImageMissing)
    assert "make base-image" in str(caught.value)
    assert (rig.artifacts / "failure-images" / "pods").is_dir(), "pod logs must be dumped"
    assert_nothing_left(rig)


def test_failed_side_load_fails_the_images_step(rig: Rig) -> None:
    _fail(rig, "kind load docker-image", 'ERROR: image: "abtest/scorer-a" not present locally')
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    assert caught.value.step == "images" and "not present locally" in str(caught.value)
    assert_nothing_left(rig)


def test_rejected_apply_names_the_step_and_the_object(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    rig.api.state.reject_apply["mlmodel-virtualservice"] = (
        422,
        'VirtualService.networking.istio.io "x" is invalid',
    )
    with pytest.raises(KindStepError) as caught, rig.mesh() as mesh:
        mesh.apply(stages["Blue_50"])
    err = caught.value
    assert (
        err.step == "apply"
        and "HTTP 422" in str(err)
        and "virtualservices/mlmodel-virtualservice" in str(err)
    )
    assert (rig.artifacts / "failure-apply" / "objects.yaml").is_file()
    assert_nothing_left(rig)


def test_rollout_that_never_completes_fails_apply_with_status_fields(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    rig.api.state.never_ready.add("model-blue")
    with pytest.raises(KindStepError) as caught, rig.mesh() as mesh:
        mesh.apply(stages["Blue_0"])
    assert caught.value.step == "apply" and isinstance(caught.value.cause, WaitTimeout)
    assert "Deployment abtesting/model-blue" in str(caught.value) and "available 0" in str(caught.value)
    assert_nothing_left(rig)


def test_converge_times_out_with_the_route_diff_and_dumps_the_gateway(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    rig.write_config_dump(stages["Blue_0"])  # the gateway still serves the previous stage
    with pytest.raises(WaitTimeout) as caught, rig.mesh() as mesh:
        mesh.apply(stages["Blue_50"])
        mesh.converge(stages["Blue_50"], timeout=CONVERGES)
    text = str(caught.value)
    assert "routes" in text and "expected (manifests)" in text and "live (gateway config_dump)" in text, text
    assert any("failure-converge" in note for note in caught.value.__notes__)
    dumped = json.loads((rig.artifacts / "failure-converge" / "gateway-config_dump.json").read_text())
    assert dumped["configs"][1]["dynamic_route_configs"][0]["route_config"]["name"] == "http.8080"
    assert list(
        (rig.artifacts / "failure-converge" / "pods" / "istio-system").glob("istio-ingressgateway-*.log")
    )
    assert_nothing_left(rig)


def test_converge_retries_while_the_gateway_cannot_be_exec_d(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = stages["Blue_50"]
    with rig.mesh() as mesh:
        mesh.apply(objects)
        rig.set_state(config_dump=None)  # exec fails: kubectl exits 1 (container not found)
        with pytest.raises(WaitTimeout) as caught:
            mesh.converge(objects, timeout=2)
        assert "container not found" in str(caught.value), "the last transient error must be reported"
        rig.write_config_dump(objects)
        mesh.converge(objects, timeout=CONVERGES)


def test_ctrl_c_during_a_step_still_deletes_the_cluster(rig: Rig) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> dict[str, str]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rig.mesh(build_images=interrupted).up()
    assert_nothing_left(rig)


def test_kind_config_and_istio_operator_agree_on_the_gateway_port() -> None:
    kind = yaml.safe_load(KIND_CONFIG.read_text())
    operator = yaml.safe_load(OPERATOR.read_text())
    (node,) = kind["nodes"]
    (mapping,) = node["extraPortMappings"]
    assert mapping["listenAddress"] == "127.0.0.1", "the gateway must only be reachable from this machine"
    assert "@sha256:" in node["image"] and node["image"].startswith("kindest/node:v1."), (
        "pin the node image by digest"
    )
    assert "name" not in kind, "the cluster name comes from --name (reuse by name)"
    assert operator["spec"]["profile"] == "minimal"
    (gateway,) = operator["spec"]["components"]["ingressGateways"]
    assert gateway["label"]["istio"] == "ingressgateway", (
        "Gateway mlmodel-gateway selects istio: ingressgateway"
    )
    service = gateway["k8s"]["service"]
    http = next(p for p in service["ports"] if p["port"] == 80)
    assert service["type"] == "NodePort" and http["nodePort"] == mapping["containerPort"]
    # istioctl renders a gateway's Service ports from this list alone (it replaces the chart's
    # defaults: istio/istio operator/pkg/render/manifest.go), so the layout must be complete here.
    # The gateway Envoy listens on the target port, and istiod names the route config after it
    # (http.8080), which is what converge() finds in the config_dump.
    by_name = {p["name"]: p for p in service["ports"]}
    assert (by_name["status-port"]["port"], by_name["status-port"]["targetPort"]) == (15021, 15021)
    assert http["name"] == "http2" and http["targetPort"] == 8080, "Istio's ingress layout: 80 -> 8080"


def test_pinned_node_image_is_a_kubernetes_the_pinned_istio_supports() -> None:
    # Istio 1.30 supports Kubernetes 1.32-1.36 (istio.io supported releases); kind v0.33.0 lists
    # kindest/node:v1.35.8@sha256:07b2536e... among the images built for it (its release notes).
    image = yaml.safe_load(KIND_CONFIG.read_text())["nodes"][0]["image"]
    minor = int(image.split(":v1.", 1)[1].split(".", 1)[0])
    assert istioctl_mod.ISTIO_VERSION.startswith("1.30."), "re-check the range below for a new Istio minor"
    assert 32 <= minor <= 36, f"{image} is outside Istio 1.30's supported Kubernetes 1.32-1.36"


# ----------------------------------------------------------------------------- Istio's own shape


@pytest.mark.parametrize("stage", ["Blue_0", "Blue_50", "Blue_100", "Green_100"])
def test_converge_accepts_the_route_table_istio_writes_for_the_stage(
    rig: Rig, stages: dict[str, list[dict[str, Any]]], plan: RolloutPlan, stage: str
) -> None:
    with rig.mesh() as mesh:
        mesh.apply(stages[stage])
        rig.write_config_dump(stages[stage], dump=istio_gateway_dump(dict(plan.stage(stage).weights)))
        mesh.converge(stages[stage], timeout=CONVERGES)


def test_converge_rejects_an_istio_route_table_with_other_weights(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    with pytest.raises(WaitTimeout) as caught, rig.mesh() as mesh:
        mesh.apply(stages["Blue_50"])
        rig.write_config_dump(stages["Blue_50"], dump=istio_gateway_dump({"green": 60, "blue": 40}))
        mesh.converge(stages["Blue_50"], timeout=2)
    assert "60" in str(caught.value) and "50" in str(caught.value), str(caught.value)


def test_converge_waits_until_the_gateway_has_the_new_pods(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = stages["Blue_Green"]
    with rig.mesh() as mesh:
        mesh.apply(stages["Blue_100"])
        mesh.apply(objects)  # green rolls to image B: a new pod, a new IP
        (green_ip,) = rig.api.ready_pod_ips("abtesting", {"app": "model", "model_version": "green"})
        rig.write_config_dump(objects, drop_ip=green_ip)  # routes pushed, the new endpoint not yet
        with pytest.raises(WaitTimeout) as caught:
            mesh.converge(objects, timeout=2)
        message = str(caught.value)
        assert "routes match, endpoints do not yet" in message and green_ip in message, message
        assert "outbound|5001||model-svc-green.abtesting.svc.cluster.local: gateway has none" in message
        rig.write_config_dump(objects)
        mesh.converge(objects, timeout=CONVERGES)


def test_a_pruned_version_must_leave_the_gateway_endpoints_too(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    """After the prune, converge waits until the gateway has dropped the pruned pods' endpoints."""
    with rig.mesh() as mesh:
        rig.stage(mesh, stages["Blue_Green"])
        mesh.apply(stages["Green_100"])
        # The gateway serves Green_100's routes with the endpoints of now, blue's pod included,
        # and never hears of the prune: the header route to blue would still answer 200, not
        # the 503 the manifests promise.
        rig.write_config_dump(stages["Green_100"])
        with pytest.raises(
            WaitTimeout, match=r"model-svc-blue\.abtesting\.svc\.cluster\.local: gateway has \['192"
        ):
            mesh.converge(stages["Green_100"], timeout=5)
        assert "model-blue" not in rig.api.names("/apis/apps/v1/namespaces/abtesting/deployments")
        # With the endpoints kept current (as istiod does), the same converge passes.
        rig.write_config_dump(stages["Green_100"], live_endpoints=True)
        mesh.converge(stages["Green_100"], timeout=CONVERGES)


def test_endpoints_from_config_dump_skips_unhealthy_endpoints() -> None:
    dump = {
        "configs": [
            {
                "@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
                "dynamic_endpoint_configs": [
                    {
                        "endpoint_config": {
                            "cluster_name": "outbound|5001||a.ns.svc.cluster.local",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {"socket_address": {"address": "192.0.2.1"}}
                                            }
                                        },
                                        {
                                            "endpoint": {
                                                "address": {"socket_address": {"address": "192.0.2.2"}}
                                            },
                                            "health_status": "UNHEALTHY",
                                        },
                                    ]
                                }
                            ],
                        }
                    },
                    {"endpoint_config": {"cluster_name": "outbound|5001||b.ns.svc.cluster.local"}},
                ],
            }
        ]
    }
    assert endpoints_from_config_dump(dump) == {
        "outbound|5001||a.ns.svc.cluster.local": frozenset({"192.0.2.1"}),
        "outbound|5001||b.ns.svc.cluster.local": frozenset(),
    }


# ----------------------------------------------------------------------------- the convergence probe


def test_converge_gives_each_exec_no_more_than_the_time_left(
    rig: Rig, stages: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from abtest_harness import proc

    execs: list[float] = []
    real_run = proc.run

    def spy(argv: Any, *, timeout: float, **kwargs: Any) -> Any:
        if "config_dump?include_eds" in argv:  # the probe's reads, not the failure dump's
            execs.append(timeout)
        return real_run(argv, timeout=timeout, **kwargs)

    objects = stages["Blue_50"]
    with rig.mesh(timeouts=KindTimeouts(nodes_ready=5, istio_ready=5, rollout=5, prune=5, command=30)) as mesh:
        mesh.apply(objects)
        rig.write_config_dump(stages["Blue_0"])  # never converges: the probe runs until the deadline
        monkeypatch.setattr(proc, "run", spy)
        with pytest.raises(WaitTimeout):
            mesh.converge(objects, timeout=3)
    assert len(execs) > 1, execs
    assert all(0 < t <= 3 for t in execs), f"an exec got more than converge's 3 s: {execs}"
    assert execs[-1] < execs[0], f"later execs must get only what is left: {execs}"


def test_converge_raises_a_bug_at_once_instead_of_retrying_it(
    rig: Rig, stages: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import abtest_harness.mesh.base

    calls: list[int] = []

    def broken(config_dump: Any) -> Any:
        calls.append(1)
        raise ValueError("unexpected route shape")

    objects = stages["Blue_50"]
    with rig.mesh() as mesh:
        mesh.apply(objects)
        rig.write_config_dump(objects)
        monkeypatch.setattr(abtest_harness.mesh.base, "route_table_from_config_dump", broken)
        with pytest.raises(ValueError, match="unexpected route shape"):
            mesh.converge(objects, timeout=3)
    assert calls == [1], "a ValueError is not a transient condition: it must not be retried"


def test_converge_retries_output_cut_short(rig: Rig, stages: dict[str, list[dict[str, Any]]]) -> None:
    objects = stages["Blue_50"]
    with rig.mesh() as mesh:
        mesh.apply(objects)
        cut = rig.tmp / "cut.json"
        cut.write_text('{"configs": [')
        rig.set_state(config_dump=str(cut))
        with pytest.raises(WaitTimeout, match="JSONDecodeError"):
            mesh.converge(objects, timeout=6)  # long enough for a few reads on a loaded machine


def test_converge_waits_through_a_gateway_restart(rig: Rig, stages: dict[str, list[dict[str, Any]]]) -> None:
    objects = stages["Blue_50"]
    with rig.mesh() as mesh:
        mesh.apply(objects)
        rig.write_config_dump(objects)
        pod = f"/api/v1/namespaces/istio-system/pods/{_gateway_pod(rig)}"
        rig.api.state.objects[pod]["status"]["phase"] = "Pending"  # the gateway restarts
        with pytest.raises(WaitTimeout) as caught:
            mesh.converge(objects, timeout=6)  # long enough for a few reads on a loaded machine
        assert "GatewayPodNotReady" in str(caught.value) and "Pending" in str(caught.value), str(caught.value)
        rig.api.state.objects[pod]["status"]["phase"] = "Running"
        mesh.converge(objects, timeout=CONVERGES)


# ----------------------------------------------------------------------------- pytest-kubernetes' shell layer


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("apply", ({"kind": "Gateway", "spec": {"servers": [{"hosts": ["*"]}]}},)),
        ("apply", (Path("manifests/base"),)),
        ("kubectl", (["get", "pods"],)),
        ("wait", ("deployment/model-green", "condition=Available")),
        ("logs", ("model-green-0",)),
        ("version", ()),
        ("port_forwarding", ("svc/x", 8080, 80)),
        ("reset", ()),
    ],
)
def test_the_shell_paths_of_pytest_kubernetes_are_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, args: tuple[Any, ...]
) -> None:
    import subprocess

    from abtest_harness.mesh.kind import KindCluster

    def no_process(*a: Any, **k: Any) -> Any:
        raise AssertionError(f"a process was started: {a}")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    kind = tmp_path / "kind"
    kind.write_text("#!/bin/sh\nexit 99\n")
    kind.chmod(0o755)
    cluster = KindCluster(NAME, str(kind), tmp_path / "kc", command_timeout=5)
    with pytest.raises(NotImplementedError) as caught:
        getattr(cluster, method)(*args)
    assert "KindIstioMesh.apply()" in str(caught.value) and "shell" in str(caught.value), str(caught.value)


# ----------------------------------------------------------------------------- make-before-break order


def _phases(requests: list[Any]) -> list[str]:
    """Each request as the phase it belongs to: workload apply, rollout wait, routing apply, prune."""
    out: list[str] = []
    for r in requests:
        if out and out[-1] == "prune":
            out.append("prune")  # prune's own waits for the deleted objects to be gone
        elif r.method == "PATCH":
            routing = any(k in r.path for k in ("/gateways/", "/virtualservices/", "/destinationrules/"))
            out.append("routing" if routing else "workload")
        elif r.method == "GET" and "/deployments/" in r.path and not r.query.get("labelSelector"):
            out.append("wait")
        elif r.query.get("labelSelector") or r.method == "DELETE":
            out.append("prune")
    return out


def _collapse(phases: list[str]) -> list[str]:
    return [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]


@pytest.mark.parametrize(
    ("before", "stage"), [(None, "Blue_50"), ("Blue_100", "Blue_Green"), ("Blue_Green", "Green_100")]
)
def test_apply_routes_to_workloads_only_after_they_are_ready(
    rig: Rig, stages: dict[str, list[dict[str, Any]]], before: str | None, stage: str
) -> None:
    with rig.mesh() as mesh:
        if before:
            rig.stage(mesh, stages[before])
        start = len(rig.api.requests())
        mesh.apply(stages[stage])
        requests = rig.api.requests()[start:]
    assert _collapse(_phases(requests)) == ["workload", "wait", "routing"], (
        "apply must be: workloads, their rollout, then routing (prune waits for converge): "
        f"{[(r.method, r.path) for r in requests]}"
    )
    assert requests[0].path == "/api/v1/namespaces/abtesting", "the Namespace goes first"
    kinds = [r.path.split("/")[-2] for r in requests if r.method == "PATCH"]
    routing = [k for k in kinds if k in ("gateways", "virtualservices", "destinationrules")]
    assert routing[-1] == "virtualservices", f"the VirtualService goes last, after what it names: {kinds}"


# ----------------------------------------------------------------------------- attribution, reuse, dump


def test_kind_applies_the_filter_waits_for_its_headers_and_removes_it_from_a_kept_cluster(
    rig: Rig, stages: dict[str, list[dict[str, Any]]]
) -> None:
    objects = stages["Blue_50"]
    with rig.mesh(keep_cluster=True) as mesh:
        path = object_path(mesh.attribution_filter)
        assert path in rig.api.state.objects, "up() must apply the attribution EnvoyFilter"
        mesh.apply(objects)
        rig.write_config_dump(objects, attribution=False)  # routes pushed, the filter not yet
        with pytest.raises(HarnessError, match="attribution headers are not on the gateway"):
            mesh.converge(objects, timeout=2)
        rig.write_config_dump(objects)
        mesh.converge(objects, timeout=CONVERGES)
    assert path not in rig.api.state.objects, "a kept cluster must not keep this run's EnvoyFilter"
    assert rig.state()["clusters"] == [NAME]


def test_a_reused_cluster_without_the_loopback_port_mapping_is_refused(rig: Rig) -> None:
    rig.existing_cluster(host_ip="0.0.0.0", host_port="30080")  # made from another config
    with pytest.raises(KindStepError) as caught:
        rig.mesh().up()
    assert caught.value.step == "cluster" and isinstance(caught.value.cause, ConfigError)
    message = str(caught.value)
    assert "127.0.0.1:30080" in message and "0.0.0.0:30080" in message and "kind delete cluster" in message
    assert rig.state()["clusters"] == [NAME], "a reused cluster is never deleted, also when refused"
    inspect = ("docker", "inspect", "--format", "{{json .HostConfig.PortBindings}}", f"{NAME}-control-plane")
    assert inspect in rig.calls()


def test_a_reused_cluster_with_the_mapping_is_reused(rig: Rig) -> None:
    rig.existing_cluster()
    with rig.mesh() as mesh:
        assert mesh.created_cluster is False


def test_a_cluster_the_harness_creates_publishes_the_mapping_the_reuse_check_wants(rig: Rig) -> None:
    """The fake kind publishes what kind's docker provider would for manifests/kind/cluster.yaml;
    a second run must accept the cluster the first one kept."""
    with rig.mesh(keep_cluster=True):
        pass
    with rig.mesh() as mesh:
        assert mesh.created_cluster is False


def test_the_failure_dump_reads_init_containers_too(rig: Rig, stages: dict[str, list[dict[str, Any]]]) -> None:
    """A native sidecar (an init container with restartPolicy: Always) and istio-init have logs too."""
    with rig.mesh(keep_cluster=True) as mesh:
        mesh.apply(stages["Blue_50"])
        pods = "/api/v1/namespaces/abtesting/pods/"
        name = next(k for k in rig.api.state.objects if k.startswith(pods))
        rig.api.state.objects[name]["spec"]["initContainers"] = [
            {"name": "istio-init"},
            {"name": "istio-proxy", "restartPolicy": "Always"},
        ]
        mesh.dump(rig.tmp / "dump")
    logs = {p.name for p in (rig.tmp / "dump" / "pods" / "abtesting").iterdir()}
    pod = name.rsplit("/", 1)[-1]
    assert {f"{pod}.istio-init.log", f"{pod}.istio-proxy.log", f"{pod}.model.log"} <= logs, logs
