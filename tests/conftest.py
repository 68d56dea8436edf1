"""Session-wide isolation: no test writes to the user's real audit trail or runs folder.

Tests (and the servers and subprocesses they start, which inherit the environment) get a temporary
``DECALIGN_AUDIT_DB``, ``DECALIGN_RUNS_DIR`` and ``DECALIGN_CACHE_DIR``; a test that needs its own sets them again.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_state(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-state")
    saved = {k: os.environ.get(k) for k in ("DECALIGN_AUDIT_DB", "DECALIGN_RUNS_DIR", "DECALIGN_CACHE_DIR")}
    os.environ["DECALIGN_AUDIT_DB"] = str(root / "audit.sqlite3")
    os.environ["DECALIGN_RUNS_DIR"] = str(root / "runs")
    os.environ["DECALIGN_CACHE_DIR"] = str(root / "cache")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def memory_root(tmp_path, monkeypatch):
    """The sandbox's memory root (``/dev/shm``) stood for by a folder of this test's own, no temporary folder
    chosen, and a fresh record of sweeps."""
    from decalign import sandbox

    root = tmp_path / "shm"
    root.mkdir()
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sandbox, "MEMORY_ROOT", root)
    monkeypatch.setattr(sandbox, "_swept", set())
    return root


def save_tiny_bert(folder, *, vocab: int = 40, hidden: int = 64, layers: int = 2, positions: int = 32,
                   seed: int = 0):
    """A small random BERT saved with ``save_pretrained`` (a local folder, as users pass ``pretrained``);
    width 64 so its heads follow the released BERTs' rule (width / 64)."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=2 * hidden,
                        max_position_embeddings=positions, type_vocab_size=2)
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
