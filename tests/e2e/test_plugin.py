"""The pytest plugin, driven in throw-away pytest sessions: option checks and failure dumps."""

from __future__ import annotations

from pathlib import Path

import pytest


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "fixtures.plugin", "-p", "no:cloudcoil", *args, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alpha", "0.7"], "--alpha must be between 0.0 and 0.5"),
        (["--delta", "0"], "--delta must be between 0.0 and 0.5"),
        (["--workloads", "vm"], "--workloads: unknown runner *vm*; choose from process, docker"),
        (["--keep-cluster"], "--keep-cluster only applies to --mesh=kind"),
    ],
)
def test_bad_option_combinations_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_a_failed_mesh_test_dumps_the_gateway_config_and_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fail="""
def test_blue_50_is_broken(deploy_stage, traffic):
    deploy_stage("Blue_50")
    load = traffic({"weighted": {"green": 0.9, "blue": 0.1}})
    assert load.verdicts["weighted"].passed, load.verdicts["weighted"].message
"""
    )
    artifacts = pytester.path / "artifacts"
    result = _run(pytester, "--workloads=process", f"--artifacts-dir={artifacts}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*weighted: FAIL blue*expected 10%*", "*dumped to*"])
    dumps = [p for p in artifacts.iterdir() if p.is_dir()]
    assert len(dumps) == 1, sorted(artifacts.iterdir())
    files = {p.name for p in dumps[0].rglob("*") if p.is_file()}
    assert any("config_dump" in name for name in files), files
    assert any(name.endswith(".log") for name in files), files


def test_an_edited_stage_is_put_back_after_its_test(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(
        test_reset="""
def _swap(objects):
    http = next(o for o in objects if o["kind"] == "VirtualService")["spec"]["http"]
    http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]

def test_1_break(deploy_stage, traffic):
    deploy_stage("Blue_0", edit=_swap)
    assert not traffic({"header-blue": {"blue": 1.0}}).verdicts["header-blue"].passed

def test_2_after(traffic):
    # No deploy here: the mesh must be back on Blue_0 as rendered.
    assert traffic({"header-blue": {"blue": 1.0}}).verdicts["header-blue"].passed
"""
    )
    result = _run(pytester, "--workloads=process", f"--artifacts-dir={tmp_path}", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
