"""``abtest mutate``: one-edit mutants of a rollout, and which check catches each.

For every stage, the rendered objects are edited one way at a time: a weight shifted by more
than the tolerance, a header route swapped, removed or reordered, a header name, value or match
kind changed, a host, port, selector, pod label, image, version name, probe or replica count
changed. Each mutant then goes through the checks in order, and the first that fails it is
named:

1. ``validate``: `abtest_harness.validate` reports an error or warning the unmutated stage does not
   have;
2. ``oracle``: the routing oracle refuses the objects, or routes some request class otherwise
   than the expectation (the plan's weights and pinning, or an expectation table);
3. ``images``: a version runs another image than the stage's ``images`` say, or a version
   runs that the stage does not name, or one it names does not run;
4. ``run``: the stage with the mutant, on a mesh, judged by the sequential tests against the
   expectation, and every version's answer against the image it must run (what ``abtest run``
   does), when a mesh is given.

A mutant no check fails is *equivalent* when the edit provably changes nothing a client can
see: the oracle's outcome shares are unchanged for every request class and the edit is one the
oracle models completely (routing fields), or the operator knows why (another replica of the
same version). Equivalence is only ever claimed with its reason. Every other uncaught mutant
*survived*: a hole in the checks, and `abtest mutate` exits 1.

Bounded: at most `deadline_s` in all; mutants not reached are reported as not run (exit 1).
The offline checks take milliseconds a mutant; runs on a mesh are done only for mutants the
offline checks let through, in parallel over `jobs` meshes.
"""

# ruff: noqa: B023 - every edit function is called at once by _Builder.add, inside its loop iteration

from __future__ import annotations

import copy
import dataclasses
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from abtest_harness.errors import ConfigError, HarnessError
from abtest_harness.routing import STANDARD_CLASSES, Request

Objects = list[dict[str, Any]]
Expectation = Mapping[str, Mapping[str, float]]  # request class label -> outcome -> share

CAUGHT, EQUIVALENT, SURVIVED, NOT_RUN = "caught", "equivalent", "SURVIVED", "not run"


@dataclass(frozen=True)
class Mutant:
    """One edit of one stage's objects.

    `routing` is True when the edit touches only what the routing oracle models completely,
    so an unchanged oracle reading proves the mutant equivalent. `equivalent` is an operator's
    own reason why the edit cannot change what clients see ("" when it can).
    """

    ident: str
    stage: str
    operator: str
    description: str
    objects: Objects = field(repr=False, compare=False)
    routing: bool = True
    equivalent: str = ""


@dataclass
class Outcome:
    """What became of one mutant: status (caught, equivalent, SURVIVED, not run), by what, why."""

    mutant: Mutant
    status: str
    check: str = ""
    detail: str = ""
    #: The rollout suite's reading of a mutant it ran (``--suite``): "caught", "missed", or "" (not run).
    suite: str = ""


@dataclass
class MutationReport:
    outcomes: list[Outcome]
    elapsed_s: float

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def passed(self) -> bool:
        return bool(self.outcomes) and not any(o.status in (SURVIVED, NOT_RUN) for o in self.outcomes)


# ----------------------------------------------------------------------------------- operators


