"""The pytest plugin, driven in throw-away pytest sessions run as subprocesses.

Each session runs in pytester's temporary directory, outside this repository, with no
conftest.py line and no ``-p``: the plugin comes from the installed package's ``pytest11``
entry point, as it does in a user's repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from abtest_harness.signals import EXIT_SIGTERM
from tests.unit.fakes.processes import alive

TIMEOUT_S = 180
REPO = Path(__file__).resolve().parents[2]


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cloudcoil", "-p", "no:randomly", *args, timeout=TIMEOUT_S)


def test_the_entry_point_loads_the_plugin_outside_the_repository(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(stats_config):\n    assert stats_config.delta == 0.25\n")
    assert not (pytester.path / "conftest.py").exists()
    result = _run(pytester, "--abtest-delta=0.25")
    result.assert_outcomes(passed=1)
    # And it is the entry point that loads it: blocked by its name, the fixtures are gone.
    blocked = _run(pytester, "-p", "no:abtest")
    blocked.stdout.fnmatch_lines(["*fixture 'stats_config' not found*"])


def test_help_lists_every_option_under_its_prefix(pytester: pytest.Pytester) -> None:
    from abtest_harness.options import OPTIONS

    result = _run(pytester, "--help")
    assert result.ret == pytest.ExitCode.OK
    text = result.stdout.str()
    for option in OPTIONS:
        assert f"--abtest-{option.name}" in text, option.name
    for bare in ("--mesh", "--workloads", "--alpha", "--delta", "--keep-cluster", "--cluster-name"):
        assert f"  {bare}" not in text and f"{bare}=" not in text, f"unprefixed option {bare}"


def test_the_default_settings_pass_the_range_rule() -> None:
    # The plugin does not check its defaults (it would import the statistics for nothing).
    from abtest_harness.options import OPTIONS
    from abtest_harness.stats import check_settings
    from abtest_harness_pytest.options import SETTINGS

    defaults = {o.name: o.default for o in OPTIONS if o.name in SETTINGS}
    assert set(defaults) == {"alpha", "beta", "delta"}
    check_settings(**defaults)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--abtest-alpha", "0.7"], "--abtest-alpha: must be strictly between 0 and 0.5, got 0.7"),
        (["--abtest-delta", "0"], "--abtest-delta: must be strictly between 0 and 0.5, got 0.0"),
        (["--abtest-beta", "0.5"], "--abtest-beta: must be strictly between 0 and 0.5, got 0.5"),
        (["--abtest-workloads", "vm"], "--abtest-workloads: unknown runner *vm*; choose from process, docker"),
        (["--abtest-keep-cluster"], "--abtest-keep-cluster only applies to --abtest-mesh=kind"),
        (["--abtest-mesh", "vm"], "--abtest-mesh: 'vm' is not one of local, kind, cluster"),
        (["--abtest-mesh", "cluster", "--abtest-kubeconfig", "kc", "--abtest-context", "c"],
         "--abtest-mesh=cluster needs --abtest-namespace, --abtest-gateway-url"),
        (["--abtest-gateway-url", "http://gw:80"], "--abtest-gateway-url only apply to --abtest-mesh=cluster"),
        (["--abtest-delta", "ten"], "--abtest-delta: not a number: 'ten'"),
    ],
)
def test_bad_option_combinations_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = _run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert "Traceback" not in result.stderr.str()


def test_a_passing_session_creates_no_directory(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The render and statistics caches belong in the user's cache directory (pytester makes its
    # own directory HOME, so point the cache elsewhere to tell the two apart).
    cache = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    pytester.makepyfile(
        test_ok="""
def test_baseline(check_stage):
    result = check_stage("baseline", labels=["header-green"])
    assert result.passed, [c.verdict.message for c in result.classes]
"""
    )
    before = set(pytester.path.iterdir())
    result = _run(pytester, "--abtest-workloads=process")
    result.assert_outcomes(passed=1)
    # pytester's own: the inner session's basetemp and its captured output.
    own = {".pytest_cache", "__pycache__", "runpytest-0", "runpytest-current", "stdout", "stderr"}
    created = {p.name for p in set(pytester.path.iterdir()) - before} - own
    assert not created, created
    assert {p.name for p in cache.iterdir()} <= {"abtest-harness"}, "caches go under the user's cache directory"


def test_a_failed_mesh_test_dumps_the_gateway_config_and_logs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_fail="""
def test_blue_50_is_broken(deploy_stage, traffic):
    deploy_stage("Blue_50")
    load = traffic({"weighted": {"green": 0.9, "blue": 0.1}})
    assert load.verdicts["weighted"].passed, load.verdicts["weighted"].message
