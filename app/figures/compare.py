"""Figures of the Compare page: metrics side by side, per-slice changes, alignment levels, prototype matching."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from decalign.explain.compare import PrototypeMatch


def metrics_figure(metrics: pd.DataFrame) -> go.Figure:
    """Grouped bars of A and B per metric (per-class F1 left out)."""
    shown = metrics[~metrics["metric"].str.startswith("F1_class_")]
    fig = go.Figure([go.Bar(name=side, x=shown["name"], y=shown[side]) for side in ("A", "B")])
    fig.update_layout(barmode="group", title="Metrics", height=340)
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
