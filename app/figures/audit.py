"""Audit page figures and frames: pure functions returning plotly Figures / DataFrames (no ``st.*``).

Residual, confusion, reliability and drift figures are the report's (``decalign.audit.report``), so the
page and the HTML report draw the same thing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.audit.report import confusion_figure, drift_figure, reliability_figure, residual_figure
from decalign.explain import IGResult
from decalign.inference import InferenceResult

__all__ = [
    "attention_heatmap", "audit_rows", "confusion_figure", "drift_figure", "filter_predictions", "ig_heatmap",
    "reliability_figure", "residual_figure", "waterfall_figure",
]


def waterfall_figure(contributions: pd.DataFrame, output_name: str = "output") -> go.Figure:
    """Waterfall from 0 through every branch term and the bias to the output (their exact sum)."""
    names = [*contributions["branch"], output_name]
    values = [*contributions["contribution"].astype(float), float(contributions["contribution"].sum())]
    fig = go.Figure(go.Waterfall(x=names, y=values, measure=["relative"] * len(contributions) + ["total"],
                                 text=[f"{v:+.3f}" for v in values[:-1]] + [f"{values[-1]:.3f}"],
                                 textposition="outside"))
    fig.update_layout(title=f"Branch contributions to {output_name}", height=400, showlegend=False)
    return fig


def ig_heatmap(ig: IGResult, modality: str) -> go.Figure:
    """Integrated-gradients attributions of one modality: time steps (rows) x features (columns)."""
    z = ig.attributions[modality]
    bound = float(np.abs(z).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound,
                               hovertemplate="t %{y}<br>feature %{x}<br>%{z:.4g}<extra></extra>"))
    fig.update_layout(title=f"Attributions: {modality} (completeness gap {ig.completeness_gap:.2g})",
                      xaxis_title="feature", yaxis_title="time step", height=360)
    return fig


def attention_heatmap(weights: pd.DataFrame, title: str) -> go.Figure:
    """One layer's (T_q, T_k) head-averaged attention; columns labelled "<source>:t"."""
    fig = go.Figure(go.Heatmap(z=weights.to_numpy(), x=list(weights.columns), y=list(weights.index),
                               colorscale="Viridis", zmin=0,
                               hovertemplate="query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=360, xaxis_title="key (source:step)", yaxis_title="query step")
    return fig


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


def audit_rows(result: InferenceResult, flags: pd.DataFrame | None, *, split: str, model_id: str, data_id: str,
               data_label: str, source: str = "dashboard") -> list[dict]:
    """Rows for ``AuditTrail.record_predictions``: prediction, label, branch contributions and raised flags."""
    terms = result.contributions()
    pick = np.zeros(len(result), int) if result.task == "regression" else result.outputs.argmax(1)
    names = [*result.branch_names, "bias"]
    flag_names = [c for c in (flags.columns if flags is not None else [])
                  if c.startswith("ood_") or c in ("decoupling_failure", "low_confidence", "disagreement")]
    rows = []
    for i in range(len(result)):
        pred = result.predictions[i]
        label = None if result.labels is None else result.labels[i].item()
        raised = [c for c in flag_names if bool(flags.iloc[i][c])] if flags is not None else []
        rows.append({"source": source, "checkpoint_fingerprint": model_id, "input_sha256": data_id,
                     "input_name": data_label, "split": split, "sample_id": str(result.ids[i]),
                     "prediction": float(pred) if result.task == "regression" else int(pred), "label": label,
                     "contributions": {n: round(float(v), 6) for n, v in zip(names, terms[i, pick[i]])},
                     "flags": raised})
    return rows
