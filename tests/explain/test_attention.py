import numpy as np
import pytest

from decalign.explain import attention_to_modalities, cross_modal_attention


def test_attention_shapes_labels_and_rows(trained, digits_data):
    model, _ = trained
    att = cross_modal_attention(model, digits_data.splits["test"], 5)
    assert set(att) == {"fourier", "karhunen", "pixel"}
    pixel = att["pixel"][0]
    assert pixel.shape == (16, 2)
    assert list(pixel.columns) == ["fourier:0", "karhunen:0"]
    assert list(att["fourier"][0].columns) == ["karhunen:0"] + [f"pixel:{t}" for t in range(16)]
    for layers in att.values():
        assert len(layers) == model.config.num_layers
        np.testing.assert_allclose(layers[0].sum(axis=1), 1.0, atol=1e-5)


def test_attention_to_modalities_sums(trained, digits_data):
    model, _ = trained
    att = cross_modal_attention(model, digits_data.splits["test"], 5)
    summary = attention_to_modalities(att)
    totals = summary.groupby(["modality", "layer"]).weight.sum()
    np.testing.assert_allclose(totals, 1.0, atol=1e-5)
    # By hand: fourier's weight on pixel = mean over its single query of the 16 pixel columns.
    frame = att["fourier"][0]
    by_hand = frame[[c for c in frame.columns if c.startswith("pixel:")]].sum(axis=1).mean()
    got = summary.query("modality == 'fourier' and source == 'pixel'").weight.iloc[0]
    assert got == pytest.approx(by_hand)
