import json

import numpy as np
import ot
import pytest
import torch

from decalign.checkpoint import CheckpointError
from decalign.config import ModelConfig
from decalign.model import gaussian_mmd
from decalign.train.reference import (
    abs_cosine,
    load_reference,
    median_bandwidth,
    mmd2,
    prototype_distance,
    save_reference,
    training_plan,
)


def test_ood_threshold_flags_about_one_percent_of_training(reference):
    for m, threshold in reference.ood_thresholds.items():
        dist = prototype_distance(reference.train_unique[m], reference.prototypes[m])
        assert 0.005 <= np.mean(dist > threshold) <= 0.02


def test_prototype_distance_by_hand(reference):
    p = reference.prototypes["pixel"]
    x = reference.train_unique["pixel"][:4].astype(np.float64)
    mu, var = p.means.double().numpy(), p.variances.double().numpy()
    expected = [min(np.sqrt(((xi - mu[k]) ** 2 / var[k]).sum()) for k in range(len(mu))) for xi in x]
    np.testing.assert_allclose(prototype_distance(x, p), expected, rtol=1e-10)


def test_input_means_are_training_means(reference, digits_data):
    for m, x in digits_data.splits["train"].features.items():
        np.testing.assert_allclose(reference.input_means[m], x.mean(0), rtol=1e-5, atol=1e-5)


def test_abs_cosine_and_decoupling_threshold(reference):
    a, b = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), np.array([[-2.0, 0.0], [1.0, -1.0], [1.0, 0.0]])
    np.testing.assert_allclose(abs_cosine(a, b), [1.0, 0.0, 0.0])
    worst = np.max([abs_cosine(reference.train_unique[m], reference.train_common[m]) for m in reference.modalities], 0)
    assert np.mean(worst > reference.decoupling_threshold) <= 0.02


def test_mmd_matches_model_gaussian_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.normal(0.5, size=(25, 4))
    expected = float(gaussian_mmd(torch.from_numpy(x), torch.from_numpy(y), 1.7))
    assert mmd2(x, y, 1.7) == pytest.approx(expected, rel=1e-10)
    # median heuristic: median squared pair distance = 2 s^2
    sq = ot.dist(x, x)[np.triu_indices(30, 1)]
    assert median_bandwidth(x) == pytest.approx(np.sqrt(np.median(sq) / 2))


def test_save_load_roundtrip(reference, tmp_path):
    save_reference(tmp_path, reference)
    loaded = load_reference(tmp_path)
    assert loaded.modalities == reference.modalities
    np.testing.assert_array_equal(loaded.train_ids, reference.train_ids)
    np.testing.assert_array_equal(loaded.train_labels, reference.train_labels)
    np.testing.assert_allclose(loaded.train_unique["karhunen"], reference.train_unique["karhunen"])
    torch.testing.assert_close(loaded.prototypes["fourier"].means, reference.prototypes["fourier"].means)
    assert loaded.ood_thresholds == reference.ood_thresholds
    assert loaded.common_mmd_band == reference.common_mmd_band
    assert not list(tmp_path.glob(".*tmp"))


def test_load_reference_absent_and_broken(reference, tmp_path):
    assert load_reference(tmp_path) is None
    save_reference(tmp_path, reference)
    meta = json.loads((tmp_path / "reference.json").read_text())
    del meta["ood_thresholds"]
    (tmp_path / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="reference.json.*ood_thresholds"):
        load_reference(tmp_path)
    (tmp_path / "reference.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_reference(tmp_path)


def test_training_plan_two_modalities_matches_pot(reference):
    two = type(reference)(**{**reference.__dict__,
                             "prototypes": {m: reference.prototypes[m] for m in ("fourier", "pixel")}})
    plan = training_plan(two, ModelConfig(lambda_ot=0.1, ot_num_iters=2000, ot_tol=1e-9, objective="studio"))
    a = two.prototypes["fourier"].weights.double().numpy()
    b = two.prototypes["pixel"].weights.double().numpy()
    cost = plan.cost.numpy()
    expected = ot.sinkhorn(a / a.sum(), b / b.sum(), cost, 0.1 * cost.mean(), numItermax=10000, stopThr=1e-12)
    np.testing.assert_allclose(plan.plan.numpy(), expected, atol=1e-6)
    assert plan.converged
