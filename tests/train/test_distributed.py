"""Two gloo processes under torchrun train exactly what one process trains on the same global batches."""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from decalign.data import make_synthetic, save_npz

# Dropout off: masks are drawn per process, so with dropout the two runs could not agree.
SETTINGS = [
    "model.d_model=8", "model.num_heads=2", "model.num_layers=1", "model.num_prototypes=3", "model.pde_dim=4",
    "model.embed_dropout=0", "model.attn_dropout=0", "model.relu_dropout=0", "model.res_dropout=0",
    "train.batch_size=24", "train.num_epochs=2", "train.learning_rate=0.003", "train.beta=0.05",
    "train.ct_weight=0.05", "train.seed=7",
]
# Sums over ranks run in another order than in one process; float32 round-off stays far below this.
TOLERANCE = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(cmd: list[str], data: Path, out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DECALIGN_AUDIT_DB": str(out.parent / "audit.sqlite3")}
    args = ["train", "--data", str(data), "--out", str(out), "--quiet", "--device", "cpu"]
    for item in SETTINGS:
        args += ["--set", item]
    done = subprocess.run(cmd + args, check=False, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]


def _meaningful(key: str, value: np.ndarray) -> np.ndarray:
    """Drop the key rows of the attention's input bias: softmax ignores a shift shared by all keys, so
    their true gradient is exactly zero, and Adam turns the round-off left there into full-size steps."""
    if key.endswith("self_attn.in_proj_bias"):
        d = len(value) // 3
        return np.concatenate([value[:d], value[2 * d:]])
    return value


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    # 70 training samples: batches of 24, 24, 22 -> the last global batch splits 11/11, all others 12/12.
    data = tmp_path / "tiny.npz"
    save_npz(make_synthetic(n_train=70, n_valid=21, n_test=10, widths={"a": 6, "b": 4, "c": 5}, seq_len=4,
                            seed=3), data)
    _train([sys.executable, "-m", "decalign"], data, tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port()), "-m", "decalign"]
    _train(torchrun, data, tmp_path / "ddp")

    one, two = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("single", "ddp"))
    assert one.keys() == two.keys()
    worst = max(float(np.abs(_meaningful(k, one[k]) - _meaningful(k, two[k])).max()) for k in one)
    assert worst < TOLERANCE, worst
    moved = max(float(np.abs(one[k]).max()) for k in one)
    assert moved > 0
    h1, h2 = (json.loads((tmp_path / run / "history.json").read_text()) for run in ("single", "ddp"))
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2):
        assert a["valid"]["MAE"] == pytest.approx(b["valid"]["MAE"], abs=TOLERANCE)
        for key in ("task", "prototype_transport", "mmd", "contrastive"):
            assert a["train"][key] == pytest.approx(b["train"][key], rel=1e-3, abs=1e-5), key
    # Only rank 0 wrote: one status file saying finished, one card.
    assert json.loads((tmp_path / "ddp" / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_per_rank_alignment_differs_from_one_process(tmp_path: Path) -> None:
    """With train.global_alignment off each rank fits its own prototypes on half a batch: not the same run."""
    data = tmp_path / "tiny.npz"
    save_npz(make_synthetic(n_train=48, n_valid=12, n_test=6, widths={"a": 6, "b": 4}, seq_len=3, seed=4), data)
    _train([sys.executable, "-m", "decalign"], data, tmp_path / "single")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port()), "-m", "decalign"]
    SETTINGS.append("train.global_alignment=false")
    try:
        _train(torchrun, data, tmp_path / "ddp")
    finally:
        SETTINGS.remove("train.global_alignment=false")
    one, two = (load_file(str(tmp_path / run / "last.safetensors")) for run in ("single", "ddp"))
    worst = max(float(np.abs(_meaningful(k, one[k]) - _meaningful(k, two[k])).max()) for k in one)
    assert worst > 100 * TOLERANCE


PF_EXITING = 0x4  # Linux task flag, set as a thread starts to exit


