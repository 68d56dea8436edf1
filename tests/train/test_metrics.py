"""Metrics against hand-computed values, scikit-learn, scipy and a transcription of MMSA's code."""

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, f1_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from decalign.train.metrics import (
    REGRESSION_KEYS,
    SIMS_KEYS,
    classification_metrics,
    compute_metrics,
    confusion_matrix,
    display_name,
    metric_direction,
    pearson_corr,
    regression_metrics,
    resolve_metric_name,
    sims_metrics,
)

# A tiny MOSI-style example; every expected number below is worked out by hand in the comments.
Y = np.array([2.6, -1.2, 0.0, 0.4, -0.2, 1.5])
P = np.array([1.9, -0.4, 0.3, -0.1, 0.0, 2.7])


def test_regression_hand_computed():
    m = regression_metrics(P, Y)
    assert list(m) == list(REGRESSION_KEYS)
    # has0: y>=0 = TFTTFT, p>=0 = TFTFTT -> 4/6 agree.
    assert m["Has0_acc_2"] == pytest.approx(4 / 6)
    # class 1: TP 3, FP 1, FN 1 -> F1 .75 (support 4); class 0: TP 1, FP 1, FN 1 -> .5 (support 2).
    assert m["Has0_F1_score"] == pytest.approx((4 * 0.75 + 2 * 0.5) / 6)
    # non0 drops y == 0 (index 2): y>0 = TFTFT, p>0 = TFFFT (p = 0.0 is not positive) -> 4/5.
    assert m["Non0_acc_2"] == pytest.approx(0.8)
    # class 1: TP 2, FP 0, FN 1 -> .8; class 0: TP 2, FP 1, FN 0 -> .8.
    assert m["Non0_F1_score"] == pytest.approx(0.8)
    # clip to [-2, 2] and round: p 2,0,0,0,0,2 vs y 2,-1,0,0,0,2 -> 5/6.
    assert m["Mult_acc_5"] == pytest.approx(5 / 6)
    # clip to [-3, 3] and round: p 2,0,0,0,0,3 vs y 3,-1,0,0,0,2 -> 3/6.
    assert m["Mult_acc_7"] == pytest.approx(0.5)
    assert m["MAE"] == pytest.approx((0.7 + 0.8 + 0.3 + 0.5 + 0.2 + 1.2) / 6)
    assert m["Corr"] == pytest.approx(pearsonr(P, Y)[0])


def test_rounding_is_half_to_even_like_mmsa():
    # np.round(0.5) = 0 and np.round(2.5) = 2; round-half-up would give 1 and 3 and score 0.
    m = regression_metrics(np.array([0.5, 2.5]), np.array([0.0, 2.0]))
    assert m["Mult_acc_7"] == 1.0
    assert m["Mult_acc_5"] == 1.0


def _mmsa_mosei_reference(p, y):
    """MMSA metricsTop.__eval_mosei_regression, transcribed with scikit-learn."""
    non_zeros = np.array([i for i, e in enumerate(y) if e != 0])
    return {
        "Has0_acc_2": accuracy_score(p >= 0, y >= 0),
        "Has0_F1_score": f1_score(y >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": accuracy_score(p[non_zeros] > 0, y[non_zeros] > 0),
        "Non0_F1_score": f1_score(y[non_zeros] > 0, p[non_zeros] > 0, average="weighted"),
        "Mult_acc_5": np.sum(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))) / len(y),
        "Mult_acc_7": np.sum(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))) / len(y),
        "MAE": np.mean(np.abs(p - y)),
        "Corr": np.corrcoef(p, y)[0][1],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_matches_mmsa_and_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    # Labels on MOSI's 1/3 grid so that exact zeros and rounding ties occur.
    y = np.round(rng.uniform(-3, 3, 300) * 3) / 3
    p = rng.normal(0.5 * y, 1.2)
    ours, ref = regression_metrics(p, y), _mmsa_mosei_reference(p, y)
    assert (y == 0).any()
    for key in REGRESSION_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def _mmsa_sims_reference(p, y):
    """MMSA metricsTop.__eval_sims_regression, transcribed (loop-assignment bucketing)."""
    p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)

    def bucket(x, ms):
        out = x.copy()
        for i in range(len(ms) - 1):
            out[np.logical_and(x > ms[i], x <= ms[i + 1])] = i
        return out

    ms2, ms3 = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01]
    ms5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, y2 = bucket(p, ms2), bucket(y, ms2)
    return {
        "Mult_acc_2": np.mean(p2 == y2),
        "Mult_acc_3": np.mean(bucket(p, ms3) == bucket(y, ms3)),
        "Mult_acc_5": np.mean(bucket(p, ms5) == bucket(y, ms5)),
        "F1_score": f1_score(y2, p2, average="weighted"),
        "MAE": np.mean(np.abs(p - y)),
        "Corr": np.corrcoef(p, y)[0][1],
    }


