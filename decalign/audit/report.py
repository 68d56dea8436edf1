"""A self-contained HTML audit report: model card, metrics per slice, drift, flagged samples and the
explanations of chosen samples, with plotly figures (plotly.js inlined once, so it opens offline).

The figure builders here are plain plotly (no Streamlit); the dashboard's Audit page reuses them.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from ..atomic import atomic_write_text
from ..checkpoint import ModelCard
from ..data.dataset import Split
from ..explain import branch_contributions, modality_counterfactuals, plain_summary
from ..explain.slices import slice_metrics
from ..inference import InferenceResult
from ..model import DecAlign
from ..safe_output import plotly_text
from ..train.metrics import confusion_matrix
from ..train.reference import TrainingReference
from .drift import batch_drift
from .flags import compute_flags, flag_columns
from .table import prediction_table

MAX_FLAGGED_ROWS = 200
RELIABILITY_BINS = 10

# ------------------------------------------------------------------------------------------ figures


def residual_figure(result: InferenceResult) -> go.Figure:
    """Regression: residual (prediction - label) against the label, with the zero line."""
    pred, label = result.predictions.astype(float), result.labels.astype(float)
    ids = [plotly_text(i) for i in result.ids]  # plotly reads a few HTML tags in text: ids are escaped
    fig = go.Figure(go.Scatter(x=label, y=pred - label, mode="markers", text=ids, opacity=0.6,
                               hovertemplate="%{text}<br>label %{x:.2f}<br>residual %{y:.2f}<extra></extra>"))
    fig.add_hline(y=0, line={"color": "grey", "dash": "dash"})
    fig.update_layout(title="Residuals", xaxis_title="label", yaxis_title="prediction - label", height=380)
    return fig


def confusion_figure(result: InferenceResult, class_names: list[str] | None = None) -> go.Figure:
    """Classification: confusion matrix, rows = true class, columns = predicted class."""
    k = result.outputs.shape[1]
    cm = confusion_matrix(result.predictions, result.labels.astype(int), k)
    names = [plotly_text(n) for n in class_names] if class_names else [str(i) for i in range(k)]
    fig = go.Figure(go.Heatmap(z=cm, x=names, y=names, colorscale="Blues", text=cm, texttemplate="%{text}",
                               hovertemplate="true %{y}<br>predicted %{x}<br>%{z} samples<extra></extra>"))
    fig.update_layout(title="Confusion matrix", xaxis_title="predicted", yaxis_title="true", height=420,
                      yaxis={"autorange": "reversed"})
    return fig


def reliability_table(result: InferenceResult, bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Bins of top-class probability: bin centre, n, mean confidence, accuracy (empty bins dropped)."""
    conf = result.probabilities.max(1)
    correct = (result.predictions == result.labels).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    rows = [{"bin": (b + 0.5) / bins, "n": int((which == b).sum()), "confidence": float(conf[which == b].mean()),
             "accuracy": float(correct[which == b].mean())} for b in range(bins) if (which == b).any()]
    return pd.DataFrame(rows, columns=["bin", "n", "confidence", "accuracy"])


def reliability_figure(result: InferenceResult, bins: int = RELIABILITY_BINS) -> go.Figure:
    """Classification: accuracy against mean confidence per probability bin; the diagonal is calibrated."""
    table = reliability_table(result, bins)
    fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated",
                                line={"color": "grey", "dash": "dash"}),
                     go.Scatter(x=table.confidence, y=table.accuracy, mode="lines+markers", name="model",
                                text=table.n, hovertemplate="confidence %{x:.2f}<br>accuracy %{y:.2f}"
                                                            "<br>%{text} samples<extra></extra>")])
    fig.update_layout(title="Reliability", xaxis_title="mean top-class probability", yaxis_title="accuracy",
                      xaxis={"range": [0, 1]}, yaxis={"range": [0, 1.02]}, height=380)
    return fig


