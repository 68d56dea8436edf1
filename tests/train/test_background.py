"""Training in its own process: progress on disk, cancel, resume, and a SIGKILL mid-epoch.

The three runs start together (two cores: waiting on them one after the other would double the time)
with one torch thread each; every test then follows its own run through the files in its folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from decalign.checkpoint import load_model
from decalign.config import DecAlignConfig
from decalign.data import MultimodalDataset, load_dataset, save_npz
from decalign.train.background import (
    cancel_training,
    kill_training,
    list_runs,
    new_run_dir,
    resume_training,
    run_state,
    start_training,
    training_alive,
    wait_training,
)
from decalign.train.progress import read_progress
from decalign.train.replay import load_replay
from decalign.train.runs import read_history

ROOT = Path(__file__).resolve().parents[2]
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"
TINY = ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "model.pde_dim=16",
        "model.num_prototypes=4", "train.batch_size=128"]
TIMEOUT = 240.0


def demo_config(epochs: int, batch_size: int = 128) -> DecAlignConfig:
    config = DecAlignConfig.from_json(ROOT / "assets" / "demo_config.json")
    return config.override([*TINY, f"train.num_epochs={epochs}", f"train.batch_size={batch_size}",
                            "train.early_stop_patience=0"])


def wait_for(predicate, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def epoch_reached(run_dir: Path, epoch: int):
    progress = read_progress(run_dir)
    return progress if progress and progress["epoch"] >= epoch and progress["batch"] >= 1 else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    small = root / "digits_small.npz"
    data = load_dataset(DEMO_DATA)
    splits = {s: p.subset(np.arange(min(256 if s == "train" else 64, len(p)))) for s, p in data.splits.items()}
    save_npz(MultimodalDataset(splits, data.task, data.num_classes), small)
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the training processes
    try:
        dirs = {"demo": new_run_dir("demo", root), "cancel": new_run_dir("cancel", root),
                "kill": new_run_dir("kill", root)}
        start_training(dirs["demo"], DEMO_DATA, demo_config(2))
        start_training(dirs["cancel"], small, demo_config(200, 32))
        start_training(dirs["kill"], small, demo_config(200, 32))
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    yield root, dirs
    for run_dir in dirs.values():  # never leave a process behind, whatever failed
        kill_training(run_dir)


def test_two_epoch_demo_run_reports_progress_and_finishes(runs):
    root, dirs = runs
    run = dirs["demo"]
    seen = set()

    def finished():
        progress = read_progress(run)
        if progress:
            seen.add(progress["fraction"])
            assert progress["total_epochs"] == 2 and progress["num_batches"] == 11  # 1400 / 128
        return run_state(run).state in ("finished", "failed", "crashed")

    wait_for(finished, "the demo run to end")
    assert run_state(run).state == "finished", (run / "train.log").read_text()
    assert len(seen) >= 2 and max(seen) == 1.0  # the progress advanced while we watched
    history = read_history(run)
    assert [row["epoch"] for row in history] == [1, 2]
    assert load_replay(run).epoch_numbers == [1, 2]
    info = next(i for i in list_runs(root) if i.path == run)
    assert info.has_model and info.best_epoch in (1, 2) and "Acc" in info.best_metrics
    assert info.num_epochs == 2 and info.data == str(DEMO_DATA)
    # started with --share-cpu, so the log says how it shared (OMP_NUM_THREADS=1 here: one thread of one)
    assert "--share-cpu: ran on 1 of 1 torch threads (0 changes)" in (run / "train.log").read_text()


def test_cancel_keeps_best_then_resume_finishes(runs):
    _, dirs = runs
    run = dirs["cancel"]
    wait_for(lambda: epoch_reached(run, 2), "epoch 2 of the run to cancel")
    cancel_training(run)
    assert run_state(run).cancel_requested
    wait_for(lambda: run_state(run).state != "running", "the cancelled run to stop")
    state = run_state(run)
    assert state.state == "cancelled" and state.resumable and not state.alive
    done = len(read_history(run))
    assert done >= 1
    _model, card = load_model(run)  # best kept and loadable
    assert card.best_epoch is not None and card.best_epoch <= done
    resume_training(run, num_epochs=done + 1)
    assert not run_state(run).cancel_requested  # a fresh start clears the old request
    wait_for(lambda: run_state(run).state in ("finished", "failed", "crashed", "cancelled"),
             "the resumed run to end")
    assert run_state(run).state == "finished", (run / "train.log").read_text()
    assert [row["epoch"] for row in read_history(run)] == list(range(1, done + 2))
    assert load_replay(run).epoch_numbers == list(range(1, done + 2))


def state_pid(run) -> int:
    """The pid of the run's (now killed) training process."""
    return int(json.loads((run / "train.pid").read_text())["pid"])


