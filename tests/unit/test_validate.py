"""Offline validation: each check catches the broken manifest made for it, names the object
and the field, and the real manifests of every stage pass without errors.

The known-good input is stage Blue_50 as rendered (tests/unit/data/validate/blue_50.yaml);
every test breaks it in exactly one way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from abtest_harness import routing
from abtest_harness.errors import ConfigError, UnsupportedField
from abtest_harness.validate import (
    KUBERNETES_VERSION,
    Finding,
    InvalidObjects,
    ensure_valid,
    format_findings,
    has_errors,
    load_manifest_paths,
    load_manifests,
    summarize,
    validate_objects,
)

DATA = Path(__file__).parent / "data" / "validate"
VS = "VirtualService abtesting/mlmodel-virtualservice"
BLUE_FQDN = "model-svc-blue.abtesting.svc.cluster.local"
GREEN_FQDN = "model-svc-green.abtesting.svc.cluster.local"

Objects = list[dict[str, Any]]


@cache
def _load(name: str) -> tuple[dict[str, Any], ...]:
    with open(DATA / name, encoding="utf-8") as f:
        return tuple(d for d in yaml.safe_load_all(f) if d)


def reference() -> Objects:
    """A fresh, mutable copy of the rendered Blue_50 stage."""
    return copy.deepcopy(list(_load("blue_50.yaml")))


def get(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"test data should hold exactly one {kind} {name}"
    return matches[0]


def virtual_service(objects: Objects) -> dict[str, Any]:
    return get(objects, "VirtualService", "mlmodel-virtualservice")


def http(objects: Objects) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = virtual_service(objects)["spec"]["http"]
    return routes


def with_code(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def the_one(findings: list[Finding], code: str) -> Finding:
    """The single finding with ``code``; fails with every finding listed otherwise."""
    hits = with_code(findings, code)
    assert len(hits) == 1, f"expected exactly one {code}, got:\n{format_findings(findings) or '(none)'}"
    return hits[0]


def broken(mutate: Callable[[Objects], object]) -> list[Finding]:
    objects = reference()
    mutate(objects)
    return validate_objects(objects)


# --------------------------------------------------------------------------- the good case


def test_reference_stage_has_no_findings_at_all() -> None:
    findings = validate_objects(reference())
    assert findings == [], f"the rendered Blue_50 stage should be clean:\n{format_findings(findings)}"
    assert summarize(findings) == "valid"


def test_a_stage_without_blue_only_warns_that_its_service_has_no_pods() -> None:
    objects = [o for o in reference() if o["metadata"]["name"] != "model-blue"]
    findings = validate_objects(objects)
    assert not has_errors(findings), format_findings(findings)
    warning = the_one(findings, "IST0127")
    assert (warning.severity, warning.obj, warning.path) == (
        "warning", "Service abtesting/model-svc-blue", "spec.selector")
    assert "model_version=blue" in warning.message and "503" in warning.message


_STAGES = ("baseline", "Blue_0", "Blue_50", "Blue_100", "Blue_Green", "Green_100")


@pytest.mark.parametrize("stage", _STAGES)
def test_every_rendered_stage_has_no_errors(stage: str) -> None:
    from abtest_harness.plan import load_plan
    from abtest_harness.render import render_stage

    plan = load_plan()
    assert [s.name for s in plan.stages] == list(_STAGES), "the plan's stages changed: update _STAGES"
    objects = render_stage(plan, stage)
    findings = validate_objects(objects)
    assert not has_errors(findings), f"stage {stage}:\n{format_findings(findings)}"
    # The only tolerated warning: a Service whose version does not run in this stage.
    assert {f.code for f in findings} <= {"IST0127"}, f"stage {stage}:\n{format_findings(findings)}"


# --------------------------------------------------------------------------- the four cases


def test_weights_60_50_are_a_warning_stating_the_split_istio_makes() -> None:
    def mutate(objects: Objects) -> None:
        route = http(objects)[2]["route"]
        route[0]["weight"], route[1]["weight"] = 60, 50

    findings = broken(mutate)
    assert not has_errors(findings), format_findings(findings)
    finding = the_one(findings, "ABT001")
    assert (finding.severity, finding.obj, finding.path) == ("warning", VS, "spec.http[2].route")
    # 60 / 110 = 54.54...%, 50 / 110 = 45.45...%
    assert "60 + 50 = 110" in finding.message
    assert f"{GREEN_FQDN} 54.5% / {BLUE_FQDN} 45.5%" in finding.message


def test_misspelled_match_in_a_virtual_service_is_an_error_at_its_path() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[1]["mtach"] = http(objects)[1].pop("match")

    findings = broken(mutate)
    schema = the_one(findings, "IST0106")
    assert (schema.severity, schema.obj, schema.path) == ("error", VS, "spec.http[1].mtach")
    assert "unknown field 'mtach'" in schema.message and "did you mean 'match'" in schema.message
    assert has_errors(findings)


def test_destination_to_a_service_that_does_not_exist() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[2]["route"][1]["destination"]["host"] = "model-svc-purple.abtesting.svc.cluster.local"

    finding = the_one(broken(mutate), "IST0101")
    assert (finding.severity, finding.obj, finding.path) == (
        "error", VS, "spec.http[2].route[1].destination.host")
    assert "model-svc-purple" in finding.message


def test_header_route_after_the_weighted_route_is_unreachable() -> None:
    def mutate(objects: Objects) -> None:
        routes = http(objects)
        routes.append(routes.pop(1))  # green-header now follows the weighted catch-all

    finding = the_one(broken(mutate), "IST0130")
    assert (finding.severity, finding.obj, finding.path) == ("error", VS, "spec.http[2]")
    assert "green-header" in finding.message and "weighted" in finding.message


@pytest.mark.parametrize(("name", "code", "path"), [
    ("fault-and-mirror.yaml", "ABT020", "spec.http[2].fault"),
    ("misspelled-match.yaml", "IST0106", "spec.http[0].mtach"),
    ("missing-service.yaml", "IST0101", "spec.http[2].route[1].destination.host"),
    ("header-after-weighted.yaml", "IST0130", "spec.http[2]"),
])
def test_the_broken_manifest_files_fail_at_the_field(name: str, code: str, path: str) -> None:
    # Broken stages as files, for `abtest validate` on a manifest file.
    findings = validate_objects(load_manifests(DATA / name))
    assert has_errors(findings)
    assert any((f.code, f.obj, f.path) == (code, VS, path) for f in findings), \
        f"{name}: no {code} at {path}:\n{format_findings(findings)}"


def test_load_manifests_flattens_lists_and_names_yaml_errors(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    as_list = {"apiVersion": "v1", "kind": "List", "items": list(_load("blue_50.yaml"))}
    listing.write_text(yaml.safe_dump(as_list) + "---\n")
    assert load_manifests(listing) == reference()
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Service\nmetadata: {name: [x\n")
    with pytest.raises(ConfigError) as caught:
        load_manifests(bad)
    assert caught.value.obj == str(bad) and caught.value.field.startswith("line ")


# --------------------------------------------------------------------------- several paths as one set


def _write_split(root: Path) -> tuple[Path, Path]:
    """Blue_50 split in two: the VirtualService in one file, the rest in a directory tree."""
    objects = reference()
    vs = virtual_service(objects)
    rest = [o for o in objects if o is not vs]
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump(vs))
    base = root / "base"
    (base / "workloads").mkdir(parents=True)
    (base / "ns.yml").write_text(yaml.safe_dump(rest[0]))
    (base / "workloads" / "all.yaml").write_text(yaml.safe_dump_all(rest[1:]))
    (base / "README.md").write_text("not a manifest\n")
    (base / ".hidden.yaml").write_text("kind: [broken\n")
    return base, routes


def test_several_paths_are_one_set_of_objects(tmp_path: Path) -> None:
    base, routes = _write_split(tmp_path)
    # Alone, the VirtualService names Services that are not there.
    alone = validate_objects(load_manifest_paths([routes]))
    assert {f.code for f in alone if f.severity == "error"} == {"IST0101"}, format_findings(alone)
    # With the directory, every reference resolves: the stage is clean again.
    objects = load_manifest_paths([base, routes])
    assert sorted(map(_key, objects)) == sorted(map(_key, reference()))
    assert [o["kind"] for o in objects[:1]] == ["Namespace"], "files in sorted path order: base/ns.yml first"
    assert validate_objects(objects) == []
    # The same object given twice is one object defined twice.
    twice = validate_objects(load_manifest_paths([routes, base, routes]))
    assert the_one(twice, "ABT004").obj == VS


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "no such file or directory"),
    ("empty-dir", "is a directory that holds no .yaml/.yml file"),
    ("kustomization", "is a kustomization (render it with `kubectl kustomize`)"),
    ("chart", "is a Helm chart (render it with `helm template`)"),
])
def test_paths_that_hold_no_objects_are_one_line_errors(tmp_path: Path, case: str, message: str) -> None:
    base, routes = _write_split(tmp_path)
    bad = tmp_path / "bad"
    if case == "empty-dir":
        (bad / "sub").mkdir(parents=True)
        (bad / "sub" / "notes.txt").write_text("x\n")
    elif case == "kustomization":
        (bad / "overlay").mkdir(parents=True)
        (bad / "overlay" / "kustomization.yaml").write_text("resources: [../base]\n")
        bad = bad / "overlay"
    elif case == "chart":
        (bad / "templates").mkdir(parents=True)
        (bad / "Chart.yaml").write_text("apiVersion: v2\nname: x\nversion: 0.1.0\n")
        (bad / "templates" / "vs.yaml").write_text("weight: {{ .Values.weight }}\n")
    with pytest.raises(ConfigError) as caught:
        load_manifest_paths([base, bad, routes])
    assert caught.value.obj == str(bad) and message in caught.value.message
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("bad", [-10, 12.5, True])
def test_weight_that_is_not_a_non_negative_int(bad: object) -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[2]["route"][0]["weight"] = bad

    finding = the_one(broken(mutate), "ABT002")
    assert (finding.obj, finding.path) == (VS, "spec.http[2].route[0].weight")
    assert repr(bad) in finding.message


def test_weight_as_a_string_is_rejected_by_the_strict_istio_schema() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[2]["route"][0]["weight"] = "50"

    findings = broken(mutate)
    assert any(f.code == "IST0106" and f.path == "spec.http[2].route[0].weight" for f in findings), \
        format_findings(findings)


def test_missing_weight_with_two_destinations_is_a_warning_that_it_gets_nothing() -> None:
    # Istio reads an omitted weight as 0 and accepts the route while the total is not 0.
    def mutate(objects: Objects) -> None:
        del http(objects)[2]["route"][1]["weight"]

    findings = broken(mutate)
    assert not has_errors(findings), format_findings(findings)
    missing = the_one(findings, "ABT007")
    assert (missing.severity, missing.path) == ("warning", "spec.http[2].route[1].weight")
    assert "as 0" in missing.message
    split = the_one(findings, "ABT001").message
    assert split.startswith("weights 50 = 50") and f"{GREEN_FQDN} 100% / {BLUE_FQDN} 0%" in split


def test_single_destination_gets_everything_whatever_its_weight() -> None:
    assert "weight" not in http(reference())[0]["route"][0], "data: the header route has no weight"

    def mutate(objects: Objects) -> None:
        http(objects)[0]["route"][0]["weight"] = 40

    findings = broken(mutate)
    assert not has_errors(findings), format_findings(findings)
    finding = the_one(findings, "ABT001")
    assert (finding.severity, finding.path) == ("warning", "spec.http[0].route")
    assert "weight 40 on a lone destination" in finding.message and "100%" in finding.message


def _weights_3_1() -> Objects:
    objects = reference()
    route = http(objects)[2]["route"]
    route[0]["weight"], route[1]["weight"] = 3, 1
    return objects


def test_weights_3_and_1_pass_and_the_oracle_routes_75_25() -> None:
    # Istio: a destination gets weight / sum of the route's weights: 3/4 and 1/4.
    objects = _weights_3_1()
    findings = validate_objects(objects)
    assert not has_errors(findings), format_findings(findings)
    assert summarize(findings) == "valid (1 warning)"
    finding = the_one(findings, "ABT001")
    assert (finding.severity, finding.path) == ("warning", "spec.http[2].route")
    assert finding.message.startswith(f"weights 3 + 1 = 4, not 100: Istio routes {GREEN_FQDN} 75% / {BLUE_FQDN} 25%")
    assert ensure_valid(objects, what="stage 3/1") == findings
    # The request classes without a header reach the weighted route.
    plain = routing.STANDARD_CLASSES[0]
    assert not plain.headers
    assert dict(routing.expected_distribution(objects, plain).shares) == {"green": 0.75, "blue": 0.25}


def test_abtest_validate_accepts_the_3_1_file_and_prints_the_split(tmp_path: Path) -> None:
    import io

    from abtest_harness import cli

    path = DATA / "weights-3-1.yaml"
    assert load_manifests(path) == _weights_3_1(), "data: weights-3-1.yaml is Blue_50 with weights 3 and 1"
    out = io.StringIO()
    assert cli.main(["validate", "--file", str(path)], out=out) == 0, out.getvalue()
    assert "valid (1 warning)" in out.getvalue() and "75% / " in out.getvalue()


def _bookinfo_3_1(tmp_path: Path, expect: str) -> Path:
    """The Bookinfo example with its 80/20 stage written as weights 3 and 1, expecting ``expect``."""
    import shutil

    example = tmp_path / "bookinfo"
    shutil.copytree(Path(__file__).parents[2] / "examples" / "bookinfo-reviews", example)
    route = example / "routes" / "shift-80-20.yaml"
    text = route.read_text()
    assert text.count("weight: 80") == 1 and text.count("weight: 20") == 1, "data: the example's 80/20 route"
    route.write_text(text.replace("weight: 80", "weight: 3").replace("weight: 20", "weight: 1"))
    spec = example / "rollout.yaml"
    text = spec.read_text()
    assert text.count("{v1: 0.8, v2: 0.2}") == 2, "data: the example's 80/20 expectations"
    spec.write_text(text.replace("{v1: 0.8, v2: 0.2}", expect))
    return spec


def test_a_stage_with_weights_3_and_1_passes_abtest_validate_at_75_25(tmp_path: Path) -> None:
    import io

    from abtest_harness import cli

    out = io.StringIO()
    spec = _bookinfo_3_1(tmp_path, "{v1: 0.75, v2: 0.25}")
    assert cli.main(["validate", "--spec", str(spec), "--stage", "shift-80-20"], out=out) == 0, out.getvalue()
    first, *findings = out.getvalue().splitlines()
    assert first.startswith("shift-80-20") and first.endswith("valid") and "INVALID" not in first, first
    assert "v1 75 " in first and "v2 25 " in first, first
    assert [line.split()[:2] for line in findings] == [["warning", "ABT001"]], findings
    assert "weights 3 + 1 = 4, not 100: Istio routes reviews/v1 75% / reviews/v2 25%" in findings[0]
    # The gate still holds the stage to its table: 3/1 is not the 80/20 the example expected.
    out = io.StringIO()
    spec = _bookinfo_3_1(tmp_path / "old", "{v1: 0.8, v2: 0.2}")
    assert cli.main(["validate", "--spec", str(spec), "--stage", "shift-80-20"], out=out) == 1, out.getvalue()
    assert "INVALID" in out.getvalue() and "error EXPECT" in out.getvalue(), out.getvalue()


@pytest.mark.parametrize(("weights", "path", "message"), [
    ([-1, 1], "spec.http[2].route[0].weight", "must not be negative"),
    ([0, 0], "spec.http[2].route", "= 0"),
    ([2**31 - 1, 2**31 - 1, 2], "spec.http[2].route", "above 4294967295"),
])
def test_weights_istio_or_envoy_refuse_stay_errors(weights: list[int], path: str, message: str) -> None:
    def mutate(objects: Objects) -> None:
        route = http(objects)[2]["route"]
        while len(route) < len(weights):
            route.append(copy.deepcopy(route[-1]))
        for dest, weight in zip(route, weights, strict=True):
            dest["weight"] = weight

    findings = broken(mutate)
    finding = the_one(findings, "ABT002")
    assert (finding.severity, finding.path) == ("error", path) and message in finding.message
    assert with_code(findings, "ABT021") == [], "the oracle's refusal of the same field is not repeated"
    assert with_code(findings, "ABT001") == []


# --------------------------------------------------------------------------- what the routing oracle refuses


def _destination_rule(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "blue", "namespace": "abtesting"},
            "spec": {"host": "model-svc-blue", **spec}}


def _oracle_refusal(objects: Objects) -> tuple[type[Exception], str, str]:
    """What the oracle raises for these objects at run time: (type, object, field)."""
    with pytest.raises(ConfigError) as caught:
        routing.expected_distribution(objects, routing.STANDARD_CLASSES[0])
    return type(caught.value), caught.value.obj, caught.value.field


_UNSUPPORTED: list[tuple[str, Callable[[Objects], object], str, str]] = [
    ("fault", lambda o: http(o)[2].update(fault={"abort": {"httpStatus": 500, "percentage": {"value": 10}}}),
     VS, "spec.http[2].fault"),
    ("mirror", lambda o: http(o)[1].update(mirror={"host": BLUE_FQDN, "port": {"number": 5001}}),
     VS, "spec.http[1].mirror"),
    ("rewrite", lambda o: http(o)[0].update(rewrite={"uri": "/v2/score"}), VS, "spec.http[0].rewrite"),
    ("queryParams", lambda o: http(o)[0]["match"][0].update(queryParams={"user": {"exact": "jason"}}),
     VS, "spec.http[0].match[0].queryParams"),
    ("consistentHash", lambda o: o.append(_destination_rule(
        trafficPolicy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}})),
     "DestinationRule abtesting/blue", "spec.trafficPolicy.loadBalancer.consistentHash"),
    ("ServiceEntry", lambda o: o.append({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "ext", "namespace": "abtesting"},
        "spec": {"hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                 "resolution": "DNS"}}),
     "ServiceEntry abtesting/ext", "kind"),
]


@pytest.mark.parametrize(("mutate", "obj", "path"), [c[1:] for c in _UNSUPPORTED], ids=[c[0] for c in _UNSUPPORTED])
def test_what_the_oracle_does_not_model_is_an_error_at_its_field(
    mutate: Callable[[Objects], object], obj: str, path: str
) -> None:
    objects = reference()
    mutate(objects)
    findings = validate_objects(objects)
    finding = the_one(findings, "ABT020")
    assert (finding.severity, finding.obj, finding.path) == ("error", obj, path), format_findings(findings)
    assert "routing oracle refuses it" in finding.message
    assert summarize(findings).startswith("invalid: 1 error")
    # Checked against the oracle itself: it refuses the same object and field at run time.
    assert _oracle_refusal(objects) == (UnsupportedField, obj, path)


def test_every_unsupported_field_of_a_stage_is_reported_not_only_the_first() -> None:
    objects = load_manifests(DATA / "fault-and-mirror.yaml")
    findings = validate_objects(objects)
    refused = with_code(findings, "ABT020")
    assert sorted((f.obj, f.path) for f in refused) == [(VS, "spec.http[1].mirror"), (VS, "spec.http[2].fault")], \
        format_findings(findings)
    assert [f.code for f in findings if f.severity == "error"] == ["ABT020", "ABT020"], format_findings(findings)
    # The oracle stops at the first of them.
    assert _oracle_refusal(objects) == (UnsupportedField, VS, "spec.http[1].mirror")
    # Several fields of one route and of several objects, too.
    http(objects)[1]["match"][0]["sourceLabels"] = {"app": "x"}
    objects.append(_destination_rule(trafficPolicy={"loadBalancer": {"consistentHash": {"useSourceIp": True}}}))
    paths = sorted((f.obj, f.path) for f in with_code(validate_objects(objects), "ABT020"))
    assert paths == [("DestinationRule abtesting/blue", "spec.trafficPolicy.loadBalancer.consistentHash"),
                     (VS, "spec.http[1].match[0].sourceLabels"), (VS, "spec.http[1].mirror"),
                     (VS, "spec.http[2].fault")]


def test_a_virtual_service_bound_only_to_the_mesh_is_not_the_gateways_business() -> None:
    # A VirtualService for sidecars only never routes ingress traffic: the oracle does not
    # read it, so neither its fault nor its mirror is refused.
    objects = reference()
    sidecars = copy.deepcopy(virtual_service(objects))
    sidecars["metadata"]["name"] = "sidecars"
    sidecars["spec"]["gateways"] = ["mesh"]
    sidecars["spec"]["http"][2]["fault"] = {"delay": {"fixedDelay": "1s", "percentage": {"value": 5}}}
    objects.append(sidecars)
    assert with_code(validate_objects(objects), "ABT020") == []
    assert routing.expected_distribution(objects, routing.STANDARD_CLASSES[0]).shares


def test_a_value_istio_refuses_is_an_error_from_the_oracles_rules() -> None:
    # Istio's validation: "prefix string match should not be empty" in a header match. The
    # schema allows it; the oracle (support.check_supported) refuses it with Istio's reason.
    objects = reference()
    http(objects)[0]["match"][0]["headers"]["x-api-version"] = {"prefix": ""}
    findings = validate_objects(objects)
    finding = the_one(findings, "ABT021")
    path = "spec.http[0].match[0].headers.x-api-version.prefix"
    assert (finding.severity, finding.obj, finding.path) == ("error", VS, path)
    assert "empty" in finding.message
    assert _oracle_refusal(objects) == (ConfigError, VS, path)


def test_the_refusals_of_an_object_with_schema_errors_do_not_crash() -> None:
    # `gateways: 5` is not a list: the schema names it, and the oracle's walk is not run on
    # what it cannot read.
    objects = reference()
    virtual_service(objects)["spec"]["gateways"] = 5
    http(objects)[2]["fault"] = {"abort": {"httpStatus": 500}}
    findings = validate_objects(objects)
    assert any(f.code == "IST0106" and f.path == "spec.gateways" for f in findings), format_findings(findings)


# --------------------------------------------------------------------------- destinations


def test_short_host_resolves_in_the_virtual_service_namespace() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[2]["route"][1]["destination"]["host"] = "model-svc-blue"

    assert broken(mutate) == []


def test_name_dot_namespace_host_is_reported_with_the_fqdn_to_use() -> None:
    # Istio expands only names without a dot; "svc.ns" is looked up as written.
    def mutate(objects: Objects) -> None:
        http(objects)[2]["route"][1]["destination"]["host"] = "model-svc-blue.abtesting"

    finding = the_one(broken(mutate), "IST0101")
    assert finding.path == "spec.http[2].route[1].destination.host"
    assert BLUE_FQDN in finding.message


def test_short_host_does_not_find_a_service_in_another_namespace() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["metadata"]["namespace"] = "elsewhere"
        http(objects)[2]["route"][1]["destination"]["host"] = "model-svc-blue"

    findings = broken(mutate)
    host = [f for f in with_code(findings, "IST0101") if f.path.endswith("route[1].destination.host")]
    assert len(host) == 1 and host[0].obj == "VirtualService elsewhere/mlmodel-virtualservice", \
        format_findings(findings)


def test_destination_port_the_service_does_not_expose() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[0]["route"][0]["destination"]["port"]["number"] = 8080

    finding = the_one(broken(mutate), "IST0101")
    assert finding.path == "spec.http[0].route[0].destination.port.number"
    assert f"{BLUE_FQDN}:8080" in finding.message and "5001" in finding.message


def test_destination_without_port_to_a_service_with_two_ports() -> None:
    def mutate(objects: Objects) -> None:
        service = get(objects, "Service", "model-svc-blue")
        service["spec"]["ports"].append({"name": "http-metrics", "port": 9090, "targetPort": 9090})
        del http(objects)[0]["route"][0]["destination"]["port"]

    finding = the_one(broken(mutate), "IST0112")
    assert (finding.obj, finding.path) == (VS, "spec.http[0].route[0].destination.port")
    assert "5001" in finding.message and "9090" in finding.message


def test_mirror_to_a_missing_service() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[2]["mirror"] = {"host": "shadow", "port": {"number": 5001}}

    finding = the_one(broken(mutate), "IST0101")
    assert finding.path == "spec.http[2].mirror.host"


def subset_variant() -> Objects:
    """Both versions behind one Service, told apart by DestinationRule subsets."""
    objects = [o for o in reference() if o["metadata"]["name"] != "model-svc-green"]
    service = get(objects, "Service", "model-svc-blue")
    service["metadata"]["name"] = "model-svc"
    del service["spec"]["selector"]["model_version"]
    objects.append({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "model", "namespace": "abtesting"},
        "spec": {"host": "model-svc", "subsets": [
            {"name": "green", "labels": {"model_version": "green"}},
            {"name": "blue", "labels": {"model_version": "blue"}},
        ]},
    })
    for rule in http(objects):
        for dest in rule["route"]:
            version = "blue" if "blue" in dest["destination"]["host"] else "green"
            dest["destination"] = {"host": "model-svc.abtesting.svc.cluster.local", "subset": version,
                                   "port": {"number": 5001}}
    return objects


def test_subset_variant_is_clean() -> None:
    findings = validate_objects(subset_variant())
    assert findings == [], format_findings(findings)


def test_subset_missing_from_the_destination_rule() -> None:
    objects = subset_variant()
    http(objects)[2]["route"][1]["destination"]["subset"] = "purple"
    finding = the_one(validate_objects(objects), "IST0101")
    assert finding.path == "spec.http[2].route[1].destination.subset"
    assert "purple" in finding.message and "['blue', 'green']" in finding.message


def test_subset_without_any_destination_rule() -> None:
    objects = [o for o in subset_variant() if o["kind"] != "DestinationRule"]
    findings = with_code(validate_objects(objects), "IST0101")
    assert {f.path for f in findings} == {
        "spec.http[0].route[0].destination.subset", "spec.http[1].route[0].destination.subset",
        "spec.http[2].route[0].destination.subset", "spec.http[2].route[1].destination.subset",
    }
    assert all("no DestinationRule" in f.message for f in findings)


def test_subset_whose_labels_select_no_pods_is_a_warning() -> None:
    objects = [o for o in subset_variant() if o["metadata"]["name"] != "model-blue"]
    findings = validate_objects(objects)
    # Istio's code for it (DestinationRuleSubsetNotSelectPods, pkg/config/analysis/msg/messages.yaml).
    warning = the_one(findings, "IST0173")
    assert (warning.severity, warning.obj, warning.path) == (
        "warning", "DestinationRule abtesting/model", "spec.subsets[1].labels")


def test_misspelled_field_in_a_destination_rule() -> None:
    objects = subset_variant()
    get(objects, "DestinationRule", "model")["spec"]["subets"] = []
    finding = the_one(validate_objects(objects), "IST0106")
    assert (finding.obj, finding.path) == ("DestinationRule abtesting/model", "spec.subets")


# --------------------------------------------------------------------------- gateways


def test_referenced_gateway_that_does_not_exist() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["spec"]["gateways"] = ["mesh", "mlmodel-gatewy"]

    finding = the_one(broken(mutate), "IST0101")
    assert (finding.obj, finding.path) == (VS, "spec.gateways[1]")
    assert "did you mean 'mlmodel-gateway'" in finding.message


def test_gateway_referenced_with_its_namespace_is_found() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["spec"]["gateways"] = ["abtesting/mlmodel-gateway"]

    assert broken(mutate) == []


@pytest.mark.parametrize(
    "ref",
    ["mlmodel-gateway", "abtesting/mlmodel-gateway", "./mlmodel-gateway",
     "mlmodel-gateway.abtesting.svc.cluster.local"],
)
def test_gateway_reference_forms_agree_with_the_oracle(ref: str) -> None:
    # Every form Istio resolves (and routing.resolve_gateway_name with it) names the Gateway:
    # validate must not call a reference the oracle routes through "not found".
    objects = reference()
    virtual_service(objects)["spec"]["gateways"] = [ref]
    assert with_code(validate_objects(objects), "IST0101") == [], ref
    got = routing.expected_distribution(objects, routing.STANDARD_CLASSES[0])
    assert got.shares.get("status:404", 0.0) == 0.0, got.describe()


def test_server_host_of_another_namespace_does_not_admit() -> None:
    # "other/*" admits VirtualServices of namespace other only: the oracle answers 404.
    def mutate(objects: Objects) -> None:
        get(objects, "Gateway", "mlmodel-gateway")["spec"]["servers"][0]["hosts"] = ["other/*"]

    assert the_one(broken(mutate), "IST0132").path == "spec.hosts[0]"
    objects = reference()
    mutate(objects)
    assert routing.expected_distribution(objects, routing.STANDARD_CLASSES[0]).certain == "status:404"


def test_virtual_service_not_exported_to_the_gateway_namespace() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["spec"]["exportTo"] = ["other"]

    finding = the_one(broken(mutate), "IST0132")
    assert finding.path == "spec.hosts[0]"
    assert "exportTo ['other'] hides it from abtesting/mlmodel-gateway" in finding.message, finding.message
    objects = reference()
    mutate(objects)
    assert routing.expected_distribution(objects, routing.STANDARD_CLASSES[0]).certain == "status:404"


def test_gateway_in_another_namespace_is_not_found() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["spec"]["gateways"] = ["istio-system/mlmodel-gateway"]

    assert the_one(broken(mutate), "IST0101").path == "spec.gateways[0]"


def test_misspelled_field_in_a_gateway() -> None:
    def mutate(objects: Objects) -> None:
        gateway = get(objects, "Gateway", "mlmodel-gateway")
        gateway["spec"]["servers"][0]["hostz"] = gateway["spec"]["servers"][0].pop("hosts")

    findings = with_code(broken(mutate), "IST0106")
    assert [(f.obj, f.path) for f in findings] == [
        ("Gateway abtesting/mlmodel-gateway", "spec.servers[0].hosts"),
        ("Gateway abtesting/mlmodel-gateway", "spec.servers[0].hostz"),
    ], format_findings(findings)
    assert findings[0].message == "required field missing"
    assert "did you mean 'hosts'" in findings[1].message


# --------------------------------------------------------------------------- matches


def test_upper_case_header_name() -> None:
    def mutate(objects: Objects) -> None:
        headers = http(objects)[0]["match"][0]["headers"]
        headers["X-Api-Version"] = headers.pop("x-api-version")

    finding = the_one(broken(mutate), "ABT003")
    assert (finding.obj, finding.path) == (VS, "spec.http[0].match[0].headers.X-Api-Version")
    assert "'x-api-version'" in finding.message


def test_regex_that_re2_rejects() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[0]["match"][0]["headers"]["x-api-version"] = {"regex": "(blue"}

    # Istio's validation refuses it (validateStringMatchRegexp); istioctl reports SchemaValidationError.
    finding = the_one(broken(mutate), "IST0106")
    assert finding.path == "spec.http[0].match[0].headers.x-api-version.regex" and finding.severity == "error"


def test_route_after_a_prefix_slash_match_is_unreachable() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[0]["match"] = [{"uri": {"prefix": "/"}}]

    findings = with_code(broken(mutate), "IST0130")
    assert [f.path for f in findings] == ["spec.http[1]", "spec.http[2]"], format_findings(findings)
    assert "blue-header" in findings[0].message


def test_route_whose_matches_repeat_an_earlier_route_is_unreachable() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[1]["match"] = copy.deepcopy(http(objects)[0]["match"])

    finding = the_one(broken(mutate), "IST0130")
    assert finding.path == "spec.http[1]" and "repeated" in finding.message


def test_header_route_with_a_narrower_uri_is_still_reachable() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[1]["match"].append({"uri": {"prefix": "/score/v2"}})

    assert broken(mutate) == []


def test_union_errors_are_reported_once_for_the_best_fitting_member() -> None:
    def mutate(objects: Objects) -> None:
        http(objects)[0]["match"][0]["uri"] = {"prefx": "/score"}

    findings = broken(mutate)
    schema = with_code(findings, "IST0106")
    assert [(f.path, "did you mean 'prefix'" in f.message) for f in schema] == [
        ("spec.http[0].match[0].uri.prefx", True)], format_findings(findings)


def test_istio_objects_as_the_server_returns_them_pass() -> None:
    # `kubectl get -o yaml` adds timestamps, managedFields and status; all are valid.
    stamp = "2026-01-02T03:04:05Z"

    def mutate(objects: Objects) -> None:
        vs = virtual_service(objects)
        vs["metadata"].update(
            creationTimestamp=stamp, generation=2, resourceVersion="123", uid="0-1-2",
            managedFields=[{"manager": "kubectl", "operation": "Apply", "apiVersion": vs["apiVersion"],
                            "time": stamp, "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}])
        vs["status"] = {"observedGeneration": 2, "conditions": [{"type": "Reconciled", "status": "True",
                                                                 "lastTransitionTime": stamp}]}

    assert broken(mutate) == []


def test_misspelled_metadata_field_of_an_istio_object() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["metadata"]["label"] = {"a": "b"}

    finding = the_one(broken(mutate), "IST0106")
    assert (finding.obj, finding.path) == (VS, "metadata.label")
    assert "did you mean 'labels'" in finding.message


@pytest.mark.parametrize("api_version", ["networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"])
def test_older_istio_versions_are_strict_too(api_version: str) -> None:
    def mutate(objects: Objects) -> None:
        for obj in objects:
            if obj["apiVersion"].startswith("networking.istio.io/"):
                obj["apiVersion"] = api_version
        http(objects)[0]["mtach"] = http(objects)[0].pop("match")

    finding = the_one(broken(mutate), "IST0106")
    assert finding.path == "spec.http[0].mtach" and api_version in finding.message


def test_snake_case_field_names_are_not_accepted() -> None:
    # The models also know fields by their Python names; Kubernetes only by the camelCase ones.
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["spec"]["export_to"] = ["."]

    assert the_one(broken(mutate), "IST0106").path == "spec.export_to"


# --------------------------------------------------------------------------- workloads and services


def _container(objects: Objects, name: str = "model-blue") -> dict[str, Any]:
    container: dict[str, Any] = get(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_image_pull_policy_always_is_a_warning() -> None:
    findings = broken(lambda o: _container(o).update(imagePullPolicy="Always"))
    finding = the_one(findings, "ABT010")
    assert (finding.severity, finding.obj, finding.path) == (
        "warning", "Deployment abtesting/model-blue", "spec.template.spec.containers[0].imagePullPolicy")
    assert not has_errors(findings)


def test_latest_tag_without_pull_policy_implies_always() -> None:
    def mutate(objects: Objects) -> None:
        container = _container(objects)
        del container["imagePullPolicy"]
        container["image"] = "abtest/scorer-b:latest"

    finding = the_one(broken(mutate), "ABT010")
    assert finding.path == "spec.template.spec.containers[0].image"


def test_pinned_tag_without_pull_policy_is_fine() -> None:
    assert broken(lambda o: _container(o).pop("imagePullPolicy")) == []


def test_missing_readiness_probe_is_a_warning() -> None:
    finding = the_one(broken(lambda o: _container(o, "model-green").pop("readinessProbe")), "ABT011")
    assert (finding.severity, finding.obj, finding.path) == (
        "warning", "Deployment abtesting/model-green", "spec.template.spec.containers[0].readinessProbe")


def test_service_selector_typo_selects_no_pods() -> None:
    def mutate(objects: Objects) -> None:
        get(objects, "Service", "model-svc-green")["spec"]["selector"]["model_version"] = "gren"

    finding = the_one(broken(mutate), "IST0127")
    assert finding.obj == "Service abtesting/model-svc-green" and "model_version=gren" in finding.message


def test_unnamed_service_port_is_a_warning() -> None:
    # One of the reference charts' faults: Istio cannot read the protocol from the port.
    def mutate(objects: Objects) -> None:
        port = get(objects, "Service", "model-svc-green")["spec"]["ports"][0]
        del port["name"]
        port["targetPort"] = 5001

    finding = the_one(broken(mutate), "IST0118")
    assert (finding.severity, finding.obj, finding.path) == (
        "warning", "Service abtesting/model-svc-green", "spec.ports[0].name")


@pytest.mark.parametrize("port", [{"name": "http-model"}, {"name": "web", "appProtocol": "http"}])
def test_port_named_by_istio_convention_or_app_protocol_is_fine(port: dict[str, str]) -> None:
    def mutate(objects: Objects) -> None:
        service_port = get(objects, "Service", "model-svc-green")["spec"]["ports"][0]
        service_port.update(port, targetPort=5001)

    assert broken(mutate) == []


def test_target_port_name_that_no_container_declares() -> None:
    def mutate(objects: Objects) -> None:
        get(objects, "Service", "model-svc-blue")["spec"]["ports"][0]["targetPort"] = "htp"

    finding = the_one(broken(mutate), "ABT012")
    assert (finding.severity, finding.obj, finding.path) == (
        "error", "Service abtesting/model-svc-blue", "spec.ports[0].targetPort")
    assert "['http']" in finding.message


def test_numeric_target_port_that_no_container_declares() -> None:
    # targetPort 5002 in front of containerPort 5001: on a cluster the connections are refused
    # and the gateway answers 503; the oracle says status:503 for the same objects.
    def mutate(objects: Objects) -> None:
        get(objects, "Service", "model-svc-blue")["spec"]["ports"][0]["targetPort"] = 5002

    finding = the_one(broken(mutate), "ABT013")
    assert (finding.severity, finding.obj, finding.path) == (
        "error", "Service abtesting/model-svc-blue", "spec.ports[0].targetPort")
    assert "targetPort 5002" in finding.message and "[5001]" in finding.message, finding.message
    assert with_code(broken(mutate), "ABT012") == [], "a number is not a port name"


@pytest.mark.parametrize("target", [5001, "5001", None])
def test_numeric_target_port_that_a_container_declares_is_fine(target: int | str | None) -> None:
    # None: targetPort left out, so it is the port number (5001), which the container declares.
    def mutate(objects: Objects) -> None:
        port = get(objects, "Service", "model-svc-blue")["spec"]["ports"][0]
        if target is None:
            del port["targetPort"]
        else:
            port["targetPort"] = target

    assert with_code(broken(mutate), "ABT013") == []


def test_left_out_target_port_is_the_port_number() -> None:
    def mutate(objects: Objects) -> None:
        port = get(objects, "Service", "model-svc-blue")["spec"]["ports"][0]
        del port["targetPort"]
        port["port"] = 80
        for route in http(objects):
            for destination in route["route"]:
                if destination["destination"]["host"] == BLUE_FQDN:
                    destination["destination"]["port"]["number"] = 80

    finding = the_one(broken(mutate), "ABT013")
    assert "targetPort 80 (targetPort left out" in finding.message, finding.message


def test_virtual_service_host_that_the_gateway_does_not_admit() -> None:
    def mutate(objects: Objects) -> None:
        get(objects, "Gateway", "mlmodel-gateway")["spec"]["servers"][0]["hosts"] = ["*.example.com"]
        virtual_service(objects)["spec"]["hosts"] = ["scoring.example.com", "scoring.example.org"]

    finding = the_one(broken(mutate), "IST0132")
    assert (finding.severity, finding.obj, finding.path) == ("warning", VS, "spec.hosts[1]")


# --------------------------------------------------------------------------- Kubernetes schemas


def test_unknown_field_in_a_deployment_is_an_error_at_its_path() -> None:
    findings = broken(lambda o: _container(o).update(imagePullPolcy="IfNotPresent"))
    finding = the_one(findings, "IST0106")
    assert (finding.obj, finding.path) == (
        "Deployment abtesting/model-blue", "spec.template.spec.containers[0].imagePullPolcy")
    assert "did you mean 'imagePullPolicy'" in finding.message


def test_wrong_type_in_a_service() -> None:
    def mutate(objects: Objects) -> None:
        get(objects, "Service", "model-svc-blue")["spec"]["ports"][0]["port"] = "5001"

    finding = the_one(broken(mutate), "IST0106")
    assert (finding.obj, finding.path) == ("Service abtesting/model-svc-blue", "spec.ports[0].port")


def test_missing_required_field_is_reported_at_its_own_path() -> None:
    finding = the_one(broken(lambda o: _container(o).pop("name")), "IST0106")
    assert (finding.path, finding.message) == (
        "spec.template.spec.containers[0].name", "required field missing")


def test_kubernetes_findings_agree_with_kubernetes_validate() -> None:
    # Same bundled schemas, same verdicts: the good object passes both, the broken one fails both.
    objects = reference()
    deployment = get(objects, "Deployment", "model-blue")
    kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    deployment["spec"]["replicaz"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    assert the_one(validate_objects(objects), "IST0106").path == "spec.replicaz"


def test_kind_without_a_schema() -> None:
    def mutate(objects: Objects) -> None:
        get(objects, "Deployment", "model-blue")["apiVersion"] = "apps/v2"

    finding = the_one(broken(mutate), "ABT005")
    assert (finding.obj, finding.path) == ("Deployment abtesting/model-blue", "apiVersion")


def test_unknown_istio_version() -> None:
    def mutate(objects: Objects) -> None:
        virtual_service(objects)["apiVersion"] = "networking.istio.io/v2"

    assert the_one(broken(mutate), "ABT005").obj == VS


def test_not_an_object() -> None:
    objects: list[Any] = [*reference(), {"kind": "Service", "metadata": {"name": "x"}}, "text"]
    findings = with_code(validate_objects(objects), "ABT006")
    assert [(f.obj, f.message) for f in findings] == [
        ("object #7", "missing apiVersion"), ("object #8", "not a mapping but str")]


def test_duplicate_object() -> None:
    findings = broken(lambda o: o.append(copy.deepcopy(get(o, "Service", "model-svc-blue"))))
    assert the_one(findings, "ABT004").obj == "Service abtesting/model-svc-blue"


# --------------------------------------------------------------------------- results


def test_finding_reads_as_one_line() -> None:
    finding = Finding("ABT001", "error", VS, "spec.http[2].route", "weights 60 + 50 = 110, must sum to 100")
    assert str(finding) == (
        "error ABT001 VirtualService abtesting/mlmodel-virtualservice: spec.http[2].route: "
        "weights 60 + 50 = 110, must sum to 100")


def test_summaries_and_the_gate() -> None:
    warn = Finding("ABT011", "warning", "Deployment a/b", "x", "m")
    err = Finding("ABT001", "error", "VirtualService a/b", "y", "n")
    assert (summarize([warn]), summarize([warn, err, err])) == (
        "valid (1 warning)", "invalid: 2 errors, 1 warning")
    assert (has_errors([warn]), has_errors([warn, err])) == (False, True)
    assert format_findings([warn, err]).splitlines()[0].startswith("error"), "errors come first"

    assert ensure_valid(reference(), what="stage Blue_50") == []
    objects = reference()
    http(objects)[2]["route"][0]["weight"] = -60
    with pytest.raises(InvalidObjects) as caught:
        ensure_valid(objects, what="stage Blue_50")
    assert isinstance(caught.value, ConfigError)
    assert caught.value.field == "spec.http[2].route[0].weight" and "stage Blue_50" in str(caught.value)
    assert [f.code for f in caught.value.findings] == ["ABT002"]


# --------------------------------------------------------------------------- Istio schemas by version


def _retries(objects: Objects, **fields: Any) -> None:
    http(objects)[2]["retries"] = {"attempts": 2, **fields}


def test_a_field_added_after_istio_1_24_validates_against_the_pinned_release() -> None:
    # spec.http[].retries.retryIgnorePreviousHosts is in Istio 1.30's VirtualService CRD and
    # not in 1.24's: the pinned release accepts it, 1.24's schemas refuse it as unknown.
    objects = reference()
    _retries(objects, retryIgnorePreviousHosts=True)
    assert with_code(validate_objects(objects), "IST0106") == []
    assert with_code(validate_objects(objects, istio_version="1.30.4"), "IST0106") == []
    old = the_one(validate_objects(objects, istio_version="1.24"), "IST0106")
    assert (old.obj, old.path) == (VS, "spec.http[2].retries.retryIgnorePreviousHosts")
    assert "unknown field" in old.message and "Istio 1.24" in old.message


@pytest.mark.parametrize("version", ["1.24", "1.30"])
def test_a_field_in_neither_release_is_refused(version: str) -> None:
    objects = reference()
    _retries(objects, retryIgnoreAllHosts=True)
    finding = the_one(validate_objects(objects, istio_version=version), "IST0106")
    assert finding.path == "spec.http[2].retries.retryIgnoreAllHosts"


def test_the_default_istio_schemas_are_those_the_kind_backend_installs() -> None:
    from abtest_harness import istio_schemas, istioctl

    assert istio_schemas.minor_of(istioctl.ISTIO_VERSION) == istio_schemas.DEFAULT_MINOR
    bundled = istio_schemas.for_version(istioctl.ISTIO_VERSION)
    assert bundled.release.startswith(istio_schemas.DEFAULT_MINOR + ".")
    assert len(bundled.source_sha256) == 64
    with pytest.raises(ConfigError, match="supported: 1.24, 1.30"):
        istio_schemas.for_version("1.19.0")


def test_the_bundled_schemas_reproduce_from_the_crds_in_the_go_module_cache() -> None:
    # The Istio module the translation builds on carries the same CRD file: where it is in the
    # module cache with the recorded checksum, extracting it again gives exactly the data bundled.
    import glob
    import hashlib

    from abtest_harness import istio_schemas
    from abtest_harness.istio_schemas import extract

    bundled = istio_schemas.for_version()
    cache_root = Path.home() / "go" / "pkg" / "mod" / "istio.io"
    candidates = glob.glob(str(cache_root / "istio@*" / "manifests/charts/base/files/crd-all.gen.yaml"))
    matching = [Path(c) for c in candidates
                if hashlib.sha256(Path(c).read_bytes()).hexdigest() == bundled.source_sha256]
    if not matching:
        pytest.skip(f"no istio.io/istio module with the CRDs of {bundled.release} under {cache_root}")
    fresh = extract.extract(matching[0].read_text(encoding="utf-8"))
    for api_version, kinds in bundled.kinds.items():
        for kind in kinds:
            assert bundled.schema(api_version, kind) == fresh[api_version][kind], (api_version, kind)


def test_conversion_refuses_unknown_fields_unless_the_crd_preserves_them() -> None:
    from abtest_harness.istio_schemas.extract import to_json_schema

    crd = {"type": "object", "properties": {
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "port": {"x-kubernetes-int-or-string": True},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "maybe": {"type": "string", "nullable": True, "format": "int32", "description": "x"},
    }}
    assert to_json_schema(crd) == {"type": "object", "additionalProperties": False, "properties": {
        "open": {"type": "object"},
        "port": {"type": ["integer", "string"]},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "maybe": {"type": ["string", "null"]},
    }}


# --------------------------------------------------------------------------- bad input files


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The classic alias bomb: each line is `width` aliases of the line before it."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest_harness import yamlio

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_bomb())
    assert len(bomb.read_bytes()) < 700, "a few hundred bytes that stand for 9^9 = 387 million strings"
    constructed: list[object] = []
    real = yamlio._Loader.construct_document
    monkeypatch.setattr(yamlio._Loader, "construct_document",
                        lambda self, node: constructed.append(node) or real(self, node))
    with pytest.raises(ConfigError) as caught:
        load_manifests(bomb)
    assert caught.value.obj == str(bomb) and caught.value.field == "document 1"
    assert "alias" in caught.value.message and "refused" in caught.value.message
    assert constructed == [], "no Python object may be built from the bomb"
    assert "\n" not in str(caught.value)


def test_small_aliases_are_fine_and_a_cycle_is_refused(tmp_path: Path) -> None:
    from abtest_harness import yamlio

    assert yamlio.parse_documents("base: &b {k: v}\nother: *b\n") == [{"base": {"k": "v"}, "other": {"k": "v"}}]
    with pytest.raises(ConfigError, match="expands without end"):
        yamlio.parse_documents("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="nested more than"):
        yamlio.parse_documents("[" * (yamlio.MAX_DEPTH + 5) + "]" * (yamlio.MAX_DEPTH + 5))


@pytest.mark.parametrize("case", ["missing", "directory", "not-utf8", "too-large"])
def test_bad_input_files_are_one_line_config_errors(case: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from abtest_harness import cli, yamlio

    path = tmp_path / "x.yaml"
    expected = {"missing": "no such file", "directory": "is a directory",
                "not-utf8": "not UTF-8 (byte 0xff at offset 14)", "too-large": "larger than 64"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "not-utf8":
        path.write_bytes(b"kind: Service\n\xff\n")
    elif case == "too-large":
        monkeypatch.setattr(yamlio, "MAX_BYTES", 64)
        path.write_text("a: " + "x" * 100 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_manifests(path)
    assert caught.value.obj == str(path) and expected in caught.value.message
    # Several paths as one set: the same errors (a directory is read; this one holds no YAML file).
    with pytest.raises(ConfigError) as caught:
        load_manifest_paths([path])
    assert caught.value.obj == str(path) and expected in caught.value.message
    # The command line (`abtest validate --file`): one line on stderr naming the path, exit 2
    # (bad input), no traceback.
    err = tmp_path / "stderr"
    with open(err, "w") as stream:
        monkeypatch.setattr("sys.stderr", stream)
        assert cli.main(["validate", "--file", str(path)]) == 2
    lines = err.read_text().splitlines()
    common = {"missing": "no such file", "directory": "holds no .yaml/.yml file", "not-utf8": "not UTF-8",
              "too-large": "larger than 64"}[case]
    assert len(lines) == 1 and lines[0].startswith("abtest: error: ") and str(path) in lines[0], lines
    assert common in lines[0], lines


def test_validation_and_stats_load_nothing_heavy_at_import() -> None:
    # `abtest validate` must not pay for scipy, numpy, python-jsonschema (only needed to explain
    # an invalid object), pydantic, matplotlib, docker or a mesh backend.
    import sys

    from abtest_harness import proc

    code = ("import sys; import abtest_harness.validate, abtest_harness.stats, abtest_harness.yamlio, "
            "abtest_harness.istio_schemas; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(proc.run([sys.executable, "-c", code], timeout=60).stdout.split())
    heavy = {"scipy", "numpy", "jsonschema", "pydantic", "matplotlib", "docker", "cloudcoil", "kubernetes"}
    assert loaded & heavy == set(), sorted(loaded & heavy)
    mesh = proc.run([sys.executable, "-c", code.replace("m.split('.')[0]", "m")], timeout=60).stdout.split()
    assert not [m for m in mesh if m.startswith("abtest_harness.mesh")], mesh
