"""Metrics of a model's predictions, over a whole split or per slice, and each sample's dominant branch.

:func:`result_metrics` is the one place that turns an ``InferenceResult`` into metrics (the card says
which convention); the Predict page, the slices of the Audit page and the report, and the Compare page
all use it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from ..train.metrics import card_convention, compute_metrics

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
            row.update({k: v for k, v in result_metrics(result, card, idx).items() if not k.startswith("F1_class_")})
        rows.append(row)
    return pd.DataFrame(rows)


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