"""
    )
    artifacts = pytester.path / "dumps"
    result = _run(pytester, "--abtest-workloads=process", f"--abtest-artifacts-dir={artifacts}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*weighted: FAIL blue*expected 10%*", f"*mesh state dumped to {artifacts}*"])
    dumps = [p for p in artifacts.iterdir() if p.is_dir()]
    assert [p.name for p in dumps] == ["test_fail.py__test_blue_50_is_broken_process_"], dumps
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
    result = _run(pytester, "--abtest-workloads=process", f"--abtest-artifacts-dir={tmp_path}")
    result.assert_outcomes(passed=2)


_STAGE_TESTS = """
import pytest

@pytest.mark.parametrize("label", ["weighted", "header-blue", "header-green"])
def test_blue_50(check_stage, label):
    expected = {{"weighted": {{"green": 0.5, "blue": 0.5}}, "header-blue": {{"blue": 1.0}},
                 "header-green": {{"green": 1.0}}}}
    result = check_stage("Blue_50", labels=[label], expected={{label: expected[label]}})
    assert result.passed, [c.verdict.message for c in result.classes]

def test_blue_0(check_stage):
    assert check_stage("Blue_0", labels=["header-blue"]).passed
"""


def _sample_spec(pytester: pytest.Pytester) -> Path:
    """A copy of the sample rollout (spec, kustomize base and stages) in the session's directory."""
    target = pytester.path / "rollout"
    for name in ("rollout.yaml", "base", "stages"):
        source = REPO / "manifests" / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            target.mkdir(exist_ok=True)
            shutil.copy(source, target / name)
    return target / "rollout.yaml"


def _run_with_blue_50_patch(pytester: pytest.Pytester, target: str, operation: str) -> pytest.RunResult:
    """Run the stage tests on the process mesh, Blue_50 carrying one more JSON patch `operation` on `target`.

    Blue_50 is the stage that fails: one of its tests fails, the other two skip, the Blue_0 test passes.
    """
    spec = _sample_spec(pytester)
    overlay = spec.parent / "stages" / "Blue_50" / "kustomization.yaml"
    overlay.write_text(overlay.read_text() + f"  - target: {{{target}}}\n    patch: |-\n      - {operation}\n")
    pytester.makepyfile(test_stages=_STAGE_TESTS.format())
    result = _run(pytester, "--abtest-workloads=process", f"--abtest-spec={spec}", "-rs")
    result.assert_outcomes(passed=1, failed=1, skipped=2)
    return result


_PER_STAGE_TESTS = """
import pytest

@pytest.mark.parametrize("stage", ["Blue_0", "Blue_50"])
def test_pinned(check_stage, stage):
    assert check_stage(stage, labels=["header-green"]).passed

def test_blue_50_by_name(check_stage):
    assert check_stage("Blue_50", labels=["header-blue"]).passed

def test_no_mesh():
    pass
"""


def test_abtest_stage_runs_only_that_stages_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_stages=_PER_STAGE_TESTS)
    result = _run(pytester, "--abtest-workloads=process", "--abtest-stage=Blue_0", "-rs", "-v")
    # test_pinned[Blue_50] is deselected; the test that deploys Blue_50 by name is skipped.
    result.assert_outcomes(passed=2, skipped=1, deselected=1)
    result.stdout.fnmatch_lines(["*test_pinned?process-Blue_0? PASSED*",
                                 "SKIPPED*Blue_50 is not among --abtest-stage Blue_0*"])
    unknown = _run(pytester, "--abtest-workloads=process", "--abtest-stage=Blue_5")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--abtest-stage: *Blue_5*Blue_0*"])


