import numpy as np
import pytest

from decalign.explain import branch_contributions
from decalign.inference import run_inference


def test_contributions_sum_to_output_for_every_class(test_result):
    for row in (0, 7, 42):
        for cls in range(test_result.outputs.shape[1]):
            frame = branch_contributions(test_result, row, cls)
            assert abs(frame.contribution.sum() - test_result.outputs[row, cls]) < 1e-5


def test_default_class_is_prediction_and_columns(test_result):
    frame = branch_contributions(test_result, 3)
    pred = int(test_result.outputs[3].argmax())
    assert list(frame.columns) == ["branch", "modality", "part", "contribution"]
    assert abs(frame.contribution.sum() - test_result.outputs[3, pred]) < 1e-5
    assert list(frame.part) == ["unique"] * 3 + ["common"] * 3 + ["bias"]
    assert list(frame.modality[:3]) == ["fourier", "karhunen", "pixel"]


def test_contribution_is_hand_computed_dot_product(test_result):
    # Independent: slice the head by hand for the common part of the pixel modality (5th branch).
    d = test_result.branch_inputs.shape[1] // 6
    h, w = test_result.branch_inputs[5, 5 * d:6 * d], test_result.head_weight[2, 5 * d:6 * d]
    frame = branch_contributions(test_result, 5, 2)
    assert frame.set_index("branch").loc["common:pixel", "contribution"] == pytest.approx(float(h @ w), abs=1e-5)


def test_zeroed_branch_contributes_nothing(trained, digits_data):
    model, card = trained
    original = model.head.weight.detach().clone()
    try:
        d = model.config.d_model
        model.head.weight.data[:, 2 * d:3 * d] = 0  # unique:pixel
        result = run_inference(model, digits_data.splits["test"].subset(np.arange(5)), task=card.task)
        frame = branch_contributions(result, 0)  # before restoring: result.head_weight may share memory
    finally:
        model.head.weight.data.copy_(original)
    assert frame.set_index("branch").loc["unique:pixel", "contribution"] == 0.0


def test_explained_contributions_match_rows(test_result):
    matrix = test_result.explained_contributions()
    assert matrix.shape == (len(test_result), 7)
    np.testing.assert_allclose(matrix.sum(axis=1), test_result.outputs.max(1), atol=1e-5)
    np.testing.assert_allclose(matrix[4], branch_contributions(test_result, 4).contribution, atol=1e-7)


def test_bad_row_and_class(test_result):
    with pytest.raises(IndexError, match="row must be"):
        branch_contributions(test_result, len(test_result))
    with pytest.raises(IndexError, match="class_index"):
        branch_contributions(test_result, 0, 10)
