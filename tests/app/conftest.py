"""Fixtures for the dashboard tests: the demo run (bundled, or a tiny stand-in), a tiny text/audio/vision
run with an MMSA pickle that fits it, and ``page_test`` to run one page under ``AppTest``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from browser_utils import ROOT, make_tiny_run
from streamlit.testing.v1 import AppTest

from decalign.data import MultimodalDataset, load_dataset, make_synthetic, save_npz, write_mmsa_pickle

DEMO = ROOT / "assets" / "demo_model"
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"
TAV_WIDTHS = {"text": 12, "audio": 5, "vision": 7}

PAGE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from app import sidebar
from app.views import {page} as page
sidebar.render()
page.render()
"""


def subset(dataset: MultimodalDataset, n: int) -> MultimodalDataset:
    """The first ``n`` samples of every split (keeps tests fast)."""
    splits = {s: p.subset(np.arange(min(n, len(p)))) for s, p in dataset.splits.items()}
    return MultimodalDataset(splits, dataset.task, dataset.num_classes)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """The bundled demo run; where it is not committed yet, a tiny run on the demo data stands in."""
    if (DEMO / "card.json").is_file() and (DEMO / "best.safetensors").is_file():
        run = DEMO
    else:
        run = make_tiny_run(subset(load_dataset(DEMO_DATA), 200), tmp_path_factory.mktemp("demo"), epochs=1,
                            source=str(DEMO_DATA))
    previous = os.environ.get("DECALIGN_DEMO_MODEL")
    os.environ["DECALIGN_DEMO_MODEL"] = str(run)
    yield run
    if previous is None:
        os.environ.pop("DECALIGN_DEMO_MODEL", None)
    else:
        os.environ["DECALIGN_DEMO_MODEL"] = previous


@pytest.fixture(scope="session")
def tav_dataset() -> MultimodalDataset:
    return make_synthetic(60, 20, 20, widths=TAV_WIDTHS, seq_len=6, task="regression", seed=3)


@pytest.fixture(scope="session")
def tav_run(tav_dataset, tmp_path_factory) -> Path:
    """A tiny text/audio/vision regression run (for the checkpoint-directory picker and MMSA uploads)."""
    return make_tiny_run(tav_dataset, tmp_path_factory.mktemp("tav"), epochs=1, source="synthetic")


@pytest.fixture(scope="session")
def tav_pickle(tav_dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mmsa") / "tav.pkl"
    write_mmsa_pickle(tav_dataset, path)
    return path


@pytest.fixture(scope="session")
def demo_npz(tmp_path_factory) -> Path:
    """A demo-shaped npz upload: 50 samples per split of the digits data."""
    path = tmp_path_factory.mktemp("npz") / "digits_small.npz"
    save_npz(subset(load_dataset(DEMO_DATA), 50), path)
    return path


@pytest.fixture
def page_test(demo_dir):
    """``page_test("predict")`` -> an AppTest (not yet run) of the sidebar plus that page."""
    def make(page: str) -> AppTest:
        return AppTest.from_string(PAGE_SCRIPT.format(root=str(ROOT), page=page), default_timeout=90)
    return make
