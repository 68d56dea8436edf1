"""Replay recording: files per epoch, index, and the maths of load_replay against independent code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import entropy as scipy_entropy
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from decalign.config import DecAlignConfig, ModelConfig, TrainConfig
from decalign.data import make_synthetic
from decalign.model import plan_entropy
from decalign.train import train
from decalign.train.progress import CancelFileCallback, ProgressFileCallback, eta_seconds, read_progress
from decalign.train.replay import (
    ReplayError,
    load_replay,
    procrustes_rotation,
    project_epoch,
    separation_score,
)

CONFIG = DecAlignConfig(ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=3, pde_dim=8),
                        TrainConfig(task_loss="cross_entropy", batch_size=32, learning_rate=3e-3, num_epochs=2,
                                    seed=0))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(64, 40, 0, widths={"a": 5, "b": 4}, seq_len=3, task="classification", num_classes=2,
                          seed=1)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("replay") / "run"
    progress = ProgressFileCallback(run_dir / "progress.json", interval=0.0)
    train(data, CONFIG, run_dir, callbacks=[progress], replay=True)
    return run_dir


def test_files_and_index(run, data):
    index = json.loads((run / "replay" / "index.json").read_text())
    assert index["modalities"] == ["a", "b"]
    assert index["probe_ids"] == [str(i) for i in data.splits["valid"].ids[:40]]
    assert [e["epoch"] for e in index["epochs"]] == [1, 2]
    assert (run / "replay" / "epoch_0002.safetensors").is_file()
    assert set(index["epochs"][0]["levels"]) == {"decoupling", "prototype_transport", "sample_to_prototype",
                                                  "moment_matching", "mmd"}


def test_load_replay_shapes_and_marginals(run):
    replay = load_replay(run)
    assert replay.epoch_numbers == [1, 2]
    assert replay.labels.shape == (40,)
    e = replay.at(2)
    assert e.plan.shape == (3, 3)
    assert e.unique_xy["a"].shape == (40, 2) and e.common_xy["b"].shape == (40, 2)
    assert e.prototype_xy["a"].shape == (3, 2)
    # the plan is a joint distribution whose marginals are the mean posteriors (close to the weights)
    assert e.plan.sum() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(e.pair_plans[("a", "b")], e.plan, atol=1e-6)
    summary = replay.summary()
    assert list(summary["epoch"]) == [1, 2]
    assert summary["plan_entropy_normalised"].between(0, 1).all()


def test_progress_file_finished(run):
    progress = read_progress(run)
    assert progress["state"] == "finished"
    assert progress["epoch"] == 2 and progress["batch"] == progress["num_batches"] == 2
    assert progress["fraction"] == 1.0 and progress["eta_s"] == 0.0
    assert [b["batch"] for b in progress["batches"]] == [1, 2]


def test_entropy_matches_scipy():
    rng = np.random.default_rng(0)
    plan = rng.random((3, 4, 2))
    plan[0, 0, 0] = 0.0
    assert plan_entropy(plan) == pytest.approx(scipy_entropy(plan.ravel()))
    assert plan_entropy(np.eye(3)) == pytest.approx(np.log(3))
    assert plan_entropy(np.ones((4, 4))) == pytest.approx(np.log(16))


def test_procrustes_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    np.testing.assert_allclose(procrustes_rotation(a, b), orthogonal_procrustes(a, b)[0], atol=1e-10)


def test_projection_is_pca_and_stable_under_sign_flips():
    rng = np.random.default_rng(2)
    unique = {"a": rng.normal(size=(20, 5)), "b": rng.normal(size=(20, 5)) + 2}
    common = {"a": rng.normal(size=(20, 5)) - 1, "b": rng.normal(size=(20, 5))}
    means = {"a": rng.normal(size=(3, 5)), "b": rng.normal(size=(3, 5))}
    _coords, protos, frame = project_epoch(unique, common, means, None)
    stacked = np.concatenate([unique["a"], common["a"], unique["b"], common["b"]])
    ref = PCA(2).fit(stacked)
    # same subspace as scikit-learn's PCA, up to the sign of each axis
    np.testing.assert_allclose(np.abs(frame), np.abs(ref.transform(stacked)), atol=1e-8)
    np.testing.assert_allclose(np.abs(protos["a"]), np.abs(ref.transform(means["a"])), atol=1e-8)
    # the same features again, aligned to a sign-flipped frame, land on that frame exactly
    flipped = frame * np.array([-1.0, 1.0])
    _, _, aligned = project_epoch(unique, common, means, flipped)
    np.testing.assert_allclose(aligned, flipped, atol=1e-8)


def test_separation_matches_silhouette():
    rng = np.random.default_rng(3)
    unique = {"a": rng.normal(size=(25, 4)), "b": rng.normal(size=(25, 4))}
    common = {"a": rng.normal(size=(25, 4)) + 5, "b": rng.normal(size=(25, 4))}
    expected = np.mean([silhouette_score(np.r_[unique[m], common[m]], np.r_[np.zeros(25), np.ones(25)])
                        for m in ("a", "b")])
    assert separation_score(unique, common) == pytest.approx(expected)
    assert separation_score({"a": unique["a"]}, {"a": common["a"]}) > 0.5  # far apart groups


def test_eta_and_cancel_file(tmp_path):
    assert eta_seconds(10.0, 5, 20) == pytest.approx(40.0)
    assert eta_seconds(10.0, 0, 20) is None
    cb = CancelFileCallback(tmp_path / "cancel")
    assert not cb.should_stop()
    (tmp_path / "cancel").write_text("x")
    assert cb.should_stop()


def test_cancel_file_stops_training_cleanly(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "cancel").write_text("now")
    result = train(data, CONFIG, tmp_path / "run", callbacks=[CancelFileCallback(tmp_path / "run" / "cancel")],
                   replay=True)
    assert result.status == "cancelled"
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "cancelled"


def test_missing_and_broken_replay(tmp_path, run):
    with pytest.raises(ReplayError, match="no replay recorded"):
        load_replay(tmp_path)
    broken = tmp_path / "broken" / "replay"
    broken.mkdir(parents=True)
    index = json.loads((run / "replay" / "index.json").read_text())
    (broken / "index.json").write_text(json.dumps(index))
    with pytest.raises(ReplayError, match="not there"):
        load_replay(broken.parent)
    (broken / "epoch_0001.safetensors").write_bytes(b"garbage")
    with pytest.raises(ReplayError, match="safetensors"):
        load_replay(broken.parent)
