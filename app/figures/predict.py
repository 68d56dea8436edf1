"""Predict page: the predictions table, its filters and the summary figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from decalign.checkpoint import ModelCard
from decalign.data import Split
from decalign.explain.slices import result_errors
from decalign.inference import InferenceResult
from decalign.safe_output import plotly_text
from decalign.train.metrics import confusion_matrix

from .overview import class_labels
from .style import class_axis, point_trace


def predictions_frame(result: InferenceResult, split: Split, card: ModelCard,
                      class_names: list[str] | None = None) -> pd.DataFrame:
    """One row per sample: id, raw text (if any), prediction, label, error, p_label, probability.

    ``error`` (and for classification ``p_label``, the probability given to the true label) is the card's
    one definition (``decalign.explain.slices.result_errors``); ``probability`` is the predicted class's.
    With ``class_names`` the prediction and label columns show the names and ``prediction_index`` /
    ``label_index`` keep the class numbers.
    """
    frame = pd.DataFrame({"id": result.ids})
    if split.raw_text is not None:
        frame["text"] = split.raw_text
    named = class_names and result.task == "classification"
    frame["prediction"] = _named(result.predictions, class_names) if named else result.predictions
    if result.labels is not None:
        frame["label"] = _named(result.labels, class_names) if named else result.labels
        errors = result_errors(result, card)
        for column in errors.columns:
            frame[column] = errors[column].to_numpy()
    if result.probabilities is not None:
        frame["probability"] = result.probabilities.max(1)
    if named:
        frame["prediction_index"] = result.predictions
        if result.labels is not None:
            frame["label_index"] = result.labels
    return frame


def _named(values: np.ndarray, names: list[str]) -> np.ndarray:
    return np.array([names[int(v)] if 0 <= int(v) < len(names) else str(int(v)) for v in values], dtype=object)


def filter_frame(frame: pd.DataFrame, *, error_range: tuple[float, float] | None = None,
                 labels: list | tuple[float, float] | None = None,
                 predictions: list | tuple[float, float] | None = None) -> pd.DataFrame:
    """Rows whose error lies in ``error_range`` and whose label/prediction passes its filter.

    A list keeps the listed values (classes); a tuple ``(low, high)`` keeps the closed range (regression);
    None or an empty list keeps everything.
    """
    keep = np.ones(len(frame), dtype=bool)
    if error_range is not None and "error" in frame:
        keep &= frame["error"].between(*error_range).to_numpy()
    for column, rule in (("label", labels), ("prediction", predictions)):
        if column not in frame or rule is None or (isinstance(rule, list) and not rule):
            continue
        values = frame[column]
        keep &= (values.between(*rule) if isinstance(rule, tuple) else values.isin(rule)).to_numpy()
    return frame[keep]


def summary_figure(frame: pd.DataFrame, task: str, num_classes: int | None = None,
                   class_names: list[str] | None = None) -> go.Figure:
    """Confusion matrix (classification) or prediction-vs-label scatter (regression) of the given rows;
    a histogram of predictions when there are no labels."""
    if "label" not in frame:
        fig = go.Figure(go.Histogram(x=frame["prediction"], nbinsx=30))
        fig.update_layout(title="Predictions", xaxis_title="prediction", yaxis_title="samples")
    elif task == "classification":
        pred, label = (("prediction_index", "label_index") if "label_index" in frame else ("prediction", "label"))
        k = num_classes or int(max(frame[label].max(), frame[pred].max())) + 1
        matrix = confusion_matrix(frame[pred].to_numpy(), frame[label].to_numpy(), k)
        names = class_labels(k, class_names)
        fig = go.Figure(go.Heatmap(z=matrix, x=names, y=names, colorscale="Blues", text=matrix,
                                   texttemplate="%{text}", hovertemplate="label %{y}, predicted %{x}: %{z}"
                                   "<extra></extra>"))
        fig.update_layout(title="Confusion matrix", xaxis_title="predicted", yaxis_title="label")
        class_axis(fig, names, "x")
        class_axis(fig, names, "y", autorange="reversed")
    else:
        trace = point_trace(len(frame))
        fig = go.Figure(trace(x=frame["label"], y=frame["prediction"], mode="markers",
                              text=[plotly_text(i) for i in frame["id"]], marker={"size": 5, "opacity": 0.6}))
        lo = float(min(frame["label"].min(), frame["prediction"].min())) if len(frame) else 0.0
        hi = float(max(frame["label"].max(), frame["prediction"].max())) if len(frame) else 1.0
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line={"dash": "dash", "color": "grey"}))
        fig.update_layout(title="Prediction against label", xaxis_title="label", yaxis_title="prediction",
                          showlegend=False)
    fig.update_layout(height=420, margin={"t": 50, "b": 40})
    return fig
