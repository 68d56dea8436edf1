import numpy as np
import pytest

from decalign.explain import (
    branch_contributions,
    modality_counterfactuals,
    plain_summary,
    prototype_story,
)
from decalign.explain.summary import sentiment_word
from decalign.train.reference import training_plan


def test_story_assignments_nearest_and_cells(trained, digits_data, reference, test_result):
    model, card = trained
    story = prototype_story(model, card, digits_data.splits["test"], 6, reference, k_nearest=4)
    top = story.assignments.groupby("modality").head(1).set_index("modality")
    for m in reference.modalities:  # same assignment as the posteriors run_inference computed
        assert top.loc[m, "prototype"] == int(test_result.posteriors[m][6].argmax())
    assert story.assignments.groupby("modality").posterior.sum().le(1 + 1e-9).all()
    near = story.nearest[story.nearest.modality == "pixel"]
    assert len(near) == 4 and near.distance.is_monotonic_increasing
    # distance is Euclidean to the training pooled feature of that id
    idx = int(np.flatnonzero(reference.train_ids == near.train_id.iloc[0])[0])
    x = test_result.unique_pooled["pixel"][6]
    assert near.distance.iloc[0] == pytest.approx(np.linalg.norm(reference.train_unique["pixel"][idx] - x), rel=1e-4)
    plan = training_plan(reference, card.config.model)
    cell = story.plan_cells.iloc[0]
    pair = plan.pair_plan(cell.modality_a, cell.modality_b, reference.modalities).numpy()
    assert cell.mass == pytest.approx(pair[cell.prototype_a, cell.prototype_b])
    assert cell.share_of_row == pytest.approx(pair[cell.prototype_a, cell.prototype_b] / pair[cell.prototype_a].sum())


def test_summary_reads_plainly(trained, digits_data, reference, test_result):
    model, card = trained
    split = digits_data.splits["test"]
    row = 6
    contrib = branch_contributions(test_result, row)
    cf = modality_counterfactuals(model, split, row, reference)
    story = prototype_story(model, card, split, row, reference)
    flags = {"ood_pixel": True, "ood_fourier": False, "ood_karhunen": False, "low_confidence": False,
             "decoupling_failure": False, "disagreement": False}
    text = plain_summary(card, test_result, row, contrib, cf, flags, story)
    pred = int(test_result.predictions[row])
    assert f'predicts "{pred}"' in text
    top = contrib[contrib.part != "bias"].iloc[int(np.argmax(contrib[contrib.part != "bias"].contribution.abs()))]
    assert top.modality in text.split("\n\n")[1]
    assert "pixel input looks unusual" in text
    assert "prototype" not in text.lower()
    assert "typical pattern the model learned" in text


def test_summary_without_optional_parts(trained, test_result):
    _, card = trained
    text = plain_summary(card, test_result, 0, branch_contributions(test_result, 0))
    assert text.count("\n\n") == 2


def test_sentiment_words():
    assert sentiment_word(0.2, [-3, 3]) == "neutral"
    assert sentiment_word(1.0, [-3, 3]) == "positive"
    assert sentiment_word(-2.5, [-3, 3]) == "strongly negative"
    assert sentiment_word(0.5, [0, 1]) is None


def test_nearest_examples_share_the_pattern_and_the_answer_first(trained, digits_data, reference, test_result):
    model, card = trained
    for row in (0, 6, 11):
        story = prototype_story(model, card, digits_data.splits["test"], row, reference, k_nearest=6)
        assert story.prediction == int(test_result.predictions[row])
        for m, near in story.nearest.groupby("modality", sort=False):
            assert (near.prototype == int(test_result.posteriors[m][row].argmax())).all()
            np.testing.assert_array_equal(near.same_answer, near.label == story.prediction)
            rank = (~(near.same_prototype & near.same_answer)).astype(int) + 2 * (~near.same_prototype).astype(int)
            assert rank.is_monotonic_increasing  # matching examples first, then the pattern, then the rest
            for _, group in near.groupby(rank, sort=False):
                assert group.distance.is_monotonic_increasing


def test_summary_names_what_each_number_is(trained, digits_data, reference, test_result):
    model, card = trained
    split = digits_data.splits["test"]
    cf = modality_counterfactuals(model, split, 3, reference)
    text = plain_summary(card, test_result, 3, branch_contributions(test_result, 3), cf)
    assert "shares of the model's score, not of the probability" in text
    assert "how the probability of the answer changes, not a share of the score" in text
    assert "total effect" not in text


def _regression_result(parts: dict[str, float], bias: float):
    from decalign.inference import InferenceResult

    names = [f"unique:{m}" for m in parts] + [f"common:{m}" for m in parts]
    h = np.array([[v for v in parts.values()] + [0.0] * len(parts)], dtype=np.float32)  # d = 1, weight 1
    w = np.array([[1.0] * len(parts) + [1.0] * len(parts)], dtype=np.float32)
    out = h @ w.T + bias
    return InferenceResult(np.array(["s"]), np.array([0.5], np.float32), out, h, names, {}, {}, None, w,
                           np.array([bias], np.float32), "regression")


def test_regression_summary_explains_a_large_part_that_hardly_matters(trained):
    from dataclasses import replace

    import pandas as pd

    _, card = trained
    rcard = replace(card, task="regression", label_range=[-3.0, 3.0], class_names=None)
    result = _regression_result({"text": 1.2, "audio": -0.3}, 0.1)
    cf = pd.DataFrame([
        {"modality": "text", "change": "drop", "prediction_before": 1.0, "prediction_after": 0.95, "delta": -0.05,
         "score_before": 1.0, "score_after": 0.95, "part_before": 1.2, "part_after": 1.15},
        {"modality": "audio", "change": "drop", "prediction_before": 1.0, "prediction_after": 2.5, "delta": 1.5,
         "score_before": 1.0, "score_after": 2.5, "part_before": -0.3, "part_after": 1.2}])
    text = plain_summary(rcard, result, 0, branch_contributions(result, 0), cf)
    assert "1.00 is the exact sum of one part per input and a constant of +0.10" in text
    assert "the text data +1.20 (80%) and the audio data -0.30 (20%, pulling it down)" in text
    assert "without the text data the prediction would move from 1.00 to 0.95, so the text data hardly matters" in text
    assert "Why the text data carries 80% of the prediction yet hardly matters" in text
    assert "its part of the prediction changes little without it (+1.20 becomes +1.15)" in text
    assert "how the value changes, not a share of the prediction" in text
    assert "Why the audio data" not in text  # 20% is not a small share: no disagreement to explain
