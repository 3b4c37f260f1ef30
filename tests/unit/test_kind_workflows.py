"""The CI workflows cannot run here: parse them, check every `make X` they run exists, and run
the repository scripts their steps call as a hosted runner would (a non-root user, no
debootstrap), as far as that is possible without a cluster or the network.

GitHub's hosted runners run each step as a non-root user with passwordless sudo, on an
image without debootstrap. Where this test runs as root, the scripts run under uid 65534
(setpriv); elsewhere (CI) as the user running the tests, who is not root there either.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness import prereqs
from tests.unit.fakes import install_fake_tools

ROOT = Path(__file__).resolve().parents[2]
#: 40 hex digits and a comment naming the release: ``owner/repo@<sha>  # vX.Y.Z``.
_PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w.-]+)@([0-9a-f]{40})\s+#\s+v\d+\.\d+\.\d+\s*$")
WORKFLOWS = ROOT / ".github" / "workflows"
MAKEFILE = ROOT / "Makefile"
# A rule line: targets, one colon (not `:=` / `::=`), then prerequisites.
_RULE = re.compile(r"^([A-Za-z0-9_./%$() -]+?)\s*:(?![:=])")


def makefile_targets() -> set[str]:
    assert MAKEFILE.is_file(), f"{MAKEFILE} is missing: the workflows run make targets"
    targets: set[str] = set()
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith(("\t", "#", " ")) or "=" in line.split(":", 1)[0]:
            continue
        match = _RULE.match(line)
        if match:
            targets.update(t for t in match.group(1).split() if not t.startswith("."))
    return targets


def make_targets_of(run: str) -> list[str]:
    """Targets named by `make ...` commands in a step's shell script (options and VAR=x skipped)."""
    found: list[str] = []
    for line in run.splitlines():
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if word != "make":
                continue
            for arg in words[i + 1 :]:
                if arg in ("&&", "||", ";", "|"):
                    break
                if arg.startswith("-") or "=" in arg:
                    continue
                found.append(arg)
    return found


def load(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), name
    return data


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


@pytest.mark.parametrize("name", ["e2e-kind.yml", "verify-manifests.yml"])
def test_workflow_is_well_formed_and_every_make_target_exists(name: str) -> None:
    workflow = load(name)
    # YAML 1.1 reads the bare key `on` as True; GitHub reads it as "on". Either way it must be there.
    assert workflow.get("on", workflow.get(True)), f"{name}: no triggers"
    for job_name, job in workflow["jobs"].items():
        assert job.get("timeout-minutes"), f"{name}: job {job_name} needs a timeout"
        assert job.get("runs-on"), f"{name}: job {job_name} has no runner"
    targets = makefile_targets()
    named = []
    for step in steps(workflow):
        assert ("uses" in step) != ("run" in step), f"{name}: a step needs exactly one of uses/run: {step}"
        if "run" in step:
            named.extend(make_targets_of(step["run"]))
    assert named, f"{name} runs no make target"
    missing = sorted(set(named) - targets)
    assert not missing, f"{name} runs make targets the Makefile lacks: {missing} (has {sorted(targets)})"


def test_e2e_workflow_runs_make_e2e_with_the_kind_release_the_prereqs_require() -> None:
    workflow = load("e2e-kind.yml")
    runs = "\n".join(step.get("run", "") for step in steps(workflow))
    assert "make e2e" in runs and 'docker pull "${BASE_IMAGE}"' in runs
    assert runs.index("docker pull") < runs.index("make e2e"), "the base image must exist before the images step"
    assert workflow["env"]["BASE_IMAGE"] == "python:3.12-slim"
    assert 'BASE_IMAGE="${BASE_IMAGE}"' in runs, "make e2e must be told which base image to use"
    assert workflow["env"]["KIND_VERSION"] == "v" + ".".join(map(str, prereqs.MIN_KIND))
    assert "sha256sum --check" in runs, "kind is installed only after its published checksum matched"
    upload = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "failure()" and upload["with"]["path"] == "${{ env.ARTIFACTS }}"


