"""Stratified carving of missing splits, and the small-data warnings of the load report."""

from __future__ import annotations

import numpy as np

from decalign.data import Split, load_dataset
from decalign.data.splitting import MIN_PER_CLASS, carve_indices, small_data_warnings


def _npz(rng, n, labels, splits=("train",)):
    out = {}
    for split in splits:
        out[f"{split}/a"] = rng.standard_normal((n, 2, 3)).astype(np.float32)
        out[f"{split}/b"] = rng.standard_normal((n, 4)).astype(np.float32)
        out[f"{split}/labels"] = labels
    return out


def test_stratified_carve_keeps_every_class_share_within_one_sample(rng):
    labels = np.repeat(np.arange(5), [50, 30, 12, 5, 3])  # 100 samples, lopsided classes
    rng.shuffle(labels)
    valid, test = carve_indices(len(labels), 10, 2, seed=0, labels=labels)
    assert len(valid) == len(test) == 10 and not set(valid) & set(test)
    for part in (valid, test):
        counts = np.bincount(labels[part], minlength=5)
        expected = 10 * np.bincount(labels) / len(labels)
        assert np.all(np.abs(counts - expected) < 1 + 1e-9), (counts, expected)


def test_plain_random_carve_is_the_old_seeded_permutation():
    perm = np.random.default_rng(0).permutation(40)
    valid, test = carve_indices(40, 4, 2, seed=0)
    np.testing.assert_array_equal(valid, np.sort(perm[:4]))
    np.testing.assert_array_equal(test, np.sort(perm[4:8]))


def test_a_small_classification_file_keeps_every_class_in_valid(npz_file, rng):
    # 40 samples of 4 classes (10 each): a random 4-sample carve misses a class with probability ~0.9.
    labels = np.repeat(np.arange(4), 10)
    data = load_dataset(npz_file(_npz(rng, 40, labels)))
    assert sorted(data.splits["valid"].labels.tolist()) == [0, 1, 2, 3]
    assert sorted(data.splits["test"].labels.tolist()) == [0, 1, 2, 3]
    assert any("stratified by class" in note for note in data.report.notes)
    ids = np.concatenate([p.ids for p in data.splits.values()])
    assert sorted(ids.tolist()) == sorted(f"train-{i}" for i in range(40))  # a partition of train
    # ... and the report warns that 1 sample per class in valid and 8 in train are too few to trust.
    warnings = " | ".join(data.report.warnings)
    assert "valid: 4 classes with fewer than 10 samples: 0 (1), 1 (1), 2 (1), 3 (1)" in warnings
    assert "train: 4 classes with fewer than 10 samples" in warnings


def test_a_class_missing_from_valid_is_named(npz_file, rng):
    arrays = _npz(rng, 60, np.arange(60) % 3, splits=("train",))
    arrays.update({f"valid/{k}": v for k, v in _npz(rng, 20, np.arange(20) % 2).items() if k.startswith("train/")
                   for k in [k.replace("train/", "")]})
    arrays["label_names"] = np.array(["cat", "dog", "bird"])
    data = load_dataset(npz_file(arrays))
    assert "valid has no sample of class 'bird'" in " | ".join(data.report.warnings)


def test_large_balanced_splits_give_no_warning():
    parts = {s: Split({}, np.arange(n) % 3, np.arange(n).astype(str)) for s, n in
             (("train", 300), ("valid", 60), ("test", 60))}
    assert small_data_warnings(parts, "classification", 3) == []
    parts["test"] = Split({}, np.arange(3 * MIN_PER_CLASS - 1) % 3, np.arange(3 * MIN_PER_CLASS - 1).astype(str))
    assert small_data_warnings(parts, "classification", 3) == [
        "test: 1 class with fewer than 10 samples: 2 (9); per-class results there are noise"]


def test_small_regression_splits_are_named():
    parts = {"train": Split({}, np.zeros(50, np.float32), np.arange(50).astype(str)),
             "valid": Split({}, np.zeros(4, np.float32), np.arange(4).astype(str))}
    assert small_data_warnings(parts, "regression", None) == [
        "valid has only 4 samples (fewer than 10): its metrics swing with every sample"]
