"""tools/check_import_cycles.py on small synthetic packages written by each test."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from abtest_harness import proc

TOOL = Path(__file__).resolve().parents[2] / "tools" / "check_import_cycles.py"


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def _check(root: Path, *packages: str) -> tuple[int, str]:
    done = proc.run([sys.executable, str(TOOL), "--root", str(root), *packages], timeout=60.0, check=False)
    return done.returncode, done.stdout + done.stderr


ACYCLIC = {
    "pkg/__init__.py": "from pkg.a import A\n",
    "pkg/a.py": "from pkg import b\nA = 1\n",
    "pkg/b.py": "import json\nfrom pkg.sub.c import C\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\nC = 2\n",
}


def test_an_acyclic_package_passes(tmp_path: Path) -> None:
    _write(tmp_path, ACYCLIC)
    code, out = _check(tmp_path, "pkg")
    assert code == 0, out
    assert "no import cycle among 5 modules" in out


def test_a_cycle_hidden_in_a_function_fails_and_is_named(tmp_path: Path) -> None:
    _write(tmp_path, {
        **ACYCLIC,
        # c -> a only inside a function: the interpreter would not notice until it runs.
        "pkg/sub/c.py": """\
            C = 2

            def late():
                from pkg.a import A
                return A
            """,
    })
    code, out = _check(tmp_path, "pkg")
    assert code == 1, out
    cycle_line = next(line for line in out.splitlines() if line.startswith("import cycle:"))
    assert "pkg.a -> pkg.b -> pkg.sub.c -> pkg.a" in cycle_line, out
    assert "pkg/sub/c.py:4" in cycle_line, "the hidden import is located by file and line"


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"p/__init__.py": "", "p/x.py": "from . import y\n", "p/y.py": "from .x import f\n"}, "p.x -> p.y -> p.x"),
        ({"p/__init__.py": "", "p/x.py": "import p.y\n", "p/y.py": "try:\n    import p.x\nexcept ImportError:\n"
          "    pass\n"}, "p.x -> p.y -> p.x"),
        ({"p/__init__.py": "from p.x import X\n", "p/x.py": "from p import helper\nX = 1\n",
          "p/helper.py": "from p import X\n"}, "p -> p.x -> p.helper -> p"),
    ],
    ids=["relative", "import-in-try", "through-the-package-init"],
)
def test_every_import_form_is_followed(tmp_path: Path, files: dict[str, str], cycle: str) -> None:
    _write(tmp_path, files)
    code, out = _check(tmp_path, "p")
    assert code == 1 and cycle in out, out


def test_cycles_across_packages_are_found(tmp_path: Path) -> None:
    _write(tmp_path, {"a/__init__.py": "", "a/m.py": "from b.n import N\n",
                      "b/__init__.py": "", "b/n.py": "def f():\n    import a.m\nN = 1\n"})
    assert _check(tmp_path, "a")[0] == 0, "b is outside the checked packages: no cycle within a"
    code, out = _check(tmp_path, "a", "b")
    assert code == 1 and "a.m -> b.n -> a.m" in out, out


def test_a_missing_package_is_bad_input(tmp_path: Path) -> None:
    code, out = _check(tmp_path, "nothing")
    assert code == 2 and "no such package directory" in out, out
