"""Audit page figures and frames: pure functions returning plotly Figures / DataFrames (no ``st.*``).

Residual, confusion, reliability and drift figures are the report's (``decalign.audit.report``), so the
page and the HTML report draw the same thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from decalign.audit.report import confusion_figure, drift_figure, reliability_figure, residual_figure

__all__ = ["confusion_figure", "drift_figure", "filter_predictions", "reliability_figure", "residual_figure"]


def filter_predictions(table: pd.DataFrame, *, labels=(), predictions=(), error_range=None, branches=(),
                       flags=(), only_flagged: bool = False) -> pd.DataFrame:
    """Rows of a ``prediction_table`` matching every given filter (empty filter = no constraint);
    ``flags`` keeps rows raising any of the named flags."""
    keep = np.ones(len(table), bool)
    if len(labels):
        keep &= table["label"].isin(list(labels)).to_numpy()
    if len(predictions):
        keep &= table["prediction"].isin(list(predictions)).to_numpy()
    if error_range is not None:
        err = table["error"].to_numpy(dtype=float)
        keep &= (err >= error_range[0]) & (err <= error_range[1])
    if len(branches):
        keep &= table["dominant_branch"].isin(list(branches)).to_numpy()
    if len(flags) and "flags" in table:
        raised = table["flags"].map(lambda s: set(s.split(", ")) if s else set())
        keep &= raised.map(lambda s: bool(s & set(flags))).to_numpy()
    if only_flagged and "any_flag" in table:
        keep &= table["any_flag"].to_numpy(dtype=bool)
    return table[keep]
