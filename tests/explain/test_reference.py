import json

import numpy as np
import ot
import pytest
import torch

from decalign.checkpoint import CheckpointError
from decalign.config import ModelConfig
from decalign.train.reference import (
    MAX_HELD_OUT,
    abs_cosine,
    build_reference,
    load_reference,
    prototype_distance,
    save_reference,
    training_plan,
    with_held_out,
)


def test_thresholds_are_calibrated_on_the_held_out_samples(reference, trained, digits_data):
    assert reference.thresholds_from == "valid" and reference.held_out is not None
    valid = digits_data.splits["valid"]
    np.testing.assert_array_equal(reference.held_out.ids, np.asarray(valid.ids).astype(str))
    for m, threshold in reference.ood_thresholds.items():
        dist = prototype_distance(reference.held_out.unique[m], reference.prototypes[m])
        assert threshold == pytest.approx(np.quantile(dist, 0.99))
        assert 0.005 <= np.mean(dist > threshold) <= 0.02
    # Without held-out samples the thresholds fall back to the training ones, and say so.
    model, card = trained
    train_only = build_reference(model, card, digits_data.splits["train"])
    assert train_only.held_out is None and train_only.thresholds_from == "train"
    dist = prototype_distance(train_only.train_unique["pixel"], train_only.prototypes["pixel"])
    assert train_only.ood_thresholds["pixel"] == pytest.approx(np.quantile(dist, 0.99))


def test_held_out_is_a_seeded_bounded_subsample(reference, trained, digits_data, monkeypatch):
    import decalign.train.reference as module

    model, card = trained
    monkeypatch.setattr(module, "MAX_HELD_OUT", 50)
    one = with_held_out(reference, model, card, digits_data.splits["test"], "the test split")
    two = with_held_out(reference, model, card, digits_data.splits["test"], "the test split")
    assert len(one.held_out) == 50 and one.held_out.n_total == len(digits_data.splits["test"])
    np.testing.assert_array_equal(one.held_out.ids, two.held_out.ids)
    assert one.held_out.source == "the test split" and reference.held_out.source != "the test split"
    assert MAX_HELD_OUT >= 1000


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
    held = reference.held_out
    worst = np.max([abs_cosine(held.unique[m], held.common[m]) for m in reference.modalities], 0)
    assert reference.decoupling_threshold == pytest.approx(np.quantile(worst, 0.99))


def test_save_load_roundtrip(reference, tmp_path):
    save_reference(tmp_path, reference)
    loaded = load_reference(tmp_path)
    assert loaded.modalities == reference.modalities
    np.testing.assert_array_equal(loaded.train_ids, reference.train_ids)
    np.testing.assert_array_equal(loaded.train_labels, reference.train_labels)
    np.testing.assert_allclose(loaded.train_unique["karhunen"], reference.train_unique["karhunen"])
    torch.testing.assert_close(loaded.prototypes["fourier"].means, reference.prototypes["fourier"].means)
    assert loaded.ood_thresholds == reference.ood_thresholds
    assert loaded.thresholds_from == "valid" and loaded.held_out.source == reference.held_out.source
    np.testing.assert_array_equal(loaded.held_out.ids, reference.held_out.ids)
    np.testing.assert_allclose(loaded.held_out.common["pixel"], reference.held_out.common["pixel"])
    assert not list(tmp_path.glob(".*tmp"))


def test_format_one_reference_loads_without_held_out(reference, tmp_path):
    # Written before held-out features were stored: no held_out, thresholds from the training samples.
    save_reference(tmp_path, reference)
    meta = json.loads((tmp_path / "reference.json").read_text())
    meta.update(format=1, common_mmd_band={})
    del meta["held_out"], meta["thresholds_from"]
    (tmp_path / "reference.json").write_text(json.dumps(meta))
    loaded = load_reference(tmp_path)
    assert loaded.held_out is None and loaded.thresholds_from == "train"


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
