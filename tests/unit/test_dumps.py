"""Failure dumps (abtest_harness.dumps): one place and one naming rule for the CLI and the plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from abtest_harness.dumps import MAX_NAME, dump_failure, dump_path


class _Mesh:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.dumped: list[Path] = []

    def dump(self, directory: Path) -> None:
        self.dumped.append(directory)
        if self.fail:
            raise RuntimeError("admin port closed")
        (directory / "config_dump.json").write_text("{}")


def test_a_test_id_becomes_one_directory_name(tmp_path: Path) -> None:
    path = dump_path(tmp_path, "tests/e2e/test_rollout.py::test_weighted_split[docker-Blue_50]")
    assert path.parent == tmp_path
    assert path.name == "tests_e2e_test_rollout.py__test_weighted_split_docker-Blue_50_"


def test_a_long_name_keeps_its_distinct_end(tmp_path: Path) -> None:
    name = "x" * 400 + "::case[7]"
    path = dump_path(tmp_path, name)
    assert len(path.name) == MAX_NAME and path.name.endswith("__case_7_")


@pytest.mark.parametrize("name", ["", "..", "."])
def test_a_name_without_usable_characters_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="no usable characters"):
        dump_path(tmp_path, name)


def test_nothing_is_created_before_a_dump_and_the_dump_lands_in_its_directory(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    mesh = _Mesh()
    assert not artifacts.exists()
    dump = dump_failure(mesh, artifacts, "run-failure")
    assert dump.ok and dump.path == artifacts / "run-failure"
    assert (artifacts / "run-failure" / "config_dump.json").read_text() == "{}"
    assert dump.line == f"mesh state dumped to {artifacts / 'run-failure'}"


def test_a_failed_dump_is_reported_not_raised(tmp_path: Path) -> None:
    dump = dump_failure(_Mesh(fail=True), tmp_path, "run")
    assert not dump.ok
    assert dump.line == f"could not dump the mesh state to {tmp_path / 'run'}: RuntimeError: admin port closed"
