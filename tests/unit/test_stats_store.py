"""Split boundaries kept on disk read back exactly as computed; a bad entry is computed again."""

from __future__ import annotations

from pathlib import Path

import pytest

from abtest_harness import stats

ARGS = (0.5, 1e-3, 1e-3, 0.2)


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(stats.STATS_CACHE_ENV, str(tmp_path / "stats"))
    stats.stored_split_boundaries.cache_clear()
    yield
    stats.stored_split_boundaries.cache_clear()


def _computing_forbidden(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, ...]]:
    calls: list[tuple[float, ...]] = []
    real = stats.split_boundaries

    def counted(*args: float) -> stats.SplitBoundaries:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(stats, "split_boundaries", counted)
    return calls


def test_a_stored_entry_reads_back_equal_without_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    computed = stats.split_boundaries(*ARGS)
    assert stats.stored_split_boundaries(*ARGS) == computed
    (entry,) = (tmp_path / "stats").glob("split-*.json")
    stats.stored_split_boundaries.cache_clear()
    calls = _computing_forbidden(monkeypatch)
    again = stats.stored_split_boundaries(*ARGS)
    assert calls == [], "an unchanged setting is read from disk"
    assert again == computed and isinstance(again.fail_lo, tuple)
    assert again.decide(again.cap, again.cap // 2) == computed.decide(computed.cap, computed.cap // 2)
    stats.stored_split_boundaries(0.5, 1e-3, 1e-3, 0.25)
    assert calls == [(0.5, 1e-3, 1e-3, 0.25, 0.1, 0.1)], "another setting is another entry"
    assert entry.exists() and len(list((tmp_path / "stats").glob("split-*.json"))) == 2


@pytest.mark.parametrize("bad", ["", "{", "[]", '{"p0": 0.5}', None])
def test_a_damaged_entry_is_computed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str | None) -> None:
    computed = stats.stored_split_boundaries(*ARGS)
    (entry,) = (tmp_path / "stats").glob("split-*.json")
    if bad is None:  # right keys, one boundary array short
        text = entry.read_text()
        entry.write_text(text.replace('"fail_lo": [-1, ', '"fail_lo": [', 1))
        assert entry.read_text() != text
    else:
        entry.write_text(bad)
    stats.stored_split_boundaries.cache_clear()
    calls = _computing_forbidden(monkeypatch)
    assert stats.stored_split_boundaries(*ARGS) == computed
    assert len(calls) == 1


def test_off_stores_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(stats.STATS_CACHE_ENV, "off")
    assert stats.stored_split_boundaries(*ARGS) == stats.split_boundaries(*ARGS)
    assert not (tmp_path / "stats").exists()


def test_sequential_tests_use_the_stored_boundaries(tmp_path: Path) -> None:
    test = stats.SequentialTest({"green": 0.5, "blue": 0.5}, stats.StatsConfig(alpha=1e-3, beta=1e-3, delta=0.2))
    assert test.max_n > 0
    assert list((tmp_path / "stats").glob("split-*.json")), "the split test's boundaries were stored"
