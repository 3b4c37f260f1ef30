"""Routing semantics through a real Envoy: subsets, attribution headers, relative weights, paths.

Subsets: the reference charts with the green-header route sent to subset ``green`` of the blue
Service (``model-svc-blue`` selects ``model_version: blue``; the subset asks for
``model_version: green``). Istio keeps, for a subset's cluster, the Service's endpoints whose
labels include the subset's labels (``pilot/pkg/xds/endpoints/endpoint_builder.go``,
``BuildClusterLoadAssignment``), so no pod qualifies and the gateway answers 503, although a
green pod runs. The oracle must say so, and the local mesh must serve exactly that.

Loopback only; each load is bounded in requests and seconds.
"""

from __future__ import annotations

import http.client
import io
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from scipy.stats import binom

from abtest_harness.cli import main
from abtest_harness.mesh.envoy import UPSTREAM_CLUSTER_HEADER, UPSTREAM_HOST_HEADER
from abtest_harness.mesh.local import LocalMesh
from abtest_harness.routing import NO_ENDPOINTS, NO_ROUTE, STANDARD_CLASSES, Request, expected_distribution
from abtest_harness.traffic import Observation, run_load
from abtest_harness.validate import ensure_valid, format_findings
from tests.e2e.local_meshes import process_mesh
from tests.unit import objects as k8s

N = 40  # per class: one answer from a wrong version fails
HEADER_GREEN = STANDARD_CLASSES[2]


