"""Fixtures for the hostile-file tests: a tiny valid run and data file, a victim file outside every run
folder, and a private temporary folder that must be empty again after every case."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# ``tests.hostile.corpus`` is imported by package path (see tests/model/conftest.py).
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from decalign.data import MultimodalDataset, Split, save_npz
from tests.hostile.corpus import MODEL_WIDTHS, N, model_card, model_weights


@pytest.fixture(scope="session")
def valid_run(tmp_path_factory) -> Path:
    """A run directory of the corpus's tiny regression model (text 4, audio 3, vision 2)."""
    run = tmp_path_factory.mktemp("valid-run")
    (run / "card.json").write_text(json.dumps(model_card()))
    (run / "best.safetensors").write_bytes(model_weights())
    return run


def small_dataset(seed: int = 0, ids: list[str] | None = None) -> MultimodalDataset:
    rng = np.random.default_rng(seed)

    def split(name: str) -> Split:
        features = {m: rng.standard_normal((N, 3, d)).astype(np.float32) for m, d in MODEL_WIDTHS.items()}
        names = np.array(ids if ids is not None else [f"{name}-{i}" for i in range(N)])
        return Split(features, rng.uniform(-3, 3, N).astype(np.float32), names)

    return MultimodalDataset({s: split(s) for s in ("train", "valid", "test")}, "regression")


@pytest.fixture(scope="session")
def valid_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid-data") / "valid.npz"
    save_npz(small_dataset(), path)
    return path


@pytest.fixture(scope="session")
def victim(tmp_path_factory) -> Path:
    """A data file a hostile card points at: it fits the corpus's model, so reading it would show its rows."""
    path = tmp_path_factory.mktemp("victim") / "victim.npz"
    save_npz(small_dataset(seed=9, ids=[f"SECRET-{i}" for i in range(N)]), path)
    return path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """TMPDIR for this test only: the sandbox's folders go there and must all be gone afterwards."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
