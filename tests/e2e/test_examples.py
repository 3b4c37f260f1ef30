"""The examples as a user runs them: `abtest run --spec`, a weight edited by mistake, `abtest up`.

Each example is run on the local Envoy mesh with the runners this machine has (process
always; docker where an engine and the base image exist, and always in CI). The Helm
example needs helm (`make helm`); without it the test skips, and fails in CI.
"""

from __future__ import annotations

import http.client
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from abtest_harness.cli import main
from abtest_harness.errors import ToolNotFound
from abtest_harness.render import find_helm
from abtest_harness.rollout import MeshOptions, MeshUnavailable, RolloutResult, open_mesh, run_rollout
from abtest_harness.spec import load_spec
from abtest_harness.stats import StatsConfig

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUNNERS = ("process", "docker")


def _need_helm(example: str) -> None:
    if example != "reference-helm":
        return
    try:
        find_helm()
    except ToolNotFound as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"helm must be available in CI: {exc}")
        pytest.skip(f"the Helm example needs helm: {exc}")


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.mark.parametrize("workloads", RUNNERS)
@pytest.mark.parametrize("example", ["bookinfo-reviews", "reference-helm"])
def test_the_example_passes_abtest_run(example: str, workloads: str, tmp_path: Path) -> None:
    _need_helm(example)
    spec = load_spec(EXAMPLES / example / "rollout.yaml")
    if workloads == "docker":
        try:  # the same check `abtest run` makes, to skip rather than fail where Docker is missing
            open_mesh(spec, MeshOptions(workloads="docker", artifacts_dir=tmp_path)).close()
        except MeshUnavailable as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"docker workloads must run in CI: {exc}")
            pytest.skip(f"docker workloads unavailable: {exc}")
    code, text = _run("run", "--spec", str(EXAMPLES / example / "rollout.yaml"), "--workloads", workloads,
                      "--artifacts-dir", str(tmp_path))
    assert code == 0, text
    for stage in spec.stages:
        for request in spec.classes:
            assert re.search(rf"^{re.escape(stage.name)}\s+{request.label}: PASS ", text, re.M), (stage.name, text)
    assert f"PASS: {len(spec.stages)}/{len(spec.stages)} stages passed" in text


def _failed(result: object) -> set[tuple[str, str]]:
    return {
        (s.stage.name, c.request.label)
        for s in result.stages  # type: ignore[attr-defined]
        for c in s.classes
        if not c.passed
    }


def _run_edited(
    tmp_path: Path, name: str, path: str, replacements: list[tuple[str, str]], *, stage: str | None = None
) -> RolloutResult:
    """Roll out a copy of example `name` (every stage, or only `stage`) on the local mesh, its file
    `path` edited by `replacements` (old, new; each must be found)."""
    example = tmp_path / name
    shutil.copytree(EXAMPLES / name, example)
    edited = example / path
    text = edited.read_text()
    for old, new in replacements:
        assert old in text, f"{name}/{path} has no {old!r} to edit"
        text = text.replace(old, new)
    edited.write_text(text)
    spec = load_spec(example / "rollout.yaml")
    with open_mesh(spec, MeshOptions(artifacts_dir=tmp_path)) as session:
        return run_rollout(session.mesh, spec, StatsConfig(), stages=None if stage is None else [spec.stage(stage)])


def _verdict(result: object, stage: str, label: str) -> str:
    for s in result.stages:  # type: ignore[attr-defined]
        for c in s.classes:
            if s.stage.name == stage and c.request.label == label:
                return str(c.verdict.message)
    raise AssertionError(f"no verdict for {stage} {label}")


def test_one_weight_edited_in_a_bookinfo_stage_fails_exactly_that_stage_split(tmp_path: Path) -> None:
    result = _run_edited(
        tmp_path,
        "bookinfo-reviews",
        "routes/shift-80-20.yaml",
        [("weight: 80", "weight: 50"), ("weight: 20", "weight: 50")],
    )
    assert _failed(result) == {("shift-80-20", "anonymous"), ("shift-80-20", "jason")}
    for label in ("anonymous", "jason"):
        message = _verdict(result, "shift-80-20", label)
        found = re.search(r"FAIL v2 (\d+\.\d)% \[([\d.]+), ([\d.]+)\] expected 20% \+-10", message)
        assert found, message
        # The edit routes 50%: the observed share lies above the expected 20% and its interval
        # (at 1 - alpha) holds the 50% really routed. A point estimate at a small n may be far
        # from 50%, so it is not pinned.
        share, low, high = (float(g) for g in found.groups())
        assert share > 20.0 and low <= 50.0 <= high, message
    mismatches = {s.stage.name: s.manifest_mismatches for s in result.stages if s.manifest_mismatches}
    assert mismatches == {"shift-80-20": [
        "shift-80-20 anonymous: manifests route v1 50%, v2 50%, the spec expects v1 80%, v2 20%",
        "shift-80-20 jason: manifests route v1 50%, v2 50%, the spec expects v1 80%, v2 20%",
    ]}


