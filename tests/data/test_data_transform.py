"""Input transforms of a run: fitted on train only, stored in the card, checked when read back."""

from __future__ import annotations

import json

import numpy as np
import pytest

from decalign.checkpoint import CheckpointError, ModelCard
from decalign.config import DataConfig, DecAlignConfig
from decalign.data import DataError, make_synthetic
from decalign.data.transform import (
    TRANSFORM_KEY,
    FeatureTransform,
    apply_feature_transform,
    fit_feature_transform,
)

WIDTHS = {"text": 4, "audio": 3, "vision": 2}


@pytest.fixture
def data():
    return make_synthetic(40, 10, 10, widths=WIDTHS, seq_len=5, seed=0)


def test_statistics_come_from_train_and_apply_to_every_split(data):
    config = DataConfig(standardize_modalities=("audio",), clip_percentiles=(10.0, 90.0))
    transform = fit_feature_transform(config, data.splits["train"], "d.npz")
    train_audio = data.splits["train"].features["audio"]
    low = np.percentile(train_audio, 10.0, axis=(0, 1))
    np.testing.assert_allclose(transform.standardize["audio"]["low"], low, rtol=1e-6)
    out = apply_feature_transform(data, transform)
    valid = data.splits["valid"].features["audio"]
    stats = transform.standardize["audio"]
    want = (np.clip(valid, stats["low"], stats["high"]) - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(out.splits["valid"].features["audio"], want, rtol=1e-6)
    assert out.splits["valid"].features["text"] is data.splits["valid"].features["text"]  # untouched
    clipped = np.clip(train_audio, stats["low"], stats["high"])
    np.testing.assert_allclose(((clipped - stats["mean"]) / stats["std"]).mean((0, 1)), 0, atol=1e-5)
    assert any("input transform" in note for note in out.report.notes)
    assert apply_feature_transform(data, FeatureTransform()) is data


def test_a_card_keeps_the_transform_and_refuses_a_broken_one(data):
    transform = fit_feature_transform(DataConfig(standardize_modalities=("audio", "vision"),
                                                 time_average_modalities=("vision",)), data.splits["train"], "d")
    card = ModelCard(config=DecAlignConfig(), widths=WIDTHS, task="regression", output_dim=1,
                     extra={TRANSFORM_KEY: transform.to_dict()})
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    prepared = again.prepare(data)
    np.testing.assert_array_equal(prepared.splits["test"].features["vision"],
                                  apply_feature_transform(data, transform).splits["test"].features["vision"])
    assert prepared.splits["test"].features["vision"].shape == (10, 1, 2)
    broken = [{"standardize": {"audio": {"low": [0.0], "high": [1.0], "mean": [0.0], "std": [1.0]}},
               "time_average": [], "clip_percentiles": [0.5, 99.5]},  # width 1, the model's audio has 3
              {"standardize": {"sound": transform.to_dict()["standardize"]["audio"]}, "time_average": [],
               "clip_percentiles": [0.5, 99.5]},
              {**transform.to_dict(), "time_average": [["vision"]]},
              {**transform.to_dict(), "clip_percentiles": "all"},
              "standardise everything"]
    for stored in broken:
        data_dict = {**card.to_dict(), "extra": {TRANSFORM_KEY: stored}}
        with pytest.raises(CheckpointError, match="feature_transform"):
            ModelCard.from_dict(data_dict)


def test_named_modalities_must_exist(data):
    with pytest.raises(DataError, match="time_average_modalities names 'pixels'"):
        fit_feature_transform(DataConfig(time_average_modalities=("pixels",)), data.splits["train"], "d.npz")


def test_a_transformed_view_keeps_the_fingerprint_of_the_data_as_read(data):
    from decalign.train.baseline import baseline_beside

    transform = fit_feature_transform(DataConfig(standardize_modalities=("audio",)), data.splits["train"], "d.npz")
    out = apply_feature_transform(data, transform)
    assert out.fingerprint() != data.fingerprint()  # other numbers...
    assert out.file_fingerprint() == data.fingerprint()  # ...read from the same file
    again = apply_feature_transform(out, transform)  # a view of a view still names the file's data
    assert again.file_fingerprint() == data.fingerprint()

    # a run's card recognises its own data through its transform: the baseline is compared on the split asked
    card = ModelCard(config=DecAlignConfig(), widths=data.widths, task="regression", output_dim=1,
                     data_fingerprint=data.fingerprint(),
                     baseline={"metrics": {"valid": {"MAE": 0.5}, "test": {"MAE": 0.9}}, "headline": "MAE",
                               "name": "a ridge regression"})
    _, comparison, _ = baseline_beside(card, out, "d.npz", "valid", {"MAE": 0.4})
    assert comparison["split"] == "valid" and comparison["baseline"] == 0.5
