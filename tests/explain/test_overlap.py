"""Modality overlap and class separation against a hand-written kNN, and cases with known answers; the
distribution encoders' outputs kept by inference against the model's own alignment pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.model_selection import GroupKFold

from decalign.data import iterate_batches
from decalign.explain.overlap import class_separation, modality_overlap, overlap_sentence
from decalign.inference import run_inference


def _numpy_knn_balanced_accuracy(x, target, sample, k, folds):
    """Brute-force kNN (uniform vote, ties to the smallest label) over sklearn's grouped folds; balanced
    accuracy as the mean per-class recall."""
    predicted = np.empty_like(target)
    for train, test in GroupKFold(n_splits=folds).split(x, target, sample):
        d = ((x[test, None, :] - x[None, train, :]) ** 2).sum(-1)
        nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
        votes = target[train][nearest]
        predicted[test] = [np.bincount(v, minlength=target.max() + 1).argmax() for v in votes]
    return np.mean([np.mean(predicted[target == c] == c) for c in np.unique(target)])


def test_overlap_matches_a_hand_written_knn():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(120, 3))
    b = rng.normal(size=(120, 3)) + np.array([0.8, 0, 0])  # partly overlapping
    result = modality_overlap({"a": a, "b": b})
    x, owner, sample = np.concatenate([a, b]), np.repeat([0, 1], 120), np.tile(np.arange(120), 2)
    assert result.accuracy == pytest.approx(_numpy_knn_balanced_accuracy(x, owner, sample, 10, 5), abs=1e-12)
    assert (result.chance, result.groups, result.rows, result.folds) == (0.5, 2, 240, 5)
    assert 0.55 < result.accuracy < 0.9


def test_separate_islands_score_one_and_identical_clouds_score_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4))
    far = modality_overlap({"a": x, "b": x + 100.0, "c": x - 100.0})
    assert far.accuracy == 1.0 and far.chance == pytest.approx(1 / 3) and far.above_chance == 1.0
    same = modality_overlap({"a": x, "b": x.copy()})
    assert abs(same.accuracy - 0.5) < 0.08  # one cloud: nobody can tell the modalities apart


def test_class_separation_against_the_hand_written_knn_and_known_cases():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 150)
    centres = np.array([[0, 0], [3, 0], [0, 3]], dtype=float)
    a = centres[labels] + rng.normal(scale=0.8, size=(150, 2))
    b = centres[labels] + rng.normal(scale=0.8, size=(150, 2))
    result = class_separation({"a": a, "b": b}, labels)
    x, target, sample = np.concatenate([a, b]), np.tile(labels, 2), np.tile(np.arange(150), 2)
    assert result.accuracy == pytest.approx(_numpy_knn_balanced_accuracy(x, target, sample, 10, 5), abs=1e-12)
    assert result.chance == pytest.approx(1 / 3) and result.accuracy > 0.8
    noise = class_separation({"a": rng.normal(size=(300, 2))}, rng.integers(0, 2, 300))
    assert abs(noise.accuracy - 0.5) < 0.1
    assert class_separation({"a": a}, np.zeros(150, int)) is None  # one group: nothing to separate


def test_subsampling_is_seeded_and_bounded():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 2))
    one = modality_overlap({"a": x, "b": x + 0.5}, max_samples=100, seed=4)
    assert one.rows == 200 and one == modality_overlap({"a": x, "b": x + 0.5}, max_samples=100, seed=4)


def test_shapes_are_checked_and_the_sentence_names_the_numbers():
    with pytest.raises(ValueError, match="same"):
        modality_overlap({"a": np.zeros((5, 2)), "b": np.zeros((6, 2))})
    with pytest.raises(ValueError, match="non-finite"):
        modality_overlap({"a": np.full((5, 2), np.nan), "b": np.zeros((5, 2))})
    x = np.random.default_rng(5).normal(size=(100, 2))
    text = overlap_sentence(modality_overlap({"a": x, "b": x + 50}), None)
    assert text == ("Telling the 2 modalities apart: balanced accuracy 1.00 (chance 0.50), so each modality sits in "
                    "its own region: these spaces are not aligned.")


def test_inference_keeps_the_distribution_encoders_outputs(trained, digits_data):
    model, card = trained
    part = digits_data.splits["valid"]
    result = run_inference(model, part, task=card.task, batch_size=37)
    assert set(result.distribution) == set(model.modalities)
    assert result.distribution["pixel"].shape == (len(part), model.config.pde_dim)
    batch = next(iter(iterate_batches(part, len(part), shuffle=False)))
    model.eval()
    with torch.no_grad():
        out = model(batch.inputs, batch.lengths, align=True)  # the alignment pass computes them itself
    for m in model.modalities:
        np.testing.assert_allclose(result.distribution[m], out.distribution[m].numpy(), rtol=1e-5, atol=1e-5)
    picked = result.subset(np.array([3, 1]))
    np.testing.assert_array_equal(picked.distribution["pixel"], result.distribution["pixel"][[3, 1]])


def test_the_alignment_effect_is_said_plainly_including_no_effect():
    from decalign.explain.overlap import Separability, alignment_effect_sentence

    def s(acc):
        return Separability(acc, 1 / 3, 3, 900, 5)
    assert alignment_effect_sentence(s(0.97), s(1.0)).startswith("Alignment barely changes how the modalities")
    assert "balanced accuracy 0.97 with alignment and 1.00 without (chance 0.33)" in \
        alignment_effect_sentence(s(0.97), s(1.0))
    assert alignment_effect_sentence(s(0.40), s(0.95)).startswith("With alignment the modalities overlap more")
    assert alignment_effect_sentence(s(0.95), s(0.40)).startswith("With alignment the modalities overlap less")