def _objects(subset: str) -> list[dict[str, Any]]:
    """Both versions running; the green-header route goes to subset `subset` of model-svc-blue."""
    green_route = k8s.header_route("green")
    green_route["route"] = [
        {"destination": {"host": "model-svc-blue", "subset": subset, "port": {"number": k8s.PORT}}}
    ]
    return [
        k8s.namespace(),
        k8s.service("green"),
        k8s.service("blue"),
        k8s.deployment("green", "abtest/scorer-a:dev", readiness=False),
        k8s.deployment("blue", "abtest/scorer-b:dev", readiness=False),
        k8s.destination_rule("model-svc-blue", {"green": "green", "blue": "blue"}, name="blue-subsets"),
        k8s.gateway(),
        k8s.virtual_service([k8s.header_route("blue"), green_route, k8s.weighted_route(50, 50)]),
    ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with process_mesh(tmp_path_factory.mktemp("subset-workloads")) as local:
        yield local


def _outcomes(mesh: LocalMesh, request: Request) -> Counter[str]:
    seen: Counter[str] = Counter()

    def record(observation: Observation) -> None:
        seen[observation.version or observation.outcome] += 1

    result = run_load(
        mesh.gateway_url, [request], max_requests=N, deadline_s=30.0, concurrency=4, timeout_s=5.0, on_response=record
    )
    assert result.stopped_by == "max_requests", f"load ended by {result.stopped_by}: {result.error_details}"
    return seen


@pytest.mark.parametrize(("subset", "outcome"), [("green", NO_ENDPOINTS), ("blue", "blue")])
def test_subset_selects_among_the_services_endpoints(mesh: LocalMesh, subset: str, outcome: str) -> None:
    """Subset green of the blue Service: 503 from the oracle and from Envoy; subset blue: blue."""
    objects = _objects(subset)
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    seen = _outcomes(mesh, HEADER_GREEN)
    oracle = expected_distribution(objects, HEADER_GREEN).certain
    assert (oracle, seen) == (outcome, Counter({outcome: N})), (
        f"subset {subset} of model-svc-blue: oracle {oracle}, Envoy {dict(seen)}; Istio gives {outcome}"
    )


def _get(mesh: LocalMesh, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One GET to the gateway on loopback: status and response headers (names lower-cased)."""
    address = urlsplit(mesh.gateway_url)
    conn = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_responses_name_the_endpoint_and_cluster_that_answered(mesh: LocalMesh) -> None:
    """x-abtest-upstream-host is the replica's ip:port, x-abtest-upstream-cluster its cluster."""
    objects = _objects("green")
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    replicas = {f"{w.endpoint[0]}:{w.endpoint[1]}": w.spec.deployment for w in mesh.workloads}
    status, headers = _get(mesh, "/score", {"x-api-version": "blue"})
    assert status == 200 and replicas.get(headers.get(UPSTREAM_HOST_HEADER, "")) == "model-blue", (status, headers)
    assert headers[UPSTREAM_CLUSTER_HEADER] == f"outbound|5001||{k8s.fqdn('model-svc-blue')}"
    # No endpoint (subset green of the blue Service): the cluster is named, no host is.
    status, headers = _get(mesh, "/score", {"x-api-version": "green"})
    assert status == 503 and UPSTREAM_HOST_HEADER not in headers, (status, headers)
    assert headers[UPSTREAM_CLUSTER_HEADER] == f"outbound|5001|green|{k8s.fqdn('model-svc-blue')}"
    # The weighted route: every answer names one of the running replicas.
    for _ in range(4):
        status, headers = _get(mesh, "/score", {})
        assert headers.get(UPSTREAM_HOST_HEADER) in replicas, headers


def test_relative_weights_3_to_1_route_75_25(mesh: LocalMesh) -> None:
    """Istio's weight / sum: weights 3 and 1 pass the offline gate and send 75% and 25%, in the
    oracle and through Envoy."""
    objects = _objects("blue")
    objects[-1] = k8s.virtual_service([k8s.weighted_route(3, 1)])
    # The gate `abtest validate` and `abtest run` apply first: no error, a warning with the split.
    findings = ensure_valid(objects, what="weights 3/1")
    split = [f for f in findings if f.code == "ABT001"]
    assert len(split) == 1 and split[0].severity == "warning", format_findings(findings)
    assert "75% / " in split[0].message and "25%" in split[0].message, split[0].message
    expected = expected_distribution(objects, STANDARD_CLASSES[0])
    assert dict(expected.shares) == {"green": 0.75, "blue": 0.25}
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    n = 400
    seen: Counter[str] = Counter()

    def record(observation: Observation) -> None:
        seen[observation.version or observation.outcome] += 1

    result = run_load(
        mesh.gateway_url,
        [STANDARD_CLASSES[0]],
        max_requests=n,
        deadline_s=30.0,
        concurrency=8,
        timeout_s=5.0,
        on_response=record,
    )
    assert result.stopped_by == "max_requests", result.error_details
    assert set(seen) <= {"green", "blue"}, dict(seen)
    # Exact two-sided binomial acceptance region at 1e-6: 75% passes, 50% (weights read as
    # 3/1 -> 50/50 after a cap, or ignored) and 100% are far outside it.
    low, high = int(binom.ppf(0.5e-6, n, 0.75)), int(binom.isf(0.5e-6, n, 0.75))
    assert low <= seen["green"] <= high, f"green {seen['green']}/{n} outside [{low}, {high}] for 75%"
    assert not low <= n // 2 <= high, "the check could not tell 75% from 50%"


def test_abtest_run_passes_a_stage_with_weights_3_and_1(tmp_path: Path) -> None:
    """The user's path: a spec stage whose VirtualService says 3 and 1, expecting 75/25, passes
    the offline gate (a warning stating the split) and the statistical check on real traffic."""
    example = tmp_path / "bookinfo"
    shutil.copytree(Path(__file__).parents[2] / "examples" / "bookinfo-reviews", example)
    route = example / "routes" / "shift-80-20.yaml"
    route.write_text(route.read_text().replace("weight: 80", "weight: 3").replace("weight: 20", "weight: 1"))
    spec = example / "rollout.yaml"
    spec.write_text(spec.read_text().replace("{v1: 0.8, v2: 0.2}", "{v1: 0.75, v2: 0.25}"))
    out = io.StringIO()
    argv = ["run", "--spec", str(spec), "--stage", "shift-80-20", "--artifacts-dir", str(tmp_path / "art")]
    code = main(argv, out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "warning ABT001" in text and "Istio routes reviews/v1 75% / reviews/v2 25%" in text, text
    for label in ("anonymous", "jason"):
        assert re.search(rf"^shift-80-20 {label}: PASS v2 [\d.]+% \[[\d.]+, [\d.]+\] expected 25% ", text, re.M), text
    assert "PASS: 1/1 stages passed" in text


@pytest.mark.parametrize(
    ("path", "outcome"),
    [
        ("/score", "blue"),
        ("/x/../sc%6fre", "blue"),  # dot segments removed, %6f decoded
        ("/score/.", NO_ROUTE),  # "/score/": not the exact path
        ("//score", NO_ROUTE),  # slashes are not merged
        ("/sc%2fore", NO_ROUTE),  # escaped slashes kept as they are
    ],
)
def test_paths_route_as_normalized(mesh: LocalMesh, path: str, outcome: str) -> None:
    """The local gateway normalizes paths as Istio configures Envoy, and the oracle agrees."""
    objects = _objects("blue")
    objects[-1] = k8s.virtual_service(
        [{"name": "exact", "match": [{"uri": {"exact": "/score"}}], "route": [k8s.destination("blue")]}]
    )
    assert expected_distribution(objects, Request("p", path=path)).certain == outcome
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    status, headers = _get(mesh, path, {})
    got = headers.get("x-model-version") or f"status:{status}"
    assert got == outcome, (path, status, headers)


@pytest.mark.parametrize(("host", "outcome"), [("model-svc-green", "green"), ("model-svc-blue", NO_ENDPOINTS)])
def test_wildcard_destination_rule_subsets(mesh: LocalMesh, host: str, outcome: str) -> None:
    """A rule for ``*.abtesting.svc.cluster.local`` gives every Service its subsets."""
    objects = _objects("blue")
    objects[5] = k8s.destination_rule(f"*.{k8s.NS}.svc.cluster.local", {"g": "green"}, name="wide")
    objects[-1]["spec"]["http"][1]["route"] = [{"destination": {"host": host, "subset": "g"}}]
    assert expected_distribution(objects, HEADER_GREEN).certain == outcome
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    assert _outcomes(mesh, HEADER_GREEN) == Counter({outcome: N})