def test_sims_hand_computed():
    y = np.array([-0.8, -0.2, 0.0, 0.1, 0.6, 1.0])
    p = np.array([-1.4, 0.05, -0.05, 0.1, 0.9, 0.7])  # -1.4 is clipped to -1
    m = sims_metrics(p, y)
    assert list(m) == list(SIMS_KEYS)
    # 2 buckets (<=0, >0): y 000111, p 010111 -> 5/6.
    assert m["Mult_acc_2"] == pytest.approx(5 / 6)
    # 3 buckets: y 0,0,1,1,2,2 ; p 0,1,1,1,2,2 -> 5/6.
    assert m["Mult_acc_3"] == pytest.approx(5 / 6)
    # 5 buckets: y 0,1,2,2,3,4 ; p 0,2,2,2,4,3 -> 3/6.
    assert m["Mult_acc_5"] == pytest.approx(0.5)
    # class 0: TP 2, FP 0, FN 1 -> 0.8; class 1: TP 3, FP 1, FN 0 -> 6/7; supports 3 and 3.
    assert m["F1_score"] == pytest.approx((0.8 + 6 / 7) / 2)
    assert m["MAE"] == pytest.approx((0.2 + 0.25 + 0.05 + 0.0 + 0.3 + 0.3) / 6)  # on clipped values
    assert m["Corr"] == pytest.approx(pearsonr(np.clip(p, -1, 1), y)[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_sims_matches_mmsa_on_random_data(seed):
    rng = np.random.default_rng(seed)
    y = np.round(rng.uniform(-1, 1, 300) * 5) / 5  # SIMS labels lie on a 0.2 grid
    p = rng.normal(y, 0.5)
    ours, ref = sims_metrics(p, y), _mmsa_sims_reference(p, y)
    for key in SIMS_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key


def test_all_zero_labels_do_not_crash():
    m = regression_metrics(np.array([0.3, -0.2, 0.0]), np.zeros(3))
    assert m["Non0_acc_2"] == 0.0 and m["Non0_F1_score"] == 0.0
    assert m["Corr"] == 0.0  # constant labels
    # Has0: all labels are non-negative; preds >= 0 at indices 0 and 2.
    assert m["Has0_acc_2"] == pytest.approx(2 / 3)


def test_constant_predictions_give_zero_corr():
    m = regression_metrics(np.full(5, 0.7), np.array([-2.0, -1.0, 0.0, 1.0, 2.0]))
    assert m["Corr"] == 0.0
    assert np.isfinite(list(m.values())).all()
    assert pearson_corr(np.array([1.0]), np.array([2.0])) == 0.0


def test_single_class_regression_matches_sklearn():
    y, p = np.array([0.5, 1.0, 2.0]), np.array([0.4, -0.3, 1.0])
    m = regression_metrics(p, y)
    assert m["Non0_acc_2"] == pytest.approx(accuracy_score(y > 0, p > 0))
    assert m["Non0_F1_score"] == pytest.approx(f1_score(y > 0, p > 0, average="weighted"))
    assert m["Non0_F1_score"] == pytest.approx(0.8)  # class 1 only: TP 2, FN 1


def test_classification_hand_computed():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0, 2])
    m = classification_metrics(preds, labels, num_classes=4)
    assert m["Acc"] == pytest.approx(5 / 7)
    # per class F1: 0 -> TP1 FP1 FN1 = .5; 1 -> TP2 FP1 = .8; 2 -> TP2 FN1 = .8; 3 never seen -> 0.
    assert [m[f"F1_class_{i}"] for i in range(4)] == pytest.approx([0.5, 0.8, 0.8, 0.0])
    assert m["WAF1"] == m["F1_weighted"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 3 * 0.8) / 7)
    assert m["F1_macro"] == pytest.approx(0.7)  # class 3 is absent from both sides
    cm = confusion_matrix(preds, labels, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])


