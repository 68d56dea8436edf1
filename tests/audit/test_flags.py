from dataclasses import replace

import numpy as np
import pytest

from decalign.audit.flags import compute_flags, flag_columns
from decalign.train.reference import prototype_distance


@pytest.fixture(scope="module")
def setup(trained_digits):
    return trained_digits


def test_planted_outlier_is_flagged(setup):
    _, card, ref, result = setup
    planted = result.subset(np.arange(len(result)))
    sd = ref.train_unique["pixel"].std(0)
    planted.unique_pooled = {**planted.unique_pooled}
    planted.unique_pooled["pixel"] = planted.unique_pooled["pixel"].copy()
    planted.unique_pooled["pixel"][7] += 20 * sd
    flags = compute_flags(planted, ref, card)
    assert flags.loc[7, "ood_pixel"] and flags.loc[7, "any_flag"]
    assert flags["ood_pixel"].drop(index=7).mean() < 0.1
    # independent: the flag is exactly distance > threshold
    dist = prototype_distance(planted.unique_pooled["pixel"], ref.prototypes["pixel"])
    np.testing.assert_array_equal(flags["ood_pixel"], dist > ref.ood_thresholds["pixel"])


def test_decoupling_failure_when_unique_equals_common(setup):
    _, card, ref, result = setup
    planted = result.subset(np.arange(len(result)))
    planted.unique_pooled = {**planted.unique_pooled, "fourier": planted.common_pooled["fourier"].copy()}
    flags = compute_flags(planted, ref, card)
    assert flags["decoupling_failure"].all()  # |cos| = 1 everywhere
    cos = {m: np.zeros(len(result)) for m in ref.modalities}
    assert not compute_flags(result, ref, card, decoupling_cos=cos)["decoupling_failure"].any()


def test_low_confidence_and_disagreement_by_hand(setup):
    _, card, ref, result = setup
    flags = compute_flags(result, ref, card, low_confidence=0.9)
    np.testing.assert_array_equal(flags["low_confidence"], result.probabilities.max(1) < 0.9)
    terms = result.contributions()
    for i in range(20):
        c = terms[i, result.outputs[i].argmax(), :-1]
        share = np.abs(c) / np.abs(c).sum()
        expected = any((share > 0.25) & (c > 0)) and any((share > 0.25) & (c < 0))
        assert flags.loc[i, "disagreement"] == expected
    assert (flags.n_flags == flags[flag_columns(flags)].sum(axis=1)).all()
    assert flag_columns(flags)[:3] == ["ood_fourier", "ood_karhunen", "ood_pixel"]


def test_regression_low_confidence_band(setup):
    _, card, ref, result = setup
    reg = result.subset(np.arange(4))
    reg.task = "regression"
    reg.outputs = np.array([[0.1], [-0.5], [0.7], [-0.59]], dtype=np.float32)
    reg.head_weight, reg.head_bias = reg.head_weight[:1], reg.head_bias[:1]
    flags = compute_flags(reg, ref, replace(card, task="regression", label_range=[-3.0, 3.0]))
    assert flags["low_confidence"].tolist() == [True, True, False, True]  # |p| < 0.1 * 6
