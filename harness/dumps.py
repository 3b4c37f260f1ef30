"""Failure dumps: where the state of a mesh goes when a check fails, for every front end.

``abtest run`` and the pytest plugin both call :func:`dump_failure`, so a dump is found in
the same place under the same kind of name whichever ran: ``<artifacts dir>/<name>/``, where
``<name>`` is the test id or the command's step, made safe as a directory name. Nothing is
created until there is something to write.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["Dump", "dump_failure", "dump_path"]

#: Longest directory name a dump gets; the end of a long test id is kept (it is the distinct part).
MAX_NAME = 150


class Dumpable(Protocol):
    def dump(self, directory: Path) -> None: ...


@dataclass(frozen=True)
class Dump:
    """Where a dump went and whether it was written; `line` says so in words for a log."""

    path: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def line(self) -> str:
        if self.ok:
            return f"mesh state dumped to {self.path}"
        return f"could not dump the mesh state to {self.path}: {self.error}"


def dump_path(artifacts_dir: Path, name: str) -> Path:
    """``artifacts_dir / name``, with every character but letters, digits and ``-_.`` made ``_``.

    >>> dump_path(Path("artifacts"), "tests/e2e/test_rollout.py::test_weighted_split[docker-Blue_50]").name
    'tests_e2e_test_rollout.py__test_weighted_split_docker-Blue_50_'
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-MAX_NAME:]
    if not safe.strip("."):
        raise ValueError(f"dump name {name!r} has no usable characters")
    return Path(artifacts_dir) / safe


def dump_failure(mesh: Dumpable, artifacts_dir: Path, name: str) -> Dump:
    """Dump `mesh` into ``dump_path(artifacts_dir, name)``; never raises for a failed dump.

    A dump explains a failure; an error while writing it must not replace that failure, so
    it is returned (``Dump.error``) for the caller to print next to it.
    """
    target = dump_path(artifacts_dir, name)
    try:
        target.mkdir(parents=True, exist_ok=True)
        mesh.dump(target)
    except Exception as exc:  # noqa: BLE001 - reported to the caller, see the docstring
        return Dump(target, f"{type(exc).__name__}: {exc}")
    return Dump(target)
