"""Drift: the maths by hand, and the calibration on the bundled demo and on MOSI-shaped synthetic data."""

from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from decalign.audit.drift import (
    DriftReport,
    drift_test,
    effect_words,
    holm,
    mean_shift_effect,
    median_bandwidth,
    mmd2,
    mmd_permutation_test,
    permutations_for,
)
from decalign.checkpoint import load_model
from decalign.data import load_dataset, make_synthetic
from decalign.inference import run_inference
from decalign.model import gaussian_mmd
from decalign.train.baseline import pooled_inputs
from decalign.train.reference import HeldOut

ROOT = Path(__file__).resolve().parents[2]
SEEDS = 40  # i.i.d. splits per data set: a 5% false-alarm rate would show as about 2 alarms, 20% as 8


def _held(features: dict[str, dict[str, np.ndarray]], rows: np.ndarray) -> HeldOut:
    return HeldOut({m: x[rows] for m, x in features["unique"].items()},
                   {m: x[rows] for m, x in features["common"].items()}, np.arange(len(rows)).astype(str),
                   "the other half", len(rows))


def _take(features: dict[str, dict[str, np.ndarray]], rows: np.ndarray, shift: float = 0.0, ref_rows=None):
    """Rows of every space; ``shift`` adds that many reference standard deviations to every feature."""
    out = {}
    for space, per_mod in features.items():
        out[space] = {}
        for m, x in per_mod.items():
            sd = x[ref_rows].std(0, ddof=1) if ref_rows is not None else 0.0
            out[space][m] = x[rows] + shift * sd
    return out


@pytest.fixture(scope="module")
def demo_features():
    """Pooled unique and common features of the bundled demo model on the demo's test split."""
    model, card = load_model(ROOT / "assets" / "demo_model")
    test = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"]
    result = run_inference(model, test, task=card.task)
    return {"unique": result.unique_pooled, "common": result.common_pooled}


@pytest.fixture(scope="module")
def synthetic_features():
    """MOSI-shaped synthetic data (text 768, audio 5, vision 20): time-pooled inputs stand in for both spaces."""
    data = make_synthetic(300, 0, 0, seq_len=8, seed=3).splits["train"]
    pooled = pooled_inputs(data, list(data.features))
    widths = np.cumsum([0] + [x.shape[2] for x in data.features.values()])
    per_mod = {m: pooled[:, widths[i]:widths[i + 1]] for i, m in enumerate(data.features)}
    return {"unique": per_mod, "common": {m: x[:, ::-1].copy() for m, x in per_mod.items()}}


# ------------------------------------------------------------------------------------------ by hand


def test_mmd_matches_model_gaussian_mmd_and_the_median_heuristic():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 4)), rng.normal(0.5, size=(25, 4))
    expected = float(gaussian_mmd(torch.from_numpy(x), torch.from_numpy(y), 1.7))
    assert mmd2(x, y, 1.7) == pytest.approx(expected, rel=1e-10)
    sq = ot.dist(x, x)[np.triu_indices(30, 1)]  # median squared pair distance = 2 s^2
    assert median_bandwidth(x) == pytest.approx(np.sqrt(np.median(sq) / 2))


def test_permutation_test_statistic_and_p_value_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3))
    stat, p = mmd_permutation_test(x, y, bandwidth=1.3, permutations=300, seed=4)
    assert stat == pytest.approx(mmd2(x, y, 1.3), rel=1e-10)
    # The same permutations drawn independently, each statistic from scratch.
    z = np.concatenate([x, y])
    rows = np.random.default_rng(4).permuted(np.tile(np.r_[np.ones(12), np.zeros(9)], (300, 1)), axis=1)
    null = [mmd2(z[r == 1], z[r == 0], 1.3) for r in rows]
    assert p == pytest.approx((1 + sum(v >= stat - 1e-12 for v in null)) / 301)
    assert 1 / 301 <= p <= 1


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08, 0.20 -> running max 0.04, 0.09, 0.09, 0.2
    np.testing.assert_allclose(holm(p), [0.04, 0.09, 0.09, 0.20])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    assert permutations_for(6) == 500 and (permutations_for(40) + 1) * 0.05 / 40 >= 4


