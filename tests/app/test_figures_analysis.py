"""Figure builders of the Embeddings, Prototypes and Alignment pages (no Streamlit involved)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from app.figures import alignment as afig
from app.figures import embeddings as efig
from app.figures import transport as tfig
from decalign.config import ModelConfig
from decalign.explain.transport_view import sankey_links, solve_plan
from decalign.inference import InferenceResult
from decalign.model import Prototypes


def _result(task="classification", n=30, seed=0) -> InferenceResult:
    rng = np.random.default_rng(seed)
    out_dim = 3 if task == "classification" else 1
    feats = {m: rng.normal(size=(n, 4)).astype(np.float32) for m in ("a", "b")}
    post = {m: rng.dirichlet(np.ones(2), size=n) for m in ("a", "b")}
    labels = rng.integers(0, 3, n) if task == "classification" else rng.normal(size=n).astype(np.float32)
    return InferenceResult(np.array([f"s{i}" for i in range(n)]), labels, rng.normal(size=(n, out_dim)),
                           rng.normal(size=(n, 16)), ["unique:a", "unique:b", "common:a", "common:b"], feats,
                           {m: v + 1 for m, v in feats.items()}, post, np.zeros((out_dim, 16)), np.zeros(out_dim),
                           task)


def test_spaces_and_features():
    res = _result()
    assert efig.spaces(res) == ["unique:a", "unique:b", "common:a", "common:b"]
    np.testing.assert_array_equal(efig.space_features(res, "common:b"), res.common_pooled["b"])
    with pytest.raises(ValueError, match="unknown space"):
        efig.space_features(res, "fused:a")


def test_colour_values_per_choice():
    res = _result()
    values, cont = efig.colour_values(res, "error", "a")
    assert not cont and set(values) <= {"correct", "wrong"}
    assert (values == "correct").sum() == int((res.predictions == res.labels).sum())
    values, _ = efig.colour_values(res, "prototype", "b")
    assert list(values[:3]) == [f"prototype {k}" for k in res.posteriors["b"].argmax(1)[:3]]
    values, _ = efig.colour_values(res, "label", "a", ["zero", "one", "two"])
    assert set(values) <= {"zero", "one", "two"}
    reg = _result("regression")
    values, cont = efig.colour_values(reg, "error", "a")
    assert cont and np.allclose(values, np.abs(reg.outputs[:, 0] - reg.labels))


def test_scatter_is_svg_when_small_webgl_when_large():
    from app.figures.style import SVG_POINTS

    for n, kind in ((SVG_POINTS, go.Scatter), (SVG_POINTS + 1, go.Scattergl)):
        coords = np.random.default_rng(0).normal(size=(n, 2))
        fig = efig.scatter_figure(coords, np.arange(n) % 3, False, np.array(["x"] * n), np.arange(n), "t")
        assert {type(t) for t in fig.data} == {kind}
        proto = tfig.prototype_scatter(coords, np.ones((3, 2)), np.arange(n) % 3, np.full(3, 1 / 3), "u")
        assert {type(t) for t in proto.data[:-1]} == {kind}


def test_embeddings_charts_draw_at_most_max_drawn_points_together_all_svg():
    """Per chart: all samples up to most_shown(modalities), else a seeded sample of that many; the page's 3 points
    per modality for each sample drawn stay within MAX_DRAWN_POINTS, the joint chart within SVG markers."""
    from app.figures.style import SVG_POINTS

    assert efig.most_shown(3) == 1500
    for modalities in (1, 2, 3, 4, 7):
        most = efig.most_shown(modalities)
        assert 3 * modalities * most <= efig.MAX_DRAWN_POINTS < 3 * modalities * (most + 1)
        assert modalities * most <= SVG_POINTS
        np.testing.assert_array_equal(efig.shown_samples(most, modalities), np.arange(most))
        assert efig.shown_note(most, modalities) == ""
        rows = efig.shown_samples(most + 5, modalities)
        assert len(np.unique(rows)) == most and (np.diff(rows) > 0).all() and rows[-1] < most + 5
        np.testing.assert_array_equal(rows, efig.shown_samples(most + 5, modalities))  # seeded
        assert f"random {most:,} of the {most + 5:,} samples" in efig.shown_note(most + 5, modalities)


def test_scatter_has_row_customdata_per_category():
    res = _result()
    values, cont = efig.colour_values(res, "label", "a")
    rows = np.arange(len(res))
    fig = efig.scatter_figure(np.random.default_rng(1).normal(size=(30, 2)), values, cont,
                              efig.hover_texts(res, np.array(["t"] * 30)), rows, "t")
    assert all(type(t) is go.Scatter for t in fig.data)  # 30 points: SVG
    assert len(fig.data) == len(set(values))
    assert sorted(np.concatenate([t.customdata for t in fig.data]).tolist()) == rows.tolist()
    assert "id: s0<br>t" in fig.data[0].text or any("id: s0<br>t" in t.text for t in fig.data)
    cont_fig = efig.scatter_figure(np.zeros((30, 2)), np.arange(30.0), True, np.array(["x"] * 30), rows, "t")
    assert len(cont_fig.data) == 1 and cont_fig.data[0].marker.colorscale is not None


def test_selected_rows_reads_customdata():
    selection = {"points": [{"customdata": 4}, {"customdata": [2]}, {"customdata": 4}, {"x": 1.0}]}
    assert efig.selected_rows(selection).tolist() == [2, 4]
    assert efig.selected_rows(None).tolist() == []
    table = efig.sample_table(_result(), None, np.array([2, 4]))
    assert table["id"].tolist() == ["s2", "s4"] and list(table.columns) == ["id", "label", "prediction"]


@pytest.fixture(scope="module")
def view():
    gen = torch.Generator().manual_seed(0)
    protos = {m: Prototypes(torch.randn(k, 3, generator=gen, dtype=torch.float64),
                            torch.rand(k, 3, generator=gen, dtype=torch.float64) + 0.1,
                            torch.full((k,), 1.0 / k, dtype=torch.float64))
              for m, k in (("a", 3), ("b", 4), ("c", 2))}
    return solve_plan(protos, ModelConfig(ot_num_iters=500, ot_tol=1e-9), lambda_ot=0.2)


def test_plan_heatmap_z_equals_the_pair_plan_with_marginals(view):
    cost_fig, plan_fig = tfig.plan_figures(view, "a", "c")
    heat = next(t for t in plan_fig.data if isinstance(t, go.Heatmap))
    np.testing.assert_allclose(np.array(heat.z), view.pair_plans[("a", "c")])
    np.testing.assert_allclose(np.array(next(t for t in cost_fig.data if isinstance(t, go.Heatmap)).z),
                               view.pair_costs[("a", "c")])
    bars = [t for t in plan_fig.data if isinstance(t, go.Bar)]
    np.testing.assert_allclose(np.array(bars[0].y), view.marginals["c"], atol=1e-8)  # columns on top
    np.testing.assert_allclose(np.array(bars[1].x), view.marginals["a"], atol=1e-8)  # rows on the side
    flipped = tfig.plan_figures(view, "c", "a")[1]
    np.testing.assert_allclose(np.array(flipped.data[0].z), view.pair_plans[("a", "c")].T)


def test_sankey_nodes_and_link_values(view):
    order = ["b", "a", "c"]
    fig = tfig.sankey_figure(sankey_links(view, order), order)
    sankey = fig.data[0]
    assert isinstance(sankey, go.Sankey)
    assert len(sankey.node.label) == 3 + 4 + 2 and sankey.node.label[0] == "b 0"
    values = np.array(sankey.link.value)
    assert values.sum() == pytest.approx(len(order) - 1)  # each consecutive pair carries mass 1
    first = np.array([s < 4 for s in sankey.link.source])  # links leaving b's nodes
    assert values[first].sum() == pytest.approx(1.0)


def test_prototype_scatter_and_entropy_figure():
    fig = tfig.prototype_scatter(np.zeros((10, 2)), np.ones((3, 2)), np.arange(10) % 3, np.array([0.5, 0.3, 0.2]),
                                 "unique:a")
    assert [type(t) for t in fig.data] == [go.Scatter] * 4  # 10 samples: SVG markers
    assert list(fig.data[-1].text) == ["0", "1", "2"]
    # each numbered star has its samples' colour, so no legend is needed (none squeezes the narrow chart)
    assert list(fig.data[-1].marker.color) == [t.marker.color for t in fig.data[:3]]
    assert len({t.marker.color for t in fig.data[:3]}) == 3
    assert not any(t.showlegend is not False for t in fig.data)
    sweep = pd.DataFrame({"lambda_ot": [0.1, 1.0], "entropy": [1.0, 2.0], "transport_cost": [3.0, 4.0]})
    efig_ = tfig.entropy_figure(sweep, 0.1)
    assert len(efig_.data) == 2 and efig_.layout.xaxis.type == "log"


def test_many_point_scatters_keep_fixed_margins_without_automargin():
    """Streamlit's theme turns automargin on, which redraws a chart after measuring its ticks: the prototype
    and residual scatters switch it off on every axis and keep the margin numeric ticks need."""
    from app.figures import audit as audit_fig
    from app.figures.style import NUMERIC_AXES_MARGIN

    proto = tfig.prototype_scatter(np.zeros((10, 2)), np.ones((3, 2)), np.arange(10) % 3, np.full(3, 1 / 3), "u")
    result = _result("regression", n=12)
    residuals = audit_fig.residual_figure(result)
    for fig in (proto, residuals):
        layout = fig.to_plotly_json()["layout"]
        axes = [k for k in layout if k.startswith(("xaxis", "yaxis"))]
        assert sorted(axes) == ["xaxis", "yaxis"] and all(layout[k]["automargin"] is False for k in axes)
        assert layout["margin"] == NUMERIC_AXES_MARGIN
    # the same points as the audit report's own figure
    assert np.allclose(residuals.data[0].y, result.predictions.astype(float) - result.labels.astype(float))
    assert proto.layout.xaxis.title.text == "PC 1" and residuals.layout.yaxis.title.text == "prediction - label"


def test_level_figure_and_history():
    levels = pd.DataFrame({"level": ["mmd"] * 3, "scope": ["total", "a – b", "a – c"],
                           "kind": ["total", "pair", "pair"], "value": [0.5, 0.2, 0.3], "samples": 10})
    fig = afig.level_figure(levels, "mmd", None, "t")
    assert list(fig.data[0].y) == [0.5, 0.0] and fig.data[0].text[1] == "not recorded"
    assert list(fig.data[1].x) == ["a – b", "a – c"] and list(fig.data[1].y) == [0.2, 0.3]
    assert afig.training_value({"mmd": 0.7}, "mmd") == 0.7 and afig.training_value(None, "mmd") is None
    assert afig.training_value({"mmd": "x"}, "mmd") is None
    history = pd.DataFrame({"epoch": [2, 1, 1], "level": ["mmd"] * 3, "source": ["train", "train", "valid"],
                            "value": [0.1, 0.2, 0.3]})
    curve = afig.history_figure(history, "mmd")
    assert [t.name for t in curve.data] == ["train", "valid"] and list(curve.data[0].x) == [1, 2]
    assert afig.history_figure(history, "decoupling") is None


# The builders before app.figures.style.subplot_grid, on plotly's make_subplots and add_trace(row=, col=):
# the reference the faster builders must draw exactly.
def _matrix_with_make_subplots(matrix, row_marginal, col_marginal, a, b, title, outline):
    from plotly.subplots import make_subplots

    ka, kb = matrix.shape
    xs, ys = [f"{b} {k}" for k in range(kb)], [f"{a} {k}" for k in range(ka)]
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, shared_yaxes=True, column_widths=[0.8, 0.2],
                        row_heights=[0.22, 0.78], horizontal_spacing=0.02, vertical_spacing=0.03)
    fig.add_trace(go.Heatmap(z=matrix, x=xs, y=ys, colorscale="Blues", colorbar={"len": 0.7, "y": 0.38}, name=title,
                             hovertemplate="%{y} → %{x}: %{z:.4f}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Bar(x=xs, y=col_marginal, name=f"{b} marginal", marker_color="#888", showlegend=False),
                  row=1, col=1)
    fig.add_trace(go.Bar(y=ys, x=row_marginal, orientation="h", name=f"{a} marginal", marker_color="#888",
                         showlegend=False), row=2, col=2)
    for i, j in zip(*np.nonzero(outline)):
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line={"color": "#d62728", "width": 2},
                      row=2, col=1)
    fig.update_yaxes(title=f"{a} prototype", type="category", autorange="reversed", row=2, col=1)
    fig.update_xaxes(title=f"{b} prototype", type="category", row=2, col=1)
    fig.update_layout(title=title, height=400, margin={"l": 10, "r": 10, "t": 40, "b": 10})
    return fig


def _level_with_make_subplots(levels, level, train_value, title):
    from plotly.subplots import make_subplots

    rows = levels[levels.level == level]
    total = float(rows[rows.kind == "total"].value.iloc[0])
    parts = rows[rows.kind != "total"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.35, 0.65], horizontal_spacing=0.12,
                        subplot_titles=("total", "per modality" if level == "decoupling" else "per pair"))
    fig.add_trace(go.Bar(x=["current data", "training set"], y=[total, train_value], marker_color=["#1f77b4", "#aaaaaa"],
                         showlegend=False, text=[f"{total:.4g}", f"{train_value:.4g}"], textposition="outside",
                         hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=parts.scope.tolist(), y=parts.value.tolist(), marker_color="#1f77b4", showlegend=False,
                         hovertemplate="%{x}: %{y:.4g}<extra></extra>"), row=1, col=2)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(title=title, height=320, margin={"l": 10, "r": 10, "t": 60, "b": 10})
    return fig


def _drawn(fig: go.Figure) -> dict:
    """What plotly.js receives, without trace ordering of dictionary keys mattering."""
    import json

    return json.loads(fig.to_json())


def test_matrix_and_level_figures_draw_what_make_subplots_draws():
    rng = np.random.default_rng(3)
    matrix = rng.random((3, 4))
    rows_m, cols_m = matrix.sum(1), matrix.sum(0)
    outline = np.zeros((3, 4), dtype=bool)
    outline[[0, 1, 2], [2, 0, 3]] = True
    ours = tfig.matrix_figure(matrix, rows_m, cols_m, "text", "audio", "Plan text – audio", outline=outline)
    reference = _matrix_with_make_subplots(matrix, rows_m, cols_m, "text", "audio", "Plan text – audio", outline)
    assert _drawn(ours) == _drawn(reference)
    levels = pd.DataFrame({"level": ["decoupling"] * 3, "scope": ["total", "a", "b"],
                           "kind": ["total", "modality", "modality"], "value": [0.5, 0.2, 0.3], "samples": 10})
    assert _drawn(afig.level_figure(levels, "decoupling", 0.4, "t")) == _drawn(
        _level_with_make_subplots(levels, "decoupling", 0.4, "t"))


def test_subplot_grid_is_make_subplots_layout_and_cells():
    from plotly.subplots import make_subplots

    from app.figures.style import subplot_grid

    options = {"rows": 2, "cols": 3, "shared_yaxes": True, "column_widths": (0.5, 0.3, 0.2),
               "subplot_titles": ("a", "b", "c", "d", "e", "f")}
    fig, cells = subplot_grid(**options)
    plotly_fig = make_subplots(**{k: list(v) if isinstance(v, tuple) else v for k, v in options.items()})
    assert _drawn(fig)["layout"] == _drawn(plotly_fig)["layout"]
    for (r, c), cell in cells.items():
        axes = plotly_fig.get_subplot(r, c)
        assert (cell.xaxis, cell.yaxis) == (axes.xaxis.plotly_name, axes.yaxis.plotly_name)
    assert len(cells) == 6 and cells[(2, 3)].x == "x6"
    again, _ = subplot_grid(**options)
    again.update_layout(title="changed")
    assert subplot_grid(**options)[0].layout.title.text is None  # each call's figure is a new one
