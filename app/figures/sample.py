"""Sample page figures: raw inputs, the exact waterfall of the head, prototypes and transport cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .style import PALETTE, nice_step

IMAGE_MODALITIES = ("pixel", "image", "pixels")
LINE_WIDTH_LIMIT = 8  # time series with at most this many features are drawn as one line per feature


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
    """A (H, W) array drawn as a grayscale image (rows top to bottom), as wide as its column: Streamlit sets every
    chart's width to its container's, so a width of its own only made the browser draw the image twice."""
    fig = go.Figure(go.Heatmap(z=np.asarray(x), colorscale="Greys", showscale=False))
    fig.update_layout(title=title, height=320, margin={"t": 50, "b": 20, "l": 20, "r": 20},
                      yaxis={"autorange": "reversed", "scaleanchor": "x", "showticklabels": False},
                      xaxis={"showticklabels": False})
    return fig


def sequence_figure(x: np.ndarray, modality: str, length: int | None = None) -> go.Figure:
    """One modality's (T, D) input, drawn by shape: a single step (a plain feature vector) as bars, a
    narrow series (D <= 8) as one line per feature over time, anything else as a heatmap. Steps beyond
    ``length`` (padding) are left out of lines and greyed out of heatmaps."""
    x = np.asarray(x, dtype=float)
    if x.shape[0] == 1:
        return _feature_bars(x[0], f"{modality}: {x.shape[1]} features", "value")
    valid = x if length is None else x[: max(length, 0)]
    if x.shape[1] <= LINE_WIDTH_LIMIT:
        return _feature_lines(valid, f"{modality}: {x.shape[1]} features over {x.shape[0]} steps", "value")
    z = x.copy()
    if length is not None and length < len(z):
        z[length:] = np.nan
    fig = go.Figure(go.Heatmap(z=z, colorscale="RdBu", zmid=0.0, colorbar={"thickness": 10},
                               hovertemplate="step %{y}, feature %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=f"{modality}: {x.shape[0]} steps x {x.shape[1]} features", height=300,
                      margin={"t": 50, "b": 40})
    return _integer_axes(fig, x.shape[1], x.shape[0])


def _feature_bars(values: np.ndarray, title: str, what: str, signed: bool = False) -> go.Figure:
    colours = np.where(values >= 0, "#d62728", "#1f77b4") if signed else PALETTE[0]
    fig = go.Figure(go.Bar(x=np.arange(len(values)), y=values, marker_color=colours,
                           hovertemplate="feature %{x}: %{y:.4f}<extra></extra>"))
    fig.update_layout(title=title, height=260, xaxis_title="feature", yaxis_title=what, margin={"t": 50, "b": 40})
    fig.update_xaxes(tickformat="d", dtick=nice_step(len(values), 16), range=[-0.5, len(values) - 0.5])
    return fig


def _feature_lines(series: np.ndarray, title: str, what: str) -> go.Figure:
    fig = go.Figure()
    steps = np.arange(series.shape[0])
    for j in range(series.shape[1]):
        fig.add_trace(go.Scatter(x=steps, y=series[:, j], mode="lines+markers", name=f"feature {j}",
                                 line={"color": PALETTE[j % len(PALETTE)]}))
    fig.update_layout(title=title, height=300, xaxis_title="time step", yaxis_title=what,
                      margin={"t": 50, "b": 40}, legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(tickformat="d", dtick=nice_step(max(len(steps), 1), 12))
    return fig


def _integer_axes(fig: go.Figure, features: int, steps: int) -> go.Figure:
    """Heatmap axes in whole features and steps (never "-0.4 ... 0.4"), step 0 at the top."""
    fig.update_xaxes(title_text="feature", tickformat="d", dtick=nice_step(features, 16))
    fig.update_yaxes(title_text="time step", tickformat="d", dtick=nice_step(steps, 12), autorange="reversed")
    return fig


def posterior_figure(posteriors: dict[str, np.ndarray]) -> go.Figure:
    """Posterior over the training prototypes, one group of bars per modality."""
    fig = go.Figure()
    for i, (m, p) in enumerate(posteriors.items()):
        fig.add_trace(go.Bar(x=[f"k{k}" for k in range(len(p))], y=p, name=m, marker_color=PALETTE[i % len(PALETTE)]))
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
        fig.update_xaxes(title_text=f"{b} prototype", tickformat="d", dtick=nice_step(plan.shape[1], 12),
                         row=1, col=i)
        fig.update_yaxes(title_text=f"{a} prototype", autorange="reversed", tickformat="d",
                         dtick=nice_step(plan.shape[0], 12), row=1, col=i)
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
    """Integrated-gradients attributions of one modality, drawn by shape as :func:`sequence_figure`:
    bars per feature for a single step (red raises the output, blue lowers it), lines for a narrow series,
    else a (T, D) heatmap centred at zero."""
    a = np.asarray(attributions, dtype=float)
    title = f"{modality}: attribution (sum {a.sum():+.3f})"
    if a.shape[0] == 1:
        return _feature_bars(a[0], title, "attribution", signed=True)
    if a.shape[1] <= LINE_WIDTH_LIMIT:
        return _feature_lines(a, title, "attribution")
    bound = float(np.abs(a).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=a, colorscale="RdBu", zmin=-bound, zmax=bound, colorbar={"thickness": 10},
                               hovertemplate="step %{y}, feature %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, height=280, margin={"t": 50, "b": 40})
    return _integer_axes(fig, a.shape[1], a.shape[0])


def attention_figure(weights: pd.DataFrame, title: str) -> go.Figure:
    """Cross-modal attention weights (query steps x keys of the other modalities)."""
    fig = go.Figure(go.Heatmap(z=weights.to_numpy(), x=list(weights.columns), y=list(weights.index),
                               colorscale="Viridis", colorbar={"thickness": 10},
                               hovertemplate="%{y} -> %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=300, margin={"t": 50, "b": 40}, yaxis_autorange="reversed")
    return fig


def probability_figure(probabilities: np.ndarray, names: list[str], label: int | None = None) -> go.Figure:
    """The predicted probability of every class (every class labelled); the predicted class dark, the true
    class (when known) outlined."""
    from decalign.safe_output import plotly_text

    from .style import class_axis

    p = np.asarray(probabilities, dtype=float)
    shown = [plotly_text(n) for n in names]
    top = int(p.argmax())
    fig = go.Figure(go.Bar(x=shown, y=p, marker_color=[PALETTE[0] if k == top else "#9ecae1" for k in range(len(p))],
                           marker_line_color=["#d62728" if k == label else "rgba(0,0,0,0)" for k in range(len(p))],
                           marker_line_width=3, text=[f"{v:.2f}" for v in p], textposition="outside",
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Probability of each class" + (" (true class outlined in red)" if label is not None
                                                            else ""), height=300, yaxis_range=[0, 1.1],
                      yaxis_title="probability", margin={"t": 50, "b": 40})
    return class_axis(fig, shown)