def test_a_stage_failing_the_offline_gate_fails_once_and_sends_no_traffic(pytester: pytest.Pytester) -> None:
    # An upper-case header name, which Istio's validation rejects; Envoy matches header names
    # case-insensitively, so on the local mesh this stage would pass every traffic check.
    result = _run_with_blue_50_patch(
        pytester,
        "kind: VirtualService, name: mlmodel-virtualservice",
        "{op: move, from: /spec/http/0/match/0/headers/x-api-version,"
        " path: /spec/http/0/match/0/headers/X-Api-Version}",
    )
    result.stdout.fnmatch_lines([
        "*Blue_50: the offline gate failed; no traffic sent:*",
        "*X-Api-Version*must be lower-case*",
        "SKIPPED*Blue_50 failed its offline gate in test_stages.py::test_blue_50?process-weighted?*",
    ])
    assert "Blue_50     weighted:" not in result.stdout.str(), "traffic was sent to a stage that failed its gate"
    assert not (pytester.path / "artifacts").exists(), "a dump of a mesh the failure did not touch"


def test_a_stage_that_cannot_be_set_up_fails_once_naming_the_probe(pytester: pytest.Pytester) -> None:
    # A readiness probe on a port nothing listens on: on Kubernetes the replica never becomes
    # ready. Every test of the stage would wait for it; the first one fails, the rest skip.
    result = _run_with_blue_50_patch(
        pytester,
        "kind: Deployment, name: model-blue",
        "{op: replace, path: /spec/template/spec/containers/0/readinessProbe/httpGet/port, value: 5002}",
    )
    result.stdout.fnmatch_lines([
        "*Blue_50: could not be set up on the process mesh: *model-blue*not ready*5002*",
        "SKIPPED*Blue_50 could not be set up on the process mesh, see test_stages.py::test_blue_50?process-weighted?*",
    ])
    assert "Blue_50     weighted:" not in result.stdout.str()


# --------------------------------------------------------------------------- SIGTERM

_SIGTERM_TESTS = """
import json, os, pathlib, time

STATE = pathlib.Path(os.environ["ABTEST_TEST_STATE"])

def test_1_serves(check_stage):
    assert check_stage("Blue_50", labels=["header-blue"]).passed

def test_2_is_terminated(deploy_stage, mesh):
    deploy_stage("Blue_50")
    handles = [w.handle if isinstance(w.handle, str) else w.handle.pid for w in mesh.workloads]
    STATE.write_text(json.dumps({"envoy": mesh.envoy_pid, "workdir": str(mesh.workdir), "workloads": handles}))
    deadline = time.monotonic() + 60  # the parent sends SIGTERM as soon as it reads STATE
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise AssertionError("no SIGTERM came")

def test_3_never_runs(check_stage):
    assert check_stage("Blue_50", labels=["header-green"]).passed
"""


def _docker_or_skip() -> Any:
    from abtest_harness import images

    try:
        client = images.docker_client()
        images.base_image_id(client, images.resolve_base_image(None))
    except Exception as exc:  # noqa: BLE001 - any reason the docker workloads cannot run here
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and docker workloads cannot run: {exc}", pytrace=False)
        pytest.skip(f"docker workloads unavailable: {exc}")
    return client


@pytest.mark.parametrize("runner", ["process", "docker"])
def test_sigterm_ends_the_session_as_an_interruption(pytester: pytest.Pytester, runner: str) -> None:
    client = _docker_or_skip() if runner == "docker" else None
    state = pytester.path / "state.json"
    tmp = pytester.mkdir("tmp")
    pytester.makepyfile(test_term=_SIGTERM_TESTS)
    env = {**os.environ, "ABTEST_TEST_STATE": str(state), "TMPDIR": str(tmp)}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cloudcoil", "-p", "no:randomly", "-p", "no:cacheprovider",
            f"--abtest-workloads={runner}", "test_term.py"]
    child = subprocess.Popen(  # noqa: S603 - an argv list; killed in `finally` if it outlives the test
        argv, cwd=pytester.path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not state.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not state.exists():
            child.kill()
            stdout, stderr = child.communicate(timeout=30)
            output = stdout.decode() + stderr.decode()
            pytest.fail(f"the session never reached test_2 (exit {child.returncode}):\n{output}")
        time.sleep(0.2)  # let test_2 reach its wait
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    out = stdout.decode() + stderr.decode()
    assert child.returncode == EXIT_SIGTERM, out
    assert "terminated by SIGTERM" in out, out
    assert "1 passed" in out and "failed" not in out and "error" not in out.lower().replace("stderr", ""), out
    assert "MeshNotUp" not in out and "test_3_never_runs" not in out, out
    seen = json.loads(state.read_text())
    assert not alive(seen["envoy"]), "envoy left running"
    assert not Path(seen["workdir"]).exists(), "the mesh's directory left behind"
    for handle in seen["workloads"]:
        if isinstance(handle, int):
            assert not alive(handle), f"workload process {handle} left running"
        else:
            import docker

            with pytest.raises(docker.errors.NotFound):
                client.containers.get(handle)  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp.iterdir()) == [], "temporary files left behind"


