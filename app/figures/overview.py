"""Overview figures: the model card as tables, training curves from ``history.json``, dataset summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.checkpoint import ModelCard
from decalign.data import MultimodalDataset
from decalign.loss_names import ALIGNMENT_LEVELS, LOSS_KEYS
from decalign.safe_output import plotly_text
from decalign.train.metrics import display_name

from .style import by_family, category_colours, class_axis, epoch_axis

LOSS_TERMS = (*LOSS_KEYS, "decoupling")  # decoupling is a loss term too (weight dec_loss_weight)
LEVELS = ALIGNMENT_LEVELS


def card_summary(card: ModelCard) -> pd.DataFrame:
    """One row per modality: feature width and sequence length the model expects."""
    return pd.DataFrame({"modality": list(card.widths), "width D": list(card.widths.values()),
                         "time steps T": [card.seq_lens.get(m) for m in card.widths]})


def metrics_table(card: ModelCard) -> pd.DataFrame:
    """Metrics recorded on the card: one row per split, one column per metric (display names)."""
    if not card.metrics:
        return pd.DataFrame()
    frame = pd.DataFrame(card.metrics).T
    frame.columns = [display_name(c) for c in frame.columns]
    frame.index.name = "split"
    return frame


def baseline_table(baseline: dict) -> pd.DataFrame:
    """The baseline's metrics: one row per split, one column per metric (display names, per-class F1 left out)."""
    frame = pd.DataFrame(baseline["metrics"]).T
    frame = frame[[c for c in frame.columns if not str(c).startswith("F1_class_")]]
    frame.columns = [display_name(c) for c in frame.columns]
    frame.index.name = "split"
    return frame


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """History rows (``decalign.train.runs.read_history``) flattened to one row per epoch (columns
    ``train/<term>``, ``valid/<metric>``). Empty when the run has no history (an imported or uploaded model).
    """
    if not rows:
        return pd.DataFrame()
    frame = pd.json_normalize(rows, sep="/")
    return frame.set_index("epoch") if "epoch" in frame else frame


def curves_figure(history: pd.DataFrame, columns: list[str], title: str, *, log_y: bool = False) -> go.Figure:
    """Line chart of the given history columns per epoch (one metric family: they share the y axis)."""
    fig = go.Figure()
    for col in columns:
        fig.add_trace(go.Scatter(x=history.index, y=history[col], mode="lines+markers",
                                 name=display_name(col.split("/", 1)[-1])))
    fig.update_layout(title=title, height=320, margin={"t": 50, "b": 40},
                      legend={"orientation": "h", "y": -0.25})
    if log_y:
        fig.update_yaxes(type="log")
    return epoch_axis(fig, history.index)


def history_figures(history: pd.DataFrame) -> dict[str, go.Figure]:
    """Per epoch, one chart per family of values that share a scale: the loss terms, the alignment levels
    (log scale: they differ by orders of magnitude), the validation loss, and each family of validation
    metrics (scores, error, correlation). Only groups present in the history."""
    valid = [c.removeprefix("valid/") for c in history.columns
             if c.startswith("valid/") and not c.startswith("valid/F1_class_")]
    groups = {"Loss terms (training split)": ([f"train/{t}" for t in LOSS_TERMS], False),
              "Alignment levels (training split)": ([f"train/{t}" for t in LEVELS], True)}
    for family, keys in by_family(valid).items():
        groups[f"Validation {family}"] = ([f"valid/{k}" for k in keys], False)
    out = {}
    for title, (cols, log_y) in groups.items():
        cols = [c for c in cols if c in history and history[c].notna().any()]
        if log_y and any((history[c].dropna() <= 0).any() for c in cols):
            log_y = False  # a level of 0, or the official transport term (its entropy part is negative)
        if log_y:
            title = title.replace(")", ", log scale)")
        if cols:
            out[title] = curves_figure(history, cols, title, log_y=log_y)
    return out


def split_sizes(dataset: MultimodalDataset) -> pd.DataFrame:
    return pd.DataFrame({"split": list(dataset.splits), "samples": [len(s) for s in dataset.splits.values()]})


def split_sizes_figure(dataset: MultimodalDataset) -> go.Figure:
    sizes = split_sizes(dataset)
    fig = go.Figure(go.Bar(x=sizes["split"], y=sizes["samples"], text=sizes["samples"], textposition="auto"))
    fig.update_layout(title="Samples per split", height=320, margin={"t": 50, "b": 40})
    return fig


def label_distribution_figure(dataset: MultimodalDataset, class_names: list[str] | None = None) -> go.Figure:
    """Class counts per split (classification) or a histogram of the labels per split (regression)."""
    fig = go.Figure()
    names = class_labels(dataset.num_classes or 0, class_names or dataset.class_names)
    colours = category_colours(list(dataset.splits)) or {}
    for name, part in dataset.splits.items():
        if part.labels is None:
            continue
        if dataset.task == "classification":
            counts = np.bincount(part.labels, minlength=len(names))
            fig.add_trace(go.Bar(x=names[: len(counts)], y=counts, name=name, marker_color=colours.get(name)))
        else:
            fig.add_trace(go.Histogram(x=part.labels, name=name, opacity=0.6, nbinsx=30,
                                       marker_color=colours.get(name)))
    fig.update_layout(title="Label distribution", barmode="group" if dataset.task == "classification"
                      else "overlay", yaxis_title="samples", height=320, margin={"t": 50, "b": 40})
    if dataset.task == "classification":
        class_axis(fig, names)
    fig.update_xaxes(title_text="class" if dataset.task == "classification" else "label")
    return fig


def class_labels(num_classes: int, class_names: list[str] | None) -> list[str]:
    """Axis labels of the classes 0..C-1: their names (escaped for plotly) or their indices."""
    if class_names:
        names = [class_names[i] if i < len(class_names) else str(i) for i in range(num_classes)]
        return [plotly_text(f"{n} ({i})" if names.count(n) > 1 else n) for i, n in enumerate(names)]
    return [str(i) for i in range(num_classes)]
