"""``abtest mutate --suite``: a pytest rollout suite run on mutants, through the plugin, on the local mesh.

The suites here are written in the test, with their own stage tables; each runs in its own
pytest process with its own mesh, as ``abtest mutate`` runs a user's suite.
"""

from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import pytest

from abtest_harness import mutate
from abtest_harness.cli import main
from abtest_harness.errors import HarnessError
from abtest_harness.render import render
from abtest_harness.spec import load_spec
from abtest_harness.stats import StatsConfig

pytestmark = pytest.mark.e2e

SUITE = """
import pytest

@pytest.mark.parametrize("stage", ["Blue_50"])
@pytest.mark.parametrize("label,expected", [("header-blue", {"blue": 1.0}), ("header-green", {"green": 1.0})])
def test_pinned(check_stage, stage, label, expected):
    result = check_stage(stage, labels=[label], expected={label: expected})
    assert result.passed, [c.verdict.message for c in result.classes]
"""


@pytest.fixture(scope="module")
def sample() -> tuple[object, dict[str, list[dict[str, object]]]]:
    spec = load_spec()
    return spec, {s.name: render(spec, s) for s in spec.stages}


def _probe_on_nothing(objects: list[dict[str, object]]) -> list[dict[str, object]]:
    """Blue_50 with blue's readiness probe on a path the scorer answers 404: blue never becomes ready."""
    edited = copy.deepcopy(objects)
    for obj in edited:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "model-blue":  # type: ignore[index]
            container = obj["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
            container["readinessProbe"]["httpGet"]["path"] = "/not-there"
    return edited


def _check(tmp_path: Path, sample: tuple[object, dict[str, list[dict[str, object]]]], suite: str) -> mutate.SuiteCheck:
    spec, objects = sample
    path = tmp_path / "test_suite.py"
    path.write_text(suite)
    return mutate.SuiteCheck(spec, objects, [str(path)], config=StatsConfig(), timeout_s=180)


def test_the_suite_passes_the_unmutated_stage_and_catches_a_mutant_the_offline_checks_cannot_see(
    tmp_path: Path, sample: tuple[object, dict[str, list[dict[str, object]]]]
) -> None:
    check = _check(tmp_path, sample, SUITE)
    check.baseline(["Blue_50"])  # raises if the suite fails on the rollout as rendered
    spec, objects = sample
    edited = _probe_on_nothing(objects["Blue_50"])
    mutant = mutate.Mutant("Blue_50#x", "Blue_50", "probe", "readinessProbe path", edited)
    caught = check(None, mutant)  # type: ignore[arg-type]
    assert caught is not None and caught.startswith("FAILED ") and "Blue_50" in caught, caught
    assert "/not-there" in caught, "the first failure names the probe that never passes"
    unchanged = mutate.Mutant("Blue_50#y", "Blue_50", "none", "no edit", copy.deepcopy(objects["Blue_50"]))
    assert check(None, unchanged) is None  # type: ignore[arg-type]
    assert not list(tmp_path.glob("abtest-suite-*")), "temporary specs are removed"


def test_a_stage_the_suite_has_no_test_for_is_named(
    tmp_path: Path, sample: tuple[object, dict[str, list[dict[str, object]]]]
) -> None:
    check = _check(tmp_path, sample, SUITE)
    spec, objects = sample
    mutant = mutate.Mutant("Green_100#x", "Green_100", "probe", "x", copy.deepcopy(objects["Green_100"]))
    assert check(None, mutant) is None  # type: ignore[arg-type]
    assert check.untested == {"Green_100"}
    with pytest.raises(HarnessError, match="has no test of stage"):
        check.baseline(["Green_100"])


def test_a_suite_that_fails_on_the_unmutated_rollout_is_refused(
    tmp_path: Path, sample: tuple[object, dict[str, list[dict[str, object]]]]
) -> None:
    # A suite that expects Blue_50's pinned blue requests at green: wrong about the rollout.
    check = _check(tmp_path, sample, SUITE.replace('("header-blue", {"blue": 1.0})', '("header-blue", {"green": 1.0})'))
    with pytest.raises(HarnessError, match=r"fails on the unmutated rollout \(exit 1\): FAILED .*test_pinned"):
        check.baseline(["Blue_50"])


def test_abtest_mutate_with_a_suite_reports_what_the_suite_caught(tmp_path: Path) -> None:
    out = io.StringIO()
    code = main(["mutate", "--stage", "Blue_0", "--suite", "tests/e2e/test_rollout.py", "--jobs", "2",
                 "--artifacts-dir", str(tmp_path)], out=out)
    text = out.getvalue()
    assert code == 0, text[-2000:]
    mesh_lines = [line for line in text.splitlines() if "caught: run" in line]
    assert mesh_lines and all(line.endswith("; suite: caught") for line in mesh_lines), text[-2000:]
    assert f"suite: caught {len(mesh_lines)} of the {len(mesh_lines)} mutants it ran" in text
    assert os.environ.get("PYTEST_CURRENT_TEST")  # the suite ran in its own process, not this one


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (the meshes' and suites' temporary files)."""
    from tests.unit.fakes.processes import alive

    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmdline and alive(int(proc.name)):
                found.append(cmdline)
    return found


@pytest.mark.parametrize("phase", ["the rollout suite", "mutants on the mesh"])
def test_sigterm_stops_abtest_mutate_with_its_meshes_and_suites_torn_down(tmp_path: Path, phase: str) -> None:
    """SIGTERM while the baseline suite runs (main thread), and while mutants run (worker threads)."""
    import signal
    import subprocess
    import sys
    import time

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    log = tmp_path / "mutate.log"
    argv = [sys.executable, "-m", "abtest_harness.cli", "mutate", "--stage", "Blue_50", "--jobs", "2",
            "--suite", "tests/e2e/test_rollout.py", "--artifacts-dir", str(tmp_path / "artifacts")]
    with log.open("w") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,  # noqa: S603 - our own command
                                   env={**os.environ, "TMPDIR": str(tmp)})
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                phase in log.read_text() and any("--abtest-stage" in p for p in _processes_under(tmp))
            ):
                assert process.poll() is None, log.read_text()
                time.sleep(0.05)
            time.sleep(0.5)  # the suite's own mesh starting or up
            assert process.poll() is None, "finished before the signal: nothing was interrupted"
            assert any("--abtest-stage" in p for p in _processes_under(tmp)), "no suite in flight at the signal"
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=150)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text()
    assert code == 143 and "abtest: terminated" in text, text[-2000:]
    time.sleep(0.5)  # a child that got SIGKILL as the last resort is reaped by init
    assert _processes_under(tmp) == [], "processes left behind"
    assert list(tmp.iterdir()) == [], f"temporary files left behind: {list(tmp.iterdir())}"