def drift_figure(drift: pd.DataFrame) -> go.Figure:
    """One bar per modality and statistic (value / band top), with the band as an error bar; red = drifted."""
    labels = [f"{r.modality} ({r.statistic})" for r in drift.itertuples()]
    scale = drift.band_high.replace(0, np.nan).to_numpy()
    ratio = np.nan_to_num(drift.value.to_numpy() / scale, nan=0.0)
    fig = go.Figure(go.Bar(
        x=labels, y=ratio, marker_color=["crimson" if d else "steelblue" for d in drift.drifted],
        customdata=np.stack([drift.value, drift.band_low, drift.band_high], axis=1),
        hovertemplate="%{x}<br>value %{customdata[0]:.4g}<br>band %{customdata[1]:.4g} - %{customdata[2]:.4g}"
                      "<extra></extra>"))
    fig.add_hline(y=1.0, line={"color": "grey", "dash": "dash"}, annotation_text="top of training band")
    fig.update_layout(title="Drift against the training data (value / top of the training band)", height=380,
                      yaxis_title="value / band top")
    return fig


# ------------------------------------------------------------------------------------- explanations


def explain_rows(model: DecAlign, card: ModelCard, split: Split, result: InferenceResult,
                 reference: TrainingReference | None, ids: list[str], flags: pd.DataFrame | None = None
                 ) -> list[dict]:
    """For each sample id: {"id", "contributions" (DataFrame), "counterfactuals" (DataFrame or None), "summary"}."""
    index = {str(i): k for k, i in enumerate(result.ids)}
    missing = [i for i in ids if str(i) not in index]
    if missing:
        raise ValueError(f"sample ids {missing[:5]} are not in this split (ids look like {list(index)[:3]})")
    rows = []
    for sample_id in ids:
        row = index[str(sample_id)]
        contrib = branch_contributions(result, row)
        cf = modality_counterfactuals(model, split, row, reference) if reference is not None else None
        flags_row = None if flags is None else flags.iloc[row]
        summary = plain_summary(card, result, row, contrib, cf, flags_row, None)
        rows.append({"id": str(sample_id), "contributions": contrib, "counterfactuals": cf, "summary": summary})
    return rows


# ------------------------------------------------------------------------------------------- report


def build_report(card: ModelCard, dataset_name: str, result: InferenceResult, flags: pd.DataFrame | None,
                 slices: pd.DataFrame | None, drift: pd.DataFrame | None, explained_rows: list[dict], *,
                 title: str = "DecAlign audit report", split_name: str = "") -> str:
    """The report as one HTML string (see module docstring); every text value is HTML-escaped."""
    figures = _figures(card, result, drift)
    sections = [
        _section("Model", _card_table(card)),
        _section("Metrics recorded at training", _metrics_table(card)),
        _section(f"Data: {dataset_name} {split_name}".strip(), f"<p>{len(result)} samples.</p>"),
        _section("Metrics per slice", _table(slices) if slices is not None else "<p>No labels: not computed.</p>"),
        _section("Figures", "".join(_figure_html(f, i == 0) for i, f in enumerate(figures))),
        _section("Drift", _table(drift) if drift is not None else "<p>No training reference: not computed.</p>"),
        _section("Flagged samples", _flagged(result, flags, card, split_name)),
        _section("Explained samples", "".join(_explained(r) for r in explained_rows) or "<p>None chosen.</p>"),
    ]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><p class='meta'>Generated {stamp} by "
            f"DecAlign Studio {_e(card.library_version)}</p>{''.join(sections)}</body></html>")


def write_report(path: str | Path, html_text: str) -> Path:
    return atomic_write_text(path, html_text)