def _thread_ids() -> set[str]:
    """This process's threads that are not exiting. A joined thread can still be listed in /proc for a
    moment after its join returned (the kernel wakes the joiner before it removes the task), but it is
    already marked exiting."""
    live = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone between the listing and the read
        if not int(fields[6]) & PF_EXITING:
            live.add(tid)
    return live


def test_destroy_process_group_tears_down_an_active_group(tmp_path: Path) -> None:
    """A real (one-process) gloo group is gone afterwards; a world of one leaves the group alone."""
    import torch.distributed as dist

    from decalign.train import distributed

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.FileStore(str(tmp_path / "store"), 1))
    try:
        distributed.destroy_process_group(distributed.SINGLE, lambda: None)
        assert dist.is_initialized()
        distributed.destroy_process_group(distributed.DistContext(rank=0, world_size=2), lambda: None)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_destroy_process_group_joins_the_gloo_threads_after_dropping_ddp(tmp_path: Path, monkeypatch) -> None:
    """The group outlives the DDP wrapper, so gloo's threads are joined inside the call by the group's own
    destructor (which releases the GIL), not later by the reducer's (which holds it and could deadlock)."""
    import torch
    import torch.distributed as dist

    from decalign.train import distributed

    real_init = dist.init_process_group
    store = dist.FileStore(str(tmp_path / "store"), 1)
    monkeypatch.setattr(dist, "init_process_group",  # a world of one process, through the project's init
                        lambda backend, rank, world_size: real_init(backend, rank=0, world_size=1, store=store))
    before = _thread_ids()
    distributed.init_process_group(distributed.DistContext(0, 2), torch.device("cpu"))
    gloo_threads = _thread_ids() - before
    assert gloo_threads
    wrapped = {"model": distributed.wrap_model(torch.nn.Linear(3, 2), distributed.DistContext(0, 2),
                                               torch.device("cpu"))}
    wrapped["model"](torch.ones(4, 3)).sum().backward()
    parts = [torch.empty(3)]
    dist.all_gather(parts, torch.ones(3))
    del parts
    joined_with_the_wrapper = []

    def drop_wrappers() -> None:
        wrapped.clear()
        gc.collect()
        joined_with_the_wrapper.append(not gloo_threads <= _thread_ids())

    distributed.destroy_process_group(distributed.DistContext(0, 2), drop_wrappers)
    assert joined_with_the_wrapper == [False]  # the group was still held when the reducer went
    assert not dist.is_initialized()
    assert not gloo_threads & _thread_ids()


@pytest.mark.parametrize("fails", [False, True])
def test_a_run_destroys_its_process_group_when_it_ends(tmp_path: Path, monkeypatch, fails: bool) -> None:
    """``Trainer.fit`` tears the group down after a finished run and after a failed one."""
    from decalign.config import DecAlignConfig
    from decalign.train import Callback, distributed, train

    calls = []
    monkeypatch.setattr(distributed, "destroy_process_group", lambda ctx, drop: calls.append((ctx, drop)))

    class Boom(Callback):
        def on_epoch_end(self, epoch, row):
            raise RuntimeError("stop here")

    data = make_synthetic(n_train=20, n_valid=6, n_test=0, widths={"a": 3, "b": 2}, seq_len=3, seed=1)
    config = DecAlignConfig.from_dict({"model": {"d_model": 8, "num_heads": 2, "num_layers": 1,
                                                 "num_prototypes": 2, "pde_dim": 4},
                                       "train": {"batch_size": 10, "num_epochs": 1}})
    if fails:
        with pytest.raises(RuntimeError, match="stop here"):
            train(data, config, tmp_path / "run", callbacks=[Boom()])
    else:
        train(data, config, tmp_path / "run")
    [(ctx, drop)] = calls
    assert ctx == distributed.SINGLE
    trainer = drop.__self__
    trainer.step_model = object()  # as if wrapped
    drop()
    assert trainer.step_model is trainer.model
