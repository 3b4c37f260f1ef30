"""abtest_harness_pytest.stages: a stage's offline gate and setup failure count once per session."""

from __future__ import annotations

from typing import Any

import pytest

from abtest_harness.errors import HarnessError, WaitTimeout
from abtest_harness.spec import RolloutSpec, load_spec
from abtest_harness_pytest.stages import StageGuard, gate_findings


@pytest.fixture(scope="module")
def plan() -> RolloutSpec:
    return load_spec()


def _outcome(action: Any) -> tuple[str, str]:
    """("fail" | "skip" | "ok", message) of calling `action`."""
    try:
        action()
    except pytest.fail.Exception as exc:
        return "fail", str(exc)
    except pytest.skip.Exception as exc:
        return "skip", str(exc)
    return "ok", ""


def test_the_gate_passes_the_sample_rollout(plan: RolloutSpec) -> None:
    assert all(gate_findings(plan, stage.name) is None for stage in plan.stages)


def test_a_gate_failure_fails_the_first_test_of_the_stage_then_skips_the_rest(plan: RolloutSpec) -> None:
    calls: list[str] = []

    def gate(_: RolloutSpec, stage: str) -> list[str] | None:
        calls.append(stage)
        return ["Blue_50 ... INVALID", "error VS001 VirtualService/x: spec.http[0]: upper-case header"] \
            if stage == "Blue_50" else None

    guard = StageGuard(plan, gate=gate)
    first = _outcome(lambda: guard.require("t.py::a", "Blue_50", "process"))
    assert first[0] == "fail" and "offline gate failed" in first[1] and "upper-case header" in first[1]
    for mesh in ("process", "docker"):  # an offline verdict holds on every mesh
        later = _outcome(lambda mesh=mesh: guard.require("t.py::b", "Blue_50", mesh))  # type: ignore[misc]
        assert later == ("skip", "Blue_50 failed its offline gate in t.py::a")
    assert _outcome(lambda: guard.require("t.py::c", "Blue_0", "process")) == ("ok", "")
    assert calls == ["Blue_50", "Blue_0"], "each stage is gated once per session"


def test_a_setup_failure_fails_once_per_mesh_and_names_the_error(plan: RolloutSpec) -> None:
    guard = StageGuard(plan, gate=lambda _plan, _stage: None)

    def never_ready() -> None:
        raise WaitTimeout("model-blue readiness probe GET :5001/healthz", 30.0, "connection refused", 12)

    first = _outcome(lambda: guard.set_up("t.py::a", "Blue_50", "docker", never_ready))
    assert first[0] == "fail" and "Blue_50: could not be set up on the docker mesh" in first[1]
    assert "model-blue readiness probe GET :5001/healthz" in first[1]
    later = _outcome(lambda: guard.require("t.py::b", "Blue_50", "docker"))
    assert later[0] == "skip" and later[1].startswith("Blue_50 could not be set up on the docker mesh, see t.py::a")
    # Another mesh, another stage: not affected.
    assert _outcome(lambda: guard.require("t.py::c", "Blue_50", "process")) == ("ok", "")
    assert _outcome(lambda: guard.require("t.py::d", "Blue_0", "docker")) == ("ok", "")


def test_only_harness_errors_count_as_setup_failures(plan: RolloutSpec) -> None:
    guard = StageGuard(plan, gate=lambda _plan, _stage: None)

    def bug() -> None:
        raise KeyError("a bug is a bug, not a stage that cannot be set up")

    with pytest.raises(KeyError):
        guard.set_up("t.py::a", "Blue_50", "process", bug)
    assert _outcome(lambda: guard.require("t.py::b", "Blue_50", "process")) == ("ok", "")
    assert guard.set_up("t.py::c", "Blue_50", "process", lambda: 7) == 7

    def broken() -> None:
        raise HarnessError("workload model-blue exited with 1")

    assert _outcome(lambda: guard.set_up("t.py::d", "Blue_50", "process", broken))[0] == "fail"
