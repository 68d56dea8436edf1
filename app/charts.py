"""Every chart of the dashboard is shown by :func:`show`: in Streamlit's look, and drawn once by the browser.

Streamlit's plotly element draws a chart before its width is known (hidden), then re-themes the figure and
hands plotly a fresh JSON copy of it at the measured width. Plotly's ``react`` redraws the whole chart when
the copy differs from what it drew, and it compares two parts by identity, which a copy never keeps:

- ``layout.template`` (a value of type "any"), which Streamlit's theme always adds;
- typed arrays, which plotly.py makes of every numpy array. Only plain arrays are left alone, and only while
  ``layout.datarevision`` stays the same.

So every chart was drawn twice in full (a minimal page of seven 1,000-point scatters in this Chromium: the second
drawing took 0.35-0.5 s more of the browser's main thread). Here the figure reaches the browser as a finished
specification: Streamlit's chart theme already applied (its bold titles as a bold font rather than ``<b>`` tags) as the figure's own values (``figures/streamlit_look.json``:
Streamlit 1.67's theme, light and dark, as its browser side resolves it), every array as a list,
``datarevision`` a fingerprint of the traces, and the selection settings Streamlit would add already set. The
re-theme then changes nothing, and plotly only restyles the drawn chart (it no longer shows).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

LOOK_FILE = Path(__file__).parent / "figures" / "streamlit_look.json"
# Layout keys that Streamlit's theme styles under its template's "xaxis", "yaxis" and "coloraxis" (every axis
# of a figure with subplots, as a plotly template does).
TEMPLATED_KEYS = re.compile(r"^(xaxis|yaxis|coloraxis)\d*$")
# Trace types that draw on x and y axes: a figure of them gets the themed axes even if it names none.
CARTESIAN = frozenset({"scatter", "scattergl", "bar", "heatmap", "histogram", "histogram2d", "waterfall", "box",
                       "violin", "contour"})
# Plotly's trace traits that change an axis's defaults: "2dMap" traces give their axes outer ticks, "oriented"
# ones take the grid off their category axis.
TWO_D_MAP = frozenset({"heatmap", "contour", "histogram2d", "histogram2dcontour", "contourcarpet"})
ORIENTED = frozenset({"bar", "histogram", "box", "violin", "waterfall", "funnel"})


# Streamlit sets a chart's width to what it measures of its container (e.g. 262.65625 px in a third of a row) after
# plotly's first, hidden drawing took the width from the computed style ("262.656px"): plotly then drew the whole
# chart again. A container of a whole number of pixels reads the same both ways (the rule is ignored where a browser
# lacks CSS round(): the chart is then drawn twice, as before).
WHOLE_PIXEL_CHART_CSS = ('[data-testid="stElementContainer"]:has(> [data-testid="stFullScreenFrame"] > .stPlotlyChart)'
                         ' { width: round(down, 100%, 1px) !important; }')


def whole_pixel_chart_widths() -> None:
    """Make every chart's container a whole number of pixels wide (:data:`WHOLE_PIXEL_CHART_CSS`); once a run. A
    style alone goes to Streamlit's event container and takes no room on the page."""
    st.html(f"<style>{WHOLE_PIXEL_CHART_CSS}</style>")


@functools.cache
def looks() -> dict[str, dict]:
    """Streamlit's chart theme by theme type ("light", "dark"): ``layout`` and per-trace-type ``data`` defaults."""
    return json.loads(LOOK_FILE.read_text())


def theme_type() -> str:
    """The browser's theme ("light" or "dark"), as Streamlit reports it for this run; light when unknown."""
    return "dark" if st.context.theme.type == "dark" else "light"  # None outside a browser (AppTest)


def show(fig: go.Figure, *, key: str, **options: Any):
    """``st.plotly_chart(fig, key=key, ...)``, drawn once (see the module's note); returns what it returns."""
    return show_in(st, fig, key=key, **options)


def show_in(where: Any, fig: go.Figure, *, key: str, selection_mode: Iterable[str] = (), **options: Any):
    """``where.plotly_chart(fig, key=key, ...)`` in a container (``st``, a column, a tab), drawn once."""
    modes = tuple(selection_mode) if options.get("on_select", "ignore") != "ignore" else ()
    spec = chart_spec(fig, theme_type(), modes)
    if modes:
        options["selection_mode"] = modes
    return where.plotly_chart(_Finished(spec), key=key, theme=None, **options)


def chart_spec(fig: go.Figure, theme: str = "light", selection_modes: tuple[str, ...] = ()) -> dict:
    """The specification :func:`show` sends for ``fig``: plain lists, Streamlit's ``theme`` look as the figure's
    own defaults (the figure's values win), a data fingerprint and the selection settings."""
    look = looks()[theme]
    fingerprint = hashlib.blake2b(digest_size=8)
    data = [_themed_trace(plain(trace.to_plotly_json(), fingerprint), look["data"]) for trace in fig.data]
    layout = plain(fig.layout.to_plotly_json())
    layout.pop("template", None)
    layout = with_defaults(layout, _layout_look(look["layout"], layout, data))
    layout.setdefault("datarevision", fingerprint.hexdigest())
    layout.update(_selection_settings(selection_modes, layout))
    spec = {"data": data, "layout": layout}
    if fig.frames:
        spec["frames"] = [plain(frame.to_plotly_json()) for frame in fig.frames]
    return spec


