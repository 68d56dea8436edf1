"""Fixtures for the command-line tests: tiny dataset files and a trained tiny run, via ``main``."""

from __future__ import annotations

import json

import pytest
import torch

from decalign.cli import main
from decalign.data import make_synthetic, save_npz

MODEL = {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3, "pde_dim": 8}


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def audit_db(tmp_path, monkeypatch):
    path = tmp_path / "audit.sqlite3"
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(path))
    return path


def write_config(path, **train) -> str:
    path.write_text(json.dumps({"model": MODEL, "train": {"batch_size": 32, "num_epochs": 2,
                                                          "learning_rate": 3e-3, "seed": 3, **train}}))
    return str(path)


@pytest.fixture(scope="session")
def regression_run(tmp_path_factory):
    """(data file, run dir) of a 2-epoch regression run trained through ``decalign train``."""
    folder = tmp_path_factory.mktemp("cli_reg")
    data = folder / "tiny.npz"
    save_npz(make_synthetic(80, 40, 30, widths={"a": 4, "b": 6}, seq_len=3, seed=0, signal=2.0), data)
    run = folder / "run"
    code = main(["train", "--data", str(data), "--config", write_config(folder / "cfg.json"),
                 "--out", str(run), "--quiet", "--device", "cpu"])
    assert code == 0
    return data, run


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_cls")
    data = folder / "tiny_cls.npz"
    save_npz(make_synthetic(60, 30, 25, widths={"a": 4, "b": 6}, seq_len=2, task="classification",
                            num_classes=3, seed=1, signal=2.0), data)
    run = folder / "run"
    code = main(["train", "--data", str(data), "--config", write_config(folder / "cfg.json"),
                 "--set", "task_loss=cross_entropy", "--out", str(run), "--quiet"])
    assert code == 0
    return data, run
