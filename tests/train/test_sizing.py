"""The number of prototypes is capped by the training data, in one place, and the card says why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from decalign.config import DecAlignConfig
from decalign.data import make_synthetic
from decalign.train import train
from decalign.train.sizing import cap_prototypes, prototype_cap


@pytest.mark.parametrize(("n", "batch", "cap"), [
    (1400, 64, 16),  # the demo: K = 10 fits
    (40, 64, 4),  # the 40 samples: at most 4
    (40, 8, 2),  # batches of 8 hold 2 prototypes of 4 rows
    (12, 32, 2),  # never fewer than 2
    (100_000, 32, 8),  # a large set in small batches: the batch decides
])
def test_cap_by_hand(n, batch, cap):
    assert prototype_cap(n, batch) == cap


def test_the_cap_changes_only_k_and_says_why():
    data = make_synthetic(40, 10, 10, widths={"a": 3, "b": 2}, seq_len=2, task="classification", seed=0)
    config = DecAlignConfig.from_dict({"model": {"num_prototypes": 10}, "train": {"batch_size": 64}})
    capped, note = cap_prototypes(config, data)
    assert capped.model.num_prototypes == 4
    assert capped.to_dict()["train"] == config.to_dict()["train"]
    assert note.startswith("10 prototypes per modality were asked for, but 40 training samples")
    assert cap_prototypes(capped, data) == (capped, None)  # idempotent: a resumed run sees the same K


def test_training_on_small_data_builds_the_capped_model(tmp_path):
    torch.set_num_threads(1)
    data = make_synthetic(40, 10, 10, widths={"a": 3, "b": 2}, seq_len=2, task="classification", seed=0)
    data.class_names = ["low", "mid", "high"]
    config = DecAlignConfig.from_dict({"model": {"d_model": 8, "num_heads": 2, "num_layers": 1, "pde_dim": 4,
                                                 "num_prototypes": 10},
                                       "train": {"num_epochs": 1, "batch_size": 64, "seed": 1,
                                                 "task_loss": "cross_entropy"}})
    result = train(data, config, tmp_path / "run")
    card = json.loads((tmp_path / "run" / "card.json").read_text())
    assert card["config"]["model"]["num_prototypes"] == 4
    assert len(card["prototypes"]["a"]["weights"]) == 4
    assert "K = 4 is used" in card["extra"]["prototype_note"]
    assert card["class_names"] == ["low", "mid", "high"] == result.card.class_names
    assert np.isfinite(result.card.metrics["test"]["Acc"])
