import numpy as np

from decalign.explain import cross_modal_attention


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
