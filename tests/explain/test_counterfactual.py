import numpy as np
import torch

from decalign.explain import modality_counterfactuals
from decalign.explain.counterfactual import evaluate, fit_to_length, sample_inputs


def test_swap_with_itself_changes_nothing(trained, digits_data, reference):
    model, _ = trained
    split = digits_data.splits["test"]
    cf = modality_counterfactuals(model, split, 4, reference, swap_row=4)
    swaps = cf[cf.change == "swap"]
    assert len(swaps) == 3
    assert np.all(swaps.delta.abs() < 1e-6)
    assert (swaps.cell_before == swaps.cell_after).all()
    assert (swaps.prediction_before == swaps.prediction_after).all()


def test_drop_of_modality_with_zeroed_branches_changes_nothing(digits_data, reference):
    # A model whose head ignores every branch fed by "pixel": dropping pixel cannot change the output.
    # With cross-modal attention the other modalities' transformers read pixel, so turn it off here.
    from dataclasses import replace

    from explain_fixtures import small_config

    from decalign.model import DecAlign
    torch.manual_seed(1)
    config = replace(small_config().model, cross_modal_attention=False)
    model = DecAlign(config, digits_data.widths, 10).eval()
    d = config.d_model
    with torch.no_grad():
        model.head.weight[:, 2 * d:3 * d] = 0  # unique:pixel
        model.head.weight[:, 5 * d:6 * d] = 0  # common:pixel
    split = digits_data.splits["test"]
    cf = modality_counterfactuals(model, split, 0, reference)
    pixel, others = cf[cf.modality == "pixel"].iloc[0], cf[cf.modality != "pixel"]
    assert abs(pixel.delta) < 1e-7 and pixel.prediction_before == pixel.prediction_after
    assert others.delta.abs().max() > 1e-4  # the other modalities do matter


def test_drop_uses_training_mean(trained, digits_data, reference):
    model, _ = trained
    split = digits_data.splits["test"]
    cf = modality_counterfactuals(model, split, 2, reference).set_index("modality")
    inputs, lengths = sample_inputs(split, 2)
    inputs["karhunen"] = torch.from_numpy(reference.input_means["karhunen"][None])
    out, assigned = evaluate(model, inputs, lengths, reference.prototypes)
    assert cf.loc["karhunen", "prediction_after"] == int(out.argmax())
    assert cf.loc["karhunen", "cell_after"] == tuple(assigned.values())
    assert list(cf.columns[:5]) == ["change", "prediction_before", "prediction_after", "delta",
                                    "prototype_before:fourier"]


def test_fit_to_length():
    mean = np.arange(6, dtype=float).reshape(3, 2)
    np.testing.assert_array_equal(fit_to_length(mean, 2), mean[:2])
    padded = fit_to_length(mean, 5)
    assert padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[3], [2.0, 3.0])
