"""Metrics and errors of a model's predictions, over a whole split or per slice, and each sample's dominant
branch.

:func:`result_metrics` is the one place that turns an ``InferenceResult`` into metrics and
:func:`result_errors` the one place that gives each sample its error (the card says which convention,
``decalign.train.metrics.card_convention``); Predict, Audit, the slices, Compare, the report, ``decalign eval``
and ``decalign predict`` all use them.

Slices (:func:`slice_metrics`) report what is defined on the samples of one slice:

* per class (classification, by "class" or "label_bin"): one-vs-rest precision, recall and F1 of that class
  over the whole split, with its support (true samples) and how often it was predicted. A macro-F1 over a
  slice that holds one true class would average the F1 of classes that are not in it.
* per label bin (regression): MAE, bias (mean prediction - label) and the accuracies; not Corr nor F1,
  which are degenerate when the slice fixes the label.
* other slices (dominant modality, flags, prototype) mix labels: every metric of the convention.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from ..train.metrics import (
    card_convention,
    compute_metrics,
    confusion_matrix,
    label_probability,
    predicted_classes,
    prediction_errors,
)

MIN_SLICE = 10
SLICE_KINDS = ("label_bin", "class", "dominant_modality", "flags")


def dominant_branch(result: InferenceResult) -> pd.Series:
    """Name of the branch with the largest |contribution| per sample, indexed like ``result``."""
    terms = result.explained_contributions()[:, :-1]  # (N, B) without the bias
    return pd.Series(np.asarray(result.branch_names)[np.abs(terms).argmax(1)], name="dominant_branch")


def dominant_modality(result: InferenceResult) -> pd.Series:
    """Modality whose unique + common branches carry the largest total |contribution| per sample."""
    terms = np.abs(result.explained_contributions()[:, :-1])
    mods = list(dict.fromkeys(n.split(":", 1)[1] for n in result.branch_names))
    per_mod = np.stack([terms[:, [i for i, n in enumerate(result.branch_names) if n.endswith(f":{m}")]].sum(1)
                        for m in mods], axis=1)
    return pd.Series(np.asarray(mods)[per_mod.argmax(1)], name="dominant_modality")


def slice_keys(result: InferenceResult, flags: pd.DataFrame | None, by: str) -> pd.Series:
    """The slice each sample belongs to under ``by`` (see ``slice_metrics``)."""
    if by in ("label_bin", "class"):
        if result.labels is None:
            raise ValueError(f"slicing by {by!r} needs labels; this split has none")
        if result.task == "regression":  # MOSI's 7 sentiment classes: round, clip to [-3, 3]
            return pd.Series(np.clip(np.round(result.labels), -3, 3).astype(int), name=by)
        return pd.Series(result.labels.astype(int), name=by)
    if by == "dominant_modality":
        return dominant_modality(result)
    if by == "flags":
        if flags is None:
            raise ValueError("slicing by 'flags' needs the flags frame")
        return pd.Series(np.where(flags["any_flag"].to_numpy(), "flagged", "not flagged"), name=by)
    if by.startswith("prototype:"):
        m = by.split(":", 1)[1]
        if result.posteriors is None or m not in result.posteriors:
            raise ValueError(f"slicing by {by!r} needs posteriors over the training prototypes of {m!r}")
        return pd.Series(result.posteriors[m].argmax(1), name=by)
    raise ValueError(f"by must be one of {SLICE_KINDS} or 'prototype:<modality>', found {by!r}")


def slice_metrics(result: InferenceResult, flags: pd.DataFrame | None, card: ModelCard, *, by: str = "label_bin",
                  min_samples: int = MIN_SLICE) -> pd.DataFrame:
    """One row per slice: slice, n, and the metrics that are defined on it (see the module docstring); NaN
    for slices under ``min_samples``.

    ``by``: "label_bin" (regression: rounded label clipped to [-3, 3]; classification: the class),
    "class", "dominant_modality", "flags" (flagged or not) or "prototype:<m>" (most likely training
    prototype of modality m). Per-class F1 columns of the whole-split metrics are left out.
    """
    if result.labels is None:
        raise ValueError("slice metrics need labels; this split has none")
    keys = slice_keys(result, flags, by).to_numpy()
    if by in ("label_bin", "class") and result.task == "classification":
        return class_metrics(result, min_samples=min_samples)
    convention = card_convention(card)
    rows = []
    for key in sorted(set(keys.tolist()), key=str):
        idx = np.flatnonzero(keys == key)
        row = {"slice": key, "n": len(idx)}
        if len(idx) >= min_samples:
            row.update(_slice_values(result, card, idx, by, convention))
        rows.append(row)
    return pd.DataFrame(rows)


def _slice_values(result, card, idx, by, convention) -> dict[str, float]:
    values = {k: v for k, v in result_metrics(result, card, idx).items() if not k.startswith("F1_class_")}
    if by != "label_bin":
        return values
    keep = {k: v for k, v in values.items() if k != "Corr" and "F1" not in k}
    bias = float(np.mean(result.outputs[idx, 0] - result.labels[idx]))
    return {"MAE": keep.pop("MAE"), "bias": bias, **keep}


def class_metrics(result: InferenceResult, *, min_samples: int = 1) -> pd.DataFrame:
    """One row per class: slice (the class), n (support: true samples), predicted (samples predicted as it),
    and its one-vs-rest precision TP / (TP + FP), recall TP / (TP + FN) and F1 over the whole split.

    A class with no prediction has precision 0 (as scikit-learn's ``zero_division=0``); classes with
    fewer than ``min_samples`` true samples get NaN. Classes that are neither true nor predicted are left out.
    """
    if result.labels is None:
        raise ValueError("class metrics need labels; this split has none")
    k = result.outputs.shape[1]
    cm = confusion_matrix(predicted_classes(result.outputs, k), result.labels.astype(np.int64), k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1), cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    rows = []
    for c in range(k):
        if support[c] == 0 and predicted[c] == 0:
            continue
        shown = support[c] >= min_samples
        rows.append({"slice": c, "n": int(support[c]), "predicted": int(predicted[c]),
                     "precision": precision[c] if shown else np.nan, "recall": recall[c] if shown else np.nan,
                     "F1": f1[c] if shown else np.nan})
    return pd.DataFrame(rows, columns=["slice", "n", "predicted", "precision", "recall", "F1"])


def result_metrics(result: InferenceResult, card: ModelCard, rows: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of ``compute_metrics`` for the predictions of ``result`` (or its ``rows``), with the
    card's metric convention (``card_convention``); needs labels."""
    if result.labels is None:
        raise ValueError("metrics need labels; this split has none")
    index = slice(None) if rows is None else rows
    if result.task == "regression":
        return compute_metrics("regression", result.outputs[index, 0], result.labels[index],
                               convention=card_convention(card))
    return compute_metrics("classification", result.outputs[index], result.labels[index],
                           num_classes=result.outputs.shape[1])


def result_errors(result: InferenceResult, card: ModelCard) -> pd.DataFrame:
    """Each sample's error by the card's one definition (``prediction_errors``), indexed like ``result``:
    column ``error``, and for classification ``p_label`` (the probability given to the true label).
    Empty columns (NaN) when the split has no labels."""
    frame = pd.DataFrame(index=np.arange(len(result)))
    convention = card_convention(card)
    if result.labels is None:
        frame["error"] = np.nan
        if convention == "classification":
            frame["p_label"] = np.nan
        return frame
    outputs = result.outputs if convention == "classification" else result.outputs[:, 0]
    frame["error"] = prediction_errors(convention, outputs, result.labels)
    if convention == "classification":
        frame["p_label"] = label_probability(result.outputs, result.labels)
    return frame
