"""iterate_batches: every sample once, typed tensors, seeded shuffling, lengths for every modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decalign.data import iterate_batches, make_synthetic


@pytest.fixture
def split():
    data = make_synthetic(23, 0, 0, widths={"a": 3, "b": 2}, seq_len={"a": 5, "b": 4})
    part = data.splits["train"]
    part.lengths["a"] = np.arange(23, dtype=np.int64) % 5 + 1
    return part


def test_in_order_batches_cover_the_split(split):
    batches = list(iterate_batches(split, 10, shuffle=False, seed=None))
    assert [len(b) for b in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([b.index for b in batches]), np.arange(23))
    first = batches[0]
    assert first.inputs["a"].shape == (10, 5, 3) and first.inputs["a"].dtype == torch.float32
    assert first.labels.dtype == torch.float32
    np.testing.assert_array_equal(first.inputs["b"].numpy(), split.features["b"][:10])
    np.testing.assert_array_equal(first.lengths["a"].numpy(), split.lengths["a"][:10])
    np.testing.assert_array_equal(first.lengths["b"].numpy(), np.full(10, 4))  # no lengths recorded: all T


def test_shuffled_batches_are_seeded_and_aligned(split):
    one = list(iterate_batches(split, 8, shuffle=True, seed=5))
    two = list(iterate_batches(split, 8, shuffle=True, seed=5))
    order = np.concatenate([b.index for b in one])
    np.testing.assert_array_equal(order, np.concatenate([b.index for b in two]))
    assert sorted(order.tolist()) == list(range(23)) and not np.array_equal(order, np.arange(23))
    for b in one:  # features, labels and lengths stay with their sample
        np.testing.assert_array_equal(b.inputs["a"].numpy(), split.features["a"][b.index])
        np.testing.assert_array_equal(b.labels.numpy(), split.labels[b.index])
        np.testing.assert_array_equal(b.lengths["a"].numpy(), split.lengths["a"][b.index])


def test_batches_do_not_share_memory_with_the_dataset(split):
    batch = next(iterate_batches(split, 4, shuffle=False, seed=None))
    before = split.features["a"][0].copy()
    batch.inputs["a"].zero_()
    np.testing.assert_array_equal(split.features["a"][0], before)


def test_classification_labels_and_unlabelled_splits():
    data = make_synthetic(6, 0, 0, widths={"a": 2, "b": 2}, seq_len=2, task="classification")
    assert (
        next(iterate_batches(data.splits["train"], 4, shuffle=False, seed=None)).labels.dtype == torch.int64
    )
    data.splits["train"].labels = None
    assert next(iterate_batches(data.splits["train"], 4, shuffle=False, seed=None)).labels is None
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_batches(data.splits["train"], 0, shuffle=False, seed=None))
