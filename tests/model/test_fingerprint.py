"""``model_fingerprint``: sha256 of the weights then the card, with the weights' hash remembered per file
signature (the dashboard asks for it several times a rerun)."""

from __future__ import annotations

import hashlib
import os

import pytest

from decalign import cache, checkpoint
from decalign.checkpoint import model_fingerprint


def _run(tmp_path, weights: bytes = b"w" * 3000, card: bytes = b'{"a": 1}'):
    (tmp_path / "best.safetensors").write_bytes(weights)
    (tmp_path / "card.json").write_bytes(card)
    return tmp_path


@pytest.fixture(autouse=True)
def _files_settle_at_once(monkeypatch):
    """Files here are seconds old at most: let the cache keep them (one test checks the wait)."""
    monkeypatch.setattr(cache, "SETTLED_NS", -1)


def _expected(run) -> str:
    return hashlib.sha256((run / "best.safetensors").read_bytes() + (run / "card.json").read_bytes()).hexdigest()


def test_the_fingerprint_is_the_sha256_of_weights_then_card_on_every_call(tmp_path):
    run = _run(tmp_path)
    assert model_fingerprint(run) == _expected(run)
    assert model_fingerprint(run) == _expected(run)  # from the cached weights' state
    (run / "card.json").write_bytes(b'{"a": 2}')  # the card is hashed on every call
    assert model_fingerprint(run) == _expected(run)


def test_unchanged_weights_are_read_once(tmp_path, monkeypatch):
    run = _run(tmp_path)
    read: list[str] = []
    hash_file = checkpoint._hash_file
    monkeypatch.setattr(checkpoint, "_hash_file", lambda path, digest: (read.append(path.name),
                                                                       hash_file(path, digest))[1])
    for _ in range(3):
        model_fingerprint(run)
    assert read == ["best.safetensors", "card.json", "card.json", "card.json"]


def test_weights_rewritten_in_place_with_the_same_size_and_mtime_get_a_new_fingerprint(tmp_path):
    run = _run(tmp_path)
    weights = run / "best.safetensors"
    before = model_fingerprint(run)
    info = weights.stat()
    with open(weights, "r+b") as handle:  # same inode, same size
        handle.write(b"X")
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # the mtime put back; the ctime moves
    assert model_fingerprint(run) == _expected(run) != before


def test_weights_replaced_by_a_rename_get_a_new_fingerprint(tmp_path):
    run = _run(tmp_path)
    before = model_fingerprint(run)
    (run / "new").write_bytes(b"v" * 3000)
    os.replace(run / "new", run / "best.safetensors")
    assert model_fingerprint(run) == _expected(run) != before


def test_a_run_without_weights_hashes_its_card_alone(tmp_path):
    (tmp_path / "card.json").write_bytes(b"{}")
    assert model_fingerprint(tmp_path) == hashlib.sha256(b"{}").hexdigest()


def test_weights_changed_within_the_settling_time_are_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SETTLED_NS", 60_000_000_000)
    run = _run(tmp_path)
    read: list[str] = []
    hash_file = checkpoint._hash_file
    monkeypatch.setattr(checkpoint, "_hash_file", lambda path, digest: (read.append(path.name),
                                                                       hash_file(path, digest))[1])
    model_fingerprint(run)
    model_fingerprint(run)
    assert read.count("best.safetensors") == 2
