"""Embedding figures: 2-D scatter plots of projected features, coloured by a chosen property.

Every point carries its row index in ``customdata`` so a lasso or box selection maps back to samples.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.checkpoint import ModelCard
from decalign.explain.slices import result_errors
from decalign.inference import InferenceResult
from decalign.safe_output import plotly_text

from .style import CONTINUOUS, category_colours, compact_legend, point_trace

COLOUR_BY = ("modality", "label", "prediction", "error", "prototype")
# WebGL draws 10^5 points smoothly; above this, markers get smaller and more transparent.
DENSE_POINTS = 5000
# Points the Embeddings page's charts draw together at most: a unique and a common chart per modality and the
# joint chart of every modality's common features, so 3 points per modality for each sample drawn (all SVG,
# style.SVG_POINTS). A colour change redraws them all and the browser's time grows with their number: on 20,000
# samples of three modalities (headless Chromium here, the median of 8 colour changes that redraw, two runs each)
# 9,000 points took 1.19-1.26 s, 13,500 1.63-1.67 s, 18,000 (2,000 samples a chart until stop 52) 2.42-3.07 s.
MAX_DRAWN_POINTS = 13_500


def spaces(result: InferenceResult) -> list[str]:
    """Names of the projected spaces: ``unique:<m>`` then ``common:<m>`` for every modality."""
    return [f"unique:{m}" for m in result.unique_pooled] + [f"common:{m}" for m in result.common_pooled]


def common_features(result: InferenceResult) -> dict[str, np.ndarray]:
    """The aligned common space: the distribution encoders' outputs, where moment matching and MMD pull
    the modalities together (the pooled common features themselves are never aligned by a loss). A
    result without them (an old cache) falls back to the pooled common features."""
    return result.distribution if result.distribution else result.common_pooled


def space_features(result: InferenceResult, space: str) -> np.ndarray:
    """(N, d) features of ``space``: "unique:<m>" (pooled unique features) or "common:<m>" (the
    distribution encoder's output, :func:`common_features`)."""
    part, _, modality = space.partition(":")
    table = {"unique": result.unique_pooled, "common": common_features(result)}.get(part)
    if table is None or modality not in table:
        raise ValueError(f"unknown space {space!r}; expected one of {spaces(result)}")
    return table[modality]


def category_order(result: InferenceResult, by: str, class_names: list[str] | None, modalities: list[str]
                   ) -> list | None:
    """The legend order of a categorical colouring: classes by index, modalities in model order."""
    if by in ("label", "prediction") and result.task == "classification":
        k = result.outputs.shape[1]
        return [class_names[i] if class_names and i < len(class_names) else str(i) for i in range(k)]
    if by == "modality":
        return list(modalities)
    if by == "error" and result.task == "classification":
        return ["correct", "wrong"]
    return None


def colour_values(result: InferenceResult, by: str, modality: str | None,
                  class_names: list[str] | None = None, card: ModelCard | None = None) -> tuple[np.ndarray, bool]:
    """(N,) values to colour the samples by, and whether they are continuous (else categories).

    ``error``: "correct"/"wrong" for classification; for regression the card's error (``result_errors``),
    |prediction - label| without a card. ``prototype``:
    the most probable training prototype of ``modality`` (argmax of the posteriors). Values that are not
    available (no labels, no prototypes) are "n/a".
    """
    n = len(result)
    regression = result.task == "regression"
    if by == "modality":
        return np.full(n, modality or "all", dtype=object), False
    if by == "prediction":
        return (result.predictions.astype(float), True) if regression else (_names(result.predictions, class_names), False)
    if by == "prototype":
        if result.posteriors is None or modality not in result.posteriors:
            return np.full(n, "n/a", dtype=object), False
        return np.array([f"prototype {k}" for k in result.posteriors[modality].argmax(1)], dtype=object), False
    if result.labels is None:
        return np.full(n, "n/a", dtype=object), False
    if by == "label":
        return (result.labels.astype(float), True) if regression else (_names(result.labels, class_names), False)
    if by == "error":
        if regression:
            if card is not None:
                return result_errors(result, card)["error"].to_numpy(dtype=float), True
            return np.abs(result.predictions - result.labels).astype(float), True
        return np.where(result.predictions == result.labels, "correct", "wrong").astype(object), False
    raise ValueError(f"colour_by must be one of {COLOUR_BY}, found {by!r}")


def _names(values: np.ndarray, class_names: list[str] | None) -> np.ndarray:
    return np.array([class_names[int(v)] if class_names and int(v) < len(class_names) else str(int(v))
                     for v in values], dtype=object)


def hover_texts(result: InferenceResult, raw_text: np.ndarray | None, max_chars: int = 120) -> np.ndarray:
    """(N,) hover text: sample id and, when the data has it, the raw text (shortened)."""
    texts = [f"id: {plotly_text(i)}" for i in result.ids]  # ids and text from the file: escaped
    if raw_text is not None:
        texts = [t + "<br>" + plotly_text(_short(str(r), max_chars)) for t, r in zip(texts, raw_text)]
    return np.array(texts, dtype=object)


def _short(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def most_shown(modalities: int) -> int:
    """Samples each chart draws at most for a model of ``modalities`` modalities (see MAX_DRAWN_POINTS)."""
    return MAX_DRAWN_POINTS // (3 * max(1, modalities))


def shown_samples(n: int, modalities: int, seed: int = 0) -> np.ndarray:
    """Sorted rows of the samples the charts draw: all ``n`` up to :func:`most_shown`, else a seeded random
    sample of that many (the same in every chart)."""
    most = most_shown(modalities)
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def shown_note(n: int, modalities: int) -> str:
    """What the charts leave out, in words; "" when they draw every sample."""
    most = most_shown(modalities)
    if n <= most:
        return ""
    return (f"The charts draw a random {most:,} of the {n:,} samples (seed 0, the same samples in "
            "every chart) so that the browser redraws them quickly; the projections and the numbers use all of "
            "them, and a selection lists the points drawn.")


def scatter_figure(coords: np.ndarray, colour: np.ndarray, continuous: bool, hover: np.ndarray,
                   rows: np.ndarray, title: str, colour_title: str = "", order: list | None = None) -> go.Figure:
    """Scatter of (N, 2) ``coords`` (SVG or WebGL by size, ``style.point_trace``); one trace per category
    with its own colour of the class palette (``order``: the categories' order, default natural), or one
    trace with a colour bar for continuous values and for more categories than the palette has colours
    (legend-less; hover names the category).

    ``rows`` (N,) are written to ``customdata`` so selections can be mapped back (see
    :func:`selected_rows`).
    """
    n = len(coords)
    trace = point_trace(n)
    marker = {"size": 4 if n > DENSE_POINTS else 6, "opacity": 0.6 if n > DENSE_POINTS else 0.85}
    fig = go.Figure()
    categories = None if continuous else [*(order or []), *(v for v in natural_order(colour) if v not in (order or []))]
    colours = None if continuous else category_colours(categories)
    if colours is None:
        codes = colour if continuous else np.array([categories.index(v) for v in colour])
        bar = {"title": colour_title} if continuous else {"title": f"{colour_title} (index)"}
        text = hover if continuous else np.array([f"{h}<br>{colour_title}: {plotly_text(v)}"
                                                  for h, v in zip(hover, colour)], dtype=object)
        fig.add_trace(trace(x=coords[:, 0], y=coords[:, 1], mode="markers", customdata=rows,
                            text=text, hovertemplate="%{text}<extra></extra>", showlegend=False,
                            marker={**marker, "color": codes, "colorscale": CONTINUOUS, "colorbar": bar}))
    else:
        for value in categories:
            mask = colour == value
            if not mask.any():
                continue
            fig.add_trace(trace(x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=plotly_text(value),
                                customdata=rows[mask], text=hover[mask], marker={**marker, "color": colours[value]},
                                hovertemplate="%{text}<extra>" + plotly_text(value) + "</extra>"))
        compact_legend(fig, len(categories))
    fig.update_layout(title=title, height=fig.layout.height or 440, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      dragmode="lasso")
    fig.update_xaxes(showticklabels=False, title=None)
    fig.update_yaxes(showticklabels=False, title=None)
    return fig


def natural_order(values: np.ndarray) -> list:
    """Distinct values in natural order: "digit 2" before "digit 10", "prototype 9" before "prototype 10"."""
    def key(v):
        text = str(v)
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
    return sorted(set(np.asarray(values).tolist()), key=key)


def selected_rows(selection) -> np.ndarray:
    """Row indices picked in a chart, from Streamlit's plotly selection state (or a plain dict).

    Reads ``selection["points"][*]["customdata"]`` (a scalar or a one-element list); unique, sorted.
    """
    if not selection:
        return np.array([], dtype=int)
    points = selection.get("points", []) if hasattr(selection, "get") else []
    rows = []
    for point in points:
        data = point.get("customdata") if hasattr(point, "get") else None
        if isinstance(data, (list, tuple)):
            data = data[0] if data else None
        if data is not None:
            rows.append(int(data))
    return np.unique(np.array(rows, dtype=int))


def sample_table(result: InferenceResult, raw_text: np.ndarray | None, rows: np.ndarray,
                 class_names: list[str] | None = None) -> pd.DataFrame:
    """The selected samples: id, label, prediction (and raw text when there is some)."""
    frame = pd.DataFrame({"id": result.ids[rows].astype(str)})
    if result.labels is not None:
        frame["label"] = colour_values(result, "label", None, class_names)[0][rows]
    frame["prediction"] = colour_values(result, "prediction", None, class_names)[0][rows]
    if raw_text is not None:
        frame["text"] = raw_text[rows]
    return frame