def test_verify_workflow_validates_and_runs_the_local_mesh() -> None:
    runs = [t for step in steps(load("verify-manifests.yml")) for t in make_targets_of(step.get("run", ""))]
    assert {"validate", "test", "run"} <= set(runs), runs


def test_make_targets_of_reads_shell_lines() -> None:
    assert make_targets_of("make lint\nmake -j2 types PYTEST_ARGS=-x && make e2e  # comment make nope") == [
        "lint",
        "types",
        "e2e",
    ]


@pytest.mark.parametrize("name", ["e2e-kind.yml", "verify-manifests.yml"])
def test_actions_are_pinned_by_commit_permissions_are_least_and_no_expression_reaches_a_shell(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    uses = [line for line in text.splitlines() if re.match(r"^\s*(?:-\s+)?uses:", line)]
    assert uses, f"{name} uses no action"
    unpinned = [line.strip() for line in uses if not _PINNED.match(line)]
    assert not unpinned, f"{name}: pin each action by a full commit SHA with its release as a comment: {unpinned}"
    workflow = load(name)
    assert workflow.get("permissions") == {}, f"{name}: grant nothing at workflow level"
    for job_name, job in workflow["jobs"].items():
        assert job.get("permissions") == {"contents": "read"}, f"{name}: job {job_name} needs contents: read only"
    for step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step.get("with", {}).get("persist-credentials") is False, f"{name}: checkout must not keep the token"
        assert "${{" not in step.get("run", ""), f"{name}: pass values to scripts through env:, not ${{{{ }}}}: {step}"


def test_verify_workflow_gives_the_docker_tests_a_base_image_before_make_test() -> None:
    """GitHub sets CI=true, under which tests/docker fail rather than skip without a base image."""
    workflow = load("verify-manifests.yml")
    assert workflow["env"]["ABTEST_BASE_IMAGE"] == "python:3.12-slim"
    runs = [step.get("run", "") for step in steps(workflow)]
    pull = next(i for i, r in enumerate(runs) if r.startswith("docker pull"))
    test = next(i for i, r in enumerate(runs) if "make test" in r)
    assert pull < test, "the base image must be pulled before make test"


def _runner_user() -> list[str]:
    """argv prefix that runs a command as a non-root user: setpriv to uid 65534 when we are root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root without setpriv: cannot drop to a non-root user")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def runner_home() -> Any:
    """A directory the non-root user can use (pytest's tmp_path is private to root)."""
    home = Path(tempfile.mkdtemp(prefix="abtest-runner-"))
    home.chmod(0o777)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _runner_env(tmp: Path) -> dict[str, str]:
    """A hosted runner's PATH without debootstrap, the fakes first, and no route off loopback."""
    bin_dir = install_fake_tools(tmp / "bin")
    # The fakes' interpreter must be one the runner's user can run: the test's own may live
    # under root's home. A hosted runner has /usr/bin/python3; the fakes need only the stdlib.
    system_python = Path("/usr/bin/python3")
    if os.geteuid() == 0 and system_python.exists():
        for tool in bin_dir.iterdir():
            lines = tool.read_text().splitlines(keepends=True)
            tool.write_text(f"#!{system_python} -S\n" + "".join(lines[1:]))
    tools = tmp / "tools"
    tools.mkdir(mode=0o777)
    (tools / "state.json").write_text(json.dumps({"clusters": [], "docker_server": "27.5.1", "docker_images": []}))
    for path in (tools, tools / "state.json", tmp, tmp / "bin"):
        path.chmod(0o777)
    plain = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and not (Path(p) / "debootstrap").exists()]
    return {
        "PATH": os.pathsep.join([str(bin_dir), *plain]),
        "HOME": str(tmp),
        "FAKE_TOOLS_DIR": str(tools),
        "CI": "true",
        "DOCKER_HOST": "unix:///nonexistent/docker.sock",
        # The network checks go to a closed port on loopback instead of Docker Hub and GitHub.
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "LANG": "C.UTF-8",
    }


def _expand(word: str, env: dict[str, str]) -> str:
    """``${NAME}`` replaced by the workflow's env value, as the runner's shell would."""
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word)


