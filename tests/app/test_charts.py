"""``app.charts``: the specification every chart is sent as (tests/app/test_browser_charts.py checks in Chromium
that it looks as Streamlit's theme draws it, and is drawn once)."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
from streamlit.testing.v1 import AppTest

from app.charts import chart_spec, looks, with_defaults


def _scatter(values: np.ndarray) -> go.Figure:
    fig = go.Figure(go.Scatter(x=values, y=values * 2, mode="markers", marker={"color": values.astype(int)},
                               customdata=np.arange(len(values))))
    fig.update_layout(title="points")
    return fig


def test_arrays_go_as_plain_lists_without_a_template():
    spec = chart_spec(_scatter(np.array([0.5, 1.5, 2.5])))
    trace = spec["data"][0]
    assert trace["x"] == [0.5, 1.5, 2.5] and trace["y"] == [1.0, 3.0, 5.0]
    assert trace["marker"]["color"] == [0, 1, 2] and trace["customdata"] == [0, 1, 2]
    assert "template" not in spec["layout"]
    assert json.loads(json.dumps(spec)) == spec  # nothing but JSON values: no typed array can come back


def test_heatmap_rows_and_dates_are_plain():
    heat = chart_spec(go.Figure(go.Heatmap(z=np.arange(6.0).reshape(2, 3))))
    assert heat["data"][0]["z"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    days = np.array(["2026-01-01", "2026-01-02"], dtype="datetime64[D]")
    dated = chart_spec(go.Figure(go.Scatter(x=days, y=[1, 2])))
    assert dated["data"][0]["x"] == ["2026-01-01", "2026-01-02"]


def test_data_revision_follows_the_data_only():
    first = chart_spec(_scatter(np.array([0.5, 1.5, 2.5])))["layout"]["datarevision"]
    same = chart_spec(_scatter(np.array([0.5, 1.5, 2.5])))["layout"]["datarevision"]
    moved = chart_spec(_scatter(np.array([0.5, 1.5, 2.75])))["layout"]["datarevision"]
    retitled = _scatter(np.array([0.5, 1.5, 2.5]))
    retitled.update_layout(title="another title")
    assert first == same == chart_spec(retitled)["layout"]["datarevision"]
    assert moved != first
    own = _scatter(np.array([0.5]))
    own.update_layout(datarevision="mine")
    assert chart_spec(own)["layout"]["datarevision"] == "mine"


def test_the_look_is_streamlits_and_the_figure_wins():
    fig = _scatter(np.array([1.0, 2.0]))
    fig.update_layout(paper_bgcolor="#123456", xaxis_showgrid=True, yaxis_title="own title")
    for theme in ("light", "dark"):
        look = looks()[theme]["layout"]
        layout = chart_spec(fig, theme)["layout"]
        assert layout["paper_bgcolor"] == "#123456" and layout["xaxis"]["showgrid"] is True
        assert layout["plot_bgcolor"] == look["plot_bgcolor"] and layout["font"] == look["font"]
        assert layout["yaxis"]["title"]["text"] == "own title"
        assert layout["yaxis"]["title"]["font"] == look["yaxis"]["title"]["font"]
        assert layout["title"]["font"]["weight"] == "bold" and layout["title"]["text"] == "points"
        assert layout["colorway"] == look["colorway"]
    assert looks()["light"]["layout"]["font"]["color"] != looks()["dark"]["layout"]["font"]["color"]


def test_trace_defaults_by_type():
    spec = chart_spec(go.Figure([go.Heatmap(z=[[1, 2]]), go.Heatmap(z=[[1, 2]], colorscale="Viridis")]))
    assert spec["data"][0]["colorscale"] == looks()["light"]["data"]["heatmap"]["colorscale"]
    assert spec["data"][1]["colorscale"][0] == [0.0, "#440154"]  # the figure's own (Viridis), not the look's


def test_axis_switches_follow_plotlys_defaults():
    names = ["a", "b"]
    heat = chart_spec(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]], x=names, y=names)))["layout"]
    assert heat["xaxis"]["ticks"] == heat["yaxis"]["ticks"] == "outside"  # a 2-D map's axes have outer ticks
    scatter = chart_spec(_scatter(np.array([1.0, 2.0])))["layout"]
    assert scatter["xaxis"]["ticks"] == scatter["yaxis"]["ticks"] == ""  # the look's tick colour alone: none
    assert scatter["yaxis"]["showgrid"] is True and scatter["yaxis"]["zeroline"] is True
    across = chart_spec(go.Figure(go.Bar(y=names, x=[1, 2], orientation="h")))["layout"]
    assert across["yaxis"]["showgrid"] is False and across["yaxis"]["zeroline"] is False  # categories on y
    upright = chart_spec(go.Figure(go.Bar(x=names, y=[1, 2])))["layout"]
    assert upright["yaxis"]["showgrid"] is True
    counts = chart_spec(go.Figure(go.Histogram(y=[1.0, 2.0, 2.0])))["layout"]  # y alone: a horizontal histogram
    assert counts["yaxis"]["showgrid"] is False
    styled = go.Figure(go.Bar(y=names, x=[1, 2], orientation="h"))
    styled.update_yaxes(tickcolor="red", gridcolor="blue")
    own = chart_spec(styled)["layout"]["yaxis"]
    assert own["ticks"] == "outside" and own["showgrid"] is True and own["tickcolor"] == "red"


def test_subplot_and_colour_axes_get_the_axis_look():
    fig = go.Figure([go.Heatmap(z=[[1, 2]], coloraxis="coloraxis"),
                     go.Scatter(x=[1, 2], y=[3, 4], xaxis="x2", yaxis="y2")])
    fig.update_layout(xaxis2={"anchor": "y2"}, yaxis2={"anchor": "x2"})
    layout = chart_spec(fig)["layout"]
    look = looks()["light"]["layout"]
    assert layout["coloraxis"]["colorbar"] == look["coloraxis"]["colorbar"]
    assert layout["xaxis2"]["tickfont"] == look["xaxis"]["tickfont"] and layout["xaxis2"]["anchor"] == "y2"
    assert layout["xaxis"]["ticks"] == "outside" and layout["xaxis2"]["ticks"] == ""
    flows = chart_spec(go.Figure(go.Sankey(node={"label": ["a", "b"]},
                                           link={"source": [0], "target": [1], "value": [1]})))["layout"]
    assert "xaxis" not in flows and "yaxis" not in flows  # no axes for a figure without cartesian traces


def test_selection_settings_as_streamlit_sets_them():
    fig = _scatter(np.array([1.0]))
    assert {"clickmode", "dragmode", "hovermode"}.isdisjoint(chart_spec(fig)["layout"])
    points = chart_spec(fig, selection_modes=("points", "box", "lasso"))["layout"]
    assert (points["clickmode"], points["dragmode"], points["hovermode"]) == ("event+select", "pan", "closest")
    box = chart_spec(fig, selection_modes=("box", "lasso"))["layout"]
    assert (box["clickmode"], box["dragmode"]) == ("event", "select")  # dragging selects: clicks only report
    fig.update_layout(dragmode="zoom", hovermode="x")
    zoom = chart_spec(fig, selection_modes=("points",))["layout"]
    assert (zoom["clickmode"], zoom["dragmode"], zoom["hovermode"]) == ("event+select", "zoom", "x")
    fig.update_layout(dragmode="lasso", clickmode="event+select")  # the figure's click mode gives way, as there
    lasso = chart_spec(fig, selection_modes=("points", "box", "lasso"))["layout"]
    assert (lasso["clickmode"], lasso["dragmode"]) == ("event", "lasso")


def test_with_defaults_merges_nested_values_and_changes_neither_argument():
    defaults = {"a": {"b": 1, "c": 2}, "d": 3}
    values = {"a": {"b": 10}, "e": 5}
    assert with_defaults(values, defaults) == {"a": {"b": 10, "c": 2}, "d": 3, "e": 5}
    assert defaults == {"a": {"b": 1, "c": 2}, "d": 3} and values == {"a": {"b": 10}, "e": 5}


def _page() -> None:
    import numpy as np
    import plotly.graph_objects as go

    from app import charts

    fig = go.Figure(go.Scatter(x=np.array([1.0, 2.0]), y=np.array([3.0, 4.0])))
    charts.show(fig, key="points", on_select="rerun", selection_mode=("points", "lasso"))
    charts.show(fig, key="plain")


def test_show_sends_the_finished_specification_through_streamlit():
    at = AppTest.from_function(_page).run()
    assert not at.exception
    selectable, plain = at.get("plotly_chart")
    for element in (selectable, plain):
        spec = json.loads(element.proto.spec)
        assert "template" not in spec["layout"] and spec["data"][0]["x"] == [1.0, 2.0]
        assert element.proto.theme == ""  # Streamlit's theme is in the specification already
    assert json.loads(selectable.proto.spec)["layout"]["clickmode"] == "event+select"
    assert "clickmode" not in json.loads(plain.proto.spec)["layout"]
    assert list(selectable.proto.selection_mode) and not list(plain.proto.selection_mode)
