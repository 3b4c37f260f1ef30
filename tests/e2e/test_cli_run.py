"""`abtest run` end to end on the local mesh: the lines a CI log shows and the report files."""

from __future__ import annotations

import io
from pathlib import Path

from abtest_harness.cli import main


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_run_one_stage_on_the_local_mesh(tmp_path: Path) -> None:
    code, text = _run("run", "--stage", "Blue_Green", "--artifacts-dir", str(tmp_path))
    assert code == 0, text
    assert "Blue_Green  green 0 (scorer-b:dev) / blue 100 (scorer-b:dev)" in text and "valid" in text
    for label in ("weighted", "header-blue", "header-green"):
        assert f"Blue_Green  {label}: PASS" in text
    assert "PASS: 1/1 stages passed" in text
    assert (tmp_path / "run.json").is_file() and (tmp_path / "run.md").is_file()
