"""The synthetic generator: MMSA shapes, determinism, and a planted signal that needs several modalities."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score

from decalign.data import make_synthetic

WIDTHS = {"text": 32, "audio": 5, "vision": 20}


def _time_means(split, modalities):
    return np.concatenate([split.features[m].mean(axis=1) for m in modalities], axis=1)


def _test_r2(data, modalities) -> float:
    train, test = data.splits["train"], data.splits["test"]
    model = RidgeCV().fit(_time_means(train, modalities), train.labels)
    return r2_score(test.labels, model.predict(_time_means(test, modalities)))


def test_default_shapes_are_mosi_like():
    data = make_synthetic(8, 3, 4, seq_len=50)
    assert data.modalities == {"text": (50, 768), "audio": (50, 5), "vision": (50, 20)}
    assert [len(p) for p in data.splits.values()] == [8, 3, 4]
    assert all(x.dtype == np.float32 for p in data.splits.values() for x in p.features.values())
    labels = np.concatenate([p.labels for p in data.splits.values()])
    assert labels.dtype == np.float32 and np.all(np.abs(labels) < 3)


def test_per_modality_lengths_and_padding():
    data = make_synthetic(20, 0, 0, widths={"a": 3, "b": 2}, seq_len={"a": 6, "b": 9}, variable_lengths=True)
    train = data.splits["train"]
    assert data.modalities == {"a": (6, 3), "b": (9, 2)}
    assert list(data.splits) == ["train"]
    for m, steps in (("a", 6), ("b", 9)):
        lengths = train.lengths[m]
        assert lengths.dtype == np.int64 and lengths.min() >= (steps + 1) // 2 and lengths.max() <= steps
        padded = np.arange(steps)[None, :] >= lengths[:, None]
        assert np.all(train.features[m][padded] == 0) and np.all(train.features[m][~padded] != 0)


def test_same_seed_same_data_other_seed_other_data():
    a, b = make_synthetic(10, 2, 2, widths=WIDTHS, seed=7), make_synthetic(10, 2, 2, widths=WIDTHS, seed=7)
    assert a.fingerprint() == b.fingerprint()
    assert make_synthetic(10, 2, 2, widths=WIDTHS, seed=8).fingerprint() != a.fingerprint()


def test_signal_is_learnable_only_from_several_modalities():
    data = make_synthetic(600, 0, 300, widths=WIDTHS, seq_len=10, seed=3)
    everything = _test_r2(data, list(WIDTHS))
    singles = [_test_r2(data, [m]) for m in WIDTHS]
    assert everything > 0.5
    assert everything > max(singles) + 0.25  # no single modality carries the label
    noise = make_synthetic(600, 0, 300, widths=WIDTHS, seq_len=10, seed=3, signal=0.0)
    assert _test_r2(noise, list(WIDTHS)) < 0.1


def test_classification_labels_follow_the_score_quantiles():
    data = make_synthetic(
        3000, 0, 0, widths={"a": 2, "b": 2, "c": 2}, seq_len=2, task="classification", num_classes=4
    )
    labels = data.splits["train"].labels
    assert data.task == "classification" and data.num_classes == 4 and labels.dtype == np.int64
    counts = np.bincount(labels, minlength=4) / len(labels)
    assert set(np.unique(labels)) == {0, 1, 2, 3} and counts.min() > 0.15  # roughly balanced


@pytest.mark.parametrize(
    "kwargs", [{"widths": {"text": 3}}, {"task": "ranking"}, {"task": "classification", "num_classes": 1}]
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        make_synthetic(4, 1, 1, **kwargs)
