"""The one reader of history files: NaN markers decoded, no history is [], a broken one is a RunError."""

from __future__ import annotations

import math

import pytest

from decalign.train.runs import RunError, read_history, write_history


def test_history_round_trip_decodes_non_finite_values(tmp_path):
    rows = [{"epoch": 1, "train": {"total": float("inf")}, "valid": {"Corr": float("nan"), "MAE": 0.5}}]
    write_history(tmp_path, rows)
    back = read_history(tmp_path)
    assert back[0]["train"]["total"] == math.inf and math.isnan(back[0]["valid"]["Corr"])
    assert back[0]["valid"]["MAE"] == 0.5


def test_no_history_is_empty(tmp_path):
    assert read_history(None) == [] and read_history(tmp_path) == []


@pytest.mark.parametrize("content, found", [("{not json", "not a readable history"),
                                            ('{"epoch": 1}', "found dict"),
                                            ('[{"epoch": 1}, "garbage"]', "non-object rows")])
def test_a_broken_history_is_named(tmp_path, content, found):
    (tmp_path / "history.json").write_text(content)
    with pytest.raises(RunError, match=found) as info:
        read_history(tmp_path)
    assert str(tmp_path / "history.json") in str(info.value)