def test_classification_matches_sklearn_from_logits():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[labels]
    preds = logits.argmax(axis=1)
    m = compute_metrics("classification", logits, labels)
    assert m["Acc"] == pytest.approx(accuracy_score(labels, preds))
    assert m["WAF1"] == pytest.approx(f1_score(labels, preds, average="weighted"))
    assert m["F1_macro"] == pytest.approx(f1_score(labels, preds, average="macro"))
    per_class = f1_score(labels, preds, average=None, labels=range(4))
    assert [m[f"F1_class_{i}"] for i in range(4)] == pytest.approx(per_class)
    np.testing.assert_array_equal(confusion_matrix(preds, labels, 4),
                                  sk_confusion_matrix(labels, preds, labels=range(4)))


def test_classification_single_class():
    m = classification_metrics(np.array([1, 1, 1]), np.array([1, 1, 1]), num_classes=2)
    assert m["Acc"] == 1.0 and m["WAF1"] == 1.0 and m["F1_macro"] == 1.0
    assert m["F1_class_0"] == 0.0


def test_compute_metrics_dispatch():
    assert compute_metrics("regression", P, Y) == regression_metrics(P, Y)
    assert compute_metrics("regression", P / 3, Y / 3, convention="sims") == sims_metrics(P / 3, Y / 3)
    # (N, 1) predictions are flattened
    assert compute_metrics("regression", P[:, None], Y) == regression_metrics(P, Y)


