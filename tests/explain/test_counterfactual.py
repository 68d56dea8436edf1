import numpy as np
import pytest
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


def test_what_if_parts_and_scores_are_the_heads(trained, digits_data, reference, test_result):
    from decalign.explain import branch_contributions

    model, _ = trained
    split = digits_data.splits["test"]
    cf = modality_counterfactuals(model, split, 7, reference).set_index("modality")
    contrib = branch_contributions(test_result, 7)
    k = int(test_result.predictions[7])
    for m in reference.modalities:
        own = contrib[contrib.modality == m].contribution.sum()
        assert cf.loc[m, "part_before"] == pytest.approx(own, abs=1e-4)
        assert cf.loc[m, "score_before"] == pytest.approx(float(test_result.outputs[7, k]), abs=1e-4)
        inputs, lengths = sample_inputs(split, 7)
        inputs[m] = torch.from_numpy(fit_to_length(reference.input_means[m], inputs[m].shape[1])[None])
        out, _ = evaluate(model, inputs, lengths, reference.prototypes)
        assert cf.loc[m, "score_after"] == pytest.approx(out[k], abs=1e-5)
        assert cf.loc[m, "margin_after"] == pytest.approx(out[k] - np.delete(out, k).max(), abs=1e-5)
        probs = np.exp(test_result.outputs[7] - test_result.outputs[7].max())
        assert cf.loc[m, "probability_before"] == pytest.approx(probs[k] / probs.sum(), abs=1e-5)
