"""The rollout plan: the shipped stages, and a clear error for each kind of bad plan."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from abtest_harness.errors import ConfigError
from abtest_harness.plan import DEFAULT_PLAN, load_plan, parse_plan


def _raw() -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_PLAN.read_text())
    assert isinstance(data, dict)
    return copy.deepcopy(data)


def test_shipped_plan_has_the_guides_stages_in_order() -> None:
    plan = load_plan()
    table = {s.name: (dict(s.weights), dict(s.images)) for s in plan.stages}
    assert [s.name for s in plan.stages] == ["baseline", "Blue_0", "Blue_50", "Blue_100", "Blue_Green", "Green_100"]
    assert table["baseline"] == ({"green": 100, "blue": 0}, {"green": "A"})
    assert table["Blue_0"] == ({"green": 100, "blue": 0}, {"green": "A", "blue": "B"})
    assert table["Blue_50"] == ({"green": 50, "blue": 50}, {"green": "A", "blue": "B"})
    assert table["Blue_100"] == ({"green": 0, "blue": 100}, {"green": "A", "blue": "B"})
    assert table["Blue_Green"] == ({"green": 0, "blue": 100}, {"green": "B", "blue": "B"})
    assert table["Green_100"] == ({"green": 100, "blue": 0}, {"green": "B"})
    assert plan.images["A"].answer == "New Model A"
    assert plan.images["B"].answer == "New Model B"


def test_image_for_ignores_tag_and_registry_port() -> None:
    plan = load_plan()
    assert plan.image_for("abtest/scorer-b:3f2a9c").key == "B"
    assert plan.image_for("abtest/scorer-a").key == "A"
    with pytest.raises(ConfigError, match="no image with repository 'localhost:5000/abtest/scorer-a'"):
        plan.image_for("localhost:5000/abtest/scorer-a:dev")


def test_unknown_stage_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"no stage 'Blue_75' \(known: baseline, Blue_0"):
        load_plan().stage("Blue_75")


def _stage(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in raw["stages"] if s["name"] == name)


def _bad_weights(raw: dict[str, Any]) -> None:
    _stage(raw, "Blue_50")["weights"] = {"green": 60, "blue": 50}


def _unknown_image(raw: dict[str, Any]) -> None:
    _stage(raw, "Blue_0")["images"]["blue"] = "C"


def _duplicate(raw: dict[str, Any]) -> None:
    raw["stages"].append(copy.deepcopy(_stage(raw, "Blue_50")))


def _unknown_stage_key(raw: dict[str, Any]) -> None:
    _stage(raw, "Blue_100")["wieghts"] = {}


def _unknown_top_key(raw: dict[str, Any]) -> None:
    raw["namespaces"] = "x"


def _weight_to_absent(raw: dict[str, Any]) -> None:
    _stage(raw, "baseline")["weights"] = {"green": 90, "blue": 10}


def _missing_weight(raw: dict[str, Any]) -> None:
    del _stage(raw, "Blue_50")["weights"]["blue"]


def _fractional_weight(raw: dict[str, Any]) -> None:
    _stage(raw, "Blue_50")["weights"] = {"green": 49.5, "blue": 50.5}


def _unknown_version(raw: dict[str, Any]) -> None:
    _stage(raw, "Blue_0")["images"]["red"] = "A"


def _image_with_tag(raw: dict[str, Any]) -> None:
    raw["images"]["A"]["repository"] = "abtest/scorer-a:latest"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_bad_weights, r"Stage Blue_50: weights: sum to 110, not 100 \(green 60 \+ blue 50\)"),
        (_unknown_image, r"Stage Blue_0: images.blue: unknown image 'C'"),
        (_duplicate, r"Stage Blue_50: name: duplicate stage name \(stages\[6\]\)"),
        (_unknown_stage_key, r"Stage Blue_100: wieghts: unknown key"),
        (_unknown_top_key, r"namespaces: unknown key"),
        (_weight_to_absent, r"Stage baseline: weights.blue: is 10 but blue does not run"),
        (_missing_weight, r"Stage Blue_50: weights.blue: missing"),
        (_fractional_weight, r"Stage Blue_50: weights.green: must be a whole number"),
        (_unknown_version, r"Stage Blue_0: images.red: unknown version"),
        (_image_with_tag, r"images.A.repository: give the repository without a tag"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "",
)
def test_bad_plan_is_rejected_naming_stage_and_field(mutate: Any, expected: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(ConfigError, match=expected):
        parse_plan(raw)


def test_broken_yaml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "stages.yaml"
    bad.write_text("stages: [\n")
    with pytest.raises(ConfigError, match=rf"plan {bad}: line 2: not valid YAML"):
        load_plan(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_plan(tmp_path / "missing.yaml")