@pytest.mark.parametrize("call, message", [
    (lambda: regression_metrics(np.zeros(3), np.zeros(4)), "differ in length"),
    (lambda: regression_metrics(np.array([]), np.array([])), "empty"),
    (lambda: regression_metrics(np.array([np.nan, 1.0]), np.zeros(2)), "preds: found 1 NaN"),
    (lambda: classification_metrics(np.array([0, 3]), np.array([0, 1]), 3), r"\[0, 3\)"),
    (lambda: classification_metrics(np.zeros((2, 2)), np.array([0, 1]), 3), r"\(N, 3\)"),
    (lambda: classification_metrics(np.array([0.5, 1.0]), np.array([0, 1]), 3), "integer"),
    (lambda: compute_metrics("classification", np.array([0, 1]), np.array([0, 1])), "num_classes"),
    (lambda: compute_metrics("ranking", P, Y), "task must be"),
    (lambda: compute_metrics("regression", P, Y, convention="iemocap"), "convention must be"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_metric_direction():
    assert metric_direction("MAE") == "min"
    assert metric_direction("loss") == "min"
    assert metric_direction("Loss") == "min"
    for name in ("Corr", "Non0_acc_2", "WAF1", "Mult_acc_7", "F1_score"):
        assert metric_direction(name) == "max"


@pytest.mark.parametrize("name, task, convention, expected", [
    ("Non0_acc_2", "regression", "mosi", "Non0_acc_2"),
    ("Acc-2", "regression", "mosi", "Non0_acc_2"),
    ("F1_score", "regression", "mosi", "Non0_F1_score"),
    ("F1", "regression", "mosi", "Non0_F1_score"),
    ("acc-7", "regression", "mosi", "Mult_acc_7"),
    ("has0_acc_2", "regression", "mosi", "Has0_acc_2"),
    ("mae", "regression", "mosi", "MAE"),
    ("Corr", "regression", "sims", "Corr"),
    ("F1_score", "regression", "sims", "F1_score"),
    ("Acc-3", "regression", "sims", "Mult_acc_3"),
    ("MOSI", "regression", "mosi", "loss"),
    ("MOSEI", "regression", "mosi", "loss"),
    ("Loss", "regression", "mosi", "loss"),
    ("auto", "classification", "mosi", "loss"),
    ("WAF1", "classification", "mosi", "WAF1"),
    ("F1", "classification", "mosi", "WAF1"),
    ("accuracy", "classification", "mosi", "Acc"),
])
def test_resolve_metric_name(name, task, convention, expected):
    assert resolve_metric_name(name, task, convention) == expected


def test_resolve_metric_name_rejects_names_of_another_task():
    with pytest.raises(ValueError, match="unknown metric 'Mult_acc_7' for classification"):
        resolve_metric_name("Mult_acc_7", "classification")
    with pytest.raises(ValueError, match="unknown metric 'Has0_acc_2' for sims"):
        resolve_metric_name("Has0_acc_2", "regression", "sims")


def test_every_metric_key_has_a_display_name():
    keys = set(regression_metrics(P, Y)) | set(sims_metrics(P, Y))
    keys |= set(classification_metrics(np.array([0, 1]), np.array([0, 1]), 2))
    for key in keys:
        assert display_name(key) != key or key in ("MAE", "Corr", "Acc", "WAF1")
    assert display_name("Non0_acc_2") == "Acc-2 (non0)"
    assert display_name("Mult_acc_7") == "Acc-7"
    assert display_name("F1_class_2") == "F1 (class 2)"


def test_one_convention_rule_for_data_and_cards():
    from decalign.checkpoint import ModelCard
    from decalign.config import DecAlignConfig
    from decalign.train.metrics import card_convention, metric_convention

    assert metric_convention("data/chsims.pkl") == "sims"
    assert metric_convention("unaligned_39.pkl", (-1.0, 1.0)) == "sims"  # CH-SIMS's scale, MMSA's file name
    assert metric_convention("mosi_aligned_50.pkl", (-3.0, 3.0)) == "mosi"
    assert metric_convention("my_data.npz", (-0.9, 1.0)) == "mosi" and metric_convention() == "mosi"
    card = ModelCard(config=DecAlignConfig(), widths={"a": 2, "b": 2}, task="regression", output_dim=1,
                     label_range=[-1.0, 1.0])
    assert card_convention(card) == "sims"  # an imported card: inferred from its label range
    card.extra["metric_convention"] = "mosi"
    assert card_convention(card) == "mosi"  # what older training recorded (and selected with) wins
    card.metric_convention = "sims"
    assert card_convention(card) == "sims"  # the card's own field first
    assert metric_convention("sims.npz", (-1.0, 1.0), "classification") == "classification"


def test_a_recorded_convention_must_fit_the_task_and_the_error():
    from decalign.checkpoint import ModelCard
    from decalign.config import DecAlignConfig
    from decalign.train.metrics import card_convention, card_error

    card = ModelCard(config=DecAlignConfig(), widths={"a": 2, "b": 2}, task="classification", output_dim=3)
    assert card_convention(card) == "classification" and card_error(card) == "misclassification"
    card.extra["metric_convention"] = "mosi"  # what older versions wrote for every task
    assert card_convention(card) == "classification"
    card.metric_convention = "sims"
    with pytest.raises(ValueError, match="does not fit a classification model"):
        card_convention(card)
    card = ModelCard(config=DecAlignConfig(), widths={"a": 2, "b": 2}, task="regression", output_dim=1,
                     metric_convention="mosi", error="misclassification")
    with pytest.raises(ValueError, match="error 'misclassification' does not fit metric_convention 'mosi'"):
        card_convention(card)


def test_one_error_whose_mean_is_the_headline_metric():
    from decalign.train.metrics import label_probability, prediction_errors

    rng = np.random.default_rng(3)
    p, y = rng.uniform(-3, 3, 50), rng.uniform(-3, 3, 50)
    assert prediction_errors("mosi", p, y).mean() == pytest.approx(regression_metrics(p, y)["MAE"])
    assert prediction_errors("sims", p / 2, y / 2).mean() == pytest.approx(sims_metrics(p / 2, y / 2)["MAE"])
    np.testing.assert_allclose(prediction_errors("sims", np.array([2.0, 0.5]), np.array([0.0, -3.0])), [1.0, 1.5])
    logits, labels = rng.normal(size=(50, 4)), rng.integers(0, 4, 50)
    errors = prediction_errors("classification", logits, labels)
    assert set(np.unique(errors)) <= {0.0, 1.0}
    assert 1 - errors.mean() == pytest.approx(classification_metrics(logits, labels, 4)["Acc"])
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(label_probability(logits, labels), probs[np.arange(50), labels])
