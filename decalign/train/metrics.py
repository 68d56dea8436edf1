"""Evaluation metrics, following the MMSA conventions that MOSI/MOSEI/CH-SIMS papers report.

Regression on MOSI/MOSEI (labels in [-3, 3]) mirrors ``MMSA.utils.metricsTop`` exactly:

* ``MAE``  = mean |p - y|; ``Corr`` = Pearson r (0.0 when either side is constant, instead of NaN).
* ``Has0_acc_2`` / ``Has0_F1_score``: classes ``y >= 0`` vs ``y < 0`` (zero counts as non-negative).
* ``Non0_acc_2`` / ``Non0_F1_score``: samples with ``y == 0`` are dropped, then ``p > 0`` vs ``y > 0``.
* ``Mult_acc_5`` / ``Mult_acc_7``: clip both sides to [-2, 2] / [-3, 3], round, compare.

Rounding is ``np.round`` (half to even), as MMSA does; F1 scores are support-weighted.
Values are returned at full precision (MMSA rounds to 4 decimals for printing only).

CH-SIMS (labels in [-1, 1]) buckets clipped values into left-open intervals ``(lo, hi]``:
Acc-2 edges [-1.01, 0, 1.01], Acc-3 [-1.01, -0.1, 0.1, 1.01], Acc-5 [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01].
Its ``MAE`` and ``Corr`` are computed on the clipped values, as MMSA does.

Edge case chosen here: when every label is 0, ``Non0_acc_2`` and ``Non0_F1_score`` are 0.0 (MMSA
would crash on the empty selection); a number keeps dictionaries of floats JSON-friendly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..card_schema import CONVENTION_ERRORS

if TYPE_CHECKING:  # types only: metrics stay importable without torch
    from ..checkpoint import ModelCard
    from ..data.dataset import MultimodalDataset

REGRESSION_KEYS = (
    "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
)
SIMS_KEYS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
CLASSIFICATION_KEYS = ("Acc", "WAF1", "F1_weighted", "F1_macro")  # plus F1_class_<i>

# Short names for tables and the dashboard.
DISPLAY_NAMES = {
    "Has0_acc_2": "Acc-2 (has0)", "Has0_F1_score": "F1 (has0)",
    "Non0_acc_2": "Acc-2 (non0)", "Non0_F1_score": "F1 (non0)",
    "Mult_acc_2": "Acc-2", "Mult_acc_3": "Acc-3", "Mult_acc_5": "Acc-5", "Mult_acc_7": "Acc-7",
    "F1_score": "F1", "MAE": "MAE", "Corr": "Corr", "loss": "Loss",
    "Acc": "Acc", "WAF1": "WAF1", "F1_weighted": "F1 (weighted)", "F1_macro": "F1 (macro)",
}

_SIMS_EDGES = {
    "Mult_acc_2": (-1.01, 0.0, 1.01),
    "Mult_acc_3": (-1.01, -0.1, 0.1, 1.01),
    "Mult_acc_5": (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01),
}
CONVENTIONS = ("mosi", "sims", "classification")
_REGRESSION_CONVENTIONS = ("mosi", "sims")
_TASKS = ("regression", "classification")
# The one per-sample error of each convention (see ``prediction_errors``), as the model card stores it.
ERRORS = CONVENTION_ERRORS
ERROR_TEXT = {
    "absolute": "absolute error |prediction - label|",
    "absolute_clipped": "absolute error |prediction - label| after clipping both to [-1, 1] (as CH-SIMS's MAE)",
    "misclassification": "1 for a wrong class, 0 for a right one (the probability given to the true label is a "
                         "separate column, p_label)",
}


def display_name(key: str) -> str:
    """Short display name of a metric key (``Non0_acc_2`` -> ``Acc-2 (non0)``)."""
    if key.startswith("F1_class_"):
        return f"F1 (class {key.removeprefix('F1_class_')})"
    return DISPLAY_NAMES.get(key, key)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------

def pearson_corr(x: np.ndarray, y: np.ndarray) -> float:
    r"""Pearson correlation :math:`r = \frac{\sum (x-\bar x)(y-\bar y)}{\sqrt{\sum (x-\bar x)^2 \sum (y-\bar y)^2}}`.

    Returns 0.0 when either side is constant (or has fewer than two samples): a model that
    predicts one value carries no linear information, and a number keeps early stopping sane.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(dx * dx) * np.sum(dy * dy))
    if x.size < 2 or denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip(np.sum(dx * dy) / denom, -1.0, 1.0))