# --------------------------------------------------------------------------- a user's install

INSTALL_CHECK = "ABTEST_INSTALL_CHECK"


@pytest.mark.install
def test_a_fresh_virtualenv_outside_the_repository_gets_the_plugin(tmp_path: Path) -> None:
    """``pip install <checkout>`` into a new virtualenv, beside pytest-kind; then pytest in a
    directory holding only an example's files and a test that uses the fixtures: no
    conftest.py, no ``-p``.

    It installs every dependency (minutes, from PyPI or pip's cache), so it runs only with
    ABTEST_INSTALL_CHECK=1 (``make install-check``); the entry point itself is checked in
    every run by the tests above, through this checkout's own (editable) install.
    """
    if os.environ.get(INSTALL_CHECK) != "1":
        pytest.skip(f"installs every dependency into a new virtualenv (minutes): set {INSTALL_CHECK}=1 "
                    "or run `make install-check`")
    from abtest_harness import proc

    venv = tmp_path / "venv"
    python = str(venv / "bin" / "python")
    proc.run([sys.executable, "-m", "venv", str(venv)], timeout=120)
    proc.run([python, "-m", "pip", "install", "--quiet", str(REPO), "pytest-kind"], timeout=1800)
    project = tmp_path / "project"
    # The rollout, not the example's own suite: the user's test below is the one to run.
    shutil.copytree(REPO / "examples" / "bookinfo-reviews", project,
                    ignore=shutil.ignore_patterns("README.md", "test_*.py"))
    (project / "test_my_rollout.py").write_text(_USER_TEST)
    before = sorted(p.name for p in project.iterdir())
    # Nothing of the checkout on the path: the installed package only.
    env = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1", "CI": ""}

    def pytest_in_project(*args: str) -> str:
        done = proc.run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], timeout=600, cwd=project,
                        env=env, check=False)
        return f"exit {done.returncode}\n{done.stdout}{done.stderr}"

    helped = pytest_in_project("--help")
    for flag in ("--abtest-spec", "--abtest-mesh", "--abtest-delta", "--abtest-keep-cluster",
                 "--abtest-cluster-name", "--cluster-name", "--keep-cluster"):  # the last two: pytest-kind's
        assert f"  {flag}" in helped, flag
    ran = pytest_in_project("--abtest-spec", "rollout.yaml")
    assert ran.startswith("exit 0") and "5 passed" in ran, ran
    assert sorted(p.name for p in project.iterdir()) == before, "the run left files in the user's directory"
    # One weight edited by mistake: that stage fails, at its offline gate, naming both shares.
    route = project / "routes" / "shift-80-20.yaml"
    route.write_text(route.read_text().replace("weight: 80", "weight: 70").replace("weight: 20", "weight: 30"))
    broken = pytest_in_project("--abtest-spec", "rollout.yaml", "--abtest-artifacts-dir", str(tmp_path / "dumps"))
    assert broken.startswith("exit 1") and "1 failed, 4 passed" in broken, broken
    assert "FAILED test_my_rollout.py::test_stage_routes_as_its_expect_table_says[process-shift-80-20]" in broken
    located = proc.run([python, "-c", "import abtest_harness_pytest.plugin as p; print(p.__file__)"], timeout=60,
                       cwd=tmp_path, env=env)
    assert str(venv) in located.stdout, located.stdout


_USER_TEST = """
import pytest

STAGES = ["all-v1", "jason-v2", "shift-80-20", "shift-50-50-v3", "v3"]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_routes_as_its_expect_table_says(check_stage, stage):
    result = check_stage(stage)
    assert result.passed, [c.verdict.message for c in result.classes] + result.wrong_answers
"""
