
import numpy as np
import ot
import pytest
import torch

from decalign.audit.drift import batch_drift, gmm_ot_distance
from decalign.model import Prototypes


@pytest.fixture(scope="module")
def reference(trained_digits):
    return trained_digits[2]


def test_training_resample_is_not_drifted(reference):
    idx = np.random.default_rng(5).choice(len(reference.train_ids), 100, replace=False)
    batch = {"unique": {m: x[idx] for m, x in reference.train_unique.items()},
             "common": {m: x[idx] for m, x in reference.train_common.items()}}
    drift = batch_drift(batch, reference, n_resamples=10)
    assert list(drift.columns) == ["modality", "space", "statistic", "value", "band_low", "band_high", "drifted"]
    assert len(drift) == 6
    assert not drift.drifted.any()


def test_shifted_batch_is_drifted(reference):
    idx = np.random.default_rng(6).choice(len(reference.train_ids), 100, replace=False)
    shift = lambda d: {m: x[idx] + 3 * x.std(0) for m, x in d.items()}
    drift = batch_drift({"unique": shift(reference.train_unique), "common": shift(reference.train_common)},
                        reference, n_resamples=10)
    assert drift.drifted.all()
    assert (drift.value > 3 * drift.band_high).all()


def test_gmm_ot_of_identical_single_gaussians_matches_bures():
    # One component each: GMM-OT reduces to W2^2 between two diagonal Gaussians (closed form).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]
    target = Prototypes(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]]), torch.tensor([1.0]))
    got = gmm_ot_distance(x, target, 1)
    mean, var = x.mean(0), x.var(0) + 1e-4  # fit_gmm adds its variance floor
    expected = ((mean - 0) ** 2).sum() + ((np.sqrt(var) - 1) ** 2).sum()
    assert got == pytest.approx(expected, rel=1e-6)
    assert ot.__version__.startswith("0.9")


def test_large_batches_subsample_the_mmd(reference, monkeypatch):
    # With the MMD cap below the batch size, the common-space test still tells a resample from a shift.
    import decalign.audit.drift as drift_module

    monkeypatch.setattr(drift_module, "MAX_BATCH_MMD", 60)
    idx = np.random.default_rng(7).choice(len(reference.train_ids), 200, replace=False)
    same = {m: x[idx] for m, x in reference.train_common.items()}
    moved = {m: x[idx] + 3 * x.std(0) for m, x in reference.train_common.items()}
    unique = {m: x[idx] for m, x in reference.train_unique.items()}
    calm = batch_drift({"unique": unique, "common": same}, reference, n_resamples=10)
    shifted = batch_drift({"unique": unique, "common": moved}, reference, n_resamples=10)
    calm_mmd = calm[calm.space == "common"].set_index("modality")
    shifted_mmd = shifted[shifted.space == "common"].set_index("modality")
    assert shifted_mmd.drifted.all()
    assert (shifted_mmd.value > 3 * shifted_mmd.band_high).all()
    # A training resample stays at the level of its null band (a 95% band may still flag one in twenty).
    assert (calm_mmd.value < shifted_mmd.value / 3).all()
    assert (calm_mmd.value < 2 * calm_mmd.band_high).all()