def confusion_matrix(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix ``C`` with ``C[i, j]`` = number of samples of true class i predicted as j.

    Parameters
    ----------
    preds, labels : integer arrays of shape (N,), values in ``[0, num_classes)``.
    num_classes : number of classes C.

    Returns
    -------
    np.ndarray of shape (C, C), dtype int64 (rows = true, columns = predicted).
    """
    preds = _class_ids(preds, num_classes, "preds")
    labels = _class_ids(labels, num_classes, "labels")
    _check_same_length(preds, labels)
    flat = labels * num_classes + preds
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN); 0.0 where the denominator is 0 (as scikit-learn)."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def _weighted_f1(cm: np.ndarray) -> float:
    """Support-weighted F1: sum_c (n_c / N) F1_c, with n_c the number of true samples of class c."""
    support = cm.sum(axis=1).astype(np.float64)
    return float(np.sum(_f1_per_class(cm) * support) / support.sum())


def _binary_acc_f1(pred_pos: np.ndarray, true_pos: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of two boolean arrays (empty -> 0.0, 0.0)."""
    if pred_pos.size == 0:
        return 0.0, 0.0
    cm = confusion_matrix(pred_pos.astype(np.int64), true_pos.astype(np.int64), 2)
    return float(np.mean(pred_pos == true_pos)), _weighted_f1(cm)


def _multiclass_acc(preds: np.ndarray, labels: np.ndarray) -> float:
    # MMSA's __multiclass_acc: np.round (half to even) on both sides.
    return float(np.mean(np.round(preds) == np.round(labels)))


def _bucket(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Index i of the left-open interval (edges[i], edges[i+1]] that holds each value."""
    return np.digitize(values, np.asarray(edges[1:-1]), right=True)


# ---------------------------------------------------------------------------------------------
# Metric families
# ---------------------------------------------------------------------------------------------

def regression_metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MOSI/MOSEI regression metrics, by MMSA's definitions (see the module docstring).

    Parameters
    ----------
    preds, labels : arrays of N real scores (any shape with N elements, e.g. (N,) or (N, 1)).

    Returns
    -------
    dict with the keys of ``REGRESSION_KEYS``, all floats.
    """
    p, y = _regression_inputs(preds, labels)
    has0_acc, has0_f1 = _binary_acc_f1(p >= 0, y >= 0)
    nonzero = y != 0
    non0_acc, non0_f1 = _binary_acc_f1(p[nonzero] > 0, y[nonzero] > 0)
    return {
        "Has0_acc_2": has0_acc,
        "Has0_F1_score": has0_f1,
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _multiclass_acc(np.clip(p, -2.0, 2.0), np.clip(y, -2.0, 2.0)),
        "Mult_acc_7": _multiclass_acc(np.clip(p, -3.0, 3.0), np.clip(y, -3.0, 3.0)),
        "MAE": float(np.mean(np.abs(p - y))),
        "Corr": pearson_corr(p, y),
    }


def sims_metrics(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """CH-SIMS regression metrics, by MMSA's definitions (bucketed accuracies on clipped values).

    Both sides are clipped to [-1, 1]; each ``Mult_acc_k`` buckets them into left-open intervals
    (see ``_SIMS_EDGES``) and counts equal buckets; ``F1_score`` is the weighted F1 of the 2-class
    buckets; ``MAE`` and ``Corr`` use the clipped values.
    """
    p, y = _regression_inputs(preds, labels)
    p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
    out = {key: float(np.mean(_bucket(p, e) == _bucket(y, e))) for key, e in _SIMS_EDGES.items()}
    edges2 = _SIMS_EDGES["Mult_acc_2"]
    out["F1_score"] = _weighted_f1(confusion_matrix(_bucket(p, edges2), _bucket(y, edges2), 2))
    out["MAE"] = float(np.mean(np.abs(p - y)))
    out["Corr"] = pearson_corr(p, y)
    return {key: out[key] for key in SIMS_KEYS}


def classification_metrics(logits_or_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy and F1 scores for single-label classification.

    Parameters
    ----------
    logits_or_probs : (N, C) scores (the predicted class is the argmax) or (N,) class ids.
    labels : (N,) true class ids in ``[0, C)``.
    num_classes : C.

    Returns
    -------
    dict with ``Acc``; ``WAF1`` (support-weighted F1, also under ``F1_weighted``); ``F1_macro``
    (unweighted mean over the classes present in labels or predictions, as scikit-learn's default);
    ``F1_class_<i>`` for every class i (0.0 for a class never seen nor predicted).
    """
    preds = predicted_classes(logits_or_probs, num_classes)
    cm = confusion_matrix(preds, labels, num_classes)
    per_class = _f1_per_class(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    waf1 = _weighted_f1(cm)
    out = {
        "Acc": float(np.trace(cm) / cm.sum()),
        "WAF1": waf1,
        "F1_weighted": waf1,
        "F1_macro": float(per_class[present].mean()),
    }
    out.update({f"F1_class_{i}": float(f) for i, f in enumerate(per_class)})
    return out


def predicted_classes(logits_or_probs: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids from (N, C) scores (argmax) or from (N,) ids (checked to lie in ``[0, C)``)."""
    scores = np.asarray(logits_or_probs)
    if scores.ndim == 2:
        if scores.shape[1] != num_classes:
            raise ValueError(f"preds: expected (N, {num_classes}) scores, found shape {scores.shape}")
        _check_finite(scores, "preds")
        return np.argmax(scores, axis=1)
    if scores.ndim == 1:
        return _class_ids(scores, num_classes, "preds")
    raise ValueError(f"preds: expected (N, C) scores or (N,) class ids, found shape {scores.shape}")


# ---------------------------------------------------------------------------------------------
# Dispatch, names and directions
# ---------------------------------------------------------------------------------------------

def compute_metrics(
    task: str,
    preds: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int | None = None,
    convention: str = "mosi",
) -> dict[str, float]:
    """Metrics of ``task`` ("regression" or "classification").

    Regression uses ``convention`` "mosi" (MOSI/MOSEI, ``regression_metrics``) or "sims"
    (CH-SIMS, ``sims_metrics``). Classification needs ``num_classes`` unless ``preds`` is (N, C); its
    convention is "classification" (any other is ignored there).
    """
    _check_choice(task, _TASKS, "task")
    if task == "classification":
        if num_classes is None:
            scores = np.asarray(preds)
            if scores.ndim != 2:
                raise ValueError("classification: num_classes is required when preds are class ids")
            num_classes = scores.shape[1]
        return classification_metrics(preds, labels, num_classes)
    _check_choice(convention, _REGRESSION_CONVENTIONS, "convention")
    return sims_metrics(preds, labels) if convention == "sims" else regression_metrics(preds, labels)


def metric_convention(source: str = "", label_range: Sequence[float] | None = None, task: str = "regression") -> str:
    """The one rule for which metrics (and which per-sample error) a model gets: "classification" for a
    classifier; for regression "sims" (CH-SIMS) or "mosi" (MOSI/MOSEI and everything else).

    CH-SIMS is recognised by a file named after it or by labels spanning exactly [-1, 1], its scale
    (MMSA's CH-SIMS release is also named ``unaligned_39.pkl``). It is applied once: when a model is trained
    (:func:`dataset_convention`) or imported, and the result is stored on the card (``metric_convention``
    and ``error``). Readers use :func:`card_convention`, which applies this same rule to what an older card
    knows (its data source and label range) when the card has no recorded convention.
    """
    _check_choice(task, _TASKS, "task")
    if task == "classification":
        return "classification"
    if "sims" in (source or "").lower():
        return "sims"
    return "sims" if label_range is not None and [float(v) for v in label_range] == [-1.0, 1.0] else "mosi"


def dataset_convention(dataset: MultimodalDataset) -> str:
    """:func:`metric_convention` of a dataset: its task, source name and its training labels' range."""
    labels = dataset.splits["train"].labels if "train" in dataset.splits else None
    span = None if labels is None or not len(labels) else (labels.min(), labels.max())
    return metric_convention(dataset.report.source, span, dataset.task)


def card_convention(card: ModelCard) -> str:
    """The convention a model was trained and selected with: the card's ``metric_convention`` (or the
    ``extra`` entry older versions wrote), else :func:`metric_convention` of what the card knows.

    Raises ValueError for a recorded convention or error that does not fit the card's task.
    """
    recorded = card.metric_convention or card.extra.get("metric_convention")
    if card.task == "classification" and recorded in (None, "classification", "mosi"):  # old cards wrote mosi
        convention = "classification"
    elif card.task != "classification" and recorded in _REGRESSION_CONVENTIONS:
        convention = recorded
    elif recorded is None:
        convention = metric_convention(card.data_source or "", card.label_range, card.task)
    else:
        raise ValueError(f"model card: metric_convention {recorded!r:.40} does not fit a {card.task} model")
    if card.error is not None and card.error != ERRORS[convention]:
        raise ValueError(f"model card: error {card.error!r:.40} does not fit metric_convention {convention!r} "
                         f"(expected {ERRORS[convention]!r})")
    return convention


def card_error(card: ModelCard) -> str:
    """The card's per-sample error definition (a key of ``ERROR_TEXT``), from :func:`card_convention`."""
    return ERRORS[card_convention(card)]


def prediction_errors(convention: str, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) the one per-sample error of a convention (``ERRORS``), so that its mean is the headline error.

    * "classification": 1.0 where ``argmax(outputs) != label``, else 0.0 (mean = 1 - Acc);
    * "mosi": ``|p - y|`` (mean = MAE);
    * "sims": ``|clip(p) - clip(y)|`` with both clipped to [-1, 1] (mean = CH-SIMS's MAE).

    ``outputs``: (N, C) scores for classification; (N,) or (N, 1) values for regression.
    """
    _check_choice(convention, CONVENTIONS, "convention")
    if convention == "classification":
        scores = np.asarray(outputs)
        preds = predicted_classes(scores, scores.shape[1]) if scores.ndim == 2 else np.asarray(scores)
        return (preds != np.asarray(labels).astype(np.int64)).astype(np.float64)
    p, y = _regression_inputs(outputs, labels)
    if convention == "sims":
        p, y = np.clip(p, -1.0, 1.0), np.clip(y, -1.0, 1.0)
    return np.abs(p - y)


def label_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) softmax probability the classifier gives the true label: the model's confidence in the right
    answer, shown beside (never instead of) the 0/1 error."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True))[np.arange(len(z)), np.asarray(labels).astype(np.int64)]


def metric_direction(name: str) -> str:
    """"min" for errors and losses (MAE, loss), "max" for every other metric."""
    lowered = name.lower()
    return "min" if lowered in ("mae", "loss") or lowered.endswith("loss") else "max"


# Aliases accepted in configs and on the command line, resolved per task/convention.
_ALIASES: dict[str, dict[str, str]] = {
    "mosi": {"acc": "Non0_acc_2", "acc2": "Non0_acc_2", "acc_2": "Non0_acc_2", "f1": "Non0_F1_score",
             "f1_score": "Non0_F1_score", "acc5": "Mult_acc_5", "acc_5": "Mult_acc_5",
             "acc7": "Mult_acc_7", "acc_7": "Mult_acc_7"},
    "sims": {"acc": "Mult_acc_2", "acc2": "Mult_acc_2", "acc_2": "Mult_acc_2", "acc3": "Mult_acc_3",
             "acc_3": "Mult_acc_3", "acc5": "Mult_acc_5", "acc_5": "Mult_acc_5", "f1": "F1_score"},
    "classification": {"acc": "Acc", "accuracy": "Acc", "f1": "WAF1", "f1_score": "WAF1",
                       "waf1": "WAF1", "f1_weighted": "WAF1", "f1_macro": "F1_macro"},
}
# Dataset names as selection metrics mean what MMSA selects on for them: its KeyEval is "Loss".
_DATASET_NAMES = {"mosi", "mosei", "sims", "ch-sims", "chsims", "iemocap"}


def resolve_metric_name(name: str, task: str, convention: str = "mosi") -> str:
    """Canonical metric key for a config or command-line name.

    Accepts the exact keys this module returns, ``loss``/``Loss``/``auto`` (-> "loss"),
    short names such as ``Acc-2``, ``F1``, ``Acc-7``, ``WAF1`` (case, '-' and '_' ignored), and
    dataset names such as ``MOSI`` (-> "loss", following MMSA whose ``KeyEval`` for these
    datasets is "Loss"). For MOSI/MOSEI, ``Acc-2``/``F1`` mean the non-zero variants that papers
    headline (``Non0_acc_2``, ``Non0_F1_score``). Raises ValueError for anything else.
    """
    _check_choice(task, _TASKS, "task")
    _check_choice(convention, CONVENTIONS, "convention")
    family = "classification" if task == "classification" else convention
    if family == "classification" and task != "classification":
        raise ValueError("convention 'classification' needs task classification")
    valid = _valid_keys(family)
    if name in valid:
        return name
    key = name.strip().lower().replace("-", "").replace(" ", "")
    if key in ("loss", "auto") or key in _DATASET_NAMES:
        return "loss"
    by_lower = {k.lower(): k for k in valid}
    resolved = _ALIASES[family].get(key) or _ALIASES[family].get(key.replace("_", "")) or by_lower.get(key)
    if resolved is None:
        raise ValueError(
            f"unknown metric {name!r} for {family}: expected one of {', '.join(sorted(valid))} or loss"
        )
    return resolved


def _valid_keys(family: str) -> set[str]:
    if family == "classification":
        return set(CLASSIFICATION_KEYS) | {"loss"}
    return set(SIMS_KEYS if family == "sims" else REGRESSION_KEYS) | {"loss"}


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

def _regression_inputs(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(preds, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    _check_same_length(p, y)
    _check_finite(p, "preds")
    _check_finite(y, "labels")
    return p, y


def _class_ids(values: np.ndarray, num_classes: int, what: str) -> np.ndarray:
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, found {num_classes!r}")
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected (N,) class ids, found shape {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError(f"{what}: expected integer class ids, found non-integer values")
    ids = arr.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(
            f"{what}: class ids must lie in [0, {num_classes}), found range [{ids.min()}, {ids.max()}]"
        )
    return ids


def _check_same_length(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"preds and labels differ in length: {a.shape[0]} vs {b.shape[0]}")
    if a.shape[0] == 0:
        raise ValueError("preds and labels are empty: at least one sample is needed")


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what}: found {int(np.sum(~np.isfinite(a)))} NaN/inf value(s), expected finite")


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, found {value!r}")
