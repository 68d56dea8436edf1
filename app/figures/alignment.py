"""Alignment-level figures: one level's value per modality pair, beside its training value, and its
course over the training epochs."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .style import PALETTE, epoch_axis, subplot_grid


def training_value(training: dict | None, level: str) -> float | None:
    """The level's value on the training set from ``card.extra["training_alignment"]``, if recorded."""
    if not isinstance(training, dict):
        return None
    value = training.get(level)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def level_figure(levels: pd.DataFrame, level: str, train_value: float | None, title: str) -> go.Figure:
    """Left: the total on the current data and on the training set; right: the current data per pair
    (per modality for decoupling). ``levels`` is ``decalign.explain.levels.alignment_levels``'s frame."""
    rows = levels[levels.level == level]
    total = float(rows[rows.kind == "total"].value.iloc[0])
    parts = rows[rows.kind != "total"]
    fig, cells = subplot_grid(rows=1, cols=2, column_widths=(0.35, 0.65), horizontal_spacing=0.12,
                              subplot_titles=("total", "per modality" if level == "decoupling" else "per pair"))
    names = ["current data", "training set"]
    values = [total, train_value if train_value is not None else 0.0]
    fig.add_trace(go.Bar(x=names, y=values, marker_color=["#1f77b4", "#aaaaaa"], showlegend=False,
                         text=[f"{total:.4g}", "not recorded" if train_value is None else f"{train_value:.4g}"],
                         textposition="outside", hovertemplate="%{x}: %{y:.4g}<extra></extra>",
                         xaxis=cells[(1, 1)].x, yaxis=cells[(1, 1)].y))
    fig.add_trace(go.Bar(x=parts.scope.tolist(), y=parts.value.tolist(), marker_color="#1f77b4",
                         showlegend=False, hovertemplate="%{x}: %{y:.4g}<extra></extra>",
                         xaxis=cells[(1, 2)].x, yaxis=cells[(1, 2)].y))
    fig.update_layout({cell.yaxis: {"rangemode": "tozero"} for cell in cells.values()},
                      title=title, height=320, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def history_figure(history: pd.DataFrame, level: str) -> go.Figure | None:
    """The level per epoch, one line per source (e.g. train, valid); None when the history lacks it."""
    rows = history[history.level == level] if not history.empty else history
    if rows.empty:
        return None
    fig = go.Figure()
    for i, (source, group) in enumerate(rows.groupby("source", sort=True)):
        group = group.sort_values("epoch")
        fig.add_trace(go.Scatter(x=group.epoch, y=group.value, mode="lines+markers", name=str(source),
                                 line={"color": PALETTE[i % len(PALETTE)]}))
    fig.update_layout(title="over the training epochs", height=320, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return epoch_axis(fig, rows.epoch)


def comparison_figure(table: pd.DataFrame, names: tuple[str, str]) -> go.Figure:
    """Each level's total for two models (``decalign.explain.compare.levels_side_by_side``'s A and B
    columns), grouped bars on a log axis: the levels differ by orders of magnitude."""
    total = table[table["kind"] == "total"]
    fig = go.Figure([go.Bar(name=name, x=total["level"], y=total[side], marker_color=PALETTE[i],
                            hovertemplate="%{x}: %{y:.4g}<extra>" + name + "</extra>")
                     for i, (side, name) in enumerate(zip(("A", "B"), names))])
    fig.update_layout(barmode="group", title="Each level on this data, both models (lower = better aligned)",
                      height=360, yaxis_type="log", margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig
