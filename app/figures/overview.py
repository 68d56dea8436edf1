"""Overview figures: the model card as tables, training curves from ``history.json``, dataset summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.checkpoint import ModelCard
from decalign.data import MultimodalDataset
from decalign.model import AlignmentLevels
from decalign.safe_output import plotly_text
from decalign.train.metrics import display_name
from decalign.train.trainer import LOSS_KEYS

LOSS_TERMS = (*LOSS_KEYS, "decoupling")  # decoupling is a loss term too (weight dec_loss_weight)
LEVELS = AlignmentLevels.LEVELS


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


def curves_figure(history: pd.DataFrame, columns: list[str], title: str) -> go.Figure:
    """Line chart of the given history columns per epoch."""
    fig = go.Figure()
    for col in columns:
        fig.add_trace(go.Scatter(x=history.index, y=history[col], mode="lines+markers",
                                 name=display_name(col.split("/", 1)[-1])))
    fig.update_layout(title=title, xaxis_title="epoch", height=320, margin={"t": 50, "b": 40})
    return fig


def history_figures(history: pd.DataFrame) -> dict[str, go.Figure]:
    """Loss terms, alignment levels and validation metrics per epoch (only groups present in the history)."""
    groups = {
        "Loss terms": [f"train/{t}" for t in LOSS_TERMS],
        "Alignment levels": [f"train/{t}" for t in LEVELS],
        "Validation metrics": [c for c in history.columns if c.startswith("valid/")
                               and not c.startswith("valid/F1_class_")],
    }
    out = {}
    for title, cols in groups.items():
        cols = [c for c in cols if c in history and history[c].notna().any()]
        if cols:
            out[title] = curves_figure(history, cols, title)
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
    for name, part in dataset.splits.items():
        if part.labels is None:
            continue
        if dataset.task == "classification":
            counts = np.bincount(part.labels, minlength=dataset.num_classes or 0)
            names = [plotly_text(n) for n in class_names] if class_names else [str(i) for i in range(len(counts))]
            fig.add_trace(go.Bar(x=names, y=counts, name=name))
        else:
            fig.add_trace(go.Histogram(x=part.labels, name=name, opacity=0.6, nbinsx=30))
    xaxis = "class" if dataset.task == "classification" else "label"
    fig.update_layout(title="Label distribution", barmode="group" if dataset.task == "classification"
                      else "overlay", xaxis_title=xaxis, yaxis_title="samples", height=320,
                      margin={"t": 50, "b": 40})
    return fig