def plain(value: Any, fingerprint: Any = None) -> Any:
    """``value`` with every numpy array made a list (dates as ISO strings), fed to ``fingerprint`` on the way."""
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            if fingerprint is not None:
                fingerprint.update(str(name).encode())
            out[name] = plain(item, fingerprint)
        return out
    if isinstance(value, (list, tuple)):
        return [plain(item, fingerprint) for item in value]
    if isinstance(value, np.ndarray):
        return _array_list(value, fingerprint)
    if fingerprint is not None:
        fingerprint.update(repr(value).encode())
    return value


def _array_list(array: np.ndarray, fingerprint: Any) -> list:
    if array.dtype.kind == "M":
        array = np.datetime_as_string(array)
    listed = array.tolist()
    if fingerprint is not None:
        fingerprint.update(f"{array.dtype.str}{array.shape}".encode())
        fingerprint.update(array.tobytes() if array.dtype.kind in "biufc" else repr(listed).encode())
    return listed


def with_defaults(values: dict, defaults: dict) -> dict:
    """``values`` over ``defaults``, nested dictionaries merged (neither argument is changed)."""
    merged = dict(defaults)
    for name, value in values.items():
        default = merged.get(name)
        merged[name] = with_defaults(value, default) if isinstance(value, dict) and isinstance(default, dict) \
            else value
    return merged


def _themed_trace(trace: dict, trace_looks: dict) -> dict:
    look = trace_looks.get(trace.get("type", "scatter"))
    return with_defaults(trace, look) if look else trace


def _layout_look(layout_look: dict, layout: dict, data: list[dict]) -> dict:
    """The theme's layout for this figure: its axis and colour-axis styles under every such key it has."""
    look = {name: value for name, value in layout_look.items() if not TEMPLATED_KEYS.match(name)}
    keys = {name for name in layout if TEMPLATED_KEYS.match(name)}
    keys |= {ref for trace in data for ref in (trace.get("coloraxis"), (trace.get("marker") or {}).get("coloraxis"))
             if isinstance(ref, str)}
    if any(trace.get("type", "scatter") in CARTESIAN for trace in data):
        keys |= {"xaxis", "yaxis"}
    for name in keys:
        style = layout_look.get(re.sub(r"\d+$", "", name))
        if style is not None:
            look[name] = {**style, **_axis_switches(name, layout.get(name) or {}, data)} if name[1:5] == "axis" \
                else style
    return look


def _axis_switches(name: str, own: dict, data: list[dict]) -> dict:
    """Whether axis ``name`` shows ticks, grid and zero line, as plotly decides under Streamlit's template.

    A style given in a template does not switch its part on, but the same style given in the figure does: a
    tick colour turns ticks on, a grid colour the grid. The look's colours are the figure's own values here,
    so the switches are set explicitly to what plotly would have chosen from the figure's own values alone."""
    def set_by_figure(*styles: str) -> bool:
        return any(own.get(style) is not None for style in styles)

    traces = [trace for trace in data if _axis_key(trace, name[0]) == name]
    map_2d = any(trace.get("type") in TWO_D_MAP for trace in traces)
    category_of_oriented = any(trace.get("type") in ORIENTED and _category_letter(trace) == name[0]
                               for trace in traces)
    switches = {"ticks": "outside" if map_2d or set_by_figure("ticklen", "tickwidth", "tickcolor") else ""}
    if name[0] == "y":  # the x axes' grid and zero line are off in the look itself
        switches["showgrid"] = not category_of_oriented or set_by_figure("gridcolor", "gridwidth", "griddash")
        switches["zeroline"] = not category_of_oriented or set_by_figure("zerolinecolor", "zerolinewidth")
    return switches


def _axis_key(trace: dict, letter: str) -> str:
    """The layout key of the ``letter`` ("x" or "y") axis a cartesian trace is drawn on ("xaxis", "yaxis2")."""
    return letter + "axis" + str(trace.get(letter + "axis") or letter)[1:]


def _category_letter(trace: dict) -> str:
    """The axis of an oriented trace's categories: y for horizontal ones, x otherwise. Plotly's default
    orientation: a histogram of y values alone is horizontal, and so is any other such trace of x values alone."""
    alone = "y" if trace.get("type") == "histogram" else "x"
    given = {letter for letter in "xy" if letter in trace}
    orientation = trace.get("orientation") or ("h" if given == {alone} else "v")
    return "y" if orientation == "h" else "x"


def _selection_settings(modes: tuple[str, ...], layout: dict) -> dict:
    """What Streamlit's chart sets when it mounts with selections on (setting it again would redraw the chart):
    the figure's own drag and hover modes, else its defaults, and always the click mode that goes with the drag
    mode, which Streamlit sets over the figure's own: "event" when dragging selects (box, lasso), so that a click
    reports a point without selecting it, else "event+select" with point selections, else "none"."""
    if not modes:
        return {}
    points = "points" in modes
    drag = layout.get("dragmode") or ("pan" if points else "select" if "box" in modes
                                      else "lasso" if "lasso" in modes else "pan")
    click = "event" if drag in ("select", "lasso") else "event+select" if points else "none"
    return {"clickmode": click, "hovermode": layout.get("hovermode") or "closest", "dragmode": drag}


class _Finished(go.Figure):
    """A finished specification for ``st.plotly_chart``, which asks a plotly figure only for ``to_dict()`` (a
    dictionary it would rebuild as a figure, adding the default template and typed arrays back)."""

    def __init__(self, spec: dict) -> None:  # go.Figure's own set-up is skipped: none of it is used
        self.__dict__["_spec"] = spec

    def to_dict(self) -> dict:
        return self._spec