def test_one_weight_edited_in_a_helm_stage_fails_exactly_that_stage_split(tmp_path: Path) -> None:
    _need_helm("reference-helm")
    result = _run_edited(
        tmp_path,
        "reference-helm",
        "rollout.yaml",
        [("set: {weight.green: 50, weight.blue: 50}", "set: {weight.green: 80, weight.blue: 20}")],
    )
    assert _failed(result) == {("Blue_50", "canary")}
    message = _verdict(result, "Blue_50", "canary")
    found = re.search(r"FAIL (green|blue) (\d+\.\d)% \[([\d.]+), ([\d.]+)\] expected 50% \+-10", message)
    assert found, message
    # The edit routes green 80%: the observed share lies on that side of 50% and its interval
    # (at 1 - alpha) holds the share really routed (not a point estimate, which varies at small n).
    version, share, low, high = found.group(1), *(float(g) for g in found.groups()[1:])
    routed = 80.0 if version == "green" else 20.0
    assert ((share > 50.0) if version == "green" else (share < 50.0)) and low <= routed <= high, message


def _free(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return True
    return False


def test_abtest_up_serves_one_stage_until_interrupted(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "abtest_harness.cli", "up",
            "--spec", str(EXAMPLES / "bookinfo-reviews" / "rollout.yaml"),
            "--stage", "jason-v2", "--artifacts-dir", str(tmp_path)]
    # Progress goes to stderr: a file, so a full pipe can never block the child.
    stderr = (tmp_path / "stderr").open("w")
    child = subprocess.Popen(  # noqa: S603 - this interpreter and fixed arguments
        argv, stdout=subprocess.PIPE, stderr=stderr, text=True,
        # A job started in the background without job control inherits SIGINT ignored, and
        # Python then installs no Ctrl-C handler: give the child the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 120.0
        url = ""
        lines: list[str] = []
        while time.monotonic() < deadline and child.poll() is None:
            line = child.stdout.readline()
            lines.append(line)
            found = re.search(r"is served at (http://127\.0\.0\.1:\d+) \(Host reviews\.bookinfo\.example\)", line)
            if found:
                url = found.group(1)
                break
        assert url, "".join(lines)
        curls = [child.stdout.readline() for _ in range(4)]
        assert curls[3].strip() == (f"curl -sS -i -H 'Host: reviews.bookinfo.example' -H 'end-user: jason' "
                                    f"{url}/score")
        answers = []
        for headers in ({}, {"end-user": "jason"}):
            conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=5.0)
            conn.request("GET", "/score", headers={"Host": "reviews.bookinfo.example", **headers})
            answers.append(conn.getresponse().read().decode())
            conn.close()
        assert answers == ['"reviews v1: no stars"', '"reviews v2: black stars"']
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=90.0) == 130, (tmp_path / "stderr").read_text()
        assert _free(url), "the gateway still listens after Ctrl-C"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10.0)
        stderr.close()


def test_answers_are_credited_by_the_endpoint_even_when_the_image_lies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reviews pod claims to be v1 (MODEL_VERSION); the endpoints tell v1 from v2 anyway."""
    import inspect

    from abtest_harness import attribution
    from abtest_harness.mesh.local import LocalMesh
    from abtest_harness.routing import expected_distributions

    if not hasattr(LocalMesh, "endpoint_labels") or "versions" not in inspect.signature(
        expected_distributions
    ).parameters:
        pytest.skip("needs the local mesh's endpoint_labels() and the oracle's versions= (attribution by endpoint)")
    monkeypatch.setattr(attribution, "VERSION_HEADER_FALLBACK", False)
    result = _run_edited(
        tmp_path,
        "bookinfo-reviews",
        "base/reviews.yaml",
        [("value: v2", "value: v1"), ("value: v3", "value: v1")],
        stage="jason-v2",
    )
    assert result.passed, [c.verdict.message for s in result.stages for c in s.classes]
    assert _verdict(result, "jason-v2", "jason").startswith("jason: PASS v2 100.0%")
