"""Audit page figures and frames: pure functions returning plotly Figures / DataFrames (no ``st.*``).

Residual, confusion, reliability and drift figures are the report's (``decalign.audit.report``), so the
page and the HTML report draw the same thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.audit.report import confusion_figure as report_confusion_figure
from decalign.audit.report import drift_figure, reliability_figure
from decalign.audit.report import residual_figure as report_residual_figure
from decalign.inference import InferenceResult

from .overview import class_labels
from .style import class_axis, fixed_margins, short_hash

__all__ = ["confusion_figure", "drift_figure", "filter_predictions", "reliability_figure", "residual_figure",
           "shorten_hashes"]
HASH_COLUMNS = ("checkpoint_fingerprint", "input_sha256", "model_id", "data_id", "fingerprint")


def confusion_figure(result: InferenceResult, class_names: list[str] | None = None) -> go.Figure:
    """The report's confusion matrix with every class labelled on both axes (categorical axes: plotly
    would otherwise read "0".."9" as numbers and label every other one)."""
    fig = report_confusion_figure(result, class_names)
    names = class_labels(result.outputs.shape[1], class_names)
    class_axis(fig, names, "x")
    return class_axis(fig, names, "y", autorange="reversed")


def residual_figure(result: InferenceResult) -> go.Figure:
    """The report's residual scatter, one point a sample, with fixed margins (``style.fixed_margins``)."""
    return fixed_margins(report_residual_figure(result))


def shorten_hashes(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """The table with 64-character fingerprints cut to their first characters, and for each such column a
    hover text giving the full value (one value) or saying where the full values are (several)."""
    shown, helps = table.copy(), {}
    for column in [c for c in table.columns if c in HASH_COLUMNS or c.endswith(("_sha256", "_fingerprint"))]:
        values = table[column].dropna().astype(str).unique()
        shown[column] = table[column].map(lambda v: short_hash(v) if isinstance(v, str) else v)
        helps[column] = (f"Shortened; full value: {values[0]}" if len(values) == 1 else
                         "Shortened to the first characters; the CSV export below has the full values")
    return shown, helps


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
