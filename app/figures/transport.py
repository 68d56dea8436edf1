"""Prototype and transport figures: prototypes among their samples, plan and cost heatmaps with
marginals, multi-marginal flows as a Sankey diagram, and the entropy sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from decalign.explain.correspondence import PairCorrespondence
from decalign.explain.transport_view import PlanView

from .style import CONTINUOUS, category_colours, fixed_margins, point_trace, subplot_grid


def prototype_scatter(sample_coords: np.ndarray, proto_coords: np.ndarray, assigned: np.ndarray,
                      weights: np.ndarray, title: str) -> go.Figure:
    """Samples (SVG or WebGL by size, coloured by their most probable prototype) and the prototype means
    (stars in the same colours, numbered, sized by weight) in one PCA plane. No legend: the numbered stars name the colours, and
    a legend of K entries would squeeze a chart one third of the page wide."""
    fig = go.Figure()
    trace = point_trace(len(sample_coords))
    colours = category_colours(list(range(len(proto_coords))))
    if colours is None:  # more prototypes than distinct colours: one continuous scale, no legend
        fig.add_trace(trace(x=sample_coords[:, 0], y=sample_coords[:, 1], mode="markers", showlegend=False,
                                   marker={"size": 5, "opacity": 0.5, "color": assigned, "colorscale": CONTINUOUS,
                                           "colorbar": {"title": "prototype"}}, hoverinfo="skip"))
    for k in range(len(proto_coords)) if colours is not None else ():
        mask = assigned == k
        fig.add_trace(trace(x=sample_coords[mask, 0], y=sample_coords[mask, 1], mode="markers",
                            name=f"prototype {k}", showlegend=False, hoverinfo="skip",
                            marker={"size": 5, "opacity": 0.5, "color": colours[k]}))
    size = 14 + 40 * np.sqrt(np.asarray(weights, dtype=float))
    star_colours = "black" if colours is None else [colours[k] for k in range(len(proto_coords))]
    fig.add_trace(go.Scatter(x=proto_coords[:, 0], y=proto_coords[:, 1], mode="markers+text", name="means",
                             text=[str(k) for k in range(len(proto_coords))], textposition="middle center",
                             showlegend=False,
                             marker={"symbol": "star", "size": size, "opacity": 0.9, "color": star_colours,
                                     "line": {"color": "black", "width": 1.5}},
                             textfont={"color": "white", "size": 10},
                             customdata=np.asarray(weights, dtype=float),
                             hovertemplate="prototype %{text}<br>weight %{customdata:.3f}<extra></extra>"))
    fig.update_layout(title=title, height=380)
    fig.update_xaxes(title="PC 1")
    fig.update_yaxes(title="PC 2")
    return fixed_margins(fig)


def matrix_figure(matrix: np.ndarray, row_marginal: np.ndarray, col_marginal: np.ndarray, a: str, b: str,
                  title: str, colorscale: str = "Blues", row_order: np.ndarray | None = None,
                  col_order: np.ndarray | None = None, outline: np.ndarray | None = None) -> go.Figure:
    """Heatmap of a (K_a, K_b) matrix with bar charts of the row marginal (right) and the column marginal
    (top), so the plan's constraints are visible next to it. ``row_order``/``col_order`` reorder it (the
    ticks keep the prototypes' own numbers); ``outline`` (K_a, K_b) bool marks cells with a frame (the
    exact matching)."""
    ka, kb = matrix.shape
    rows = np.arange(ka) if row_order is None else np.asarray(row_order)
    cols = np.arange(kb) if col_order is None else np.asarray(col_order)
    z = np.asarray(matrix)[np.ix_(rows, cols)]
    xs, ys = [f"{b} {k}" for k in cols], [f"{a} {k}" for k in rows]
    fig, cells = subplot_grid(rows=2, cols=2, shared_xaxes=True, shared_yaxes=True, column_widths=(0.8, 0.2),
                              row_heights=(0.22, 0.78), horizontal_spacing=0.02, vertical_spacing=0.03)
    heat, top, side = cells[(2, 1)], cells[(1, 1)], cells[(2, 2)]
    fig.add_trace(go.Heatmap(z=z, x=xs, y=ys, colorscale=colorscale, colorbar={"len": 0.7, "y": 0.38}, name=title,
                             hovertemplate="%{y} → %{x}: %{z:.4f}<extra></extra>", xaxis=heat.x, yaxis=heat.y))
    fig.add_trace(go.Bar(x=xs, y=np.asarray(col_marginal)[cols], name=f"{b} marginal", marker_color="#888",
                         showlegend=False, xaxis=top.x, yaxis=top.y))
    fig.add_trace(go.Bar(y=ys, x=np.asarray(row_marginal)[rows], orientation="h", name=f"{a} marginal",
                         marker_color="#888", showlegend=False, xaxis=side.x, yaxis=side.y))
    if outline is not None:  # one layout update: add_shape per cell re-validates every shape so far
        fig.update_layout(shapes=[{"type": "rect", "x0": j - 0.5, "x1": j + 0.5, "y0": i - 0.5, "y1": i + 0.5,
                                   "xref": heat.x, "yref": heat.y, "line": {"color": "#d62728", "width": 2}}
                                  for i, j in zip(*np.nonzero(np.asarray(outline)[np.ix_(rows, cols)]))])
    fig.update_layout({heat.yaxis: {"title": f"{a} prototype", "type": "category", "autorange": "reversed"},
                       heat.xaxis: {"title": f"{b} prototype", "type": "category"}},
                      title=title, height=400, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def plan_figures(view: PlanView, a: str, b: str, pair: PairCorrespondence | None = None
                 ) -> tuple[go.Figure, go.Figure]:
    """(cost heatmap, plan heatmap) of the pair (a, b), both with the pair plan's marginals; with ``pair``
    (its correspondences) sorted so the exact matching lies on the diagonal, its cells framed."""
    plan = view.pair_plans[(a, b)] if (a, b) in view.pair_plans else view.pair_plans[(b, a)].T
    cost = view.pair_costs[(a, b)] if (a, b) in view.pair_costs else view.pair_costs[(b, a)].T
    rows, cols = plan.sum(1), plan.sum(0)
    order = {} if pair is None else {"row_order": pair.row_order, "col_order": pair.col_order,
                                     "outline": pair.matching > 1e-9}
    return (matrix_figure(cost, rows, cols, a, b, f"Cost {a} – {b} ({view.cost_name})", "Reds", **order),
            matrix_figure(plan, rows, cols, a, b, f"Plan {a} – {b}", **order))


def sankey_figure(links: pd.DataFrame, order: list[str], title: str = "") -> go.Figure:
    """Sankey of ``decalign.explain.transport_view.sankey_links`` (or of :func:`main_flows`' rows): nodes
    ``modality:k``, columns in ``order``, each node coloured by its prototype number."""
    nodes = list(dict.fromkeys(list(links.source) + list(links.target)))
    nodes.sort(key=lambda n: (order.index(n.rpartition(":")[0]), int(n.rpartition(":")[2])))
    index = {n: i for i, n in enumerate(nodes)}
    column = [order.index(n.rpartition(":")[0]) for n in nodes]
    fig = go.Figure(go.Sankey(
        arrangement="snap",
        node={"label": [n.replace(":", " ") for n in nodes], "pad": 8, "thickness": 14,
              "x": [0.01 + 0.98 * c / max(1, len(order) - 1) for c in column]},
        link={"source": [index[s] for s in links.source], "target": [index[t] for t in links.target],
              "value": links.value.tolist(),
              "hovertemplate": "%{source.label} → %{target.label}: %{value:.4f}<extra></extra>"},
    ))
    fig.update_layout(title=title, height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def entropy_figure(sweep: pd.DataFrame, current: float, lambda_unit: str = "relative to the mean cost") -> go.Figure:
    """Entropy and transport cost of the plan against lambda_ot (log axis), the current value marked."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=sweep.lambda_ot, y=sweep.entropy, mode="lines+markers", name="entropy H(P)"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=sweep.lambda_ot, y=sweep.transport_cost, mode="lines+markers",
                             name="transport cost ⟨P, C⟩"), secondary_y=True)
    fig.add_vline(x=current, line_dash="dash", line_color="grey")
    fig.update_xaxes(type="log", title=f"lambda_ot (entropy setting, {lambda_unit})")
    fig.update_yaxes(title="entropy (nats)", secondary_y=False)
    fig.update_yaxes(title="transport cost", secondary_y=True)
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig
