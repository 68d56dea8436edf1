"""The dataset fingerprint: sha256 over each split's name, modality names and raw array bytes in C order,
read from the arrays' own buffers; ``file_fingerprint`` is computed once and kept by derived views."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from decalign.data import MultimodalDataset, Split, make_synthetic


def _by_hand(dataset: MultimodalDataset) -> str:
    """The documented layout, with ``tobytes`` copies (an independent reading of the rule)."""
    digest = hashlib.sha256()
    for name, split in dataset.splits.items():
        digest.update(name.encode())
        for m in sorted(split.features):
            digest.update(m.encode() + np.ascontiguousarray(split.features[m]).tobytes())
        if split.labels is not None:
            digest.update(np.ascontiguousarray(split.labels).tobytes())
    return digest.hexdigest()


def _awkward() -> MultimodalDataset:
    """Arrays a loader can hand over: a transposed (non-contiguous) one, big-endian, float64 labels, empty."""
    rng = np.random.default_rng(0)
    train = Split(ids=np.array(["a", "b", "c"]),
                  features={"text": rng.normal(size=(2, 3, 3)).astype(np.float32).transpose(1, 0, 2),
                            "audio": rng.normal(size=(3, 2, 2)).astype(">f4")},
                  labels=np.array([0.5, -1.0, 2.0]))
    empty = Split(ids=np.array([], dtype=str), features={"text": np.zeros((0, 2, 3), np.float32),
                                                         "audio": np.zeros((0, 2, 2), np.float32)},
                  labels=np.zeros(0))
    return MultimodalDataset({"train": train, "test": empty}, "regression")


def test_the_fingerprint_hashes_each_arrays_bytes_in_c_order_without_copying_them():
    for data in (_awkward(), make_synthetic(12, 3, 4, widths={"text": 6, "audio": 2}, seq_len=3, seed=1)):
        assert data.fingerprint() == _by_hand(data)
    data = _awkward()
    before = data.fingerprint()
    data.splits["train"].features["audio"][0, 0, 0] += 1.0  # one value changed: another fingerprint
    assert data.fingerprint() != before


def test_the_file_fingerprint_is_computed_once_and_kept_by_derived_views():
    data = make_synthetic(12, 3, 4, widths={"text": 6, "audio": 2}, seq_len=3, seed=1)
    first = data.file_fingerprint()
    assert first == data.fingerprint()
    calls = []
    data.fingerprint = lambda split=None: calls.append(split)  # a second call would hash again: it does not
    assert data.file_fingerprint() == first and calls == []
    doubled = {n: Split(features={m: x * 2 for m, x in s.features.items()}, labels=s.labels, ids=s.ids)
               for n, s in data.splits.items()}
    scaled = data.derived(splits=doubled)  # a view of the same file: its fingerprint
    assert scaled.fingerprint() != first and scaled.file_fingerprint() == first
    other = replace(data, splits=doubled)  # a copy with other data: not the kept fingerprint
    assert other.file_fingerprint() == other.fingerprint() != first
