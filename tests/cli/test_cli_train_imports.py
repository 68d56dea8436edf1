"""``decalign train`` imports torch and the trainer while the data file is parsed, and never torch's compiler stack."""

from __future__ import annotations

import subprocess
import sys
import threading
import types

import pytest

from decalign import imports
from decalign.cli import train as train_cli


def _fake_importer(monkeypatch, on_import):
    monkeypatch.setattr(imports, "importlib", types.SimpleNamespace(import_module=on_import))


class _Data:
    """Stands for the dataset read: records where its fingerprint was computed."""

    def __init__(self, path: str):
        self.path, self.hashed, self.hashed_in = path, threading.Event(), None

    def file_fingerprint(self) -> str:
        self.hashed_in = threading.current_thread().name
        self.hashed.set()
        return "fingerprint"


def test_the_imports_run_while_the_data_is_read_and_hashed(monkeypatch):
    """The read waits until an import has happened, and the last import until the data are hashed: done one
    after the other, this would time out."""
    imported, started, data = [], threading.Event(), _Data("x.pkl")

    def on_import(name):
        if name == train_cli.TRAINING_IMPORTS[-1]:
            assert data.hashed.wait(timeout=120), "the data were not hashed while the imports ran"
        imported.append((name, threading.current_thread().name))
        started.set()

    def load_data(path):
        assert started.wait(timeout=120), "no import began while the data was read"
        return data

    _fake_importer(monkeypatch, on_import)
    monkeypatch.setattr(train_cli, "load_data", load_data)
    assert train_cli._load_while_importing("x.pkl") is data
    assert [name for name, _ in imported] == list(train_cli.TRAINING_IMPORTS)  # all done when it returns
    assert {thread for _, thread in imported} == {"training-imports"}
    assert data.hashed_in == threading.current_thread().name  # the caller's thread, not the importer's
    assert train_cli.TRAINING_IMPORTS == ("torch", "decalign.train.trainer")


def test_a_file_that_cannot_be_read_stops_the_imports_and_raises(monkeypatch):
    imported, first_done, failed_read = [], threading.Event(), threading.Event()

    def on_import(name):
        imported.append(name)
        first_done.set()
        failed_read.wait(timeout=120)  # the read fails while this first import runs

    def load_data(path):
        assert first_done.wait(timeout=120)
        failed_read.set()
        raise ValueError(f"{path}: not a dataset")

    _fake_importer(monkeypatch, on_import)
    monkeypatch.setattr(train_cli, "load_data", load_data)
    with pytest.raises(ValueError, match="x.pkl: not a dataset"):
        train_cli._load_while_importing("x.pkl")
    assert imported == ["torch"]  # the rest were not started


def test_a_failing_import_is_left_to_the_code_that_needs_it(monkeypatch):
    def on_import(name):
        if name == "torch":
            raise ImportError("broken")

    _fake_importer(monkeypatch, on_import)
    data = _Data("x.pkl")
    monkeypatch.setattr(train_cli, "load_data", lambda path: data)
    assert train_cli._load_while_importing("x.pkl") is data


def test_a_training_run_never_imports_the_compiler_stack(tmp_path):
    """torch's optimizer wrappers import ``torch._dynamo`` (1.5 s) on first use; the trainer's Adam does
    without them. A real run in a fresh interpreter, from the constructor to the resume files."""
    from decalign.data import make_synthetic, save_npz

    data = tmp_path / "data.npz"
    save_npz(make_synthetic(16, 4, 4, widths={"a": 3, "b": 4}, seq_len=3, seed=0), data)
    script = ("import sys; from decalign.cli import main; "
              f"code = main(['train', '--data', {str(data)!r}, '--out', {str(tmp_path / 'run')!r}, "
              "'--set', 'num_epochs=2', '--set', 'model.d_model=8', '--set', 'model.num_heads=2', '--quiet']); "
              "print('dynamo' if 'torch._dynamo' in sys.modules else 'eager'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "eager"
    assert (tmp_path / "run" / "resume").is_dir()  # the optimizer's state_dict was written
