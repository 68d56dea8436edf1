"""A page of charts for tests/app/test_browser_charts.py: each figure of :func:`figures` shown either with Streamlit's
own theme (``?via=streamlit``) or through ``app.charts.show`` (``?via=show``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from app import charts


def figures() -> list[go.Figure]:
    rng = np.random.default_rng(0)
    names = [f"class {i}" for i in range(4)]
    scatter = go.Figure(go.Scatter(x=rng.normal(size=300), y=rng.normal(size=300), mode="markers",
                                   marker={"color": rng.normal(size=300), "colorscale": "Viridis", "showscale": True}))
    scatter.update_layout(title="numeric scatter", xaxis_title="x", yaxis_title="y")
    heat = go.Figure(go.Heatmap(z=rng.random((4, 4)), x=names, y=names))
    heat.update_layout(title="categorical heatmap")
    bars = go.Figure(go.Bar(x=names, y=rng.random(4)))
    across = go.Figure(go.Bar(y=names, x=rng.random(4), orientation="h"))
    grid = make_subplots(rows=1, cols=2, subplot_titles=("left", "right"))
    grid.add_trace(go.Heatmap(z=rng.random((3, 3)), coloraxis="coloraxis"), row=1, col=1)
    grid.add_trace(go.Heatmap(z=rng.random((3, 3)), coloraxis="coloraxis"), row=1, col=2)
    steps = go.Figure(go.Waterfall(x=names, y=[1.0, -0.5, 0.25, 0.75], measure=["relative"] * 3 + ["total"]))
    flows = go.Figure(go.Sankey(node={"label": names}, link={"source": [0, 1], "target": [2, 3], "value": [1, 2]}))
    counts = go.Figure(go.Histogram(x=rng.normal(size=200)))
    styled = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="a"))
    styled.add_trace(go.Scatter(x=[1, 2, 3], y=[1, 2, 3], name="b"))
    styled.update_xaxes(tickcolor="red", gridcolor="blue")
    styled.update_layout(title="own axis styles", legend_title="legend")
    return [scatter, heat, bars, across, grid, steps, flows, counts, styled]


# Selections on, as the dashboard's pages use them: points and box with the default drag mode; every mode with
# the figure's own lasso drag (the Embeddings page's charts); box and lasso alone (dragging selects by default).
SELECTIONS = {"show-select": (None, ("points", "box")), "show-lasso": ("lasso", ("points", "box", "lasso")),
              "show-box": (None, ("box", "lasso"))}

via = st.query_params.get("via", "show")
if via != "streamlit":
    charts.whole_pixel_chart_widths()  # as the dashboard does on every run
# Three to a row ("show-columns"): columns a fraction of a pixel wide, where plotly and Streamlit read the width apart.
columns = st.columns(3, gap="medium") if via == "show-columns" else None
for i, figure in enumerate(figures()):
    if via == "streamlit":
        st.plotly_chart(figure, key=f"chart_{i}")
    elif columns is not None:
        charts.show_in(columns[i % 3], figure, key=f"chart_{i}")
    elif via in SELECTIONS:
        drag, modes = SELECTIONS[via]
        if drag:
            figure.update_layout(dragmode=drag)
        charts.show(figure, key=f"chart_{i}", on_select="rerun", selection_mode=modes)
    else:
        charts.show(figure, key=f"chart_{i}")
