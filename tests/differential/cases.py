"""Generated VirtualServices and the three-way comparison of their outcomes.

:func:`generated_case` draws, from a seed, a VirtualService over a fixed set of Services,
Deployments and subsets: one to four HTTP routes; one to three match blocks each with uri
exact/prefix/regex (sometimes case-insensitive), header exact/prefix/regex/presence,
``withoutHeaders`` (absent), method; one to three destinations (short and full host names,
ports given or inferred, subsets, a Service without endpoints, a missing subset) with
weights summing to 100 or not; hosts ``*``, an exact host or a wildcard, sometimes beside a
second VirtualService for another host.

:func:`compare` evaluates each request class on the three sides and classifies the result
(:data:`CATEGORIES`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.mesh import envoy
from abtest_harness.mesh import istio_xds as ix
from abtest_harness.mesh.base import route_table_from_route_configs
from abtest_harness.mesh.local import endpoints_for
from abtest_harness.mesh.workloads import RunningWorkload
from abtest_harness.routing import Request, expected_distribution
from tests.differential import evaluate as ev
from tests.unit import objects as k8s

Obj = dict[str, Any]

CLASSES: tuple[Request, ...] = (
    Request("plain"),
    Request("hdr-blue", headers={"x-api-version": "blue"}),
    Request("hdr-green", headers={"x-api-version": "green"}),
    Request("hdr-empty", headers={"x-api-version": ""}),
    Request("beta", path="/v2/score", headers={"x-api-version": "blue-beta"}),
    Request("canary", path="/api/v1/predict", headers={"x-canary": "yes-please"}),
    Request("post", method="POST"),
    Request("other", path="/other"),
    Request("upper", path="/SCORE"),
    Request("query", path="/score?x=1"),
    Request("host-exact", authority="model.example.com"),
    Request("host-wild", authority="eu.example.com", headers={"x-api-version": "green"}),
    Request("host-other", authority="other.test"),
)

HOSTS: tuple[tuple[str, ...], ...] = (
    ("*",),
    ("*",),
    ("*",),
    ("model.example.com",),
    ("*.example.com",),
    ("model.example.com", "other.test"),
)

_DESTINATIONS: tuple[Obj, ...] = (
    {"host": k8s.fqdn("model-svc-green"), "port": {"number": 5001}},
    {"host": "model-svc-blue"},
    {"host": k8s.fqdn("model-svc-red"), "port": {"number": 5001}},
    {"host": "model-svc-green", "port": {"number": 5001}},
    {"host": k8s.fqdn("model-svc-gone"), "port": {"number": 5001}},
    {"host": k8s.fqdn("model"), "port": {"number": 5001}, "subset": "v-green"},
    {"host": "model", "subset": "v-blue"},
    {"host": k8s.fqdn("model"), "subset": "v-none"},
    {"host": k8s.fqdn("model"), "port": {"number": 5001}},
)
_WEIGHTS: tuple[tuple[int, ...], ...] = (
    (),
    (),
    (100,),
    (100, 0),
    (50, 50),
    (30, 70),
    (10, 90),
    (20, 30, 50),
    (0, 50, 50),
    (1, 99),
)
#: Sums other than 100 (Istio routes weight / sum; 0 in total it refuses), in some cases only
#: ("odd" ones), since one such route makes a side refuse the whole VirtualService.
_ODD_WEIGHTS: tuple[tuple[int, ...], ...] = ((3, 1), (1, 1), (60, 60), (2, 1, 1), (0, 0), (25, 25))
_URIS: tuple[Obj | None, ...] = (
    None,
    {"prefix": "/score"},
    {"prefix": "/sc"},
    {"prefix": "/api"},
    {"prefix": "/"},
    {"exact": "/score"},
    {"exact": "/other"},
    {"regex": "/v[0-9]+/score"},
    {"regex": "/(api|score).*"},
    {"regex": ".*"},
)
_VERSION_HEADERS: tuple[Obj, ...] = (
    {"exact": "blue"},
    {"exact": "green"},
    {"prefix": "blue"},
    {"prefix": "gr"},
    {"regex": "blue(-beta)?"},
    {"regex": "gr.*"},
    {"exact": ""},
    {"regex": ".*"},
    {},
)
_CANARY_HEADERS: tuple[Obj, ...] = ({"exact": "yes-please"}, {"prefix": "yes"}, {"regex": ".+"}, {})
#: Header matches Istio's validation rejects and the oracle accepts, in some cases only.
_ODD_HEADERS: tuple[Obj, ...] = ({"prefix": ""}, {"regex": "*"})


def base_objects() -> list[Obj]:
    """Three running versions, a Service each, one without endpoints, one over all, and subsets."""
    objects: list[Obj] = [k8s.namespace()]
    running = (("green", "abtest/scorer-a:dev"), ("blue", "abtest/scorer-b:dev"), ("red", "abtest/scorer-a:dev"))
    for version, image in running:
        objects.append(k8s.deployment(version, image, readiness=False))
    objects += [k8s.service(version) for version in ("green", "blue", "red")]
    objects.append(k8s.service("gone"))
    objects.append(k8s.service(name="model", selector={"app": "model"}))
    objects.append(k8s.destination_rule("model", {"v-green": "green", "v-blue": "blue", "v-none": "none"}))
    objects.append(k8s.gateway())
    return objects


def _match(rng: random.Random, odd: bool) -> Obj:
    entry: Obj = {}
    uri = rng.choice(_URIS)
    if uri is not None:
        entry["uri"] = dict(uri)
        if rng.random() < 0.1:
            entry["ignoreUriCase"] = True
    headers: Obj = {}
    if rng.random() < 0.55:
        choices = _VERSION_HEADERS + _ODD_HEADERS if odd else _VERSION_HEADERS
        headers["x-api-version"] = dict(rng.choice(choices))
    if rng.random() < 0.2:
        headers["x-canary"] = dict(rng.choice(_CANARY_HEADERS))
    if headers:
        entry["headers"] = headers
    if rng.random() < 0.15:
        without = "x-canary" if "x-canary" not in headers else "x-api-version"
        choices = _VERSION_HEADERS if without == "x-api-version" else _CANARY_HEADERS
        entry["withoutHeaders"] = {without: dict(rng.choice(choices))}
    if rng.random() < 0.1:
        entry["method"] = {"exact": "POST"}
    return entry or {"uri": {"prefix": "/"}}


def generated_virtual_service(rng: random.Random, name: str, hosts: Sequence[str], odd: bool = False) -> Obj:
    http = []
    count = rng.randint(1, 4)
    for i in range(count):
        route: Obj = {"name": f"r{i}"}
        if i < count - 1 or rng.random() < 0.5:
            route["match"] = [_match(rng, odd) for _ in range(rng.randint(1, 3))]
        weights = rng.choice(_ODD_WEIGHTS if odd and rng.random() < 0.5 else _WEIGHTS)
        picks = rng.sample(_DESTINATIONS, max(len(weights), 1))
        if weights:
            route["route"] = [{"destination": dict(d), "weight": w} for d, w in zip(picks, weights, strict=True)]
        else:
            route["route"] = [{"destination": dict(picks[0])}]
        http.append(route)
    return k8s.virtual_service(http, name=name, hosts=list(hosts))


def generated_case(seed: int) -> list[Obj]:
    """The objects of case `seed`: the base objects and one or two generated VirtualServices."""
    rng = random.Random(seed)
    hosts = rng.choice(HOSTS)
    odd = rng.random() < 0.15
    objects = [*base_objects(), generated_virtual_service(rng, f"generated-{seed}", hosts, odd)]
    if hosts != ("*",) and rng.random() < 0.4:
        objects.append(generated_virtual_service(rng, f"generated-{seed}-other", ("*.test",)))
    return objects


# --------------------------------------------------------------------------- comparison

#: How a request class can come out; "agree" is all three equal.
CATEGORIES = (
    "agree",
    "all-refuse",
    "harness-refuses-istio-routes",
    "istio-refuses-harness-routes",
    "oracle-vs-python",
    "istio-differs",
)


@dataclass
class ClassResult:
    request: Request
    oracle: ev.Outcome | str
    python: ev.Outcome | str
    istio: ev.Outcome | str

    @property
    def category(self) -> str:
        refused = [isinstance(x, str) for x in (self.oracle, self.python, self.istio)]
        if all(refused):
            return "all-refuse"
        if refused[0] and refused[1]:
            return "harness-refuses-istio-routes"
        if refused[2] and not refused[0]:
            return "istio-refuses-harness-routes"
        if isinstance(self.oracle, str) or isinstance(self.python, str) or not ev.same(self.oracle, self.python):
            return "oracle-vs-python"
        assert not isinstance(self.istio, str)
        return "agree" if ev.same(self.oracle, self.istio) else "istio-differs"

    def describe(self) -> str:
        def show(x: ev.Outcome | str) -> str:
            return x if isinstance(x, str) else ev.describe(x)

        return (
            f"{self.request.describe()}\n      oracle: {show(self.oracle)}\n      python: {show(self.python)}"
            f"\n      istio:  {show(self.istio)}"
        )


@dataclass
class CaseResult:
    case_id: str
    objects: list[Obj]
    classes: list[ClassResult] = field(default_factory=list)
    istio_findings: list[str] = field(default_factory=list)


def _fake_workloads(replicas: Sequence[ix.Replica]) -> list[RunningWorkload]:
    return [RunningWorkload(r.spec, (r.pod_ip, r.spec.container_port)) for r in replicas]


def _refusal(exc: Exception) -> str:
    return f"{ev.REFUSED}: {exc}"


def compare(
    case_id: str,
    objects: list[Obj],
    istio: ix.IstioOutput | str,
    classes: Sequence[Request] = CLASSES,
) -> CaseResult:
    """Every request class of `objects` on the three sides; `istio` is the program's output or error."""
    result = CaseResult(case_id, objects)
    replicas = ix.replicas_from_objects(objects)
    workloads = _fake_workloads(replicas)
    version_at = {(r.pod_ip, r.spec.container_port): ev.version_of(r.spec) for r in replicas}
    by_pod = {r.pod_ip: r for r in replicas}

    python_table: Any
    try:
        python_table = route_table_from_route_configs([envoy.build_route_configuration(objects)])
        ups = envoy.upstreams(objects)
        eps = endpoints_for(ups, workloads)
        python_backends = {u.name: [version_at[a] for a in eps[u.key]] for u in ups}
    except (ConfigError, HarnessError) as exc:
        python_table = _refusal(exc)
        python_backends = {}

    istio_table: Any
    istio_backends: dict[str, list[str]] = {}
    if isinstance(istio, str):
        istio_table = f"{ev.REFUSED}: istio-xds: {istio}"
    else:
        errors = [f"{f['object']}: {f['error']}" for f in istio.validation if f.get("error")]
        warnings = [f"{f['object']}: warning {f['warning']}" for f in istio.validation if f.get("warning")]
        result.istio_findings = errors + warnings
        if errors:
            istio_table = f"{ev.REFUSED}: Istio validation: " + "; ".join(errors)
        else:
            istio_table = ix.route_table(istio)
            for cla in istio.endpoints:
                versions = []
                for locality in cla.get("endpoints") or []:
                    for lb in locality.get("lb_endpoints") or []:
                        sock = lb["endpoint"]["address"]["socket_address"]
                        replica = by_pod[sock["address"]]
                        served = {replica.spec.container_port, *replica.spec.ports.values()}
                        if int(sock["port_value"]) in served:  # else: connection refused, 503
                            versions.append(ev.version_of(replica.spec))
                istio_backends[str(cla["cluster_name"])] = versions

    for request in classes:
        oracle: ev.Outcome | str
        try:
            oracle = ev.from_expected(expected_distribution(objects, request))
        except (ConfigError, HarnessError) as exc:
            oracle = _refusal(exc)
        python: ev.Outcome | str = (
            python_table
            if isinstance(python_table, str)
            else ev.outcome(python_table, request, lambda c: python_backends.get(c, []))
        )
        istio_side: ev.Outcome | str = (
            istio_table
            if isinstance(istio_table, str)
            else ev.outcome(istio_table, request, lambda c: istio_backends.get(c, []))
        )
        result.classes.append(ClassResult(request, oracle, python, istio_side))
    return result


def summarize(results: Sequence[CaseResult]) -> dict[str, int]:
    counts = dict.fromkeys(CATEGORIES, 0)
    for case in results:
        for cls in case.classes:
            counts[cls.category] += 1
    return counts


def stage_cases() -> dict[str, list[Obj]]:
    """Every stage of the plan, rendered: the sample stages."""
    from abtest_harness.plan import load_plan
    from abtest_harness.render import render_stage

    plan = load_plan()
    return {f"stage:{s.name}": render_stage(plan, s) for s in plan.stages}


def as_outputs(raw: Mapping[str, ix.IstioOutput | str]) -> dict[str, ix.IstioOutput | str]:
    return dict(raw)
