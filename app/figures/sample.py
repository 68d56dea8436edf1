"""Sample page figures: raw inputs, the exact waterfall of the head, prototypes and transport cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

IMAGE_MODALITIES = ("pixel", "image", "pixels")


def waterfall_figure(contributions: pd.DataFrame, output_name: str) -> go.Figure:
    """Waterfall from 0 through each branch term and the bias to the output.

    ``contributions`` has columns ``branch`` and ``contribution`` (as from
    ``decalign.explain.branch_contributions``); the final bar is their sum, which equals the head output.
    """
    names = list(contributions["branch"]) + [output_name]
    values = list(contributions["contribution"].astype(float)) + [float(contributions["contribution"].sum())]
    fig = go.Figure(go.Waterfall(x=names, y=values, measure=["relative"] * len(contributions) + ["total"],
                                 text=[f"{v:+.3f}" for v in values[:-1]] + [f"{values[-1]:.3f}"],
                                 textposition="outside", connector={"line": {"color": "grey", "width": 1}}))
    fig.update_layout(title=f"Branch contributions to {output_name}", height=420, margin={"t": 50, "b": 40},
                      showlegend=False)
    return fig


def image_figure(x: np.ndarray, title: str) -> go.Figure:
    """A (H, W) array drawn as a grayscale image (rows top to bottom)."""
    fig = go.Figure(go.Heatmap(z=np.asarray(x), colorscale="Greys", showscale=False))
    fig.update_layout(title=title, height=320, width=320, margin={"t": 50, "b": 20, "l": 20, "r": 20},
                      yaxis={"autorange": "reversed", "scaleanchor": "x", "showticklabels": False},
                      xaxis={"showticklabels": False})
    return fig


def sequence_figure(x: np.ndarray, modality: str, length: int | None = None) -> go.Figure:
    """Heatmap of one modality's (T, D) input; steps beyond ``length`` (padding) are greyed out.

    A single-step modality (T = 1, a plain feature vector) is drawn as bars instead.
    """
    x = np.asarray(x, dtype=float)
    if x.shape[0] == 1:
        fig = go.Figure(go.Bar(x=np.arange(x.shape[1]), y=x[0], marker_color="steelblue"))
        fig.update_layout(title=f"{modality}: {x.shape[1]} features", height=260, xaxis_title="feature",
                          yaxis_title="value", margin={"t": 50, "b": 40})
        return fig
    z = x.copy()
    if length is not None and length < len(z):
        z[length:] = np.nan
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0.0, colorbar={"thickness": 10},
                               hovertemplate="step %{y}, feature %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"{modality}: {x.shape[0]} steps x {x.shape[1]} features", height=300,
                      xaxis_title="feature", yaxis_title="time step", yaxis_autorange="reversed",
                      margin={"t": 50, "b": 40})
    return fig


def posterior_figure(posteriors: dict[str, np.ndarray]) -> go.Figure:
    """Posterior over the training prototypes, one group of bars per modality."""
    fig = go.Figure()
    for m, p in posteriors.items():
        fig.add_trace(go.Bar(x=[f"k{k}" for k in range(len(p))], y=p, name=m))
    fig.update_layout(title="Prototype posteriors p(k | sample)", barmode="group", yaxis_range=[0, 1],
                      xaxis_title="prototype", height=320, margin={"t": 50, "b": 40})
    return fig


def assignment_table(posteriors: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each modality's most probable prototype and its posterior."""
    return pd.DataFrame({"modality": list(posteriors),
                         "prototype": [int(np.argmax(p)) for p in posteriors.values()],
                         "posterior": [float(np.max(p)) for p in posteriors.values()]})


def transport_cells_figure(pair_plans: dict[tuple[str, str], np.ndarray], cells: dict[str, int]) -> go.Figure:
    """Each modality pair's transport plan between training prototypes, the sample's cell outlined."""
    from plotly.subplots import make_subplots

    pairs = list(pair_plans)
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[f"{a} x {b}" for a, b in pairs],
                        horizontal_spacing=0.08)
    for i, (a, b) in enumerate(pairs, start=1):
        plan = np.asarray(pair_plans[(a, b)])
        fig.add_trace(go.Heatmap(z=plan, colorscale="Viridis", showscale=i == len(pairs),
                                 hovertemplate=f"{a} k%{{y}}, {b} k%{{x}}: %{{z:.4f}}<extra></extra>"),
                      row=1, col=i)
        ka, kb = cells[a], cells[b]
        fig.add_shape(type="rect", x0=kb - 0.5, x1=kb + 0.5, y0=ka - 0.5, y1=ka + 0.5,
                      line={"color": "red", "width": 3}, row=1, col=i)
        fig.update_xaxes(title_text=f"{b} prototype", row=1, col=i)
        fig.update_yaxes(title_text=f"{a} prototype", autorange="reversed", row=1, col=i)
    fig.update_layout(title="Transport plan between training prototypes (sample's cell outlined)", height=360,
                      margin={"t": 70, "b": 40})
    return fig


def counterfactual_figure(counterfactuals: pd.DataFrame, task: str) -> go.Figure:
    """Change of the prediction (regression) or of the predicted class's probability when each modality is
    dropped (replaced by the training mean) or swapped with another sample's."""
    fig = go.Figure()
    for change, part in counterfactuals.groupby("change", sort=False):
        fig.add_trace(go.Bar(x=part["modality"], y=part["delta"], name=change,
                             text=[f"{v:+.3f}" for v in part["delta"]], textposition="outside"))
    what = "prediction" if task == "regression" else "probability of the predicted class"
    fig.update_layout(title=f"Change in the {what}", barmode="group", yaxis_title="delta", height=340,
                      margin={"t": 50, "b": 40})
    return fig


def attribution_figure(attributions: np.ndarray, modality: str) -> go.Figure:
    """Integrated-gradients attributions of one modality as a (T, D) heatmap centred at zero."""
    a = np.asarray(attributions, dtype=float)
    bound = float(np.abs(a).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=a, colorscale="RdBu", zmin=-bound, zmax=bound, colorbar={"thickness": 10},
                               hovertemplate="step %{y}, feature %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=f"{modality}: attribution (sum {a.sum():+.3f})", height=280, xaxis_title="feature",
                      yaxis_title="time step", yaxis_autorange="reversed", margin={"t": 50, "b": 40})
    return fig


def attention_figure(weights: pd.DataFrame, title: str) -> go.Figure:
    """Cross-modal attention weights (query steps x keys of the other modalities)."""
    fig = go.Figure(go.Heatmap(z=weights.to_numpy(), x=list(weights.columns), y=list(weights.index),
                               colorscale="Viridis", colorbar={"thickness": 10},
                               hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin={"t": 50, "b": 40}, yaxis_autorange="reversed")
    return fig
