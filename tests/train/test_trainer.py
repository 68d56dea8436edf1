"""The training loop on tiny synthetic data: learning, history, checkpoints, stopping, resume, memory."""

import copy
import gc
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from decalign.checkpoint import load_model
from decalign.config import DecAlignConfig
from decalign.data import make_synthetic
from decalign.device import resolve_device
from decalign.model import AlignmentLevels
from decalign.train import BATCH_KEYS, Callback, RunError, read_history, read_status, train
from decalign.train.metrics import REGRESSION_KEYS

MODEL = {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3, "pde_dim": 8}
TRAIN = {"batch_size": 32, "num_epochs": 3, "learning_rate": 3e-3, "seed": 5, "early_stop_patience": 0}


def config(**train) -> DecAlignConfig:
    return DecAlignConfig.from_dict({"model": MODEL, "train": {**TRAIN, **train}})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead, and results stay comparable
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(96, 48, 32, widths={"a": 4, "b": 6}, seq_len=3, seed=0, signal=2.0)


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory):
    """Three uninterrupted epochs: the run other tests compare against."""
    run_dir = tmp_path_factory.mktemp("ref")
    return train(data, config(), run_dir), run_dir


def weights(path):
    return load_file(str(path))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def strip_time(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_learns_better_than_the_mean(data, reference_run):
    result, _ = reference_run
    valid = data.splits["valid"]
    baseline = np.abs(valid.labels - data.splits["train"].labels.mean()).mean()
    assert result.status == "finished" and result.selection_metric == "MAE"
    assert result.best_value < 0.8 * baseline
    assert result.history[-1]["train"]["task"] < result.history[0]["train"]["task"]


def test_history_has_every_metric_loss_and_level(reference_run):
    result, run_dir = reference_run
    history = read_history(run_dir)
    assert strip_time(history) == strip_time(result.history) and len(history) == 3
    for row in history:
        assert set(row["valid"]) == set(REGRESSION_KEYS) | {"loss"}
        assert set(row["train"]) == set(BATCH_KEYS)
        assert set(AlignmentLevels.LEVELS) <= set(row["train"])
        assert all(np.isfinite(v) for v in row["train"].values())
    assert [row["epoch"] for row in history] == [1, 2, 3]


def test_run_directory_and_card(data, reference_run):
    result, run_dir = reference_run
    for name in ("card.json", "best.safetensors", "last.safetensors", "history.json", "status.json"):
        assert (run_dir / name).exists(), name
    status = read_status(run_dir)
    assert status["status"] == "finished" and status["epoch"] == 3 and status["error"] is None
    _, card = load_model(run_dir)
    assert card.widths == {"a": 4, "b": 6} and card.seq_lens == {"a": 3, "b": 3}
    assert card.data_fingerprint == data.fingerprint() and card.best_epoch == result.best_epoch
    labels = data.splits["train"].labels
    assert card.label_range == [pytest.approx(float(labels.min())), pytest.approx(float(labels.max()))]
    assert set(card.metrics) == {"train", "valid", "test"}
    assert card.metrics["valid"]["MAE"] == pytest.approx(result.best_value)
    assert set(card.extra["training_alignment"]) == set(AlignmentLevels.LEVELS)
    protos = card.prototype_tensors()
    assert protos["a"].means.shape == (3, 8) and protos["a"].weights.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_same_seed_gives_identical_runs(data, reference_run, tmp_path):
    result, run_dir = reference_run
    again = train(data, config(), tmp_path)
    assert_same_weights(run_dir / "best.safetensors", tmp_path / "best.safetensors")
    assert_same_weights(run_dir / "last.safetensors", tmp_path / "last.safetensors")
    assert strip_time(again.history) == strip_time(result.history)


class Crash(Callback):
    def on_batch_end(self, epoch, batch, num_batches, losses):
        if epoch == 3 and batch == 2:
            raise RuntimeError("simulated crash")


def test_resume_after_crash_is_exact(data, reference_run, tmp_path):
    result, run_dir = reference_run
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(data, config(), tmp_path, callbacks=[Crash()])
    status = read_status(tmp_path)
    assert status["status"] == "failed" and status["epoch"] == 2 and "simulated crash" in status["error"]
    resumed = train(data, config(), tmp_path, resume=True)
    assert resumed.status == "finished"
    assert_same_weights(run_dir / "last.safetensors", tmp_path / "last.safetensors")
    assert_same_weights(run_dir / "best.safetensors", tmp_path / "best.safetensors")
    assert strip_time(resumed.history) == strip_time(result.history)
    assert strip_time(read_history(tmp_path)) == strip_time(result.history)


def test_resume_refuses_other_config_or_data(data, reference_run):
    _, run_dir = reference_run
    with pytest.raises(RunError, match="learning_rate"):
        train(data, config(learning_rate=1e-2), run_dir, resume=True)
    other = make_synthetic(96, 48, 32, widths={"a": 4, "b": 6}, seq_len=3, seed=1, signal=2.0)
    with pytest.raises(RunError, match="data differ"):
        train(other, config(), run_dir, resume=True)
    with pytest.raises(RunError, match="already holds a run"):
        train(data, config(), run_dir)


def test_early_stopping_stops(data, tmp_path):
    result = train(data, config(learning_rate=1e-12, weight_decay=0.0, early_stop_patience=1, num_epochs=6), tmp_path)
    # lr 1e-12 is below float32 resolution: weights never change; epoch 1 sets the best, epoch 2 does not improve, so training stops after it.
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.card.extra["stopped_early"] and result.best_epoch == 1


class CancelInEpoch2(Callback):
    def __init__(self):
        self.best_after_epoch1 = None
        self.stop = False

    def on_epoch_end(self, epoch, row):
        self.best_after_epoch1 = self.best_after_epoch1 or weights(self.run_dir / "best.safetensors")

    def on_batch_end(self, epoch, batch, num_batches, losses):
        self.stop = epoch == 2 and batch == 2

    def should_stop(self):
        return self.stop


def test_cancel_keeps_best_and_saves_last(data, tmp_path):
    cancel = CancelInEpoch2()
    cancel.run_dir = tmp_path
    result = train(data, config(), tmp_path, callbacks=[cancel])
    assert result.status == "cancelled" and read_status(tmp_path)["status"] == "cancelled"
    assert len(result.history) == 1
    best, last = weights(tmp_path / "best.safetensors"), weights(tmp_path / "last.safetensors")
    assert all(torch.equal(best[k], cancel.best_after_epoch1[k]) for k in best)
    assert any(not torch.equal(best[k], last[k]) for k in best)  # last holds the mid-epoch-2 weights
    assert json.loads((tmp_path / "card.json").read_text())["prototypes"] is not None


class TensorCounter(Callback):
    def __init__(self):
        self.counts = []

    def on_batch_end(self, epoch, batch, num_batches, losses):
        assert set(losses) == set(BATCH_KEYS) and all(isinstance(v, float) for v in losses.values())
        # type() rather than isinstance(): it never runs a lazy module's __getattr__.
        self.counts.append(sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor)))


def test_memory_is_flat_across_batches(data, tmp_path):
    counter = TensorCounter()
    train(data, config(num_epochs=2), tmp_path, callbacks=[counter])
    # After the first step creates Adam's state, the number of live tensors must not grow with batches.
    steady = counter.counts[1:]
    assert len(steady) == 5 and max(steady) == min(steady), counter.counts


def test_classification_with_balanced_weights_and_contrastive(tmp_path):
    data = make_synthetic(90, 45, 0, widths={"a": 4, "b": 6}, seq_len=2, task="classification", num_classes=3,
                          seed=2, signal=2.0)
    result = train(data, config(num_epochs=2, class_weight="balanced", ct_weight=0.1, task_loss="cross_entropy"),
                   tmp_path)
    assert result.selection_metric == "WAF1" and result.card.extra["selection_mode"] == "max"
    assert result.card.output_dim == 3 and result.card.num_classes == 3
    assert {"Acc", "WAF1", "loss"} <= set(result.history[0]["valid"])
    assert result.history[0]["train"]["contrastive"] > 0
    assert set(result.card.metrics) == {"train", "valid"}


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_return_free_memory_is_a_no_op_without_glibc(monkeypatch):
    """The trainer trims glibc's heap before the final pass; elsewhere (no libc.so.6, no malloc_trim) it
    must neither fail nor stop the run."""
    import ctypes

    from decalign.train import trainer

    trainer.return_free_memory()  # glibc here: really trims

    class NoTrim:
        def __init__(self, name):
            pass

    for fake in (NoTrim, lambda name: (_ for _ in ()).throw(OSError(f"{name}: not found"))):
        monkeypatch.setattr(ctypes, "CDLL", fake)
        assert trainer.return_free_memory() is None


def test_the_optimizer_is_fused_adam_on_the_cpu_with_default_adams_numbers_to_rounding():
    from types import SimpleNamespace

    from decalign.train.trainer import make_optimizer

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder = torch.nn.Linear(6, 5)  # stands for a BERT: its own group at bert_learning_rate
            self.head = torch.nn.Sequential(torch.nn.LayerNorm(5), torch.nn.Linear(5, 1))

        def forward(self, x):
            return self.head(self.text_encoder(x))

    torch.manual_seed(0)
    model = Net()
    for cfg in (SimpleNamespace(learning_rate=2e-3, weight_decay=0.005, bert_learning_rate=0.0),
                SimpleNamespace(learning_rate=2e-3, weight_decay=0.005, bert_learning_rate=5e-4)):
        ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
        optimizer = make_optimizer(ours, cfg)
        assert all(group["fused"] and not group["foreach"] for group in optimizer.param_groups)
        bert_ids = {id(p) for p in theirs.text_encoder.parameters()}
        groups = [{"params": [p for p in theirs.parameters() if id(p) in bert_ids], "lr": cfg.bert_learning_rate},
                  {"params": [p for p in theirs.parameters() if id(p) not in bert_ids]}]
        reference = torch.optim.Adam(groups if cfg.bert_learning_rate else theirs.parameters(),
                                     lr=cfg.learning_rate, weight_decay=cfg.weight_decay, foreach=False)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x = torch.randn(8, 6, generator=g)
            for net, opt in ((ours, optimizer), (theirs, reference)):
                opt.zero_grad()
                net(x).square().mean().backward()
                opt.step()
        for a, b in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert not torch.equal(next(ours.parameters()), next(model.parameters()))  # the steps did move them
        # the state a resumed run reloads: torch's, and it loads back into a fresh optimizer of ours
        state, expected = optimizer.state_dict()["state"], reference.state_dict()["state"]
        assert state.keys() == expected.keys() and len(state) == len(list(model.parameters()))
        for key in state:
            assert float(state[key]["step"]) == float(expected[key]["step"]) == 5
            for name in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key][name], expected[key][name], rtol=1e-5, atol=1e-9)
        restored = make_optimizer(copy.deepcopy(ours), cfg)
        restored.load_state_dict(optimizer.state_dict())
        assert torch.equal(restored.state_dict()["state"][0]["exp_avg"], state[0]["exp_avg"])
        # a run saved before the fused optimizer (default Adam's state) resumes in ours and keeps stepping
        resumed = copy.deepcopy(theirs)
        older = make_optimizer(resumed, cfg)
        older.load_state_dict(reference.state_dict())
        resumed(x).square().mean().backward()
        older.step()
        assert float(older.state_dict()["state"][0]["step"]) == 6


def test_an_eval_forward_after_a_fused_adam_step_gives_the_stepped_weights():
    """torch's fused Adam, the trainer's optimizer on the CPU, writes the parameters without bumping their version
    counters (0 before and after a step), so nothing derived from the weights may be kept across forwards by those
    counters: a kept stack of the encoders' weights once served a run's validation an earlier epoch's weights
    (README "What changed at stop 50"). Each eval forward after a step gives what a copy of the stepped model gives."""
    from decalign.model import DecAlign
    from decalign.train.trainer import make_optimizer

    torch.manual_seed(0)
    cfg = config()
    model = DecAlign(cfg.model, {"a": 4, "b": 6}, 1)
    optimizer = make_optimizer(model, cfg.train)
    x = {"a": torch.randn(8, 3, 4), "b": torch.randn(8, 3, 6)}

    def predict(net):
        net.eval()
        with torch.inference_mode():
            return net(x).prediction

    before = predict(model)
    for _ in range(2):
        model.train()
        optimizer.zero_grad()
        model(x, align=True).prediction.square().mean().backward()
        optimizer.step()
        after = predict(model)
        assert not torch.equal(after, before) and torch.equal(after, predict(copy.deepcopy(model)))
        before = after


def test_a_run_whose_data_cannot_give_a_baseline_still_finishes(tmp_path):
    # One validation sample: training accepts it, the linear baseline needs two to choose its
    # regularisation. The run used to train every epoch and then fail on the baseline.
    data = make_synthetic(40, 1, 8, widths={"a": 4, "b": 6}, seq_len=3, seed=1)
    result = train(data, config(num_epochs=1), tmp_path / "run")
    assert result.status == "finished" and read_status(tmp_path / "run")["status"] == "finished"
    assert result.card.baseline is None and set(result.card.metrics) == {"train", "valid", "test"}
    assert load_model(tmp_path / "run")[1].baseline is None
