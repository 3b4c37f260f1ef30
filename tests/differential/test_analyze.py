"""Istio's configuration analyzers beside ``abtest validate``, on every stage of the sample and the examples.

Each finding one side reports and the other does not must be a row of the table in
docs/istio-translation.md (``analyzer-differences``); a difference the table does not list,
or a row that no longer happens, fails. Istio's side is the istio-xds program's ``-analyze``
mode in two runs: ``file``, what ``istioctl analyze --use-kube=false -A`` runs (Services,
Namespaces and Pods in files ignored), and ``runtime``, with those kinds read too. Besides the
real stages, every probe of tests/differential/analyze_probes.py (Blue_50 with one fault) is
compared, so that the agreement on faults is measured, not only on clean stages.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import pytest

from abtest_harness import istio_analyze as ia
from abtest_harness.errors import ToolNotFound
from abtest_harness.render import render
from abtest_harness.spec import load_spec
from abtest_harness.validate import Finding, validate_objects
from tests.differential.analyze_probes import PROBES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "istio-translation.md"
MARKER = "<!-- analyzer-differences"
SPECS = ["manifests/rollout.yaml", *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("examples/*/rollout.yaml"))]

Key = tuple[str, str, str, str, str]  # mode, case id, side, code, object
MODES = ("file", "runtime")


def documented() -> dict[Key, str]:
    """The rows of the table after MARKER, one key per stage named in a row."""
    lines = DOC.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(MARKER))
    rows: dict[Key, str] = {}
    for line in lines[start + 3:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        mode, stages, side, code, obj, why = cells[0], cells[1], cells[2], cells[3], cells[4], "|".join(cells[5:])
        spec, _, names = stages.partition(":")
        for m in MODES if mode == "both" else (mode,):
            for name in names.split(","):
                rows[(m, f"{spec.strip(' `')}:{name.strip()}", side, code, obj)] = why
    return rows


@pytest.fixture(scope="module")
def stages() -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for path in SPECS:
        spec = load_spec(ROOT / path)
        try:
            for stage in spec.stages:
                cases[f"{path}:{stage.name}"] = render(spec, stage)
        except ToolNotFound as exc:  # a Helm example needs helm (make helm)
            if os.environ.get("CI") == "true":
                pytest.fail(f"{path}: {exc}", pytrace=False)
            pytest.skip(f"{path}: {exc}")
    sample = load_spec(ROOT / SPECS[0])
    base = render(sample, sample.stage("Blue_50"))
    for name, probe in PROBES.items():
        objects = copy.deepcopy(base)
        probe(objects)
        cases[f"probe:{name}"] = objects
    return cases


@pytest.fixture(scope="module")
def istio(istio_xds_binary: str, stages: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, ia.Analysis]]:
    return {mode: ia.analyze_batch(stages, runtime_kinds=mode == "runtime") for mode in MODES}


def test_the_table_parses_into_rows_naming_known_stages(stages: dict[str, list[dict[str, Any]]]) -> None:
    rows = documented()
    assert rows, "no rows under the analyzer-differences marker"
    for mode, case_id, side, code, obj in rows:
        assert mode in MODES
        assert case_id in stages, f"the table names a stage that does not exist: {case_id}"
        assert side in ("abtest", "istio")
        assert re.fullmatch(r"(IST|ABT)\d{4}|ABT\d{3}", code), code
        assert re.fullmatch(r"\w+ ([\w.-]+/)?[\w.-]+", obj), obj


def test_every_stage_is_analysed(
    stages: dict[str, list[dict[str, Any]]], istio: dict[str, dict[str, ia.Analysis]]
) -> None:
    assert len([c for c in stages if not c.startswith("probe:")]) >= 16  # 6 sample stages, 5 + 5 examples
    for mode in MODES:
        assert set(istio[mode]) == set(stages)


def test_file_mode_skips_what_istioctl_skips(istio: dict[str, dict[str, ia.Analysis]]) -> None:
    """The explanation of the file-mode rows: without Services Istio checks no destination host."""
    skipped = set(istio["file"]["probe:missing-host"].skipped)
    assert {"virtualservice.DestinationHostAnalyzer", "service.PortNameAnalyzer"} <= skipped
    assert istio["runtime"]["probe:missing-host"].skipped == ()


def test_differences_are_exactly_the_documented_rows(
    stages: dict[str, list[dict[str, Any]]], istio: dict[str, dict[str, ia.Analysis]]
) -> None:
    found: dict[Key, str] = {}
    for case_id, objects in stages.items():
        ours = validate_objects(objects)
        for mode in MODES:
            for d in ia.compare(ours, istio[mode][case_id].findings):
                found[(mode, case_id, d.side, d.code, d.obj)] = d.message
    rows = documented()
    new = [f"{k[0]} {k[1]}: only {k[2]}: {k[3]} {k[4]}: {msg}" for k, msg in sorted(found.items()) if k not in rows]
    gone = [f"{k[0]} {k[1]}: only {k[2]}: {k[3]} {k[4]}" for k in sorted(rows) if k not in found]
    assert not new, "differences the table in docs/istio-translation.md does not explain:\n" + "\n".join(new)
    assert not gone, "rows of the table that no longer happen:\n" + "\n".join(gone)


def test_compare_matches_by_code_and_object_not_level() -> None:
    ours = [
        Finding("IST0130", "error", "VirtualService ns/vs", "spec.http[1]", "unreachable"),
        Finding("ABT001", "warning", "VirtualService ns/vs", "spec.http[0]", "weights"),
    ]
    theirs = [
        ia.IstioFinding("IST0130", "Warning", "VirtualService ns/vs", "rule #1 not used"),
        ia.IstioFinding("IST0101", "Error", "VirtualService ns/other", "gateway not found"),
    ]
    assert ia.compare(ours, theirs) == [
        ia.Difference("abtest", "ABT001", "VirtualService ns/vs", "weights"),
        ia.Difference("istio", "IST0101", "VirtualService ns/other", "gateway not found"),
    ]


def test_istio_reports_what_is_broken(istio_xds_binary: str) -> None:
    """The analyzers do run: a reference to a missing Gateway is Istio's IST0101, on the object."""
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "vs", "namespace": "ns"},
        "spec": {"hosts": ["*"], "gateways": ["nogw"], "http": [{"route": [{"destination": {"host": "svc"}}]}]},
    }
    found = ia.analyze([vs]).findings
    assert ("IST0101", "VirtualService ns/vs") in {(f.code, f.obj) for f in found}, found
    assert all(f.severity in ("Error", "Warning", "Info") for f in found)


def test_analysis_reads_the_programs_json() -> None:
    data = {
        "analysis": [
            {"code": "IST0132", "level": "Warning", "object": "VirtualService ns/b", "message": "m2"},
            {"code": "IST0101", "level": "Error", "object": "VirtualService ns/a", "message": "m1"},
        ],
        "skipped": ["service.PortNameAnalyzer"],
    }
    got = ia.Analysis.from_json(data)
    assert [f.code for f in got.findings] == ["IST0101", "IST0132"]
    assert str(got.findings[0]) == "error IST0101 VirtualService ns/a: m1"
    assert got.skipped == ("service.PortNameAnalyzer",)
    assert ia.Analysis.from_json({"analysis": None}) == ia.Analysis((), ())
