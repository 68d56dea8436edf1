"""Small fixtures for the data-layer tests: tiny MMSA-shaped payloads and a writer for raw pickles."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest


def mmsa_split(n: int, rng: np.random.Generator, *, t: int = 4, widths=(6, 3, 5), label_shape=None) -> dict:
    """One split as MMSA writes it: float arrays, object-array ids and raw text, 1-D float labels."""
    y = rng.uniform(-3, 3, size=n).astype(np.float32)
    return {
        "text": rng.standard_normal((n, t, widths[0])).astype(np.float32),
        "audio": rng.standard_normal((n, t, widths[1])).astype(np.float32),
        "vision": rng.standard_normal((n, t, widths[2])).astype(np.float32),
        "raw_text": np.array([f"clip {i} text" for i in range(n)], dtype=object),
        "id": np.array([f"vid{i // 2}$_${i % 2}" for i in range(n)], dtype=object),
        "regression_labels": y if label_shape is None else y.reshape(label_shape),
        "classification_labels": (np.sign(y) + 1).astype(np.float32),
        "annotations": np.array(["Positive"] * n, dtype=object),
    }


@pytest.fixture
def make_mmsa_split():
    return mmsa_split


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def mmsa_payload(rng) -> dict:
    return {"train": mmsa_split(10, rng), "valid": mmsa_split(4, rng), "test": mmsa_split(5, rng)}


@pytest.fixture
def dump(tmp_path):
    """Write any object with plain pickle (the fixture plays the role of MMSA's own scripts)."""

    def write(obj, name: str = "data.pkl", protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
        path = tmp_path / name
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        return path

    return write


@pytest.fixture
def npz_file(tmp_path):
    """Write a dict of arrays as an npz archive with np.savez."""

    def write(arrays: dict, name: str = "data.npz") -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    return write


@pytest.fixture
def sandbox_in_memory(memory_root, monkeypatch) -> list:
    """The sandbox's folders in a memory root of this test's own (``memory_root``), arrays of 1 MiB and more
    mapped; the list fills with each run's ``SandboxReport``."""
    from decalign import sandbox

    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 << 20)
    reports = []
    collect = sandbox._collect

    def collect_and_keep(*args):
        value, report = collect(*args)
        reports.append(report)
        return value, report

    monkeypatch.setattr(sandbox, "_collect", collect_and_keep)
    return reports


@pytest.fixture
def upload_matches_file():
    """Load ``path``'s bytes as an upload (the sandbox) and check every split's features, labels and ids against
    the file read in this process."""
    from decalign.data import load_dataset, load_dataset_bytes

    def check(path: Path) -> None:
        got = load_dataset_bytes(path.read_bytes(), path.name)
        for split, part in load_dataset(path, sandbox=False).splits.items():
            for modality, features in part.features.items():
                np.testing.assert_array_equal(got.splits[split].features[modality], features)
            np.testing.assert_array_equal(got.splits[split].labels, part.labels)
            assert list(got.splits[split].ids) == list(part.ids)

    return check
