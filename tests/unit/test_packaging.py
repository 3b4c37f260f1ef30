"""The installed import names: every module loads as ``abtest_harness`` / ``abtest_harness_pytest``.

The repository's folders are ``harness/`` and ``fixtures/``, but those names belong to other
projects on PyPI, so the package installs them under names of its own. Tests run from the
repository root, where the folders themselves are importable too; a module that still imports
(or loads resources from) the folder name would pass here and break in a user's environment.
These checks run in a fresh interpreter outside the repository, as a user's would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from abtest_harness import proc

ROOT = Path(__file__).resolve().parents[2]

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import abtest_harness, abtest_harness_pytest
names = []
for package in (abtest_harness, abtest_harness_pytest):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
from abtest_harness.spec import schema
schema()
print(json.dumps({"imported": names, "top": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def test_every_module_imports_under_the_installed_names_outside_the_repository(tmp_path: Path) -> None:
    done = proc.run([sys.executable, "-c", _IMPORT_ALL], timeout=120, cwd=tmp_path)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "abtest_harness.cli" in result["imported"] and "abtest_harness_pytest.plugin" in result["imported"]
    assert not {"harness", "fixtures"} & set(result["top"]), "a module still imports a folder name"


def test_no_source_file_names_a_module_by_its_folder() -> None:
    offenders = []
    for folder in ("harness", "fixtures", "tests", "bench", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # the patterns below
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(s in code for s in ("from harness", "import harness", "from fixtures", "import fixtures",
                                           '"harness.', "'harness.", 'files("harness")', '"fixtures.')):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
