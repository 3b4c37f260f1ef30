"""The routing oracle and the real Envoy data plane agree, on generated VirtualServices.

Seeded random VirtualServices (weights including 0 and 100 and sums other than 100, header
exact/prefix/regex and presence matches, withoutHeaders, uri prefix/exact/regex, method,
several match entries, any route order,
DestinationRule subsets, a Service without endpoints, a route table with no catch-all) are
applied to a LocalMesh; for every request class, real traffic through Envoy must agree with
``abtest_harness.routing.expected_distribution``:

- a class the oracle calls certain (one outcome, including ``status:404``/``status:503``)
  must get that outcome on every one of its requests;
- a split class must show every share inside an exact binomial acceptance region at an
  overall false-alarm rate of 1e-6 (Bonferroni over every share checked); outcomes of share 0
  must never appear. The oracle and the translation are independent implementations, so a
  disagreement (a wrong order, a dropped matcher, a swapped cluster) shows as a certain
  outcome violated or a share far outside its region.

Loopback only; each load is bounded in requests and seconds.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy.stats import binom

from abtest_harness.mesh.local import LocalMesh
from abtest_harness.routing import Expected, Request, expected_distribution
from abtest_harness.traffic import Observation, run_load
from tests.e2e.local_meshes import process_mesh
from tests.unit import objects as k8s

SEEDS = range(10)
N_CERTAIN = 30  # per certain class: any single wrong answer fails
N_SPLIT = 200  # per split class, the first one a route decides
N_SPLIT_AGAIN = 60  # per further class the same split route decides
OVERALL_ALPHA = 1e-6
# Shares checked over the whole module, for the Bonferroni split of OVERALL_ALPHA (an upper
# bound: at most 3 destinations per route and 7 classes per case).
CHECKS = len(SEEDS) * 7 * 3

CLASSES: tuple[Request, ...] = (
    Request("plain"),
    Request("hdr-blue", headers={"x-api-version": "blue"}),
    Request("hdr-green", headers={"x-api-version": "green"}),
    Request("beta", path="/v2/score", headers={"x-api-version": "blue-beta"}),
    Request("canary", path="/api/v1/predict", headers={"x-canary": "yes-please"}),
    Request("post", method="POST"),
    Request("other", path="/other"),
)


def _base_objects() -> list[dict[str, Any]]:
    """Three running versions, Services for each, one without endpoints, one over all, and subsets."""
    objects: list[dict[str, Any]] = [k8s.namespace()]
    for version, image in (
        ("green", "abtest/scorer-a:dev"),
        ("blue", "abtest/scorer-b:dev"),
        ("red", "abtest/scorer-a:dev"),
    ):
        objects.append(k8s.deployment(version, image, readiness=False))
    objects += [k8s.service(version) for version in ("green", "blue", "red")]
    objects.append(k8s.service("gone"))  # no pods: 503
    objects.append(k8s.service(name="model", selector={"app": "model"}))  # narrowed by the subsets below
    objects.append(k8s.destination_rule("model", {"v-green": "green", "v-blue": "blue", "v-none": "none"}))
    # A subset of the red Service asking for green pods: it selects among red's endpoints, so none.
    objects.append(k8s.destination_rule("model-svc-red", {"r-green": "green"}, name="red-subsets"))
    objects.append(k8s.gateway())
    return objects


_DESTINATIONS: tuple[dict[str, Any], ...] = (
    {"host": k8s.fqdn("model-svc-green"), "port": {"number": 5001}},
    {"host": "model-svc-blue"},  # short name, port inferred from the Service's only port
    {"host": k8s.fqdn("model-svc-red"), "port": {"number": 5001}},
    {"host": k8s.fqdn("model-svc-gone"), "port": {"number": 5001}},
    {"host": k8s.fqdn("model"), "port": {"number": 5001}, "subset": "v-green"},
    {"host": "model", "subset": "v-blue"},
    {"host": k8s.fqdn("model"), "subset": "v-none"},
    {"host": "model-svc-red", "subset": "r-green"},
)
_WEIGHTS: tuple[tuple[int, ...], ...] = (
    (),
    (100, 0),
    (0, 100),
    (50, 50),
    (30, 70),
    (10, 90),
    (20, 30, 50),
    (0, 50, 50),
    (100, 0, 0),
    (1, 99),
    (3, 1),  # relative weights: 75/25
    (60, 50),
    (1, 1, 2),
)
_URIS: tuple[dict[str, str] | None, ...] = (
    None,
    {"prefix": "/score"},
    {"prefix": "/sc"},
    {"prefix": "/api"},
    {"exact": "/score"},
    {"exact": "/other"},
    {"regex": "/v[0-9]+/score"},
    {"regex": "/(api|score).*"},
)
_VERSION_HEADERS = (
    {"exact": "blue"},
    {"exact": "green"},
    {"prefix": "blue"},
    {"regex": "blue(-beta)?"},
    {"regex": "gr.*"},
)
_CANARY_HEADERS: tuple[dict[str, str], ...] = ({"exact": "yes-please"}, {"prefix": "yes"}, {})
# regex "*" is a presence test in withoutHeaders only (Istio's validation refuses it in headers).
_CANARY_ABSENT: tuple[dict[str, str], ...] = ({"regex": "*"}, {"exact": "yes-please"}, {"prefix": "no"}, {})


def generated_virtual_service(seed: int) -> dict[str, Any]:
    """A VirtualService drawn from the patterns above; the seed makes it reproducible."""
    rng = random.Random(seed)
    http = []
    count = rng.randint(1, 4)
    for i in range(count):
        route: dict[str, Any] = {"name": f"r{i}"}
        # A route without match catches everything, so only the last one may lack it (as in
        # real charts); otherwise nothing after it would ever be exercised.
        if i < count - 1 or rng.random() < 0.5:
            entries = []
            for _ in range(rng.randint(1, 2)):
                entry: dict[str, Any] = {}
                uri = rng.choice(_URIS)
                if uri is not None:
                    entry["uri"] = uri
                headers = {}
                if rng.random() < 0.6:
                    headers["x-api-version"] = rng.choice(_VERSION_HEADERS)
                if rng.random() < 0.25:
                    headers["x-canary"] = rng.choice(_CANARY_HEADERS)
                if headers:
                    entry["headers"] = headers
                if "x-canary" not in headers and rng.random() < 0.2:
                    entry["withoutHeaders"] = {"x-canary": rng.choice(_CANARY_ABSENT)}
                if rng.random() < 0.15:
                    entry["method"] = {"exact": "POST"}
                entries.append(entry or {"uri": {"prefix": "/"}})  # Istio rejects an empty entry
            route["match"] = entries
        weights = rng.choice(_WEIGHTS)
        picks = rng.sample(_DESTINATIONS, max(len(weights), 1))
        if weights:
            route["route"] = [
                {"destination": dict(d), "weight": w} for d, w in zip(picks, weights, strict=True)
            ]
        else:
            route["route"] = [{"destination": dict(picks[0])}]
        http.append(route)
    return k8s.virtual_service(http, name=f"generated-{seed}")


def acceptance(n: int, share: float, alpha: float) -> tuple[int, int]:
    """The exact two-sided binomial acceptance region for a count out of n at level alpha."""
    low = int(binom.ppf(alpha / 2, n, share))
    high = int(binom.isf(alpha / 2, n, share))
    return low, high


def disagreements(expected: Expected, counts: dict[str, int], n: int) -> list[str]:
    """Why the observed counts of one class contradict the oracle ('' list when they agree)."""
    problems = []
    certain = expected.certain
    if certain is not None:
        wrong = {k: v for k, v in counts.items() if k != certain}
        if wrong:
            problems.append(f"every request must be {certain}, got {counts}")
        return problems
    for outcome, count in counts.items():
        if expected.shares.get(outcome, 0.0) == 0.0:
            problems.append(f"{outcome} answered {count} time(s) but has share 0")
    for outcome, share in expected.shares.items():
        if 0.0 < share < 1.0:
            low, high = acceptance(n, share, OVERALL_ALPHA / CHECKS)
            seen = counts.get(outcome, 0)
            if not low <= seen <= high:
                problems.append(f"{outcome}: {seen}/{n} outside [{low}, {high}] for share {share:.0%}")
    return problems


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    """One local mesh for every case: the workloads stay, only the VirtualService changes."""
    with process_mesh(tmp_path_factory.mktemp("agreement-workloads")) as local:
        yield local


def test_generated_cases_cover_the_interesting_outcomes() -> None:
    """The generator must produce what the agreement is about, or the check below proves little."""
    seen: set[str] = set()
    splits = 0
    for seed in SEEDS:
        objects = [*_base_objects(), generated_virtual_service(seed)]
        for request in CLASSES:
            expected = expected_distribution(objects, request)
            seen |= {k for k, v in expected.shares.items() if v > 0}
            splits += expected.certain is None
    assert {"status:404", "status:503", "green", "blue", "red"} <= seen, seen
    assert splits >= 5, f"only {splits} split classes over {len(SEEDS)} cases"


@pytest.mark.parametrize("seed", SEEDS)
def test_envoy_agrees_with_the_oracle(mesh: LocalMesh, seed: int, tmp_path: Path) -> None:
    vs = generated_virtual_service(seed)
    objects = [*_base_objects(), vs]
    mesh.apply(objects)
    mesh.converge(objects, timeout=15)
    expected = {r.label: expected_distribution(objects, r) for r in CLASSES}
    certain = [r for r in CLASSES if expected[r.label].certain is not None]
    # Classes decided by the same split route: the first gets the full sample, the others a
    # smaller one that still shows a class reaching another route (other outcomes appear).
    split_first: list[Request] = []
    split_again: list[Request] = []
    routes_seen: set[str] = set()
    for request in CLASSES:
        if expected[request.label].certain is None:
            route = expected[request.label].route
            (split_again if route in routes_seen else split_first).append(request)
            routes_seen.add(route)
    counts: dict[str, dict[str, int]] = {r.label: {} for r in CLASSES}

    def record(observation: Observation) -> None:
        # The mock scorer answers 404 on paths other than /score, still naming its version:
        # whoever answers with x-model-version is the workload Envoy routed to; Envoy's own
        # 404 (no route) and 503 (no endpoint) carry no such header.
        outcome = observation.version or observation.outcome
        per_class = counts[observation.label]
        per_class[outcome] = per_class.get(outcome, 0) + 1

    for group, n in ((certain, N_CERTAIN), (split_first, N_SPLIT), (split_again, N_SPLIT_AGAIN)):
        if not group:
            continue
        result = run_load(
            mesh.gateway_url,
            group,
            max_requests=n * len(group),
            deadline_s=40.0,
            concurrency=8,
            timeout_s=5.0,
            on_response=record,
        )
        assert result.stopped_by == "max_requests", (
            f"load ended by {result.stopped_by}: {result.error_details}"
        )
    problems = []
    for request in CLASSES:
        got = counts.get(request.label, {})
        n = sum(got.values())
        for problem in disagreements(expected[request.label], got, n):
            problems.append(f"{request.describe()}: {problem} (oracle: {expected[request.label].describe()})")
    if problems:
        mesh.dump(tmp_path / "dump")
    assert not problems, (
        f"seed {seed}: Envoy and the oracle disagree:\n  "
        + "\n  ".join(problems)
        + f"\nVirtualService:\n{json.dumps(vs['spec'], indent=1)}\ndump: {tmp_path / 'dump'}"
    )


def _reversed_weights(vs: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(vs)
    for route in out["spec"]["http"]:
        weights = [d.get("weight") for d in route["route"]]
        for dest, weight in zip(route["route"], reversed(weights), strict=True):
            dest["weight"] = weight
    return out


def _reversed_routes(vs: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(vs)
    out["spec"]["http"].reverse()
    return out


def _split(green: int, blue: int) -> dict[str, Any]:
    return k8s.virtual_service([k8s.weighted_route(green, blue)], name="split")


def _pinned_then_split() -> dict[str, Any]:
    return k8s.virtual_service(
        [
            {
                "name": "pin",
                "match": [{"headers": {"x-api-version": {"exact": "blue"}}}],
                "route": [{"destination": {"host": "model-svc-blue"}}],
            },
            {"name": "rest", "route": [{"destination": {"host": "model-svc-green"}}]},
        ],
        name="pinned",
    )


@pytest.mark.parametrize(
    ("vs", "mutate"),
    [(_split(10, 90), _reversed_weights), (_pinned_then_split(), _reversed_routes)],
    ids=["weights-reversed", "routes-reversed"],
)
def test_the_check_catches_a_misroute(mesh: LocalMesh, vs: dict[str, Any], mutate: Any) -> None:
    """Serve a mutated VirtualService, judge it against the original's oracle: it must disagree."""
    objects = [*_base_objects(), vs]
    served = [*_base_objects(), mutate(vs)]
    mesh.apply(served)
    mesh.converge(served, timeout=15)
    found = []
    for request in CLASSES:
        expected = expected_distribution(objects, request)
        n = N_CERTAIN if expected.certain is not None else N_SPLIT
        counts: dict[str, int] = {}

        def record(observation: Observation, counts: dict[str, int] = counts) -> None:
            outcome = observation.version or observation.outcome
            counts[outcome] = counts.get(outcome, 0) + 1

        run_load(
            mesh.gateway_url, [request], max_requests=n, deadline_s=40.0, concurrency=8, on_response=record
        )
        found += disagreements(expected, counts, sum(counts.values()))
        if found:
            break  # one disagreement is enough to show the check has power
    assert found, "a misrouting data plane passed the agreement check: the check has no power"
