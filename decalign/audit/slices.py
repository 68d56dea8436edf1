"""Metrics per slice of a split, the prediction table, and each sample's dominant branch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from ..train.metrics import compute_metrics
from .flags import flag_columns

MIN_SLICE = 10
SLICE_KINDS = ("label_bin", "class", "dominant_modality", "flags")


def explained_terms(result: InferenceResult) -> np.ndarray:
    """(N, B) branch contributions to the predicted class (classification) or the value (regression)."""
    return result.explained_contributions()[:, :-1]


def dominant_branch(result: InferenceResult) -> pd.Series:
    """Name of the branch with the largest |contribution| per sample, indexed like ``result``."""
    terms = explained_terms(result)
    return pd.Series(np.asarray(result.branch_names)[np.abs(terms).argmax(1)], name="dominant_branch")


def dominant_modality(result: InferenceResult) -> pd.Series:
    """Modality whose unique + common branches carry the largest total |contribution| per sample."""
    terms = np.abs(explained_terms(result))
    mods = list(dict.fromkeys(n.split(":", 1)[1] for n in result.branch_names))
    per_mod = np.stack([terms[:, [i for i, n in enumerate(result.branch_names) if n.endswith(f":{m}")]].sum(1)
                        for m in mods], axis=1)
    return pd.Series(np.asarray(mods)[per_mod.argmax(1)], name="dominant_modality")


def convention(card: ModelCard) -> str:
    """CH-SIMS metrics for labels in [-1, 1], MOSI/MOSEI otherwise."""
    return "sims" if card.label_range and list(card.label_range) == [-1.0, 1.0] else "mosi"


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
    """One row per slice: slice, n, and the task's metrics (NaN for slices under ``min_samples``).

    ``by``: "label_bin" (regression: rounded label clipped to [-3, 3]; classification: the class),
    "class", "dominant_modality", "flags" (flagged or not) or "prototype:<m>" (most likely training
    prototype of modality m). Per-class F1 columns are left out.
    """
    if result.labels is None:
        raise ValueError("slice metrics need labels; this split has none")
    keys = slice_keys(result, flags, by).to_numpy()
    rows = []
    for key in sorted(set(keys.tolist()), key=str):
        idx = np.flatnonzero(keys == key)
        row = {"slice": key, "n": len(idx)}
        if len(idx) >= min_samples:
            row.update(_metrics(result, card, idx))
        rows.append(row)
    return pd.DataFrame(rows)


def _metrics(result: InferenceResult, card: ModelCard, idx: np.ndarray) -> dict[str, float]:
    if result.task == "regression":
        values = compute_metrics("regression", result.outputs[idx, 0], result.labels[idx], convention=convention(card))
    else:
        values = compute_metrics("classification", result.outputs[idx], result.labels[idx],
                                 num_classes=result.outputs.shape[1])
    return {k: v for k, v in values.items() if not k.startswith("F1_class_")}


def prediction_table(result: InferenceResult, flags: pd.DataFrame | None, split_name: str,
                     raw_text: np.ndarray | None = None, card: ModelCard | None = None) -> pd.DataFrame:
    """One row per sample: id, split, raw_text, prediction, label, error, confidence, dominant_branch, flags.

    ``error`` is |prediction - label| (regression) or 1 for a wrong class, 0 for a right one;
    ``confidence`` is the top class probability (classification only); ``flags`` names the raised flags.
    With ``card.class_names`` the prediction and label columns show class names.
    """
    n = len(result)
    table = pd.DataFrame({"id": result.ids, "split": split_name,
                          "raw_text": [""] * n if raw_text is None else np.asarray(raw_text).astype(str)})
    pred = result.predictions
    if result.task == "regression":
        table["prediction"] = pred.astype(float)
        table["label"] = np.nan if result.labels is None else result.labels.astype(float)
        table["error"] = np.abs(table["prediction"] - table["label"])
    else:
        names = card.class_names if card is not None and card.class_names else None
        show = (lambda v: names[int(v)]) if names else int
        table["prediction"] = [show(p) for p in pred]
        table["label"] = None if result.labels is None else [show(v) for v in result.labels]
        table["error"] = np.nan if result.labels is None else (pred != result.labels).astype(float)
        table["confidence"] = result.probabilities.max(1)
    table["dominant_branch"] = dominant_branch(result).to_numpy()
    if flags is not None:
        names = flag_columns(flags)
        raised = flags[names].to_numpy()
        table["flags"] = [", ".join(c for c, on in zip(names, r) if on) for r in raised]
        table["any_flag"] = flags["any_flag"].to_numpy()
    return table
