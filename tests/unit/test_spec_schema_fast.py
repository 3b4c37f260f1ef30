"""The spec's fast schema check (jsonschema-rs) never accepts what python-jsonschema refuses.

Every leaf and every mapping of the sample and example specs is replaced, one at a time,
by values of other types and strings the patterns may treat differently; wherever the fast
check says valid, python-jsonschema must say valid too.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from abtest_harness import spec as spec_mod

ROOT = Path(__file__).resolve().parents[2]
SPECS = [ROOT / "manifests" / "rollout.yaml", *sorted((ROOT / "examples").glob("*/rollout.yaml"))]
CANDIDATES: list[Any] = [
    "", "a\n", "ä", "status:999", "/a\n", "host:80\n", "a" * 64, 0, -1, 1.5, 65536, 2**70, True, None, [],
    {"x": 1}, datetime.date(2024, 1, 1),
]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _replaced(raw: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    out = copy.deepcopy(raw)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("source", SPECS, ids=lambda p: p.parent.name)
def test_a_fast_yes_is_a_python_jsonschema_yes(source: Path) -> None:
    raw = yaml.safe_load(source.read_text())
    checker = jsonschema.Draft202012Validator(spec_mod.schema())
    assert spec_mod._fast_valid(raw) and checker.is_valid(raw)
    tried = refused = 0
    for path in _paths(raw):
        for value in CANDIDATES:
            mutant = _replaced(raw, path, value)
            tried += 1
            fast = spec_mod._fast_valid(mutant)
            if fast:
                assert checker.is_valid(mutant), f"fast check accepts {path} = {value!r}"
            refused += not fast
    assert tried // 4 < refused < tried, "the mutations must reach both answers"
