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
