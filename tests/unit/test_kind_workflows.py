"""The CI workflows cannot run here: parse them, and check every `make X` they run exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import prereqs

ROOT = Path(__file__).resolve().parents[2]
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
        if "uses" in step:
            assert re.search(r"@v\d+$", step["uses"]), (
                f"{name}: pin actions to a major version: {step['uses']}"
            )
        else:
            named.extend(make_targets_of(step["run"]))
    assert named, f"{name} runs no make target"
    missing = sorted(set(named) - targets)
    assert not missing, f"{name} runs make targets the Makefile lacks: {missing} (has {sorted(targets)})"


def test_e2e_workflow_runs_make_e2e_with_the_kind_release_the_prereqs_require() -> None:
    workflow = load("e2e-kind.yml")
    runs = "\n".join(step.get("run", "") for step in steps(workflow))
    assert "make e2e" in runs and "make base-image" in runs
    assert runs.index("make base-image") < runs.index("make e2e"), (
        "the base image must exist before the images step"
    )
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
