"""The one audit function: where its reference comes from, what it says, and ``decalign audit``."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "explain"))

from explain_fixtures import digits, train_small

from decalign.audit.run import NO_HELD_OUT, PreparedReference, prepare_reference, run_audit
from decalign.audit.store import AuditTrail
from decalign.checkpoint import model_fingerprint, save_model
from decalign.cli import main
from decalign.data import save_npz
from decalign.train.reference import build_reference, save_reference


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = digits(150)
    model, card = train_small(ds, steps=40)
    card = replace(card, data_fingerprint=ds.fingerprint())
    full = build_reference(model, card, ds.splits["train"], ds.splits["valid"])
    old = build_reference(model, card, ds.splits["train"])  # as written before held-out features were kept
    yield model, card, ds, full, old
    torch.set_num_threads(threads)


def _shifted(ds, split="test", sd=3.0):
    """A copy of ``ds`` whose ``split`` features moved by ``sd`` standard deviations."""
    part = ds.splits[split]
    moved = replace(part, features={m: x + sd * x.std(0, keepdims=True) for m, x in part.features.items()})
    return replace(ds, splits={**ds.splits, split: moved})


def test_stored_held_out_reference_is_used_as_it_is(setup):
    model, card, ds, full, _ = setup
    prepared = prepare_reference(model, card, ds, "digits.npz", full)
    assert prepared.reference is full and prepared.notes == []
    audit = run_audit(model, card, ds, "test", data_name="digits.npz", reference=prepared)
    assert audit.drift is not None and audit.drift.reference == "the validation split stored with the run"
    data = audit.to_json()
    assert data["drift"]["drifted"] is False and set(data["drift"]["modalities"]) == set(ds.widths)
    assert data["flags"]["thresholds_calibrated_on"] == "valid"
    assert data["slices"]["by"] == "class" and {"precision", "recall", "F1"} <= set(data["slices"]["rows"][0])
    assert data["error"] == "misclassification" and data["metric_convention"] == "classification"
    json.dumps(data, allow_nan=False)  # strict JSON


def test_older_run_uses_its_own_data_and_never_the_training_features(setup):
    model, card, ds, full, old = setup
    prepared = prepare_reference(model, card, ds, "digits.npz", old)
    assert "the run's own data" in prepared.notes[0]
    held = prepared.reference.held_out
    np.testing.assert_array_equal(held.ids, np.asarray(ds.splits["valid"].ids).astype(str))
    np.testing.assert_allclose(held.unique["pixel"], full.held_out.unique["pixel"], atol=1e-6)
    assert prepared.reference.thresholds_from == "valid"
    # Other data: no held-out samples can be trusted, so drift is left out with the way to get it.
    foreign = _shifted(ds, "valid", 0.0)
    foreign.splits["valid"].features["pixel"][0] += 1.0  # another fingerprint
    other = prepare_reference(model, card, foreign, "other.npz", old)
    assert other.reference.held_out is None
    audit = run_audit(model, card, foreign, "test", data_name="other.npz", reference=other)
    assert audit.drift is None and audit.drift_missing == NO_HELD_OUT.format(data="other.npz")
    assert audit.to_json()["drift"] == {"drifted": None, "reason": audit.drift_missing}
    assert audit.flags is not None and audit.thresholds_from == "train"


def test_without_a_stored_reference_the_data_stands_in_and_says_so(setup):
    model, card, ds, _, _ = setup
    prepared = prepare_reference(model, replace(card, data_fingerprint=None), ds, "digits.npz", None)
    assert "train split of digits.npz stands in" in prepared.notes[0]
    assert "assumed" in prepared.notes[1] and prepared.reference.held_out is not None


def test_notes_for_the_training_split_and_the_reference_itself(setup):
    model, card, ds, full, _ = setup
    prepared = PreparedReference(full)
    on_train = run_audit(model, card, ds, "train", data_name="d", reference=prepared)
    assert any("trained on" in n for n in on_train.drift.notes)
    on_valid = run_audit(model, card, ds, "valid", data_name="d", reference=prepared)
    assert any("held-out reference itself" in n for n in on_valid.drift.notes)
    assert not on_valid.drift.drifted


def test_shifted_data_drifts_and_the_reviews_are_this_splits(setup, tmp_path):
    model, card, ds, full, _ = setup
    moved = _shifted(ds)
    trail = AuditTrail(tmp_path / "a.sqlite3")
    test_ids = [str(i) for i in ds.splits["test"].ids]
    trail.record_review("fp", "b" * 64, test_ids[0], "unsure", "first", reviewer="A")
    trail.record_review("fp", "b" * 64, test_ids[0], "wrong", "second", reviewer="B")
    trail.record_review("fp", "b" * 64, "not-in-this-split", "correct", reviewer="C")
    trail.record_review("other-model", "b" * 64, test_ids[1], "correct", reviewer="D")
    audit = run_audit(model, card, moved, "test", data_name="moved", reference=PreparedReference(full),
                      trail=trail, checkpoint_fingerprint="fp", input_ids=("b" * 64, "c" * 64))
    assert audit.drift.drifted and audit.drift.modalities["drifted"].all()
    assert list(audit.reviews["verdict"]) == ["wrong"] and list(audit.reviews["reviewer"]) == ["B"]


def test_cli_audit_json_and_fail_on_drift(setup, tmp_path, capsys, monkeypatch):
    model, card, ds, full, _ = setup
    run = tmp_path / "run"
    save_model(run, model, card)
    save_reference(run, full)
    data, moved = tmp_path / "digits.npz", tmp_path / "moved.npz"
    save_npz(ds, data)
    save_npz(_shifted(ds), moved)
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(tmp_path / "trail.sqlite3"))
    AuditTrail(tmp_path / "trail.sqlite3").record_review(model_fingerprint(run), "0" * 64, "x", "correct",
                                                         reviewer="R")
    args = ["audit", "--checkpoint", str(run), "--data", str(data), "--json", "--device", "cpu"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["drift"]["drifted"] is False and out["samples"] == len(ds.splits["test"])
    assert sum(out["flags"]["counts"].values()) >= out["flags"]["flagged"] >= 0
    assert out["reviews"] == [] and out["baseline"]["model"] == "logistic_regression"
    assert main(["audit", "--checkpoint", str(run), "--data", str(moved), "--fail-on-drift", "--device", "cpu"]) == 3
    text = capsys.readouterr().out
    assert "drifted" in text and "Overall the data has drifted" in text
    assert main(["audit", "--checkpoint", str(run), "--data", str(tmp_path / "none.npz")]) == 2
