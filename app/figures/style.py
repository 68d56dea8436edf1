"""What makes every chart of the dashboard readable: one class palette, epoch and class axes, short hashes.

- :data:`PALETTE`: 20 colours for categories (classes, modalities, prototypes). The first 10 are d3's
  category10; the next 10 were picked greedily for the largest CIE76 distance to those already chosen,
  among colours with at least 2:1 contrast on white. Every pair differs by at least Delta-E 27 (a pair of
  Delta-E 10 is already easy to tell apart), and none is pale (class 9 stays visible). Above 20
  categories colours would repeat: :func:`category_colours` returns None and the caller draws a
  continuous, legend-less scale instead.
- :func:`epoch_axis`: at most about 10 epoch ticks, whole numbers, whatever the number of epochs.
- :func:`class_axis`: a categorical axis with every class labelled (by name when the data names them).
- :func:`short_hash`: a 64-character fingerprint shortened for tables; the full value goes on hover.
- :func:`subplot_grid`: ``make_subplots``' layout, computed once per set of options.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import plotly.graph_objects as go

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#ff00ff", "#000000", "#000080", "#637939", "#ff1493", "#40004b", "#8a2be2", "#b03060",
           "#b8860b", "#003c30")
CONTINUOUS = "Viridis"
# Up to this many points a chart draws SVG markers, above it WebGL. Each WebGL chart costs the browser a
# drawing context, and without a GPU a software renderer: the Embeddings page's seven WebGL charts of the
# demo took 3.0 s to appear warm in headless Chromium here. SVG stays smooth at a few thousand points: 6,000
# held the Embeddings page's joint chart of three modalities at 2,000 samples (a third of
# embeddings.MAX_DRAWN_POINTS since). (At 2,000 that chart of 1,000 uploads drew WebGL, 0.4-0.9 s of the
# browser's time; with 6,000 the page opened again in 1.1-2.4 s, median 1.55 s, against 1.7-2.8 s, median
# 2.2 s, on a researcher's run: 3 alternating runs of 3 opens each.)
SVG_POINTS = 6000
MAX_EPOCH_TICKS = 10
HASH_CHARS = 10


def category_colours(categories: list) -> dict | None:
    """One distinct colour per category (in the given order), or None above ``len(PALETTE)`` of them."""
    if len(categories) > len(PALETTE):
        return None
    return {c: PALETTE[i] for i, c in enumerate(categories)}


def nice_step(span: float, max_ticks: int = MAX_EPOCH_TICKS) -> int:
    """The smallest step of 1, 2, 5, 10, 20, 50... that puts at most ``max_ticks`` ticks on ``span``."""
    if span <= max_ticks:
        return 1
    power = 10 ** math.floor(math.log10(span / max_ticks))
    for factor in (1, 2, 5, 10):
        if span / (factor * power) <= max_ticks:
            return factor * power
    return 10 * power


def epoch_axis(fig: go.Figure, epochs, **where) -> go.Figure:
    """Whole-number epoch ticks, at most about :data:`MAX_EPOCH_TICKS` of them, on every x axis (or the
    subplot named by ``row``/``col``)."""
    values = [int(e) for e in epochs] if epochs is not None else []
    lo, hi = (min(values), max(values)) if values else (1, 1)
    step = nice_step(hi - lo + 1)
    first = lo if step == 1 else int(math.ceil(lo / step) * step)
    fig.update_xaxes(title_text="epoch", tickmode="linear", tick0=first, dtick=step, tickformat="d", **where)
    return fig


def class_axis(fig: go.Figure, names: list[str], axis: str = "x", **where) -> go.Figure:
    """A categorical axis listing every class, in class order, each with its label."""
    update = fig.update_xaxes if axis == "x" else fig.update_yaxes
    update(type="category", tickmode="array", tickvals=list(names), ticktext=list(names),
           categoryorder="array", categoryarray=list(names), **where)
    return fig


def short_hash(value: str | None) -> str:
    """``"bba0cfc6b4…"``: the first :data:`HASH_CHARS` characters of a long fingerprint ("" for None)."""
    if not value:
        return ""
    value = str(value)
    return value if len(value) <= HASH_CHARS + 1 else value[:HASH_CHARS] + "…"


def compact_legend(fig: go.Figure, categories: int) -> go.Figure:
    """A legend that never squeezes the plot: horizontal under the chart, no scroll bar for up to 20."""
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.02, "xanchor": "left", "x": 0,
                              "itemsizing": "constant", "font": {"size": 11}})
    if categories > 10:
        fig.update_layout(height=(fig.layout.height or 420) + 20 * math.ceil((categories - 10) / 5))
    return fig


# Families of metrics that share a scale and a direction; each gets its own axis (or panel).
FAMILIES = {"loss": "loss", "MAE": "error (MAE, lower is better)", "Corr": "correlation"}
SCORES = "accuracy and F1 (0 to 1, higher is better)"


def metric_family(key: str) -> str:
    """The axis a metric belongs on: its loss, its error, its correlation, or the 0-1 scores."""
    return FAMILIES.get(key, SCORES)


def by_family(keys: list[str]) -> dict[str, list[str]]:
    """``keys`` grouped by :func:`metric_family`, scores first, each group in the given order."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys, key=lambda k: metric_family(k) != SCORES):
        groups.setdefault(metric_family(key), []).append(key)
    return groups