def make_report(model: DecAlign, card: ModelCard, split: Split, *, dataset_name: str, split_name: str,
                reference: TrainingReference | None, sample_ids: list[str] = (), title: str = "DecAlign audit report",
                result: InferenceResult | None = None) -> str:
    """Run everything the report needs (inference, flags, slices, drift, explanations) and build it."""
    prototypes = reference.prototypes if reference is not None else card.prototype_tensors()
    if result is None:
        from ..inference import run_inference
        result = run_inference(model, split, task=card.task, prototypes=prototypes)
    flags = compute_flags(result, reference, card) if reference is not None else None
    slices = None
    if result.labels is not None:
        by = "class" if card.task == "classification" else "label_bin"
        slices = slice_metrics(result, flags, card, by=by)
    drift = None
    if reference is not None and len(result) >= 2:
        drift = batch_drift(result, reference, n_resamples=10, var_floor=card.config.model.gmm_var_floor)
    rows = explain_rows(model, card, split, result, reference, list(sample_ids), flags)
    return build_report(card, dataset_name, result, flags, slices, drift, rows, title=title, split_name=split_name)


def _figures(card, result, drift) -> list[go.Figure]:
    figures = []
    if result.labels is not None and len(result):
        if result.task == "regression":
            figures.append(residual_figure(result))
        else:
            figures += [confusion_figure(result, card.class_names), reliability_figure(result)]
    if drift is not None and len(drift):
        figures.append(drift_figure(drift))
    return figures


def _figure_html(fig: go.Figure, first: bool) -> str:
    # plotly.js (about 4 MB) goes in once, inline: the file must open without a network.
    return pio.to_html(fig, full_html=False, include_plotlyjs=first,
                       config={"displaylogo": False})


def _e(value) -> str:
    return html.escape(str(value))


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{_e(heading)}</h2>{body}</section>"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", na_rep="", border=0,
                         classes="data")


def _card_table(card: ModelCard) -> str:
    fields = {"task": card.task, "modalities": ", ".join(f"{m} ({w})" for m, w in card.widths.items()),
              "classes": ", ".join(card.class_names or []) or card.num_classes, "label range": card.label_range,
              "source": card.source, "data source": card.data_source, "data fingerprint": card.data_fingerprint,
              "best epoch": card.best_epoch, "seed": card.seed, "created": card.created_at,
              "d_model": card.config.model.d_model, "prototypes (K)": card.config.model.num_prototypes}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in fields.items() if v not in (None, ""))
    return f"<table class='card'>{rows}</table>"


def _metrics_table(card: ModelCard) -> str:
    if not card.metrics:
        return "<p>None recorded.</p>"
    frame = pd.DataFrame(card.metrics).T.reset_index(names="split")
    return _table(frame[[c for c in frame.columns if not str(c).startswith("F1_class_")]])


def _flagged(result, flags, card, split_name) -> str:
    if flags is None:
        return "<p>No training reference: flags not computed.</p>"
    table = prediction_table(result, flags, split_name, None, card)
    flagged = table[table.any_flag].drop(columns=["raw_text", "any_flag"])
    counts = ", ".join(f"{c}: {int(flags[c].sum())}" for c in flag_columns(flags))
    head = f"<p>{len(flagged)} of {len(table)} samples flagged ({_e(counts)}).</p>"
    if len(flagged) > MAX_FLAGGED_ROWS:
        head += f"<p>Showing the first {MAX_FLAGGED_ROWS}.</p>"
    return head + _table(flagged.head(MAX_FLAGGED_ROWS))


def _explained(row: dict) -> str:
    body = f"<h3>Sample {_e(row['id'])}</h3>"
    body += "".join(f"<p>{_e(p)}</p>" for p in row.get("summary", "").split("\n\n") if p)
    body += _table(row["contributions"])
    cf = row.get("counterfactuals")
    if cf is not None and len(cf):
        body += "<h4>What if a modality were missing</h4>" + _table(cf)
    return f"<div class='sample'>{body}</div>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0; } .meta { color: #666; }
section { margin-top: 2em; } table { border-collapse: collapse; font-size: 0.9em; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left; }
.sample { border-left: 3px solid #4682b4; padding-left: 1em; margin: 1.5em 0; }
"""
