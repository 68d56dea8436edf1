"""A self-contained HTML audit report: model card, baseline, metrics and metrics per slice, drift, flagged
samples, reviews and the explanations of chosen samples, with plotly figures (plotly.js inlined once, so
it opens offline). Every number comes from one :class:`decalign.audit.run.AuditResult` (:func:`run_audit`),
the same the Audit page and ``decalign audit --json`` show.

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
from ..data.dataset import MultimodalDataset, Split
from ..explain import branch_contributions, modality_counterfactuals, plain_summary, prototype_story
from ..inference import InferenceResult, run_inference
from ..model import DecAlign
from ..safe_output import plotly_text
from ..train.metrics import ERROR_TEXT, card_convention, card_error, confusion_matrix, display_name
from ..train.reference import TrainingReference, training_plan
from .drift import SPACES
from .run import AuditResult, PreparedReference, run_audit
from .store import AuditTrail

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


def drift_figure(tests: pd.DataFrame) -> go.Figure:
    """How far each modality's features moved from the held-out reference (``mean_shift_effect``, in
    standard deviations), one bar per modality and space; red = drifted (Holm-corrected p < alpha), the
    corrected p-value written on each bar."""
    labels = [f"{r.modality} ({SPACES[r.space]})" for r in tests.itertuples()]
    effect = np.nan_to_num(tests["effect"].to_numpy(dtype=float), posinf=0.0)
    fig = go.Figure(go.Bar(
        x=labels, y=effect, marker_color=["crimson" if d else "steelblue" for d in tests["drifted"]],
        text=[f"p = {p:.3g}" for p in tests["p_corrected"]], textposition="outside",
        customdata=np.stack([tests["p_value"], tests["p_corrected"], tests["mmd2"]], axis=1),
        hovertemplate="%{x}<br>moved %{y:.2f} standard deviations<br>p = %{customdata[0]:.3g}, corrected "
                      "%{customdata[1]:.3g}<br>MMD² %{customdata[2]:.3g}<extra></extra>"))
    fig.update_layout(title="Drift against held-out data: how far each view moved (red: drifted)", height=380,
                      yaxis_title="mean shift (standard deviations)", yaxis={"rangemode": "tozero"})
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
    plan = training_plan(reference, card.config.model) if reference is not None and ids else None
    for sample_id in ids:
        row = index[str(sample_id)]
        contrib = branch_contributions(result, row)
        cf = modality_counterfactuals(model, split, row, reference) if reference is not None else None
        story = prototype_story(model, card, split, row, reference, plan=plan) if reference is not None else None
        flags_row = None if flags is None else flags.iloc[row]
        summary = plain_summary(card, result, row, contrib, cf, flags_row, story)
        rows.append({"id": str(sample_id), "contributions": contrib, "counterfactuals": cf, "summary": summary})
    return rows


# ------------------------------------------------------------------------------------------- report


def build_report(card: ModelCard, audit: AuditResult, result: InferenceResult, explained_rows: list[dict], *,
                 title: str = "DecAlign audit report") -> str:
    """The report of one :class:`AuditResult` as one HTML string; every text value is HTML-escaped."""
    figures = _figures(card, result, audit)
    sections = [
        _section("Model", _card_table(card)),
        _section("Metrics recorded at training", _metrics_table(card)),
        _section("Linear baseline", _baseline(audit)),
        _section(f"Data: {audit.data} {audit.split}".strip(), _data(audit)),
        _section("Metrics per slice", _slices(audit)),
        _section("Figures", "".join(_figure_html(f, i == 0) for i, f in enumerate(figures)) or "<p>None.</p>"),
        _section("Drift", _drift(audit)),
        _section("Flagged samples", _flagged(audit)),
        _section("Reviews", _reviews(audit)),
        _section("Explained samples", "".join(_explained(r) for r in explained_rows) or "<p>None chosen.</p>"),
        _section("Notes", "".join(f"<p>{_e(n)}</p>" for n in audit.notes) or "<p>None.</p>"),
    ]
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><p class='meta'>Generated {stamp} by "
            f"DecAlign Studio {_e(card.library_version)}</p>{''.join(sections)}</body></html>")


def write_report(path: str | Path, html_text: str) -> Path:
    return atomic_write_text(path, html_text)


def make_report(model: DecAlign, card: ModelCard, dataset: MultimodalDataset, split_name: str, *, data_name: str,
                reference: PreparedReference, sample_ids: list[str] = (), title: str = "DecAlign audit report",
                trail: AuditTrail | None = None, checkpoint_fingerprint: str | None = None,
                input_ids: tuple[str, ...] = ()) -> str:
    """Run the audit (:func:`run_audit`) and the explanations of ``sample_ids``, and build the report."""
    ref = reference.reference
    split = dataset.splits[split_name]
    result = run_inference(model, split, task=card.task, prototypes=ref.prototypes if ref else None)
    audit = run_audit(model, card, dataset, split_name, data_name=data_name, reference=reference, result=result,
                      trail=trail, checkpoint_fingerprint=checkpoint_fingerprint, input_ids=input_ids)
    rows = explain_rows(model, card, split, result, ref, list(sample_ids), audit.flags)
    return build_report(card, audit, result, rows, title=title)


def _figures(card, result, audit: AuditResult) -> list[go.Figure]:
    figures = []
    if result.labels is not None and len(result):
        if result.task == "regression":
            figures.append(residual_figure(result))
        else:
            figures += [confusion_figure(result, card.class_names), reliability_figure(result)]
    if audit.drift is not None:
        figures.append(drift_figure(audit.drift.tests))
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
              "metric convention": card_convention(card), "per-sample error": ERROR_TEXT[card_error(card)],
              "d_model": card.config.model.d_model, "prototypes (K)": card.config.model.num_prototypes}
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in fields.items() if v not in (None, ""))
    return f"<table class='card'>{rows}</table>"


def _metrics_table(card: ModelCard) -> str:
    if not card.metrics:
        return "<p>None recorded.</p>"
    frame = pd.DataFrame(card.metrics).T.reset_index(names="split")
    return _table(frame[[c for c in frame.columns if not str(c).startswith("F1_class_")]])


def _baseline(audit: AuditResult) -> str:
    if audit.baseline is None:
        return "<p>No baseline (it needs labelled train and validation splits).</p>"
    b = audit.baseline
    head = (f"<p>{_e(b['name'].capitalize())} on the input features averaged over time and standardised "
            f"({b['features']} features), {_e(b['parameter'])} = {b['value']:g} chosen on the validation split.</p>")
    if audit.comparison is not None:
        head += f"<p><strong>{_e(audit.comparison['sentence'])}</strong></p>"
    frame = pd.DataFrame(b["metrics"]).T.reset_index(names="split")
    return head + _table(frame[[c for c in frame.columns if not str(c).startswith("F1_class_")]])


def _data(audit: AuditResult) -> str:
    body = f"<p>{audit.n} samples. Per-sample error: {_e(ERROR_TEXT[audit.error])}.</p>"
    if audit.metrics:
        shown = {display_name(k): v for k, v in audit.metrics.items() if not k.startswith("F1_class_")}
        body += _table(pd.DataFrame([shown]))
    return body


def _slices(audit: AuditResult) -> str:
    if audit.slices is None:
        return "<p>No labels: not computed.</p>"
    what = ("one row per class: precision, recall and F1 of that class against all others"
            if audit.slice_by == "class" else "one row per rounded label")
    return f"<p>By {_e(audit.slice_by)}: {what}.</p>" + _table(audit.slices)


def _drift(audit: AuditResult) -> str:
    if audit.drift is None:
        return f"<p>{_e(audit.drift_missing)}</p>"
    lines = "".join(f"<li>{_e(t)}</li>" for t in audit.drift.sentences())
    return f"<ul>{lines}</ul>" + _table(audit.drift.tests)


def _flagged(audit: AuditResult) -> str:
    if audit.flags is None:
        return "<p>No training reference: flags not computed.</p>"
    table = audit.table
    flagged = table[table.any_flag].drop(columns=["raw_text", "any_flag"])
    counts = ", ".join(f"{c}: {v}" for c, v in audit.flag_counts.items())
    head = (f"<p>{len(flagged)} of {len(table)} samples flagged ({_e(counts)}); thresholds calibrated on the "
            f"{'validation' if audit.thresholds_from == 'valid' else 'training'} samples.</p>")
    if len(flagged) > MAX_FLAGGED_ROWS:
        head += f"<p>Showing the first {MAX_FLAGGED_ROWS}.</p>"
    return head + _table(flagged.head(MAX_FLAGGED_ROWS))


def _reviews(audit: AuditResult) -> str:
    if audit.reviews is None:
        return "<p>The audit trail was not read.</p>"
    if audit.reviews.empty:
        return "<p>No sample of this split has been reviewed.</p>"
    shown = audit.reviews[["sample_id", "verdict", "reviewer", "comment", "created_at"]]
    counts = shown["verdict"].value_counts()
    head = f"<p>{len(shown)} samples reviewed (newest verdict each): " + ", ".join(
        f"{_e(v)} {int(n)}" for v, n in counts.items()) + ".</p>"
    return head + _table(shown)


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
