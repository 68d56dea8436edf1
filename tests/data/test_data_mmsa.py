"""MMSA pickles: regression (MOSI/MOSEI/CH-SIMS), classification (IEMOCAP-like), unaligned lengths."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from decalign.data import DataError, load_dataset, load_dataset_bytes, make_synthetic, write_mmsa_pickle
from decalign.data import mmsa as mmsa_module


def test_regression_pickle_loads_as_mmsa_wrote_it(mmsa_payload, dump):
    data = load_dataset(dump(mmsa_payload, "mosi_aligned_50.pkl"))
    assert data.task == "regression" and data.num_classes is None
    assert list(data.splits) == ["train", "valid", "test"]
    assert data.modalities == {"text": (4, 6), "audio": (4, 3), "vision": (4, 5)}
    train = data.splits["train"]
    for m in ("text", "audio", "vision"):
        x = train.features[m]
        assert x.dtype == np.float32 and x.flags.c_contiguous
        np.testing.assert_array_equal(x, mmsa_payload["train"][m])
    np.testing.assert_array_equal(train.labels, mmsa_payload["train"]["regression_labels"])
    assert train.labels.dtype == np.float32
    assert train.ids[1] == "vid0$_$1" and train.ids.dtype.kind == "U"
    assert train.raw_text[3] == "clip 3 text"
    assert train.lengths == {}
    assert any("classification_labels ignored" in n for n in data.report.notes)
    assert data.report.carved_splits == [] and data.report.nonfinite_replaced == {}


def test_labels_shaped_n_by_1_are_flattened(rng, dump, make_mmsa_split):
    payload = {s: make_mmsa_split(6, rng, label_shape=(6, 1)) for s in ("train", "valid", "test")}
    data = load_dataset(dump(payload))
    assert data.splits["valid"].labels.shape == (6,)
    np.testing.assert_array_equal(data.splits["valid"].labels, payload["valid"]["regression_labels"][:, 0])


def test_iemocap_like_classification_labels(mmsa_payload, dump):
    for part in mmsa_payload.values():
        del part["regression_labels"], part["annotations"]
        part["classification_labels"] = np.arange(len(part["id"]), dtype=np.float32) % 4
    data = load_dataset(dump(mmsa_payload, "iemocap.pkl"))
    assert data.task == "classification" and data.num_classes == 4
    assert data.splits["train"].labels.dtype == np.int64
    np.testing.assert_array_equal(data.splits["train"].labels, np.arange(10) % 4)


def test_unaligned_lengths_as_lists_and_text_bert_noted(mmsa_payload, dump, rng):
    for part in mmsa_payload.values():
        n = len(part["id"])
        part["audio_lengths"] = [int(v) for v in rng.integers(1, 5, size=n)]  # MMSA: plain lists
        part["vision_lengths"] = np.full(n, 9)  # longer than T=4: clipped to T
        part["text_bert"] = np.zeros((n, 3, 4), dtype=np.float32)
        part["regression_labels_T"] = part["regression_labels"]
    data = load_dataset(dump(mmsa_payload, "unaligned_39.pkl"))
    train = data.splits["train"]
    np.testing.assert_array_equal(train.lengths["audio"], mmsa_payload["train"]["audio_lengths"])
    assert train.lengths["audio"].dtype == np.int64
    np.testing.assert_array_equal(train.lengths["vision"], np.full(10, 4))
    notes = " | ".join(data.report.notes)
    assert "text_bert" in notes and "regression_labels_T" in notes and "clipped to 4" in notes
    # whole numbers stored as floats are kept as token ids, for a model with a BERT
    assert train.text_bert.dtype == np.int64 and train.text_bert.shape == (10, 3, 4) and not train.text_bert.any()


def test_file_is_unpickled_once(mmsa_payload, dump, monkeypatch):
    calls = []
    original = mmsa_module.safe_load
    monkeypatch.setattr(mmsa_module, "safe_load", lambda *a, **k: calls.append(1) or original(*a, **k))
    load_dataset(dump(mmsa_payload), sandbox=False)  # in this process, where the patch is seen
    assert len(calls) == 1


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_every_pickle_protocol(mmsa_payload, dump, protocol):
    data = load_dataset(dump(mmsa_payload, protocol=protocol))
    np.testing.assert_array_equal(data.splits["test"].features["vision"], mmsa_payload["test"]["vision"])


def test_write_mmsa_pickle_is_a_plain_mmsa_file(tmp_path):
    dataset = make_synthetic(
        12, 4, 4, widths={"text": 8, "audio": 5, "vision": 3}, seq_len=6, variable_lengths=True
    )
    path = tmp_path / "synthetic.pkl"
    write_mmsa_pickle(dataset, path)
    raw = pickle.loads(path.read_bytes())  # our own file: checking its layout with plain pickle is fine
    assert set(raw) == {"train", "valid", "test"}
    assert {"text", "audio", "vision", "id", "raw_text", "regression_labels", "classification_labels"} <= set(
        raw["train"]
    )
    assert isinstance(raw["train"]["audio_lengths"], list)
    back = load_dataset(path)
    assert back.fingerprint() == dataset.fingerprint()
    np.testing.assert_array_equal(
        back.splits["valid"].lengths["vision"], dataset.splits["valid"].lengths["vision"]
    )
    np.testing.assert_array_equal(back.splits["test"].ids, dataset.splits["test"].ids)


def test_write_mmsa_pickle_refuses_unknown_modalities(tmp_path):
    dataset = make_synthetic(5, 2, 2, widths={"text": 3, "depth": 2}, seq_len=2)
    with pytest.raises(ValueError, match="depth"):
        write_mmsa_pickle(dataset, tmp_path / "x.pkl")


def test_bytes_upload_uses_the_filename(mmsa_payload):
    data = load_dataset_bytes(pickle.dumps(mmsa_payload), "my_upload.pkl")
    assert data.report.source == "my_upload.pkl"
    assert len(data.splits["test"]) == 5


def test_plain_arrays_from_lists_are_counted_before_they_are_built():
    from decalign.data.dataset import DataError
    from decalign.data.plain import to_plain_array
    from decalign.data.safe_pickle import AllocationBudget

    budget = AllocationBudget(1000, "f.pkl")
    row = [1.0] * 4
    np.testing.assert_array_equal(to_plain_array([row, row], "k", "numbers", budget), np.ones((2, 4)))
    assert budget.left == budget.limit - 8 * 8  # two shared rows of four counted twice
    texts = to_plain_array(["a", b"bc"], "k", "strings", budget)
    assert texts.dtype == np.dtype("<U2") and texts.tolist() == ["a", "bc"]
    cube = [[[0.0] * 2000] * 2000] * 2000
    with pytest.raises(DataError, match="k would need 64,000,000,000 bytes"):
        to_plain_array(cube, "k", "numbers", budget)
    for value, message in [(["a", 1], "a mix of strings and numbers"), ([{"x": 1}], "dict"),
                           ("text", "holds a str"), ([[1.0], [1.0, 2.0]], "could not be read as an array")]:
        with pytest.raises(DataError, match=message):
            to_plain_array(value, "k", "numbers", budget)


def test_an_uploaded_pickle_comes_back_equal_with_its_large_arrays_handed_back_where_they_lay(
        tmp_path, sandbox_in_memory, upload_matches_file):
    """In the sandbox's child an MMSA pickle's large arrays are views of the mapped file
    (``safe_pickle.safe_load``'s ``view``), handed back from the parent's copy of the upload, not written again:
    the dataset equals the in-process read."""
    dataset = make_synthetic(300, 60, 100, widths={"text": 300, "audio": 5, "vision": 20}, seq_len=20)
    path = tmp_path / "x.pkl"
    write_mmsa_pickle(dataset, path)
    upload_matches_file(path)
    text = {split: part.features["text"].nbytes for split, part in dataset.splits.items()}  # 7.2, 1.4, 2.4 MB
    assert sandbox_in_memory[-1].in_place_bytes == sum(text.values())


def test_a_large_bytes_value_where_an_array_belongs_is_named_bytes(mmsa_payload, dump):
    """In the sandbox's child such a payload is a view of the mapped file; the message still says bytes."""
    mmsa_payload["train"]["text"] = b"z" * (2 << 20)
    path = dump(mmsa_payload, protocol=4)
    for sandboxed in (True, False):
        with pytest.raises(DataError, match=r"key \"\['train'\]\['text'\]\" holds a bytes; expected a float array"):
            load_dataset(path, sandbox=sandboxed)
