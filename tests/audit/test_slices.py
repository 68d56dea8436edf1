from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from decalign.audit.flags import compute_flags
from decalign.audit.table import prediction_table
from decalign.explain.slices import dominant_branch, slice_metrics
from decalign.train.metrics import compute_metrics


@pytest.fixture(scope="module")
def setup(trained_digits):
    _, card, ref, result = trained_digits
    return card, ref, result, compute_flags(result, ref, card)


def test_class_slices_are_one_vs_rest_as_scikit_learn(setup):
    card, _, result, flags = setup
    table = slice_metrics(result, flags, card, by="class", min_samples=1)
    assert list(table.columns) == ["slice", "n", "predicted", "precision", "recall", "F1"]
    classes = sorted(set(result.labels) | set(result.predictions))
    precision, recall, f1, support = precision_recall_fscore_support(
        result.labels, result.predictions, labels=classes, zero_division=0)
    assert list(table.slice) == classes and table.n.sum() == len(result)
    np.testing.assert_allclose(table.precision, precision)
    np.testing.assert_allclose(table.recall, recall)
    np.testing.assert_allclose(table.F1, f1)
    np.testing.assert_array_equal(table.n, support)
    np.testing.assert_array_equal(table.predicted, [np.sum(result.predictions == c) for c in classes])
    # the whole-split per-class F1 of the metrics is the same number
    whole = compute_metrics("classification", result.outputs, result.labels, num_classes=result.outputs.shape[1])
    assert table.set_index("slice").F1.to_dict() == pytest.approx({c: whole[f"F1_class_{c}"] for c in classes})
    assert (slice_metrics(result, flags, card, by="label_bin", min_samples=1) == table).all().all()


def test_flag_and_prototype_slices(setup):
    card, _, result, flags = setup
    by_flag = slice_metrics(result, flags, card, by="flags", min_samples=1)
    assert set(by_flag.slice) <= {"flagged", "not flagged"}
    assert by_flag.n.sum() == len(result)
    by_proto = slice_metrics(result, flags, card, by="prototype:pixel", min_samples=1000)
    assert by_proto.n.sum() == len(result) and by_proto.drop(columns=["slice", "n"]).empty
    with pytest.raises(ValueError, match="by must be"):
        slice_metrics(result, flags, card, by="colour")


def test_regression_label_bins(setup):
    card, _, result, _ = setup
    reg = result.subset(np.arange(len(result)))
    reg.task = "regression"
    reg.outputs = reg.outputs[:, :1]
    reg.labels = (result.labels.astype(np.float32) / 1.5 - 3).astype(np.float32)
    reg.head_weight, reg.head_bias = reg.head_weight[:1], reg.head_bias[:1]
    rcard = replace(card, task="regression", label_range=[-3.0, 3.0])
    table = slice_metrics(reg, None, rcard, by="label_bin", min_samples=5)
    assert set(table.slice) <= set(range(-3, 4))
    row = table[table.slice == -3].iloc[0]
    idx = np.clip(np.round(reg.labels), -3, 3) == -3
    assert row.MAE == pytest.approx(compute_metrics("regression", reg.outputs[idx, 0], reg.labels[idx])["MAE"])
    assert row.bias == pytest.approx(np.mean(reg.outputs[idx, 0] - reg.labels[idx]))
    # within one label bin Corr and F1 are degenerate: not shown; other slices keep every metric
    assert "Corr" not in table.columns and not any("F1" in c for c in table.columns)
    mixed = slice_metrics(reg, None, rcard, by="dominant_modality", min_samples=5)
    assert "Corr" in mixed.columns


def test_prediction_table_and_dominant_branch(setup):
    card, _, result, flags = setup
    table = prediction_table(result, flags, "test", None, card)
    assert list(table.columns[:8]) == ["id", "split", "raw_text", "prediction", "label", "error", "p_label",
                                       "confidence"]
    assert table.error.mean() == pytest.approx(1 - np.mean(result.predictions == result.labels))
    logits = result.outputs.astype(np.float64)  # float32 here would round tiny probabilities by ~1e-6
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(table.p_label, probs[np.arange(len(result)), result.labels], rtol=1e-6)
    terms = result.contributions()[0, result.outputs[0].argmax(), :-1]
    assert dominant_branch(result)[0] == result.branch_names[int(np.abs(terms).argmax())]
    assert table.dominant_branch[0] == dominant_branch(result)[0]
    flagged = table[table.any_flag]
    assert all(f for f in flagged["flags"])