def test_sigkill_mid_epoch_is_crashed_and_resumes(runs):
    _, dirs = runs
    run = dirs["kill"]
    wait_for(lambda: epoch_reached(run, 2), "epoch 2 of the run to kill")
    assert kill_training(run)  # SIGKILL to the process group, mid-epoch
    wait_training(run, timeout=30)
    state = run_state(run)
    assert state.state == "crashed" and state.resumable and not state.alive
    _model, card = load_model(run)  # the checkpoint written before the kill is intact
    done = json.loads((run / "resume" / "state.json").read_text())["epoch"]  # last finished epoch
    assert done >= 1 and card.best_epoch <= done + 1
    assert len(read_history(run)) in (done, done + 1)  # a row of an unsaved epoch is dropped on resume
    # what a write cut short by the kill leaves behind (the real ones are too brief to hit on purpose)
    stale = [run / f".history.json.{state_pid(run)}-0badf00d.tmp",
             run / "resume" / f".state.json.{state_pid(run)}-0badf00d.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    resume_training(run, num_epochs=done + 1)
    wait_for(lambda: run_state(run).state in ("finished", "failed", "crashed", "cancelled"),
             "the resumed run to end")
    assert run_state(run).state == "finished", (run / "train.log").read_text()
    assert [row["epoch"] for row in read_history(run)] == list(range(1, done + 2))  # no gap, no repeat
    load_model(run)
    assert not any(p.exists() for p in stale)  # cleaned when the run resumed


def test_refuses_a_second_process_and_reports_launch_failures(tmp_path):
    run = new_run_dir("bad", tmp_path)
    start_training(run, tmp_path / "missing.npz", demo_config(1))
    assert training_alive()
    assert wait_training(run, timeout=120) == 2  # the CLI's one-line error
    assert not training_alive()
    state = run_state(run)
    assert state.state == "failed" and "missing.npz" in (state.error or "")
    assert run_state(tmp_path).state == "empty"


def test_the_runs_list_reads_an_unchanged_card_once(tmp_path, monkeypatch):
    """``list_runs`` reads every run's card at each refresh of a live run's page (4 ms a card): a card whose
    file is unchanged (same signature, settled) is parsed once; a rewritten one is read again."""
    from decalign import cache, checkpoint

    for name in ("20260101-000000-a", "20260101-000000-b"):
        shutil.copytree(ROOT / "assets" / "demo_model", tmp_path / name)
    parsed = []
    read = checkpoint.read_card_file
    monkeypatch.setattr(checkpoint, "read_card_file", lambda path, **kw: parsed.append(path.parent.name) or read(path, **kw))
    assert [r.best_metrics["Acc"] for r in list_runs(tmp_path)] == [0.9833333333333333] * 2
    assert [r.best_metrics["Acc"] for r in list_runs(tmp_path)] == [0.9833333333333333] * 2
    assert len(parsed) == 4  # just written: not settled yet (a coarse clock could hide a same-size rewrite)

    monkeypatch.setattr(cache, "SETTLED_NS", -1)
    parsed.clear()
    first = list_runs(tmp_path)
    first[0].best_metrics["Acc"] = -1.0  # the list's own copy: the shared card is not changed
    assert [r.best_metrics["Acc"] for r in list_runs(tmp_path)] == [0.9833333333333333] * 2
    assert sorted(parsed) == ["20260101-000000-a", "20260101-000000-b"]  # once each

    card = tmp_path / "20260101-000000-a" / "card.json"
    data = json.loads(card.read_text())
    data["metrics"]["valid"]["Acc"] = 0.5
    card.write_text(json.dumps(data))
    parsed.clear()
    assert [r.best_metrics["Acc"] for r in list_runs(tmp_path)] == [0.9833333333333333, 0.5]
    assert parsed == ["20260101-000000-a"]