def _workflow_make_commands() -> list[list[str]]:
    """Every `make ...` command line of every workflow step, as argv (variables expanded from env:)."""
    found: list[list[str]] = []
    for name in ("e2e-kind.yml", "verify-manifests.yml"):
        workflow = load(name)
        env = {str(k): str(v) for k, v in (workflow.get("env") or {}).items()}
        for step in steps(workflow):
            for line in step.get("run", "").splitlines():
                words = shlex.split(line, comments=True)
                if words[:1] == ["make"]:
                    found.append([_expand(w, env) for w in words])
    return found


def test_no_workflow_step_runs_a_script_that_needs_root_or_debootstrap(runner_home: Path) -> None:
    commands = _workflow_make_commands()
    assert ["make", "e2e", "BASE_IMAGE=python:3.12-slim", "ARTIFACTS=artifacts"] in commands, commands
    env = _runner_env(runner_home)
    for argv in commands:
        done = subprocess.run(  # noqa: S603 - make with fixed arguments from the workflow
            [*_runner_user(), "make", "-n", "-C", str(ROOT), *argv[1:]],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )
        assert done.returncode == 0, f"{argv} fails as a non-root user: {done.stderr}"
        plan = done.stdout
        for needs_root in ("build-base-image", "debootstrap", "sudo "):
            assert needs_root not in plan, f"{argv} would run {needs_root!r}, which a hosted runner step cannot: {plan}"
        if argv[1] == "e2e":
            check = next(line for line in plan.splitlines() if "abtest_harness.prereqs kind" in line)
            pytest_line = next(line for line in plan.splitlines() if "-m pytest" in line)
            assert check.startswith("ABTEST_BASE_IMAGE=python:3.12-slim .venv/bin/python"), check
            assert "--abtest-base-image python:3.12-slim" in plan
            assert "ABTEST_BASE_IMAGE=python:3.12-slim" in pytest_line
            assert plan.index("abtest_harness.prereqs kind") < plan.index("-m pytest")


def test_the_e2e_prerequisite_check_runs_as_a_non_root_user_and_names_what_is_missing(runner_home: Path) -> None:
    """What `make e2e` runs first, as the runner's user: it must report, not crash or need root."""
    env = _runner_env(runner_home)
    env["ABTEST_BASE_IMAGE"] = "python:3.12-slim"
    done = subprocess.run(  # noqa: S603 - this interpreter, the repository's own module
        [*_runner_user(), sys.executable, "-m", "abtest_harness.prereqs", "kind"],
        capture_output=True, text=True, timeout=60, env=env, check=False, cwd=ROOT,
    )
    assert done.returncode == 1, f"rc {done.returncode}: {done.stdout}{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert "MISSING  Docker daemon" in out, out
    assert "ok       kind" in out and "ok       kubectl" in out, out
    assert "MISSING  network (proxy)" in out, out


def test_the_workflow_lint_step_passes_as_the_runner_user(runner_home: Path) -> None:
    """verify-manifests.yml runs tools/lint-workflows (actionlint, zizmor --offline). It builds
    the linters into .cache/ on first use; this test never downloads anything, so it skips
    until they are there, and then runs the script as the runner's non-root user."""
    runs = [step.get("run", "") for step in steps(load("verify-manifests.yml"))]
    assert "tools/lint-workflows" in runs, "CI must lint the workflows"
    missing = [
        p for p in (".cache/bin/actionlint", ".cache/lint-venv/bin/zizmor") if not (ROOT / p).exists()
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not built: run tools/lint-workflows once")
    env = _runner_env(runner_home)
    done = subprocess.run(  # noqa: S603 - the repository's own script, as the workflow step runs it
        [*_runner_user(), str(ROOT / "tools" / "lint-workflows")],
        capture_output=True, text=True, timeout=300, env=env, check=False, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr
