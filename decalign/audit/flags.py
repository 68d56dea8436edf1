"""Per-sample warning flags: unusual inputs, failed decoupling, low confidence, disagreeing branches.

* ``ood_<m>``: the pooled unique feature of modality m is further from every training prototype than the
  training set's 99th percentile (diagonal Mahalanobis distance, see ``decalign.train.reference``).
* ``decoupling_failure``: in some modality the pooled unique and common features point (anti-)parallel:
  ``|cos| > reference.decoupling_threshold`` (the training 99th percentile of the per-sample maximum).
* ``low_confidence``: classification: the top probability is below ``low_confidence`` (0.5). Regression:
  the prediction lies within ``regression_band`` (10%) of the label range's width of the range's neutral
  point (0 when the range spans 0, as for sentiment, else its middle): the side it falls on is uncertain.
* ``disagreement``: the branch contributions to the explained output include a positive and a negative
  term that are both large, each above ``disagreement_share`` (25%) of the sum of |contributions|.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from ..train.reference import TrainingReference, decoupling_cosines, prototype_distance

BASE_FLAGS = ("decoupling_failure", "low_confidence", "disagreement")


def flag_columns(flags: pd.DataFrame) -> list[str]:
    """The boolean flag columns of a ``compute_flags`` frame (ood_<m> first)."""
    return [c for c in flags.columns if c.startswith("ood_") or c in BASE_FLAGS]


def compute_flags(result: InferenceResult, reference: TrainingReference, card: ModelCard, *,
                  decoupling_cos: dict[str, np.ndarray] | None = None, low_confidence: float = 0.5,
                  regression_band: float = 0.1, disagreement_share: float = 0.25) -> pd.DataFrame:
    """One row per sample: id, the boolean flags (see module docstring), any_flag, n_flags."""
    frame = pd.DataFrame({"id": result.ids})
    for m in result.unique_pooled:
        dist = prototype_distance(result.unique_pooled[m], reference.prototypes[m])
        frame[f"ood_{m}"] = dist > reference.ood_thresholds[m]
    cos = decoupling_cosines(result.unique_pooled, result.common_pooled) if decoupling_cos is None else decoupling_cos
    frame["decoupling_failure"] = np.max(np.stack(list(cos.values())), axis=0) > reference.decoupling_threshold
    frame["low_confidence"] = _low_confidence(result, reference, card, low_confidence, regression_band)
    frame["disagreement"] = _disagreement(result, disagreement_share)
    names = flag_columns(frame)
    frame["n_flags"] = frame[names].sum(axis=1).astype(int)
    frame["any_flag"] = frame["n_flags"] > 0
    return frame


def label_range(card: ModelCard, reference: TrainingReference | None) -> tuple[float, float]:
    """The card's label range, else the training labels' min and max."""
    if card.label_range:
        return float(card.label_range[0]), float(card.label_range[1])
    if reference is not None and reference.train_labels is not None and len(reference.train_labels):
        return float(np.min(reference.train_labels)), float(np.max(reference.train_labels))
    raise ValueError("regression flags need a label range: the model card has none and the reference no labels")


def _low_confidence(result, reference, card, threshold, band) -> np.ndarray:
    if result.task != "regression":
        return result.probabilities.max(1) < threshold
    lo, hi = label_range(card, reference)
    centre = 0.0 if lo < 0 < hi else (lo + hi) / 2
    return np.abs(result.predictions - centre) < band * (hi - lo)


def _disagreement(result: InferenceResult, share: float) -> np.ndarray:
    c = result.explained_contributions()[:, :-1]  # (N, B) without the bias
    total = np.abs(c).sum(1)
    large = np.abs(c) > share * total[:, None]
    return (large & (c > 0)).any(1) & (large & (c < 0)).any(1)
