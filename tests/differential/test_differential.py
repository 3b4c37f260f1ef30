"""The oracle, the Python translation and Istio's own route table, request class by request class.

Every sample stage and ABTEST_DIFFERENTIAL_CASES (default 2000) generated VirtualServices go
through Istio in two batched runs of istio-xds; each request class is evaluated on the three
sides (tests/differential/evaluate.py). A class on which they differ must be explained by a
documented rule (tests/differential/run.py KNOWN, docs/istio-translation.md); the counts are
written to artifacts/differential.txt.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import pytest

from abtest_harness.mesh import istio_xds as ix
from abtest_harness.routing import Request
from tests.differential import cases as dc
from tests.differential import evaluate as ev
from tests.differential import run as drun
from tests.unit import objects as k8s

N_CASES = int(os.environ.get("ABTEST_DIFFERENTIAL_CASES", "2000"))


@pytest.fixture(scope="module")
def differential(istio_xds_binary: str) -> drun.Run:
    result = drun.run(N_CASES, jobs=2)
    out = Path(os.environ.get("ABTEST_ARTIFACTS", "artifacts"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "differential.txt").write_text(drun.report(result, limit=200) + "\n")
    return result


def test_every_stage_agrees_on_all_three_sides(differential: drun.Run) -> None:
    stages = [c for c in differential.results if c.case_id.startswith("stage:")]
    assert len(stages) >= 6
    problems = [
        f"{case.case_id}: {cls.describe()}" for case in stages for cls in case.classes if cls.category != "agree"
    ]
    assert not problems, "\n".join(problems)


def test_no_unexplained_disagreement(differential: drun.Run) -> None:
    assert differential.cases >= N_CASES
    assert not differential.unexplained, drun.report(differential, limit=30)


def test_the_comparison_has_power(differential: drun.Run) -> None:
    """Agreement must come from varied outcomes, not from everything being refused or 404."""
    assert differential.counts["agree"] >= N_CASES * 5
    outcomes: set[str] = set()
    splits = 0
    for case in differential.results:
        for cls in case.classes:
            if cls.category == "agree" and not isinstance(cls.istio, str):
                outcomes |= set(cls.istio)
                splits += len(cls.istio) > 1
    assert {"green", "blue", "red", "status:404", "status:503"} <= outcomes, outcomes
    assert splits >= N_CASES // 4


def test_weights_three_to_one_route_75_25_in_istio(istio_xds_binary: str) -> None:
    """Istio splits by weight / sum: 3/1 is 75/25; its validation admits the VirtualService."""
    vs = k8s.virtual_service([{"route": [k8s.destination("green", 3), k8s.destination("blue", 1)]}])
    objects = [*dc.base_objects(), vs]
    output = ix.generate(objects, attribution=False)
    assert not [f for f in output.validation if f.get("error")], output.validation
    result = dc.compare("3/1", objects, output, [Request("plain")])
    (cls,) = result.classes
    assert cls.istio == {"green": Fraction(3, 4), "blue": Fraction(1, 4)}, cls.describe()


def test_istio_refuses_weights_summing_to_zero(istio_xds_binary: str) -> None:
    vs = k8s.virtual_service([{"route": [k8s.destination("green", 0), k8s.destination("blue", 0)]}])
    output = ix.generate([*dc.base_objects(), vs], attribution=False)
    errors = [f["error"] for f in output.validation if f.get("error")]
    assert errors and "weight" in errors[0], output.validation


def test_evaluator_follows_envoy_on_missing_headers() -> None:
    """Envoy's HeaderUtility::matchHeaders: checked here without any translation involved."""
    from abtest_harness.mesh.base import HeaderMatch

    absent = Request("absent")
    present = Request("present", headers={"x": "v"})
    exact_inverted = HeaderMatch("x", "exact", "v", invert=True)
    assert not ev.header_matches(exact_inverted, absent)  # missing header: no match, even inverted
    assert ev.header_matches(HeaderMatch("x", "exact", "v", invert=True, missing_as_empty=True), absent)
    assert ev.header_matches(HeaderMatch("x", "present", "", invert=True), absent)
    assert not ev.header_matches(HeaderMatch("x", "present", "", invert=True), present)
    assert ev.header_matches(HeaderMatch("x", "regex", "v|w"), present)
    assert not ev.header_matches(HeaderMatch("x", "regex", "v|w"), Request("vv", headers={"x": "vv"}))
