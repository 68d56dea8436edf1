"""Every bad file gets one DataError naming the file, the key, what was found and what was expected."""

from __future__ import annotations

import io
import pickle
import re
import zipfile

import numpy as np
import pytest

from decalign.data import DataError, check_compatible, load_dataset, load_dataset_bytes, make_synthetic


def _error(path, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(path, **kwargs)
    return str(err.value)


def _assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ------------------------------------------------------------------------------------ file level


@pytest.mark.parametrize("name", ["empty.pkl", "empty.npz"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    _assert_names(_error(path), str(path), "empty", "0 bytes", "expected")


def test_missing_file_and_unknown_extension(tmp_path):
    _assert_names(_error(tmp_path / "nope.pkl"), "nope.pkl", "no such file")
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n1,2\n")
    _assert_names(_error(csv), "table.csv", "'.csv'", "expected .pkl or .pickle (MMSA) or .npz")


def test_too_large_file_is_refused_before_reading(tmp_path, mmsa_payload, dump):
    path = dump(mmsa_payload)
    size = path.stat().st_size
    _assert_names(_error(path, max_bytes=size - 1), str(path), f"{size:,} bytes", f"limit of {size - 1:,}")
    with pytest.raises(DataError, match="up.pkl: .*limit of 10 bytes"):
        load_dataset_bytes(path.read_bytes(), "up.pkl", max_bytes=10)


def test_npz_that_unpacks_beyond_the_limit(npz_file, tmp_path):
    path = tmp_path / "bomb.npz"
    with open(path, "wb") as f:
        np.savez_compressed(f, **{"train/a": np.zeros((1000, 10, 10)), "train/b": np.zeros((1000, 1, 2))})
    size = path.stat().st_size
    message = _error(path, max_bytes=size * 4)
    _assert_names(message, "bomb.npz", "unpacks to", f"limit of {size * 4:,}")


def test_truncated_pickle_and_npz(tmp_path, mmsa_payload):
    data = pickle.dumps(mmsa_payload)
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    _assert_names(_error(tmp_path / "cut.pkl"), "cut.pkl", "truncated")
    buf = io.BytesIO()
    np.savez(buf, **{"train/a": np.zeros((4, 2, 2)), "train/b": np.zeros((4, 2, 2))})
    (tmp_path / "cut.npz").write_bytes(buf.getvalue()[:300])
    _assert_names(_error(tmp_path / "cut.npz"), "cut.npz", "truncated or corrupt")


def test_content_that_is_not_what_the_extension_says(tmp_path, mmsa_payload):
    zipped = tmp_path / "model.pkl"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"x")
    _assert_names(
        _error(zipped), "model.pkl", "says MMSA pickle", "content is a zip archive", "expected a pickle"
    )
    text = tmp_path / "notes.npz"
    text.write_text("train,text\n1,2\n")
    _assert_names(_error(text), "notes.npz", "says npz archive", "content is text", "expected a zip archive")
    pickled = tmp_path / "data.npz"
    pickled.write_bytes(pickle.dumps(mmsa_payload))
    _assert_names(_error(pickled), "data.npz", "content is a pickle")
    csv = tmp_path / "table.pkl"
    csv.write_text("id,label\n1,2\n")
    _assert_names(_error(csv), "table.pkl", "not a readable pickle", "looks like text")
    npy = tmp_path / "one.pkl"
    np.save(npy.open("wb"), np.zeros(3))
    _assert_names(_error(npy), "one.pkl", "single .npy array")


# ------------------------------------------------------------------------------------ MMSA keys


def test_mmsa_structure_errors(dump, mmsa_payload):
    _assert_names(
        _error(dump([1, 2], "list.pkl")), "list.pkl", "list", "expected a dict with keys train, valid, test"
    )
    _assert_names(
        _error(dump({"meta": {}, "Train": {}}, "top.pkl")), "top.pkl", "'Train'", "'meta'", "expected a dict"
    )
    _assert_names(
        _error(dump({**mmsa_payload, "valid": [1]}, "split.pkl")), "split.pkl", "['valid']", "list", "dict"
    )


def test_mmsa_unknown_keys_are_ignored_with_a_note(dump, mmsa_payload):
    # MMSA files in the wild carry more keys than the usual ones: a note, not a refusal.
    mmsa_payload["test"]["speaker"] = np.zeros(5)
    mmsa_payload["train"]["speaker"] = [{"name": "x"}] * 10  # never converted, so never refused
    data = load_dataset(dump({**mmsa_payload, "meta": {"version": 2}}, "mosei.pkl"))
    notes = " | ".join(data.report.notes)
    assert "keys this program does not use were ignored: 'speaker'" in notes
    assert "unknown top-level keys ignored: 'meta'" in notes
    assert len(data.splits["test"]) == 5


def test_mmsa_label_key_missing_in_one_split(dump, mmsa_payload):
    del mmsa_payload["valid"]["regression_labels"]
    _assert_names(_error(dump(mmsa_payload, "m.pkl")), "m.pkl", "['valid']['regression_labels']", "missing")


def test_different_sample_counts(dump, mmsa_payload):
    mmsa_payload["train"]["audio"] = mmsa_payload["train"]["audio"][:9]
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(
        message, "m.pkl", "'train'", "\"['train']['audio']\" has 9", "\"['train']['text']\" has 10", "same N"
    )


def test_label_count_differs(dump, mmsa_payload):
    mmsa_payload["test"]["regression_labels"] = mmsa_payload["test"]["regression_labels"][:4]
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(message, "m.pkl", "['test']['regression_labels']", "4 labels", "5 samples")


@pytest.mark.parametrize("shape, rank", [((10, 4, 3, 2), 4), ((10,), 1)])
def test_wrong_rank(dump, mmsa_payload, shape, rank):
    mmsa_payload["train"]["audio"] = np.zeros(shape, dtype=np.float32)
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(
        message, "m.pkl", "['train']['audio']", f"rank {rank}", str(shape), "expected a float array [N, T, D]"
    )


def test_modalities_differ_across_splits(dump, mmsa_payload):
    del mmsa_payload["test"]["vision"]
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(
        message,
        "m.pkl",
        "train has ['audio', 'text', 'vision']",
        "test has ['audio', 'text']",
        "same modalities",
    )


def test_widths_differ_across_splits(dump, mmsa_payload):
    mmsa_payload["valid"]["vision"] = np.zeros((4, 4, 7), dtype=np.float32)
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(message, "m.pkl", "['valid']['vision']", "D=7", "D=5", "same feature width")


def test_string_features(dump, mmsa_payload):
    # An object array of str comes out of the unpickler as a str array, never as Python objects.
    mmsa_payload["train"]["text"] = np.array([["a"] * 4] * 10, dtype=object)
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(message, "m.pkl", "['train']['text']", "dtype <U1", "strings", "expected a float array")


def test_single_modality_is_refused(npz_file):
    path = npz_file({"train/a": np.zeros((5, 2, 2)), "train/labels": np.zeros(5)})
    _assert_names(_error(path), "data.npz", "'train'", "1 modality", "['a']", "at least two modalities")


# ------------------------------------------------------------------------------------ npz keys


def test_npz_unknown_keys(npz_file):
    for key in ("training/a", "train", "train/bad-name", "train/lengths/a/b", "train/1abc"):
        path = npz_file({key: np.zeros((3, 2)), "train/b": np.zeros((3, 2))}, "k.npz")
        _assert_names(_error(path), "k.npz", repr(key), "expected '<split>/<modality>'", "train, valid, test")


def test_npz_object_array_is_refused_without_unpickling(npz_file):
    path = npz_file(
        {
            "train/a": np.zeros((3, 2)),
            "train/b": np.zeros((3, 2)),
            "train/ids": np.array([1, "x", None], dtype=object),
        }
    )
    _assert_names(_error(path), "data.npz", "'train/ids'", "dtype object", "dtype=str")


def test_npz_string_features(npz_file):
    path = npz_file({"train/a": np.array([["x", "y"]] * 3), "train/b": np.zeros((3, 2))})
    _assert_names(_error(path), "data.npz", "'train/a'", "<U1", "strings", "expected a float array")


def test_npz_lengths_errors(npz_file):
    base = {"train/a": np.zeros((3, 4, 2)), "train/b": np.zeros((3, 2))}
    path = npz_file({**base, "train/lengths/c": np.array([1, 2, 3])}, "l.npz")
    _assert_names(_error(path), "l.npz", "'train/lengths/c'", "'c'", "expected one of ['a', 'b']")
    path = npz_file({**base, "train/lengths/a": np.array([1, -2, 3])}, "n.npz")
    _assert_names(_error(path), "n.npz", "'train/lengths/a'", "negative length (-2)", "0..4")


# ------------------------------------------------------------------------------------ values


def test_nonfinite_features_replaced_and_counted(dump, mmsa_payload):
    mmsa_payload["train"]["audio"][0, 0, :2] = [np.nan, np.inf]
    mmsa_payload["test"]["vision"][1, 2, 0] = -np.inf  # what MMSA's own loader zeroes
    mmsa_payload["test"]["text"] = mmsa_payload["test"]["text"].astype(np.float64)
    mmsa_payload["test"]["text"][0, 0, 0] = 1e300  # beyond float32: becomes inf, then 0
    data = load_dataset(dump(mmsa_payload))
    assert data.report.nonfinite_replaced == {"train/audio": 2, "test/vision": 1, "test/text": 1}
    assert data.splits["train"].features["audio"][0, 0, 0] == 0.0
    assert data.splits["test"].features["text"][0, 0, 0] == 0.0
    assert np.isfinite(data.splits["test"].features["vision"]).all()


def test_nonfinite_labels_are_an_error(dump, mmsa_payload):
    mmsa_payload["valid"]["regression_labels"][[0, 2]] = [np.nan, np.inf]
    message = _error(dump(mmsa_payload, "m.pkl"))
    _assert_names(
        message, "m.pkl", "['valid']['regression_labels']", "2 NaN/inf label(s) out of 4", "expected finite"
    )


@pytest.mark.parametrize("bad, shown", [(-1.0, "-1"), (1.5, "1.5")])
def test_classification_labels_must_be_class_indices(dump, mmsa_payload, bad, shown):
    for part in mmsa_payload.values():
        del part["regression_labels"]
    mmsa_payload["train"]["classification_labels"][3] = bad
    message = _error(dump(mmsa_payload, "iemocap.pkl"))
    _assert_names(
        message, "iemocap.pkl", "['train']['classification_labels']", shown, "non-negative integers"
    )


def test_labels_with_wrong_shape_or_type(npz_file):
    base = {"train/a": np.zeros((3, 2)), "train/b": np.zeros((3, 2))}
    message = _error(npz_file({**base, "train/labels": np.zeros((3, 2))}, "s.npz"))
    _assert_names(message, "s.npz", "'train/labels'", "(3, 2)", "[N] or [N, 1]")
    message = _error(npz_file({**base, "train/labels": np.array(["pos", "neg", "pos"])}, "t.npz"))
    _assert_names(message, "t.npz", "'train/labels'", "<U3", "expected numeric labels")


def test_labels_disagree_on_the_task(npz_file):
    arrays = {f"{s}/{m}": np.zeros((3, 2)) for s in ("train", "test") for m in ("a", "b")}
    arrays.update({"train/labels": np.array([0, 1, 2]), "test/labels": np.array([0.5, 1.0, 2.0])})
    message = _error(npz_file(arrays, "mix.npz"))
    _assert_names(
        message, "mix.npz", "'train/labels' is classification", "'test/labels' is regression", "expected"
    )


def test_too_few_samples_to_carve(npz_file):
    path = npz_file({"train/a": np.zeros((2, 2)), "train/b": np.zeros((2, 2))}, "tiny.npz")
    _assert_names(_error(path), "tiny.npz", "train has only 2 samples", "expected at least 3")


# ------------------------------------------------------------------------------------ checkpoint


def test_check_compatible_lists_every_mismatch():
    data = make_synthetic(4, 2, 2, widths={"text": 8, "audio": 5, "extra": 2}, seq_len=3)
    check_compatible(data, {"text": 8, "audio": 5, "extra": 2}, "up.npz")  # exact match: no error
    with pytest.raises(DataError) as err:
        check_compatible(data, {"text": 768, "audio": 5, "vision": 20}, "up.npz")
    message = str(err.value)
    _assert_names(
        message,
        "up.npz",
        "modality 'text' has width 8, expected 768",
        "modality 'vision' is missing (expected width 20)",
        "modality 'extra' (width 2) is not one the checkpoint expects",
    )
    assert "'audio'" not in re.sub(r"\(.*?\)", "", message.split(":", 1)[1])  # audio matches: not listed