def test_mean_shift_effect_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    y = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0], [1.0, 0.0]])
    dx, vx, vy = x.mean(0) - y.mean(0), x.var(0, ddof=1), y.var(0, ddof=1)
    expected = np.sqrt(max(np.mean((dx**2 - vx / 3 - vy / 4) / vy), 0.0))
    assert mean_shift_effect(x, y) == pytest.approx(expected)
    assert mean_shift_effect(y, y) == 0.0


def test_mean_shift_effect_reads_in_standard_deviations():
    rng = np.random.default_rng(2)
    sd = np.array([1.0, 3.0, 0.2, 10.0])
    y = rng.normal(size=(20000, 4)) * sd
    assert mean_shift_effect(rng.normal(size=(20000, 4)) * sd + 0.5 * sd, y) == pytest.approx(0.5, abs=0.02)
    one = np.zeros(4)
    one[1] = 3.0  # one feature of four moves by one standard deviation: sqrt(1 / 4)
    assert mean_shift_effect(rng.normal(size=(20000, 4)) * sd + one, y) == pytest.approx(0.5, abs=0.02)
    # Two samples of one distribution: no effect, though their means differ by chance.
    assert mean_shift_effect(rng.normal(size=(300, 32)), rng.normal(size=(300, 32))) < 0.1
    assert effect_words(0.52) == "about half a standard deviation (0.52)"
    assert effect_words(0.01) == "less than 0.05 standard deviations" and effect_words(2.345) == "about 2.3 standard deviations"


# ------------------------------------------------------------------------------------- calibration


def _alarms(features, n: int, shift: float = 0.0) -> tuple[int, list[DriftReport]]:
    reports = []
    for seed in range(SEEDS):
        order = np.random.default_rng(seed).permutation(n)
        current, ref = order[: n // 2], order[n // 2:]
        report = drift_test(_take(features, current, shift, ref), _held(features, ref), permutations=200,
                            seed=seed)
        reports.append(report)
    return sum(r.drifted for r in reports), reports


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo_features", "synthetic_features"])
def test_iid_halves_rarely_alarm(name, request):
    features = request.getfixturevalue(name)
    n = len(next(iter(features["unique"].values())))
    alarms, reports = _alarms(features, n)
    assert alarms <= 4, f"{alarms} false alarms in {SEEDS} i.i.d. splits"  # binomial(40, 5%): P(> 4) = 5%
    p = np.concatenate([r.tests["p_value"].to_numpy() for r in reports])
    assert 0.3 < np.median(p) < 0.7  # p-values of a calibrated test are uniform under the null
    assert np.median([r.tests["effect"].median() for r in reports]) < 0.1


@pytest.mark.parametrize("name", ["demo_features", "synthetic_features"])
def test_half_standard_deviation_shift_alarms(name, request):
    features = request.getfixturevalue(name)
    n = len(next(iter(features["unique"].values())))
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(n)
        current, ref = order[: n // 2], order[n // 2:]
        report = drift_test(_take(features, current, 0.5, ref), _held(features, ref), seed=seed)
        assert report.drifted and report.modalities["drifted"].all()
        assert report.modalities["effect"].between(0.3, 0.7).all()
        text = " ".join(report.sentences())
        assert "drifted" in text and "standard deviation" in text


def test_report_json_and_too_few_samples(demo_features):
    rows = np.arange(300)
    report = drift_test(_take(demo_features, rows[:100]), _held(demo_features, rows[100:]), permutations=100)
    data = report.to_json()
    assert data["drifted"] is False and set(data["modalities"]) == {"fourier", "karhunen", "pixel"}
    assert len(data["tests"]) == 6 and data["reference"] == "the other half"
    assert all(t["p_corrected"] >= t["p_value"] for t in data["tests"])
    with pytest.raises(ValueError, match="at least 10 samples, found 5"):
        drift_test(_take(demo_features, rows[:5]), _held(demo_features, rows[100:]))
