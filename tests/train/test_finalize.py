"""What training computes once it ends: one inference pass per split, shared by every final result."""

import numpy as np
import pytest
import torch

from decalign.checkpoint import load_card, load_model
from decalign.config import DecAlignConfig
from decalign.data import make_synthetic
from decalign.inference import run_inference
from decalign.model import AlignmentLevels, DecAlign, fit_prototypes
from decalign.train import finalize, train
from decalign.train import reference as reference_module
from decalign.train.reference import build_reference, load_reference, save_reference
from decalign.train.trainer import Trainer

MODEL = {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3, "pde_dim": 8}
TRAIN = {"batch_size": 32, "num_epochs": 1, "learning_rate": 3e-3, "seed": 5, "early_stop_patience": 0}


def config(objective: str = "official") -> DecAlignConfig:
    return DecAlignConfig.from_dict({"model": {**MODEL, "objective": objective}, "train": TRAIN})


@pytest.fixture(scope="module")
def data():
    return make_synthetic(100, 30, 20, widths={"a": 4, "b": 6}, seq_len=5, seed=1, signal=2.0)


def eval_args(data, batch_size):
    return finalize.EvalArgs("regression", "mse", None, "mosi", batch_size)


@pytest.mark.parametrize("objective", ["official", "studio"])
def test_final_pass_matches_separate_passes(data, objective):
    """Metrics, prototypes and the training alignment from one pass equal what a forward per result gives."""
    torch.manual_seed(0)
    model = DecAlign(config(objective).model, data.widths).eval()
    args = eval_args(data, 40)  # 100 training samples: chunks of 40, 40 and 20
    final = finalize.final_pass(model, data, "regression", args.batch_size, chunk=16)  # chunks of 16 inside
    assert set(final.results) == {"train", "valid", "test"} and len(final.decoupling["a"]) == 100
    for name, split in data.splits.items():
        from_pass = finalize.output_metrics(final.results[name].outputs, split.labels, args)
        assert from_pass == pytest.approx(finalize.evaluate_split(model, split, args), rel=1e-6, abs=1e-7)
    prototypes = finalize.prototypes_from_pooled(final.results["train"].unique_pooled, config(objective))
    with torch.inference_mode():  # the pooled unique features straight from the model's forward
        pooled = model({m: torch.from_numpy(x) for m, x in data.splits["train"].features.items()}).unique_pooled
        expected = {m: fit_prototypes(x, config(objective).model, iterations=finalize.FINAL_EM_ITERS)
                    for m, x in pooled.items()}
    for m in model.modalities:
        torch.testing.assert_close(prototypes[m].means, expected[m].means, rtol=1e-4, atol=1e-5)
    levels = finalize.pass_alignment(model, final, prototypes)
    separate = finalize.training_alignment(model, data.splits["train"], prototypes, args.batch_size)
    assert levels == pytest.approx(separate, rel=1e-5, abs=1e-6)
    assert all(np.isfinite(v) for v in levels.values()) and levels["decoupling"] > 0


def test_training_runs_each_split_once_after_the_last_epoch(data, tmp_path, monkeypatch):
    """One epoch forwards the training and validation splits once; after it, the training and test splits
    once more (the validation pass of the best epoch is the final one)."""
    seen = []
    original = DecAlign.forward

    def counting(self, inputs, *args, **kwargs):
        seen.append(len(next(iter(inputs.values()))))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(DecAlign, "forward", counting)
    train(data, config(), tmp_path / "run")
    n = {name: len(split) for name, split in data.splits.items()}
    assert sum(seen) == 2 * n["train"] + n["valid"] + n["test"]
    card = load_card(tmp_path / "run")
    assert set(card.metrics) == {"train", "valid", "test"}
    assert set(card.extra["training_alignment"]) == set(AlignmentLevels.LEVELS)
    stored = load_reference(tmp_path / "run")
    assert stored.train_total == n["train"]
    # the run's reference carries a PCA map of every space, fitted on the kept training rows
    spaces = {f"{part}:{m}" for part in ("unique", "common") for m in data.widths} | {"common:*"}
    assert set(stored.maps) == spaces
    assert {s: p.fitted_on for s, p in stored.maps.items()} == {
        s: n["train"] * (len(data.widths) if s == "common:*" else 1) for s in spaces}


def test_final_validation_results_are_the_best_epochs_not_the_last(data, tmp_path, monkeypatch):
    """With epoch 1 best of 3, the card's validation metrics and the reference's held-out features are
    those of the saved best weights, computed afresh, and differ from the last epoch's."""
    monkeypatch.setattr(Trainer, "_improved", lambda self, value: self.state.best_value is None)
    run_dir = tmp_path / "run"
    settings = {"model": MODEL, "train": {**TRAIN, "num_epochs": 3}}
    result = train(data, DecAlignConfig.from_dict(settings), run_dir)
    assert result.best_epoch == 1 and len(result.history) == 3
    model, card = load_model(run_dir)
    valid = card.prepare(data).splits["valid"]
    fresh = run_inference(model, valid, task="regression", batch_size=finalize.INFERENCE_CHUNK)
    expected = finalize.output_metrics(fresh.outputs, valid.labels, eval_args(data, 256))
    assert card.metrics["valid"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert card.metrics["valid"]["loss"] != pytest.approx(result.history[-1]["valid"]["loss"], rel=1e-4)
    held_out = load_reference(run_dir).held_out
    rows = [list(valid.ids).index(i) for i in held_out.ids]
    assert len(rows) == len(valid)
    for m in model.modalities:
        np.testing.assert_allclose(held_out.unique[m], fresh.unique_pooled[m][rows], rtol=1e-5, atol=1e-6)


def test_reference_keeps_a_bounded_seeded_sample(data, tmp_path, monkeypatch):
    monkeypatch.setattr(reference_module, "MAX_TRAIN_KEPT", 30)
    torch.manual_seed(0)
    model = DecAlign(config().model, data.widths).eval()
    run_dir = tmp_path / "run"
    result = train(data, config(), run_dir)
    card = result.card
    train_split = data.splits["train"]
    reused = build_reference(model, card, train_split, data.splits["valid"],
                             train_result=run_inference(model, train_split, task="regression"),
                             valid_result=run_inference(model, data.splits["valid"], task="regression"))
    fresh = build_reference(model, card, train_split, data.splits["valid"])
    rows = np.sort(np.random.default_rng(0).choice(len(train_split), 30, replace=False))
    assert list(fresh.train_ids) == list(train_split.ids[rows]) and fresh.train_total == len(train_split)
    np.testing.assert_array_equal(fresh.train_labels, train_split.labels[rows])
    for m in model.modalities:
        np.testing.assert_allclose(reused.train_unique[m], fresh.train_unique[m], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reused.held_out.unique[m], fresh.held_out.unique[m], rtol=1e-5, atol=1e-6)
        # The mean inputs cover every training sample, not only the kept ones.
        expected = train_split.features[m].astype(np.float64).mean(0)
        np.testing.assert_allclose(fresh.input_means[m], expected, rtol=1e-5, atol=1e-6)
    assert reused.ood_thresholds == pytest.approx(fresh.ood_thresholds, rel=1e-5)
    save_reference(tmp_path / "saved", fresh)
    loaded = load_reference(tmp_path / "saved")
    assert loaded.train_total == len(train_split) and len(loaded.train_ids) == 30
