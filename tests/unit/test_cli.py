"""The abtest command: exit codes and output a CI log can be read by."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from abtest_harness.cli import main

DATA = Path(__file__).parent / "data" / "validate"


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_render_prints_the_stage_yaml() -> None:
    code, text = _run("render", "--stage", "Blue_Green")
    assert code == 0
    assert text.count("image: abtest/scorer-b:dev") == 2
    assert "weight: 0" in text and "weight: 100" in text


def test_render_unknown_stage_is_exit_2_with_the_known_names(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("render", "--stage", "Blue_75")
    assert code == 2
    assert "no stage 'Blue_75' (known: baseline" in capsys.readouterr().err


def test_validate_all_prints_one_valid_line_per_stage() -> None:
    code, text = _run("validate", "--all")
    assert code == 0, text
    lines = [line for line in text.splitlines() if not line.startswith("    ")]
    stages = ["baseline", "Blue_0", "Blue_50", "Blue_100", "Blue_Green", "Green_100"]
    assert [line.split()[0] for line in lines] == stages
    assert all(line.endswith("valid") and "INVALID" not in line for line in lines)
    assert "green 50 (scorer-a:dev) / blue 50 (scorer-b:dev)" in text


@pytest.mark.parametrize(
    ("name", "finding"),
    [
        ("fault-and-mirror.yaml", "ABT020"),
        ("misspelled-match.yaml", "spec.http[0].mtach: unknown field"),
        ("missing-service.yaml", "IST0101"),
        ("header-after-weighted.yaml", "IST0130"),
    ],
)
def test_validate_file_fails_with_a_readable_finding(name: str, finding: str) -> None:
    code, text = _run("validate", "--file", str(DATA / name))
    assert code == 1, text
    assert finding in text


def test_bad_image_argument_is_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("render", "--stage", "Blue_50", "--image", "nokey")
    assert code == 2
    assert "option --image: nokey: takes KEY=REF" in capsys.readouterr().err


def test_run_with_a_bad_plan_starts_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = tmp_path / "stages.yaml"
    text = (Path(__file__).parents[2] / "manifests" / "stages.yaml").read_text()
    plan.write_text(text.replace("weights: {green: 50, blue: 50}", "weights: {green: 60, blue: 50}"))
    code, out = _run("run", "--spec", str(plan), "--artifacts-dir", str(tmp_path))
    assert code == 2
    assert out == ""
    assert "Stage Blue_50: weights: sum to 110, not 100" in capsys.readouterr().err


def test_run_refuses_manifests_that_route_otherwise_than_the_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    from abtest_harness import render as render_module
    from abtest_harness import rollout

    real_render = render_module.render

    def swapped(spec: object, stage: object, **kwargs: object) -> list[dict[str, object]]:
        objects = copy.deepcopy(real_render(spec, stage, **kwargs))  # type: ignore[arg-type]
        http = next(o for o in objects if o["kind"] == "VirtualService")["spec"]["http"]  # type: ignore[index]
        http[0]["route"], http[1]["route"] = http[1]["route"], http[0]["route"]
        return objects

    def no_mesh(*args: object, **kwargs: object) -> None:
        raise AssertionError("a mesh was opened for invalid manifests")

    monkeypatch.setattr(render_module, "render", swapped)
    monkeypatch.setattr(rollout, "open_mesh", no_mesh)
    code, text = _run("run", "--stage", "Blue_0", "--artifacts-dir", str(tmp_path))
    assert code == 1, text
    assert "Blue_0      kustomize " in text and "INVALID" in text
    assert "error EXPECT Blue_0 header-blue: manifests route green 100%, the spec expects blue 100%" in text
    assert "FAIL: invalid manifests; nothing was started" in text


# ----------------------------------------------------------------------------- specs and options

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "examples" / "bookinfo-reviews"


def test_validate_several_files_and_directories_is_one_set_of_objects(tmp_path: Path) -> None:
    # The VirtualService names Service `reviews` and subsets of DestinationRule `reviews`,
    # which live in other files: alone it is wrong, with them it is valid.
    code, text = _run("validate", "--file", str(BOOKINFO / "routes" / "jason-v2.yaml"))
    assert code == 1 and "IST0101" in text
    route = str(BOOKINFO / "routes" / "jason-v2.yaml")
    code, text = _run("validate", "--file", str(BOOKINFO / "base"), "--file", route)
    assert code == 0, text
    assert text.startswith(f"{BOOKINFO / 'base'}, {BOOKINFO / 'routes' / 'jason-v2.yaml'}: 8 objects: valid")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "nothere.yaml", "no such file or directory"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "holds no .yaml/.yml file"),
        (lambda p: (p / "l1.yaml").write_bytes(b"kind: caf\xe9\n") and p / "l1.yaml", "not UTF-8"),
    ],
)
def test_validate_bad_paths_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    code, out = _run("validate", "--file", str(path))
    err = capsys.readouterr().err
    assert code == 2 and out == ""
    assert err.startswith("abtest: error: ") and message in err and err.count("\n") == 1


def test_validate_reports_what_the_routing_oracle_would_refuse(tmp_path: Path) -> None:
    vs = yaml.safe_load((BOOKINFO / "routes" / "all-v1.yaml").read_text())
    vs["spec"]["http"][0]["mirror"] = {"host": "reviews", "subset": "v2"}
    (tmp_path / "vs.yaml").write_text(yaml.safe_dump(vs))
    code, text = _run("validate", "--file", str(BOOKINFO / "base"), "--file", str(tmp_path / "vs.yaml"))
    assert code == 1, text
    assert "ABT020" in text and "mirror" in text


def test_validate_a_spec_whose_table_disagrees_with_its_manifests_names_stage_class_and_shares(
    tmp_path: Path,
) -> None:
    import shutil

    shutil.copytree(BOOKINFO, tmp_path / "bookinfo")
    spec = tmp_path / "bookinfo" / "rollout.yaml"
    spec.write_text(spec.read_text().replace("anonymous: {v1: 0.8, v2: 0.2}", "anonymous: {v1: 0.9, v2: 0.1}"))
    code, text = _run("validate", "--spec", str(spec))
    assert code == 1
    invalid = [line.split()[0] for line in text.splitlines() if line.endswith("INVALID")]
    assert invalid == ["shift-80-20"]
    assert "error EXPECT shift-80-20 anonymous: manifests route v1 80%, v2 20%, the spec expects v1 90%, v2 10%" in text


def test_a_bad_spec_is_exit_2_naming_file_stage_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    shutil.copytree(BOOKINFO, tmp_path / "bookinfo")
    spec = tmp_path / "bookinfo" / "rollout.yaml"
    spec.write_text(spec.read_text().replace("source: {files: [base, routes/v3.yaml]}", "source: {files: [base, v3]}"))
    code, _ = _run("run", "--spec", str(spec), "--artifacts-dir", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"abtest: error: spec {spec} stage v3: source.files[1]: 'v3': no such file or directory " \
                  f"({(tmp_path / 'bookinfo' / 'v3')})\n"


def test_render_a_spec_stage_with_its_own_namespace_and_host() -> None:
    code, text = _run("render", "--spec", str(BOOKINFO / "rollout.yaml"), "--stage", "jason-v2")
    assert code == 0
    objects = list(yaml.safe_load_all(text))
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"bookinfo"}
    vs = next(o for o in objects if o["kind"] == "VirtualService")
    assert vs["spec"]["hosts"] == ["reviews.bookinfo.example"]


def test_run_options_come_from_the_shared_table_in_both_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    from abtest_harness import options
    from abtest_harness.cli import build_parser

    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    help_text = " ".join(run.format_help().split())
    for option in options.OPTIONS:
        assert f"--{option.name}" in help_text and options.pytest_flag(option) in help_text
        assert " ".join(option.help.split()) in help_text
    args = parser.parse_args(["run", "--abtest-mesh", "kind", "--alpha", "0.01", "--abtest-keep-cluster"])
    assert (args.mesh, args.alpha, args.keep_cluster, args.workloads) == ("kind", 0.01, True, "process")
    # --stage is the plugin's --abtest-stage too (a pytest-only option, not in the table).
    for command in ("run", "mutate"):
        args = parser.parse_args([command, "--abtest-stage", "Blue_50", "--stage", "Blue_0"])
        assert args.stage == ["Blue_50", "Blue_0"]
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["run", "--alpha", "seven"])
    assert info.value.code == 2
    assert "--alpha" in capsys.readouterr().err
    # The range is one rule (abtest_harness.stats.check_settings), applied before anything starts.
    assert main(["run", "--alpha", "0.7"]) == 2
    assert "--alpha: must be strictly between 0 and 0.5, got 0.7" in capsys.readouterr().err


def test_curl_lines_send_the_class_host_and_headers() -> None:
    from abtest_harness.cli import curl_lines
    from abtest_harness.spec import load_spec

    lines = curl_lines(load_spec(BOOKINFO / "rollout.yaml"), "http://127.0.0.1:8080")
    assert lines == [
        "# anonymous\ncurl -sS -i -H 'Host: reviews.bookinfo.example' http://127.0.0.1:8080/score",
        "# jason\ncurl -sS -i -H 'Host: reviews.bookinfo.example' -H 'end-user: jason' http://127.0.0.1:8080/score",
    ]


def test_help_does_not_import_the_heavy_modules() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom abtest_harness.cli import build_parser\nbuild_parser().format_help()\n"
        "heavy = [m for m in ('scipy', 'numpy', 'cloudcoil', 'abtest_harness.mesh.local', 'docker',"
        " 'abtest_harness.routing')"
        " if m in sys.modules]\nprint(heavy)"
    )
    done = subprocess.run(  # noqa: S603 - argv list, this interpreter
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("argv", "message"), [
    (["--offline", "--suite", "tests/e2e/test_rollout.py"],
     "tests/e2e/test_rollout.py: runs on a mesh; it cannot be used with --offline"),
    (["--suite", "no/such/test_file.py"], "no/such/test_file.py: no such test file or directory"),
])
def test_mutate_suite_misuse_is_exit_2_before_anything_runs(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _run("mutate", *argv)
    assert code == 2 and out == ""
    assert f"option --suite: {message}" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    import subprocess
    import sys

    # `abtest validate --all | head -0`: the reader is gone before the first line is written
    # (closed at once; the command takes a good part of a second to start).
    child = subprocess.Popen(  # noqa: S603 - our own command
        [sys.executable, "-m", "abtest_harness.cli", "validate", "--all"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read()
    code = child.wait(timeout=120)
    assert code == 141 and "Traceback" not in err and "BrokenPipe" not in err, (code, err)
