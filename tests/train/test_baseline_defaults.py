"""The linear baseline against scikit-learn by hand, and the data-driven defaults' rule."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, mean_absolute_error

from decalign.config import DecAlignConfig
from decalign.data import make_synthetic
from decalign.defaults import choose_settings, data_defaults
from decalign.train.baseline import GRID, baseline_comparison, fit_baseline, pooled_inputs


def _by_hand(data, model_of):
    """Standardise with the train split's statistics, choose on validation, score on test."""
    mods = list(data.widths)
    pooled = {s: np.concatenate([p.features[m].mean(1) for m in mods], axis=1) for s, p in data.splits.items()}
    mu, sd = pooled["train"].mean(0), pooled["train"].std(0)
    x = {s: (v - mu) / np.where(sd > 0, sd, 1.0) for s, v in pooled.items()}
    y = {s: p.labels for s, p in data.splits.items()}
    return x, y


def test_classification_baseline_is_scikit_learns_logistic_regression():
    data = make_synthetic(200, 60, 80, widths={"a": 4, "b": 6}, seq_len=3, task="classification", num_classes=3,
                          seed=4, signal=2.0)
    got = fit_baseline(data, "classification")
    x, y = _by_hand(data, None)
    valid = {c: accuracy_score(y["valid"], LogisticRegression(C=c, max_iter=2000).fit(x["train"], y["train"])
                               .predict(x["valid"])) for c in GRID}
    best = max(GRID, key=lambda c: (valid[c], -abs(np.log10(c))))
    test = accuracy_score(y["test"], LogisticRegression(C=best, max_iter=2000).fit(x["train"], y["train"])
                          .predict(x["test"]))
    assert got["model"] == "logistic_regression" and got["value"] == best and got["selected_on"] == "valid"
    assert got["metrics"]["test"]["Acc"] == pytest.approx(test)
    assert got["metrics"]["valid"]["Acc"] == pytest.approx(valid[best]) and got["features"] == 10


def test_regression_baseline_is_ridge_chosen_by_validation_mae():
    data = make_synthetic(200, 60, 80, widths={"a": 4, "b": 6}, seq_len=3, seed=5, signal=2.0)
    got = fit_baseline(data, "mosi")
    x, y = _by_hand(data, None)
    valid = {a: mean_absolute_error(y["valid"], Ridge(alpha=a).fit(x["train"], y["train"]).predict(x["valid"]))
             for a in GRID}
    best = max(GRID, key=lambda a: (-valid[a], -abs(np.log10(a))))
    test = mean_absolute_error(y["test"], Ridge(alpha=best).fit(x["train"], y["train"]).predict(x["test"]))
    assert got["model"] == "ridge" and got["value"] == best and got["headline"] == "MAE"
    assert got["metrics"]["test"]["MAE"] == pytest.approx(test, rel=1e-6)


def test_pooled_inputs_average_only_the_valid_steps():
    data = make_synthetic(5, 0, 0, widths={"a": 2, "b": 3}, seq_len=4, seed=1, variable_lengths=True)
    split = data.splits["train"]
    pooled = pooled_inputs(split, ["a", "b"])
    n = int(split.lengths["a"][0])
    np.testing.assert_allclose(pooled[0, :2], split.features["a"][0, :n].mean(0), rtol=1e-6)


def test_comparison_sentence_and_verdicts():
    baseline = {"headline": "Acc", "name": "a logistic regression", "metrics": {"test": {"Acc": 0.98}}}
    worse = baseline_comparison({"test": {"Acc": 0.83}}, baseline)
    assert worse["verdict"] == "does not beat" and "Acc 0.830" in worse["sentence"] and "0.980" in worse["sentence"]
    assert "(by 0.150)" in worse["sentence"]
    assert baseline_comparison({"test": {"Acc": 0.99}}, baseline)["verdict"] == "beats"
    assert baseline_comparison({"test": {"Acc": 0.98}}, baseline)["verdict"] == "ties with"
    mae = {"headline": "MAE", "name": "a ridge regression", "metrics": {"test": {"MAE": 0.9}}}
    assert baseline_comparison({"test": {"MAE": 0.8}}, mae)["verdict"] == "beats"  # lower is better
    assert baseline_comparison({}, baseline) is None and baseline_comparison({"test": {"Acc": 1.0}}, None) is None


@pytest.mark.parametrize("n, task, classes, expected", [
    (1400, "classification", 10, {"d_model": 32, "num_heads": 4, "num_layers": 2, "num_prototypes": 10,
                                  "batch_size": 32, "num_epochs": 69, "early_stop_patience": 13,
                                  "learning_rate": 1e-3}),
    (1284, "regression", None, {"d_model": 32, "num_layers": 2, "num_prototypes": 7, "batch_size": 32,
                                "num_epochs": 74}),
    (16326, "regression", None, {"d_model": 48, "num_heads": 4, "num_layers": 3, "num_prototypes": 10,
                                 "batch_size": 128, "num_epochs": 24, "learning_rate": 1e-3}),
    (50000, "classification", 2, {"d_model": 64, "num_heads": 8, "num_prototypes": 3, "batch_size": 128,
                                  "num_epochs": 20, "early_stop_patience": 10, "learning_rate": 5e-4}),
    (90, "classification", 40, {"num_prototypes": 16, "batch_size": 16, "num_epochs": 100}),
])
def test_the_documented_rule(n, task, classes, expected):
    chosen = choose_settings(n, task, classes)
    flat = {**chosen["model"], **chosen["train"]}
    assert {k: flat[k] for k in expected} == expected


def test_data_defaults_keep_everything_else_and_validate():
    data = make_synthetic(300, 40, 40, widths={"a": 4, "b": 6}, seq_len=3, task="classification", num_classes=3)
    config = data_defaults(data)
    library = DecAlignConfig()
    assert config.train.task_loss == "cross_entropy" and config.model.pde_dim == config.model.d_model == 32
    assert config.train.alpha == library.train.alpha and config.model.lambda_ot == library.model.lambda_ot
    with pytest.raises(ValueError, match="need training samples"):
        choose_settings(0, "regression")
