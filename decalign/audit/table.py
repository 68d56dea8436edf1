"""The audit's prediction table: one row per sample with its error, confidence, dominant branch and flags."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..explain.slices import dominant_branch, result_errors
from ..inference import InferenceResult
from .flags import flag_columns


def prediction_table(result: InferenceResult, flags: pd.DataFrame | None, split_name: str,
                     raw_text: np.ndarray | None, card: ModelCard) -> pd.DataFrame:
    """One row per sample: id, split, raw_text, prediction, label, error, [p_label, confidence],
    dominant_branch, flags.

    ``error`` (and for classification ``p_label``, the probability given to the true label) is the card's
    one definition (``decalign.explain.slices.result_errors``); ``confidence`` is the top class probability
    (classification only); ``flags`` names the raised flags. With ``card.class_names`` the prediction and
    label columns show class names.
    """
    n = len(result)
    table = pd.DataFrame({"id": result.ids, "split": split_name,
                          "raw_text": [""] * n if raw_text is None else np.asarray(raw_text).astype(str)})
    pred = result.predictions
    errors = result_errors(result, card)
    if result.task == "regression":
        table["prediction"] = pred.astype(float)
        table["label"] = np.nan if result.labels is None else result.labels.astype(float)
        table["error"] = errors["error"].to_numpy()
    else:
        names = card.class_names or None
        show = (lambda v: names[int(v)]) if names else int
        table["prediction"] = [show(p) for p in pred]
        table["label"] = None if result.labels is None else [show(v) for v in result.labels]
        table["error"] = errors["error"].to_numpy()
        table["p_label"] = errors["p_label"].to_numpy()
        table["confidence"] = result.probabilities.max(1)
    table["dominant_branch"] = dominant_branch(result).to_numpy()
    if flags is not None:
        names = flag_columns(flags)
        raised = flags[names].to_numpy()
        table["flags"] = [", ".join(c for c, on in zip(names, r) if on) for r in raised]
        table["any_flag"] = flags["any_flag"].to_numpy()
    return table