def _objects_of(objects: Objects, kind: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, obj in enumerate(objects):
        if isinstance(obj, dict) and obj.get("kind") == kind:
            yield i, obj


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


class _Builder:
    """Collects mutants of one stage: each edit works on a deep copy of the objects."""

    def __init__(self, stage: str, objects: Objects, version_env_reason: str = "",
                 label_values: Mapping[str, Sequence[str]] | None = None) -> None:
        self.stage = stage
        self.objects = objects
        self.mutants: list[Mutant] = []
        self.version_env_reason = version_env_reason
        self.label_values = label_values or {}

    def relabel(self, key: str, value: str, versions: Sequence[str]) -> str:
        """What a label is changed to: another version's value of that key, else a near miss."""
        pool = self.label_values.get(key) or versions
        return _other_value(value, pool) if value in pool else f"{value}-x"

    def add(self, operator: str, description: str, edit: Callable[[Objects], None], *, routing: bool = True,
            equivalent: str = "") -> None:
        mutated = copy.deepcopy(self.objects)
        edit(mutated)
        ident = f"{self.stage}#{len(self.mutants) + 1:03d}"
        self.mutants.append(Mutant(ident, self.stage, operator, description, mutated, routing, equivalent))


def _routes(vs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(vs.get("spec", {}).get("http") or [])


def _route_name(route: Mapping[str, Any], index: int) -> str:
    return str(route.get("name") or f"http[{index}]")


def _other_value(value: str, pool: Sequence[str]) -> str:
    others = [v for v in pool if v != value]
    return others[0] if others else value + "-x"


def _virtual_service_mutants(b: _Builder, shift: int) -> None:
    hosts = sorted({str(svc.get("metadata", {}).get("name")) + "." + str(svc.get("metadata", {}).get("namespace"))
                    + ".svc.cluster.local" for _, svc in _objects_of(b.objects, "Service")})
    for v, vs in _objects_of(b.objects, "VirtualService"):
        vs_name = _name(vs)
        routes = _routes(vs)
        for r, route in enumerate(routes):
            rname = f"{vs_name} {_route_name(route, r)}"
            dests = list(route.get("route") or [])

            def at(objs: Objects, v: int = v, r: int = r) -> dict[str, Any]:
                return objs[v]["spec"]["http"][r]  # type: ignore[no-any-return]

            if len(dests) >= 2:
                for i, j in ((i, j) for i in range(len(dests)) for j in range(len(dests)) if i != j):
                    wi = dests[i].get("weight", 0)
                    if isinstance(wi, int) and wi >= shift:
                        def move(objs: Objects, i: int = i, j: int = j, at: Any = at) -> None:
                            d = at(objs)["route"]
                            d[i]["weight"] = d[i].get("weight", 0) - shift
                            d[j]["weight"] = d[j].get("weight", 0) + shift
                        b.add("weights-shift", f"{rname}: {shift} points from destination {i} to {j}", move)

                def unbalance(objs: Objects, at: Any = at) -> None:
                    d = at(objs)["route"][0]
                    d["weight"] = d.get("weight", 0) + shift
                b.add("weights-sum", f"{rname}: destination 0 weight +{shift} (sum over 100)", unbalance)

                def swap_hosts(objs: Objects, at: Any = at) -> None:
                    d = at(objs)["route"]
                    d[0]["destination"]["host"], d[1]["destination"]["host"] = (
                        d[1]["destination"]["host"], d[0]["destination"]["host"])
                b.add("destination-swap", f"{rname}: hosts of destinations 0 and 1 swapped", swap_hosts)
            for i, dest in enumerate(dests):
                host = str(dest.get("destination", {}).get("host", ""))
                if len(dests) == 1:
                    def retarget(objs: Objects, i: int = i, host: str = host, at: Any = at) -> None:
                        at(objs)["route"][i]["destination"]["host"] = _other_value(host, hosts)
                    b.add("destination-swap", f"{rname}: host {host} -> {_other_value(host, hosts)}", retarget)

                def unknown(objs: Objects, i: int = i, at: Any = at) -> None:
                    at(objs)["route"][i]["destination"]["host"] = "model-svc-missing.abtesting.svc.cluster.local"
                b.add("destination-host", f"{rname}: destination {i} host -> a Service that does not exist", unknown)
                port = dest.get("destination", {}).get("port", {}).get("number")
                if isinstance(port, int):
                    def bump(objs: Objects, i: int = i, port: int = port, at: Any = at) -> None:
                        at(objs)["route"][i]["destination"]["port"]["number"] = port + 1
                    b.add("destination-port", f"{rname}: destination {i} port {port} -> {port + 1}", bump)
            _route_shape_mutants(b, v, r, rname, routes)
            _match_mutants(b, v, r, rname, route)
        _vs_scope_mutants(b, v, vs_name)


def _route_shape_mutants(b: _Builder, v: int, r: int, rname: str, routes: Sequence[Mapping[str, Any]]) -> None:
    def remove(objs: Objects) -> None:
        del objs[v]["spec"]["http"][r]
    b.add("route-remove", f"{rname}: removed", remove)
    if r > 0:
        def to_front(objs: Objects) -> None:
            http = objs[v]["spec"]["http"]
            http.insert(0, http.pop(r))
        b.add("route-order", f"{rname}: moved first", to_front)
    if routes[r].get("match"):
        def unmatch(objs: Objects) -> None:
            del objs[v]["spec"]["http"][r]["match"]
        b.add("match-remove", f"{rname}: match removed (matches everything)", unmatch)


def _match_mutants(b: _Builder, v: int, r: int, rname: str, route: Mapping[str, Any]) -> None:
    for m, match in enumerate(route.get("match") or []):
        def entry(objs: Objects, m: int = m) -> dict[str, Any]:
            return objs[v]["spec"]["http"][r]["match"][m]  # type: ignore[no-any-return]

        for name, spec in sorted((match.get("headers") or {}).items()):
            if not isinstance(spec, dict) or len(spec) != 1:
                continue
            kind, value = next(iter(spec.items()))
            where = f"{rname} match[{m}] header {name}"

            def set_value(objs: Objects, new: str, name: str = name, kind: str = kind, entry: Any = entry) -> None:
                entry(objs)["headers"][name] = {kind: new}

            for new in (str(value).capitalize(), f"{value}x"):
                if new != value:
                    def revalue(objs: Objects, new: str = new) -> None:
                        set_value(objs, new)
                    b.add("header-value", f"{where}: {kind} {value!r} -> {new!r}", revalue)
            for new_name in (name.title(), f"{name}-x"):
                if new_name != name:
                    def rename(objs: Objects, name: str = name, new_name: str = new_name, entry: Any = entry) -> None:
                        headers = entry(objs)["headers"]
                        headers[new_name] = headers.pop(name)
                    b.add("header-name", f"{where}: name -> {new_name!r}", rename)
            for new_kind in ("prefix", "regex", "exact"):
                if new_kind != kind:
                    def rekind(objs: Objects, name: str = name, new_kind: str = new_kind, entry: Any = entry,
                               value: Any = value) -> None:
                        entry(objs)["headers"][name] = {new_kind: value}
                    b.add("match-kind", f"{where}: {kind} -> {new_kind} (same value)", rekind)

            def drop(objs: Objects, name: str = name, entry: Any = entry) -> None:
                del entry(objs)["headers"][name]
                if not entry(objs)["headers"]:
                    del entry(objs)["headers"]
            b.add("header-remove", f"{where}: condition removed", drop)
        uri = match.get("uri")
        if isinstance(uri, dict) and len(uri) == 1:
            kind, value = next(iter(uri.items()))
            where = f"{rname} match[{m}] uri"
            for new_kind in ("exact", "prefix"):
                if new_kind != kind:
                    def uri_kind(objs: Objects, new_kind: str = new_kind) -> None:
                        entry(objs)["uri"] = {new_kind: value}
                    b.add("match-kind", f"{where}: {kind} -> {new_kind} (same value)", uri_kind)

            def uri_value(objs: Objects, kind: str = kind, entry: Any = entry, value: Any = value) -> None:
                entry(objs)["uri"] = {kind: f"{value}s"}
            b.add("uri-value", f"{where}: {kind} {value!r} -> {value + 's'!r}", uri_value)


def _vs_scope_mutants(b: _Builder, v: int, vs_name: str) -> None:
    def hosts(objs: Objects) -> None:
        objs[v]["spec"]["hosts"] = ["model.example.com"]
    b.add("host", f"{vs_name}: hosts -> [model.example.com]", hosts)
    gateways = b.objects[v].get("spec", {}).get("gateways") or []
    if gateways:
        def gateway(objs: Objects) -> None:
            objs[v]["spec"]["gateways"] = [f"{gateways[0]}-x", *gateways[1:]]
        b.add("gateway-ref", f"{vs_name}: gateways[0] {gateways[0]} -> {gateways[0]}-x", gateway)


def _gateway_mutants(b: _Builder) -> None:
    for g, gw in _objects_of(b.objects, "Gateway"):
        name = _name(gw)
        for s, server in enumerate(gw.get("spec", {}).get("servers") or []):
            number = server.get("port", {}).get("number")
            if isinstance(number, int):
                def port(objs: Objects, s: int = s, number: int = number) -> None:
                    objs[g]["spec"]["servers"][s]["port"]["number"] = 8080 if number != 8080 else 8081
                b.add("port", f"Gateway {name} servers[{s}] port {number} -> {8080 if number != 8080 else 8081}",
                      port)

            def hosts(objs: Objects, s: int = s) -> None:
                objs[g]["spec"]["servers"][s]["hosts"] = ["other.example.com"]
            b.add("host", f"Gateway {name} servers[{s}] hosts -> [other.example.com]", hosts)
        selector = gw.get("spec", {}).get("selector") or {}
        for key, value in sorted(selector.items()):
            def select(objs: Objects, key: str = key, value: str = value) -> None:
                objs[g]["spec"]["selector"][key] = f"{value}-x"
            b.add("selector", f"Gateway {name} selector {key}: {value} -> {value}-x", select)


def _service_mutants(b: _Builder, versions: Sequence[str]) -> None:
    for s, svc in _objects_of(b.objects, "Service"):
        name = _name(svc)
        selector = svc.get("spec", {}).get("selector") or {}
        for key, value in sorted(selector.items()):
            new = b.relabel(key, str(value), versions)

            def select(objs: Objects, key: str = key, new: str = new) -> None:
                objs[s]["spec"]["selector"][key] = new
            b.add("selector", f"Service {name} selector {key}: {value} -> {new}", select)

            def drop(objs: Objects, key: str = key) -> None:
                del objs[s]["spec"]["selector"][key]
            b.add("selector", f"Service {name} selector {key} removed", drop)
        for p, port in enumerate(svc.get("spec", {}).get("ports") or []):
            number = port.get("port")
            if isinstance(number, int):
                def renumber(objs: Objects, p: int = p, number: int = number) -> None:
                    objs[s]["spec"]["ports"][p]["port"] = number + 1
                b.add("port", f"Service {name} ports[{p}] port {number} -> {number + 1}", renumber)
            target = port.get("targetPort")
            new_target: Any = f"{target}-x" if isinstance(target, str) else (target or number or 0) + 1

            def retarget(objs: Objects, p: int = p, new_target: Any = new_target) -> None:
                objs[s]["spec"]["ports"][p]["targetPort"] = new_target
            b.add("port", f"Service {name} ports[{p}] targetPort {target!r} -> {new_target!r}", retarget)


def _container(obj: Mapping[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _deployment_mutants(b: _Builder, versions: Sequence[str], images: Sequence[str]) -> None:
    for d, dep in _objects_of(b.objects, "Deployment"):
        name = _name(dep)
        replicas = dep.get("spec", {}).get("replicas", 1)
        replicas = 1 if replicas is None else replicas

        def scale_to_zero(objs: Objects) -> None:
            objs[d]["spec"]["replicas"] = 0

        def scale_up(objs: Objects) -> None:
            objs[d]["spec"]["replicas"] = replicas + 1
        b.add("replicas", f"Deployment {name} replicas {replicas} -> 0", scale_to_zero)
        b.add("replicas", f"Deployment {name} replicas {replicas} -> {replicas + 1}", scale_up, routing=False,
              equivalent="another replica of the same version: shares are per version, answers per image")

        def remove(objs: Objects) -> None:
            del objs[d]
        b.add("workload-remove", f"Deployment {name} removed", remove)
        labels = dep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}
        for key, value in sorted(labels.items()):
            new = b.relabel(key, str(value), versions)

            def relabel(objs: Objects, key: str = key, new: str = new) -> None:
                spec = objs[d]["spec"]
                spec["template"]["metadata"]["labels"][key] = new
                if key in (spec.get("selector", {}).get("matchLabels") or {}):
                    spec["selector"]["matchLabels"][key] = new  # the API requires them to agree
            b.add("pod-labels", f"Deployment {name} pod label {key}: {value} -> {new}", relabel)
        if not dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers"):
            continue
        container = _container(dep)
        for e, env in enumerate(container.get("env") or []):
            if env.get("name") == "MODEL_VERSION" and isinstance(env.get("value"), str):
                new = _other_value(env["value"], versions)

                def rename(objs: Objects, e: int = e, new: str = new) -> None:
                    _container(objs[d])["env"][e]["value"] = new
                b.add("version-name", f"Deployment {name} MODEL_VERSION {env['value']} -> {new}", rename,
                      routing=False, equivalent=b.version_env_reason)
        image = str(container.get("image", ""))
        other = _other_value(image, images)

        def reimage(objs: Objects, other: str = other) -> None:
            _container(objs[d])["image"] = other
        b.add("image", f"Deployment {name} image {image} -> {other}", reimage, routing=False)
        for p, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort")
            if isinstance(number, int):
                def move(objs: Objects, p: int = p, number: int = number) -> None:
                    _container(objs[d])["ports"][p]["containerPort"] = number + 1
                b.add("port", f"Deployment {name} containerPort {number} -> {number + 1}", move, routing=False)
        probe = container.get("readinessProbe")
        if isinstance(probe, dict):
            get = probe.get("httpGet") or {}
            if "path" in get:
                def path(objs: Objects) -> None:
                    _container(objs[d])["readinessProbe"]["httpGet"]["path"] = "/not-there"
                b.add("probe", f"Deployment {name} readinessProbe path {get['path']} -> /not-there", path,
                      routing=False)
            if "port" in get:
                def probe_port(objs: Objects) -> None:
                    _container(objs[d])["readinessProbe"]["httpGet"]["port"] = 5999
                b.add("probe", f"Deployment {name} readinessProbe port {get['port']!r} -> 5999", probe_port,
                      routing=False)

            def unprobe(objs: Objects) -> None:
                del _container(objs[d])["readinessProbe"]
            b.add("probe", f"Deployment {name} readinessProbe removed", unprobe, routing=False)


def _destination_rule_mutants(b: _Builder, versions: Sequence[str]) -> None:
    for r, rule in _objects_of(b.objects, "DestinationRule"):
        name = _name(rule)
        for s, subset in enumerate(rule.get("spec", {}).get("subsets") or []):
            for key, value in sorted((subset.get("labels") or {}).items()):
                new = b.relabel(key, str(value), versions)

                def relabel(objs: Objects, s: int = s, key: str = key, new: str = new) -> None:
                    objs[r]["spec"]["subsets"][s]["labels"][key] = new
                b.add("subset", f"DestinationRule {name} subset {subset.get('name')} {key}: {value} -> {new}",
                      relabel)

            def rename(objs: Objects, s: int = s) -> None:
                objs[r]["spec"]["subsets"][s]["name"] = f"{subset.get('name')}-x"
            b.add("subset", f"DestinationRule {name} subset {subset.get('name')} renamed", rename)


def generate(stage: str, objects: Objects, *, versions: Sequence[str], images: Sequence[str],
             delta: float = 0.10, by_selector: bool = False,
             label_values: Mapping[str, Sequence[str]] | None = None) -> list[Mutant]:
    """Every one-edit mutant of one stage's objects.

    Weights move by the smallest multiple of 5 points above `delta` (15 at d = 0.10), so a
    shift is one the statistics must catch. `versions` and `images` are what a selector,
    version name or image is changed to (another version's, another image's). With
    `by_selector` (versions are pod label selectors, answers attributed by the endpoint the
    gateway chose), a changed ``MODEL_VERSION`` is equivalent: it only renames the scorer's own
    ``x-model-version`` header.
    """
    shift = 5 * (math.floor(100 * delta / 5) + 1)
    reason = ("MODEL_VERSION only sets the scorer's own x-model-version header; versions are the spec's "
              "pod selectors, answers are credited by endpoint") if by_selector else ""
    b = _Builder(stage, objects, reason, label_values or {})
    _virtual_service_mutants(b, shift)
    _gateway_mutants(b)
    _destination_rule_mutants(b, versions)
    _service_mutants(b, versions)
    _deployment_mutants(b, versions, images)
    return b.mutants


# -------------------------------------------------------------------------------------- checks


def _findings(objects: Objects) -> set[str]:
    from abtest_harness.validate import validate_objects

    return {f"{f.severity} {f.code} {f.obj} {f.path}" for f in validate_objects(objects)}


def _shares(objects: Objects, classes: Sequence[Request],
            versions: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, float]]:
    from abtest_harness.rollout import oracle

    expected = oracle(objects, classes, versions)
    return {r.label: {k: v for k, v in expected[r].shares.items() if v > 0} for r in classes}


def _image_findings(stage: Any, objects: Objects, versions: Mapping[str, Mapping[str, str]] | None) -> list[str]:
    """Where the objects run other images or versions than the stage's ``images`` say (none declared: [])."""
    from abtest_harness.rollout import image_mismatches
    from abtest_harness.spec import StageSpec

    if not isinstance(stage, StageSpec) or stage.images is None or versions is None:
        return []
    return image_mismatches(objects, stage, versions)


def _differs(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return set(a) != set(b) or any(abs(a[k] - b[k]) > 1e-9 for k in a)


def _fmt(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in sorted(shares.items())) or "nothing"


@dataclass(frozen=True)
class StageCheck:
    """What one stage's mutants are judged against: the expectation and the unmutated readings."""

    stage: Any  # a spec's StageSpec, or a plan's Stage
    objects: Objects
    expectation: Expectation | None  # None: no table; classes it leaves out: the oracle is their expectation
    classes: Sequence[Request]
    baseline_findings: frozenset[str]
    baseline_shares: Mapping[str, Mapping[str, float]]
    versions: Mapping[str, Mapping[str, str]] | None = None


def prepare_stage(stage: Any, objects: Objects, expectation: Expectation | None,
                  classes: Sequence[Request] = STANDARD_CLASSES, *,
                  versions: Mapping[str, Mapping[str, str]] | None = None) -> StageCheck:
    """Read the unmutated stage once; refuse it if it already fails the offline checks."""
    findings = _findings(objects)
    shares = _shares(objects, classes, versions)
    for request in (r for r in classes if expectation is not None and r.label in expectation):
        assert expectation is not None
        if _differs(shares[request.label], expectation[request.label]):
            raise HarnessError(
                f"stage {stage.name} {request.label}: the unmutated manifests route {_fmt(shares[request.label])}, "
                f"the expectation says {_fmt(expectation[request.label])}; fix that before mutating"
            )
    wrong_images = _image_findings(stage, objects, versions)
    if wrong_images:
        raise HarnessError(f"stage {stage.name}: the unmutated manifests disagree with the spec: {wrong_images[0]}; "
                           "fix that before mutating")
    return StageCheck(stage, objects, expectation, classes, frozenset(findings), shares, versions)


def check_offline(check: StageCheck, mutant: Mutant) -> Outcome | None:
    """validate, then the oracle against the expectation; None when neither catches the mutant."""
    try:
        new = sorted(_findings(mutant.objects) - check.baseline_findings)
    except Exception as exc:  # noqa: BLE001 - a crash on bad input is a refusal, and named
        return Outcome(mutant, CAUGHT, "validate", f"refused: {exc}")
    if new:
        return Outcome(mutant, CAUGHT, "validate", new[0] + (f" (+{len(new) - 1} more)" if len(new) > 1 else ""))
    try:
        shares = _shares(mutant.objects, check.classes, check.versions)
    except ConfigError as exc:
        return Outcome(mutant, CAUGHT, "oracle", f"refused: {exc}")
    for request in (r for r in check.classes if check.expectation is not None and r.label in check.expectation):
        assert check.expectation is not None
        wanted = check.expectation[request.label]
        if _differs(shares[request.label], wanted):
            return Outcome(mutant, CAUGHT, "oracle",
                           f"{request.label}: {_fmt(shares[request.label])}, expected {_fmt(wanted)}")
    wrong_images = _image_findings(check.stage, mutant.objects, check.versions)
    if wrong_images:
        return Outcome(mutant, CAUGHT, "images", wrong_images[0].split(" images: ", 1)[-1]
                       + (f" (+{len(wrong_images) - 1} more)" if len(wrong_images) > 1 else ""))
    if mutant.equivalent:
        return Outcome(mutant, EQUIVALENT, "", mutant.equivalent)
    if mutant.routing and all(not _differs(shares[r.label], check.baseline_shares[r.label]) for r in check.classes):
        return Outcome(mutant, EQUIVALENT, "", "the oracle's outcome shares are unchanged for every request class")
    return None


RunCheck = Callable[[StageCheck, Mutant], str | None]
"""Runs a mutant on a mesh; returns why it failed, or None when it passed."""


def mutate(
    checks: Sequence[StageCheck],
    mutants: Sequence[Mutant],
    *,
    run_check: Callable[[], RunCheck] | None = None,
    suite_check: RunCheck | None = None,
    confirm_equivalent: bool = False,
    jobs: int = 1,
    deadline_s: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> MutationReport:
    """Judge every mutant: offline first, then (for what passes offline) `run_check` if given.

    `run_check` is a factory called once per parallel job (each job gets its own mesh). With
    `confirm_equivalent`, mutants the oracle calls equivalent are run too: a run that fails one
    shows that the oracle and the data plane disagree, and it is reported as caught by the run.
    `suite_check` (thread-safe; each call brings up its own mesh) runs the rollout suite on each
    mutant that goes to the mesh, after the run: both readings are kept, so the report shows
    what the suite catches on its own.
    """
    started = time.monotonic()
    deadline = started + deadline_s
    by_stage = {c.stage.name: c for c in checks}
    outcomes: dict[str, Outcome] = {}
    to_run: list[Mutant] = []
    for mutant in mutants:
        if time.monotonic() > deadline:
            outcomes[mutant.ident] = Outcome(mutant, NOT_RUN, "", "deadline")
            continue
        found = check_offline(by_stage[mutant.stage], mutant)
        if found is not None:
            outcomes[mutant.ident] = found
        if found is None or (confirm_equivalent and found.status == EQUIVALENT and mutant.routing):
            to_run.append(mutant)
    if (run_check is not None or suite_check is not None) and to_run:
        if progress:
            progress(f"{len(to_run)} mutants on the mesh ({jobs} at a time)"
                     + (", each also through the rollout suite" if suite_check is not None else ""))
        _run_all(to_run, by_stage, run_check, suite_check, max(1, jobs), deadline, outcomes)
    for mutant in to_run:
        if mutant.ident not in outcomes:
            outcomes[mutant.ident] = Outcome(mutant, SURVIVED, "", "no check failed it")
    return MutationReport([outcomes[m.ident] for m in mutants], max(time.monotonic() - started, 0.0))


def _run_all(to_run: Sequence[Mutant], by_stage: Mapping[str, StageCheck], factory: Callable[[], RunCheck] | None,
             suite_check: RunCheck | None, jobs: int, deadline: float, outcomes: dict[str, Outcome]) -> None:
    """Each job opens its own mesh, runs its share of the mutants, and always closes the mesh.

    On an interrupt (Ctrl-C, SIGTERM in the main thread) the jobs stop after their current
    mutant and tear down before the interrupt goes on.
    """
    shards = [list(to_run[i::jobs]) for i in range(jobs)]
    stop = threading.Event()

    def judge(run_check: RunCheck | None, mutant: Mutant) -> None:
        check = by_stage[mutant.stage]
        failed = {name: fn(check, mutant) for name, fn in (("run", run_check), ("suite", suite_check))
                  if fn is not None}
        suite = "" if "suite" not in failed else "missed" if failed["suite"] is None else "caught"
        caught = [(name, why) for name, why in failed.items() if why is not None]
        if caught:
            outcomes[mutant.ident] = Outcome(mutant, CAUGHT, caught[0][0], caught[0][1], suite)
        elif mutant.ident in outcomes and outcomes[mutant.ident].status == EQUIVALENT:
            outcomes[mutant.ident].suite = suite
        else:
            passed = " and ".join(f"the {name} passed" for name in failed)
            hint = ""
            if mutant.operator == "image" and getattr(check.stage, "images", None) is None:
                # No request may reach the version (0% and no pin); only the stage's images can say.
                hint = f"; stage {mutant.stage} has no `images:` saying which image each version runs"
            outcomes[mutant.ident] = Outcome(mutant, SURVIVED, "", f"no check failed it, {passed}{hint}", suite)

    def work(shard: list[Mutant]) -> None:
        run_check = factory() if factory is not None else None
        try:
            for mutant in shard:
                if stop.is_set() or time.monotonic() > deadline:
                    outcomes.setdefault(mutant.ident, Outcome(mutant, NOT_RUN, "", "deadline"))
                    continue
                judge(run_check, mutant)
        finally:
            close = getattr(run_check, "close", None)
            if callable(close):
                close()

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="mutate")
    try:
        for future in [pool.submit(work, shard) for shard in shards if shard]:
            future.result()
    except BaseException:
        stop.set()
        close = getattr(suite_check, "close", None)
        if callable(close):
            close()  # the suites in flight tear down their meshes now, not at their timeout
        raise
    finally:
        pool.shutdown(wait=True)


# ------------------------------------------------------------------------------ a rollout spec


def _attributes_by_endpoint() -> bool:
    """True when versions are the spec's pod selectors for the oracle too (not ``MODEL_VERSION``)."""
    import inspect

    from abtest_harness.routing import expected_distributions

    return "versions" in inspect.signature(expected_distributions).parameters


def spec_mutants(spec: Any, stages: Sequence[Any], *, delta: float = 0.10,
                 render: Callable[[Any, Any], Objects] | None = None) -> tuple[list[StageCheck], list[Mutant]]:
    """Render each stage of a rollout spec (or a ``stages.yaml`` plan), read it, generate its mutants.

    The expectation is the stage's ``expect`` table (for a plan: what the plan promises); for a
    class the table leaves out (or a stage without one) there is none, and then only validate
    and the oracle's refusals can catch a routing edit of that class offline.
    """
    from abtest_harness.rollout import as_spec

    spec = as_spec(spec)
    stages = [spec.stage(s if isinstance(s, str) else s.name) for s in stages]
    if render is None:
        from abtest_harness.render import render_many

        # The stages' tools at once (one kustomize batch where it applies), in stage order.
        rendered = dict(zip([s.name for s in stages], render_many(spec, stages), strict=True))
    else:
        rendered = {stage.name: render(spec, stage) for stage in stages}
    images = sorted({str(_container(dep).get("image")) for objects in rendered.values()
                     for _, dep in _objects_of(objects, "Deployment")
                     if dep.get("spec", {}).get("template", {}).get("spec", {}).get("containers")})
    labels = list(spec.versions)
    by_key: dict[str, list[str]] = {}
    for selector in spec.versions.values():
        for key, value in selector.items():
            if str(value) not in by_key.setdefault(key, []):
                by_key[key].append(str(value))
    checks, mutants = [], []
    for stage in stages:
        objects = rendered[stage.name]
        expect = ({c.label: stage.expect[c.label] for c in spec.classes if c.label in stage.expect}
                  if stage.expect else None)
        checks.append(prepare_stage(stage, objects, expect, spec.classes, versions=spec.versions))
        mutants += generate(stage.name, objects, versions=labels, images=images, delta=delta,
                            by_selector=_attributes_by_endpoint(), label_values=by_key)
    return checks, mutants


class MeshRunCheck:
    """Run mutants on one mesh of its own: apply, converge, sample, judge against the expectation."""

    def __init__(self, spec: Any, config: Any, open_session: Callable[[], Any],
                 converge_timeout: float = 10.0, deadline_s: float = 60.0) -> None:
        self.spec = spec
        self.config = config
        self.session = open_session()
        self.session.__enter__()
        self.converge_timeout = converge_timeout
        self.deadline_s = deadline_s

    def __call__(self, check: StageCheck, mutant: Mutant) -> str | None:
        from abtest_harness.rollout import check_stage

        objects = self._with_built_images(mutant.objects)
        try:
            # A partial table: check_stage takes the table's classes from it, the rest from the oracle.
            full = check.expectation is not None and all(c.label in check.expectation for c in check.classes)
            result = check_stage(self.session.mesh, self.spec, check.stage, self.config, classes=check.classes,
                                 expected=check.expectation if full else None, objects=objects,
                                 converge_timeout=self.converge_timeout, deadline_s=self.deadline_s)
        except HarnessError as exc:
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        if result.passed:
            return None
        for cls in result.classes:
            if not cls.passed:
                return cls.verdict.message[:160]
        return "; ".join([*result.wrong_answers, *result.manifest_mismatches])[:160] or "stage failed"

    def _with_built_images(self, objects: Objects) -> Objects:
        """The mutant's objects pointed at the images this mesh built (docker, kind), as a run renders them.

        Mutants are rendered once, without the built tags; a runner that runs images as they are
        would otherwise fail every mutant on an image it does not have.
        """
        refs = getattr(self.session, "image_refs", None)
        by_repository = {self.spec.images[key].repository: ref for key, ref in (refs or {}).items()
                         if key in self.spec.images}
        if not by_repository:
            return objects
        from abtest_harness.render import retag

        return retag(objects, by_repository)

    def close(self) -> None:
        self.session.__exit__(None, None, None)


class SuiteCheck:
    """Run a pytest rollout suite on a mutant: the user's own tests, through the plugin.

    Each call writes a spec whose one stage is the mutant's, its objects a plain YAML file
    (:func:`abtest_harness.spec.with_files`; the baseline writes every stage as rendered). It then runs
    ``python -m pytest <suite> --abtest-spec <that spec> --abtest-stage <the mutant's stage>``
    in its own process (its own mesh, torn down by the plugin), in the current directory so
    the suite's conftest.py and settings apply. Exit 1 (a test failed or errored) catches the
    mutant, with pytest's first ``FAILED``/``ERROR`` line; exit 0 misses it; exit 5 (no test
    of that stage) misses it and names the stage in `untested`; any other exit is an error
    of the suite, not a reading of the mutant.
    """

    def __init__(self, spec: Any, objects: Mapping[str, Objects], suite: Sequence[str], *, config: Any,
                 workloads: str = "process", timeout_s: float = 300.0, extra_args: Sequence[str] = ()) -> None:
        self.spec = spec
        self.objects = dict(objects)
        self.suite = list(suite)
        self.config = config
        self.workloads = workloads
        self.timeout_s = timeout_s
        self.extra_args = list(extra_args)
        self.untested: set[str] = set()
        self._lock = threading.Lock()
        self._running: set[Any] = set()

    def argv(self, spec_file: str, stages: Sequence[str], artifacts: str) -> list[str]:
        import sys

        return [
            sys.executable, "-m", "pytest", *self.suite, f"--abtest-spec={spec_file}",
            *(f"--abtest-stage={s}" for s in stages), f"--abtest-workloads={self.workloads}",
            f"--abtest-alpha={self.config.alpha!r}", f"--abtest-beta={self.config.beta!r}",
            f"--abtest-delta={self.config.delta!r}", f"--abtest-artifacts-dir={artifacts}",
            "-p", "no:cacheprovider", "-q", "-rfE", "--no-header", *self.extra_args,
        ]

    def _run(self, objects: Mapping[str, Objects], stages: Sequence[str]) -> tuple[int, str]:
        """Run the suite on `objects` (stage -> objects) for `stages`; (exit code, output)."""
        import subprocess
        import tempfile
        from pathlib import Path

        import yaml

        from abtest_harness.spec import with_files

        # Only the stages given (a mutant's one): the suite runs with --abtest-stage, so it
        # deploys no other, and a test that deploys another stage skips before reading the spec.
        spec = dataclasses.replace(self.spec, stages=tuple(s for s in self.spec.stages if s.name in objects))
        with tempfile.TemporaryDirectory(prefix="abtest-suite-") as tmp:
            files = {}
            for i, stage in enumerate(spec.stages):
                path = Path(tmp) / f"stage-{i}.yaml"
                path.write_text(yaml.safe_dump_all(objects[stage.name], sort_keys=False))
                files[stage.name] = [path]
            spec_file = Path(tmp) / "rollout.yaml"
            spec_file.write_text(yaml.safe_dump(with_files(spec, files), sort_keys=False))
            argv = self.argv(str(spec_file), stages, str(Path(tmp) / "artifacts"))
            # Not proc.run: a suite that overruns, or is stopped, gets SIGTERM first, which the
            # plugin turns into a teardown of its mesh (processes, containers, files).
            # A wide "terminal": pytest cuts its FAILED summary lines, with the reason, to the width.
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S603
                                       stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "400"})
            with self._lock:
                self._running.add(process)
            try:
                output, _ = process.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                output = _stop(process)
                return -1, f"{output}\nthe suite did not finish in {self.timeout_s:.0f}s"
            except BaseException:
                # Interrupted while waiting (Ctrl-C, SIGTERM: the main thread, the baseline run):
                # the suite tears its mesh down before the interrupt goes on.
                _stop(process)
                raise
            finally:
                with self._lock:
                    self._running.discard(process)
        return process.returncode, output

    def close(self) -> None:
        """Stop the suites still running (an interrupt): SIGTERM starts their teardown.

        Only the signal: each suite's own thread is reading its output and sees it end (or,
        past its timeout, kills it); two threads must not read one process's pipes.
        """
        with self._lock:
            running = list(self._running)
        for process in running:
            if process.poll() is None:
                process.terminate()

    def baseline(self, stages: Sequence[str]) -> None:
        """The suite must pass on the unmutated stages, or no reading of a mutant means anything."""
        code, output = self._run(self.objects, stages)
        if code == 5:
            raise HarnessError(f"the rollout suite {' '.join(self.suite)} has no test of stage(s) "
                               f"{', '.join(stages)}: it cannot judge their mutants")
        if code != 0:
            raise HarnessError(f"the rollout suite {' '.join(self.suite)} fails on the unmutated rollout "
                               f"(exit {code}): {_first_failure(output)}; fix that before mutating")

    def __call__(self, check: StageCheck, mutant: Mutant) -> str | None:
        code, output = self._run({mutant.stage: mutant.objects}, [mutant.stage])
        if code == 0:
            return None
        if code == 5:
            with self._lock:
                self.untested.add(mutant.stage)
            return None
        if code == 1:
            return _first_failure(output)[:240]
        raise HarnessError(f"the rollout suite {' '.join(self.suite)} on mutant {mutant.ident} ended with exit "
                           f"{code}, not a verdict: {_first_failure(output)}")


def _stop(process: Any, grace_s: float = 90.0) -> str:
    """SIGTERM a suite and wait for its teardown (then SIGKILL); its output so far."""
    import subprocess

    if process.poll() is None:
        process.terminate()
    try:
        output, _ = process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return str(output or "")


def _first_failure(output: str) -> str:
    """pytest's first FAILED or ERROR summary line (``-rfE``), else the output's last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            word, rest = line.split(" ", 1)
            test = rest.split("::", 1)[-1]  # the test's name, without the file's (temporary) path
            return f"{word} {test.replace(' - Failed: ', ' - ', 1)}"
    return lines[-1] if lines else "no output"


# -------------------------------------------------------------------------------------- output


def write_table(report: MutationReport, out: TextIO) -> None:
    """One line per mutant (id, operator, what changed, result), then the totals."""
    width = max((len(o.mutant.description) for o in report.outcomes), default=20)
    width = min(width, 90)
    out.write(f"{'mutant':<14} {'operator':<16} {'edit':<{width}}  result\n")
    for o in report.outcomes:
        result = {CAUGHT: f"caught: {o.check} ({o.detail})", EQUIVALENT: f"equivalent: {o.detail}",
                  SURVIVED: f"SURVIVED: {o.detail}", NOT_RUN: f"not run: {o.detail}"}[o.status]
        if o.suite:
            result += f"; suite: {'caught' if o.suite == 'caught' else 'MISSED'}"
        out.write(f"{o.mutant.ident:<14} {o.mutant.operator:<16} {o.mutant.description[:width]:<{width}}  "
                  f"{result}\n")
    by_check: dict[str, int] = {}
    for o in report.outcomes:
        if o.status == CAUGHT:
            by_check[o.check] = by_check.get(o.check, 0) + 1
    caught = ", ".join(f"{k} {v}" for k, v in sorted(by_check.items()))
    out.write(
        f"{'PASS' if report.passed else 'FAIL'}: {len(report.outcomes)} mutants: {report.count(CAUGHT)} caught "
        f"({caught or 'none'}), {report.count(EQUIVALENT)} equivalent, {report.count(SURVIVED)} survived"
        + (f", {report.count(NOT_RUN)} not run" if report.count(NOT_RUN) else "")
        + f" in {report.elapsed_s:.1f}s\n"
    )
    ran = [o for o in report.outcomes if o.suite]
    if ran:
        missed = [o.mutant.ident for o in ran if o.suite == "missed" and o.status != EQUIVALENT]
        out.write(f"suite: caught {sum(o.suite == 'caught' for o in ran)} of the {len(ran)} mutants it ran"
                  + (f"; missed {len(missed)} that are not equivalent: {', '.join(missed[:10])}"
                     + (" ..." if len(missed) > 10 else "") if missed else "") + "\n")


def mutate_command(
    spec: Any,
    stage_names: Sequence[str],
    out: TextIO,
    *,
    run: bool,
    confirm_equivalent: bool = False,
    open_session: Callable[[], Any] | None = None,
    config: Any = None,
    jobs: int = 1,
    deadline_s: float = 600.0,
    progress: Callable[[str], None] | None = None,
    suite: Sequence[str] = (),
    workloads: str = "process",
) -> int:
    """``abtest mutate``: generate, judge, print the table; 0 when no mutant survived, else 1.

    `spec` is a rollout spec or a ``stages.yaml`` plan. `suite` (pytest paths or node ids) is
    the rollout suite to run on every mutant that goes to the mesh; it must pass on the
    unmutated stages first.
    """
    from abtest_harness.rollout import as_spec

    spec = as_spec(spec)
    delta = float(getattr(config, "delta", 0.10))
    stages = [spec.stage(name) for name in stage_names] or list(spec.stages)
    checks, mutants = spec_mutants(spec, stages, delta=delta)
    if progress:
        progress(f"{len(mutants)} mutants of {len(stages)} stages")
    factory: Callable[[], RunCheck] | None = None
    if run and open_session is not None and config is not None:
        def factory() -> RunCheck:
            return MeshRunCheck(spec, config, open_session)
    suite_check = None
    if run and suite and config is not None:
        suite_check = SuiteCheck(spec, {c.stage.name: c.objects for c in checks}, suite, config=config,
                                 workloads=workloads)
        if progress:
            progress(f"the rollout suite {' '.join(suite)} on the unmutated stages")
        suite_check.baseline([s.name for s in stages])
    report = mutate(checks, mutants, run_check=factory, suite_check=suite_check,
                    confirm_equivalent=confirm_equivalent, jobs=jobs, deadline_s=deadline_s, progress=progress)
    write_table(report, out)
    if suite_check is not None and suite_check.untested:
        out.write(f"suite: no test of stage(s) {', '.join(sorted(suite_check.untested))}\n")
    return 0 if report.passed else 1
