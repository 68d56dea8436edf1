"""Unit tests of the Overview, Predict and Sample figure builders (no Streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion

from app.figures import overview, predict, sample
from decalign.checkpoint import ModelCard
from decalign.config import DecAlignConfig
from decalign.data import Split
from decalign.explain import branch_contributions
from decalign.explain.story import plan_cells
from decalign.inference import InferenceResult
from decalign.train.runs import read_history, write_history


@pytest.fixture
def result() -> InferenceResult:
    rng = np.random.default_rng(0)
    n, d, names = 40, 3, ["unique:a", "unique:b", "common:a", "common:b"]
    h = rng.normal(size=(n, 4 * d)).astype(np.float32)
    w, b = rng.normal(size=(4, 4 * d)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    labels = rng.integers(0, 4, n)
    return InferenceResult(np.array([f"s{i}" for i in range(n)]), labels, h @ w.T + b, h, names, {}, {}, None,
                           w, b, "classification")


def test_waterfall_total_is_the_head_output(result):
    row = 5
    frame = branch_contributions(result, row)
    fig = sample.waterfall_figure(frame, "logit")
    trace = fig.data[0]
    assert list(trace.measure) == ["relative"] * 5 + ["total"]
    k = int(result.outputs[row].argmax())
    assert trace.y[-1] == pytest.approx(float(result.outputs[row, k]), abs=1e-4)
    assert list(trace.x[:-1]) == ["unique:a", "unique:b", "common:a", "common:b", "bias"]


def _card(task: str, **fields) -> ModelCard:
    return ModelCard(config=DecAlignConfig(), widths={"a": 2, "b": 2}, task=task,
                     output_dim=4 if task == "classification" else 1, **fields)


def test_predictions_frame_errors_and_probabilities(result):
    split = Split({}, result.labels, result.ids, raw_text=np.array([f"t{i}" for i in range(40)]))
    frame = predict.predictions_frame(result, split, _card("classification"))
    assert list(frame.columns) == ["id", "text", "prediction", "label", "error", "p_label", "probability"]
    logits = result.outputs.astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # the one error: 0/1 misclassification, as the Audit page and the CLI; p(label) beside it
    np.testing.assert_array_equal(frame["error"], (logits.argmax(1) != result.labels).astype(float))
    np.testing.assert_allclose(frame["p_label"], probs[np.arange(40), result.labels], atol=1e-6)
    np.testing.assert_allclose(frame["probability"], probs.max(1), atol=1e-6)
    np.testing.assert_array_equal(frame["prediction"], logits.argmax(1))


def test_regression_frame_error_is_the_cards_absolute_error():
    out = np.array([[0.5], [-1.0], [2.0]], dtype=np.float32)
    res = InferenceResult(np.array(["a", "b", "c"]), np.array([1.0, -1.0, 0.0], np.float32), out,
                          np.zeros((3, 4), np.float32), ["unique:x", "common:x"], {}, {}, None,
                          np.zeros((1, 4), np.float32), np.zeros(1, np.float32), "regression")
    frame = predict.predictions_frame(res, Split({}, res.labels, res.ids), _card("regression"))
    np.testing.assert_allclose(frame["error"], [0.5, 0.0, 2.0])
    assert "probability" not in frame and "p_label" not in frame
    sims = predict.predictions_frame(res, Split({}, res.labels, res.ids), _card("regression", metric_convention="sims"))
    np.testing.assert_allclose(sims["error"], [0.5, 0.0, 1.0])  # CH-SIMS clips both sides to [-1, 1]


def test_filter_frame_lists_ranges_and_error():
    frame = pd.DataFrame({"id": list("abcde"), "prediction": [0, 1, 1, 2, 0], "label": [0, 1, 2, 2, 1],
                          "error": [0.1, 0.2, 0.9, 0.3, 0.8]})
    assert list(predict.filter_frame(frame, labels=[2])["id"]) == ["c", "d"]
    assert list(predict.filter_frame(frame, predictions=[0], error_range=(0.5, 1.0))["id"]) == ["e"]
    assert list(predict.filter_frame(frame, labels=(1, 2), predictions=[])["id"]) == ["b", "c", "d", "e"]
    assert len(predict.filter_frame(frame)) == 5


def test_confusion_figure_matches_sklearn(result):
    frame = predict.predictions_frame(result, Split({}, result.labels, result.ids), _card("classification"))
    fig = predict.summary_figure(frame, "classification", 4)
    expected = sk_confusion(result.labels, result.outputs.argmax(1), labels=range(4))
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), expected)


def test_history_figures_from_history_json(tmp_path):
    rows = [{"epoch": e, "train": {"total": 3.0 / e, "task": 2.0 / e, "mmd": 0.1 * e},
             "valid": {"Acc": 0.5 + 0.1 * e, "F1_class_0": 0.3}} for e in (1, 2, 3)]
    for row, corr in zip(rows, (0.1, float("nan"), 0.3)):  # a diverged metric: stored with the NaN marker
        row["valid"]["Corr"] = corr
    write_history(tmp_path, rows)
    assert "__float__" in (tmp_path / "history.json").read_text()
    history = overview.history_frame(read_history(tmp_path))
    figs = overview.history_figures(history)
    scores, corr = "Validation accuracy and F1 (0 to 1, higher is better)", "Validation correlation"
    losses, levels = "Loss terms (training split)", "Alignment levels (training split, log scale)"
    assert set(figs) == {losses, levels, scores, corr}  # one metric family per chart
    assert [t.name for t in figs[losses].data] == ["total", "task"]
    np.testing.assert_allclose(figs[losses].data[0].y, [3.0, 1.5, 1.0])
    assert [t.name for t in figs[scores].data] == ["Acc"]  # per-class F1 left out
    assert figs[levels].layout.yaxis.type == "log"
    np.testing.assert_array_equal(np.asarray(figs[corr].data[0].y, dtype=float),
                                  [0.1, np.nan, 0.3])  # numbers, never the marker dicts
    assert figs[losses].layout.xaxis.dtick == 1 and figs[losses].layout.xaxis.tickformat == "d"
    assert overview.history_frame(read_history(None)).empty and overview.history_figures(pd.DataFrame()) == {}
    rows[0]["train"]["prototype_transport"] = -0.5  # the official transport term can be negative
    write_history(tmp_path, rows)
    figs = overview.history_figures(overview.history_frame(read_history(tmp_path)))
    linear = figs["Alignment levels (training split)"]  # no "log scale" in a title the axis does not keep
    assert linear.layout.yaxis.type != "log"


def test_label_distribution_counts_classes():
    from decalign.data import MultimodalDataset
    labels = np.array([0, 0, 1, 2, 2, 2])
    part = Split({"a": np.zeros((6, 1, 2), np.float32)}, labels, np.arange(6).astype(str))
    fig = overview.label_distribution_figure(MultimodalDataset({"train": part}, "classification", 3))
    np.testing.assert_array_equal(fig.data[0].y, [2, 1, 3])


def test_plan_cells_read_the_plan():
    plan = np.array([[0.1, 0.2], [0.3, 0.4]])
    table = plan_cells({("a", "b"): plan}, {"a": 1, "b": 0})
    assert table.loc[0, "mass"] == pytest.approx(0.3)
    assert table.loc[0, "share_of_row"] == pytest.approx(0.3 / 0.7)
    assert plan_cells({("a", "b"): torch.tensor(plan)}, {"a": 1, "b": 0}).equals(table)
    fig = sample.transport_cells_figure({("a", "b"): plan}, {"a": 1, "b": 0})
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.x1, rect.y0, rect.y1) == (-0.5, 0.5, 0.5, 1.5)


def test_assignment_table_and_sequence_padding():
    table = sample.assignment_table({"a": np.array([0.2, 0.7, 0.1]), "b": np.array([0.9, 0.1])})
    assert list(table["prototype"]) == [1, 0] and table["posterior"].tolist() == pytest.approx([0.7, 0.9])
    fig = sample.sequence_figure(torch.ones(4, 12).numpy(), "a", length=2)  # wide: a heatmap
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[2:]).all() and (z[:2] == 1).all()
    assert fig.layout.xaxis.tickformat == "d" and fig.layout.yaxis.dtick == 1
    lines = sample.sequence_figure(np.arange(12.0).reshape(4, 3), "narrow", length=3)  # 3 features: lines
    assert [t.type for t in lines.data] == ["scatter"] * 3 and list(lines.data[1].y) == [1.0, 4.0, 7.0]
    bars = sample.sequence_figure(np.array([[0.5, -1.0, 2.0]]), "vector")
    assert bars.data[0].type == "bar" and list(bars.data[0].y) == [0.5, -1.0, 2.0]


def test_image_figure_draws_rows_top_down_at_its_columns_width():
    image = np.arange(12, dtype=float).reshape(3, 4)
    figure = sample.image_figure(image, "pixel (as an image)")
    np.testing.assert_array_equal(figure.data[0].z, image)
    assert figure.layout.yaxis.autorange == "reversed" and figure.layout.yaxis.scaleanchor == "x"
    # Streamlit gives every chart its container's width: a width of the figure's own is drawn, then redrawn.
    assert figure.layout.width is None
