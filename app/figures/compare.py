"""Figures of the Compare page: metrics side by side, per-slice changes, alignment levels, prototype matching."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from decalign.explain.compare import PrototypeMatch

from .style import PALETTE, by_family


def metrics_figure(metrics: pd.DataFrame) -> go.Figure:
    """Grouped bars of A and B per metric (per-class F1 left out), one panel per metric family (scores,
    loss, error, correlation), so no two scales share an axis."""
    shown = metrics[~metrics["metric"].str.startswith("F1_class_")]
    families = by_family(shown["metric"].tolist()) or {"metrics": []}
    fig = make_subplots(rows=1, cols=len(families), subplot_titles=list(families),
                        column_widths=[max(len(k), 1) for k in families.values()], horizontal_spacing=0.06)
    for col, keys in enumerate(families.values(), start=1):
        part = shown.set_index("metric").loc[keys]
        for i, side in enumerate(("A", "B")):
            fig.add_trace(go.Bar(name=side, x=part["name"], y=part[side], marker_color=PALETTE[i],
                                 showlegend=col == 1, legendgroup=side), row=1, col=col)
    fig.update_layout(barmode="group", title="Metrics", height=360)
    return fig


def slices_figure(slices: pd.DataFrame) -> go.Figure:
    metric = slices["metric"].iloc[0] if len(slices) else ""
    labels = slices["slice"].astype(str)
    fig = go.Figure([go.Bar(name=side, x=labels, y=slices[side]) for side in ("A", "B")])
    fig.update_layout(barmode="group", title=f"{metric} per slice", height=340, xaxis_title="slice")
    return fig


def levels_figure(levels: pd.DataFrame) -> go.Figure:
    total = levels[levels["kind"] == "total"]
    fig = go.Figure([go.Bar(name=side, x=total["level"], y=total[side]) for side in ("A", "B")])
    fig.update_layout(barmode="group", title="Alignment levels (total)", height=340, yaxis_type="log")
    return fig


def match_figure(match: PrototypeMatch) -> go.Figure:
    k_a, k_b = match.plan.shape
    fig = go.Figure(go.Heatmap(z=match.plan, x=[f"B {j}" for j in range(k_b)], y=[f"A {i}" for i in range(k_a)],
                               colorscale="Purples", colorbar={"title": "mass"},
                               customdata=match.cost, hovertemplate="%{y} → %{x}<br>mass %{z:.3f}"
                                                                    "<br>cost %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=f"{match.modality}: which prototype of A became which of B (total cost "
                            f"{match.total_cost:.3f})", height=380, yaxis_autorange="reversed")
    return fig