# Streamlit's chart theme turns plotly's automargin on for both axes: with tick labels shown, plotly measures
# them after drawing and draws the whole chart again to fit them, which costs a scatter of many points. Three
# 1,000-point prototype scatters took 590 ms of the browser's main thread instead of 900 ms without it
# (Chromium here). Numeric tick labels are short: a fixed margin fits them and the axis title.
NUMERIC_AXES_MARGIN = {"l": 64, "r": 10, "t": 40, "b": 48}


def fixed_margins(fig: go.Figure) -> go.Figure:
    """``fig`` with :data:`NUMERIC_AXES_MARGIN` and no automargin: for charts of many points whose axes are
    numeric (a category's name could be longer than the margin)."""
    fig.update_layout(margin=NUMERIC_AXES_MARGIN)
    fig.update_xaxes(automargin=False)
    fig.update_yaxes(automargin=False)
    return fig


def point_trace(n_points: int) -> type[go.Scatter | go.Scattergl]:
    """The scatter trace class for a chart of ``n_points`` markers: SVG up to ``SVG_POINTS``, else WebGL."""
    return go.Scatter if n_points <= SVG_POINTS else go.Scattergl


@dataclass(frozen=True)
class Cell:
    """One subplot's axes: ``x``/``y`` for a trace's ``xaxis``/``yaxis`` and a shape's refs, ``xaxis``/``yaxis``
    as layout keys."""

    x: str
    y: str

    @property
    def xaxis(self) -> str:
        return self.x.replace("x", "xaxis", 1)

    @property
    def yaxis(self) -> str:
        return self.y.replace("y", "yaxis", 1)


def subplot_grid(**options) -> tuple[go.Figure, dict[tuple[int, int], Cell]]:
    """A new figure laid out as ``plotly.subplots.make_subplots(**options)`` (list options as tuples), and each
    (row, col)'s :class:`Cell`. The layout is plotly's own, computed once per options: a make_subplots call
    took 18 ms (about 50 ms on a busy server, 0.3 s of the Prototypes page's warm run), a figure from the
    stored layout 1.7 ms."""
    layout, cells = _grid(tuple(sorted(options.items())))
    return go.Figure(layout=layout), cells


@functools.lru_cache(maxsize=32)
def _grid(options: tuple) -> tuple[dict, dict[tuple[int, int], Cell]]:
    from plotly.subplots import make_subplots

    fig = make_subplots(**{k: list(v) if isinstance(v, tuple) else v for k, v in options}, print_grid=False)
    layout = fig.layout.to_plotly_json()
    layout.pop("template", None)  # the default template is applied to every new figure anyway
    named = dict(options)
    cells = {}
    for r in range(1, named.get("rows", 1) + 1):
        for c in range(1, named.get("cols", 1) + 1):
            axes = fig.get_subplot(r, c)
            if axes is not None:
                cells[(r, c)] = Cell(axes.xaxis.plotly_name.replace("axis", ""),
                                     axes.yaxis.plotly_name.replace("axis", ""))
    return layout, cells
