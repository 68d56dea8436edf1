"""Class names: npz ``label_names`` (per split or top level), MMSA recognition, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from decalign.data import (
    DataError,
    load_dataset,
    load_dataset_bytes,
    make_synthetic,
    save_npz,
    write_mmsa_pickle,
)


def _classification(rng, n=(30, 12, 12), classes=3):
    out = {}
    for split, count in zip(("train", "valid", "test"), n):
        out[f"{split}/eeg"] = rng.standard_normal((count, 3, 4)).astype(np.float32)
        out[f"{split}/gaze"] = rng.standard_normal((count, 2)).astype(np.float32)
        out[f"{split}/labels"] = (np.arange(count) % classes).astype(np.int64)
    return out


def test_top_level_label_names_name_the_classes(npz_file, rng):
    arrays = {**_classification(rng), "label_names": np.array(["rest", "walk", "run"])}
    data = load_dataset(npz_file(arrays))
    assert data.class_names == ["rest", "walk", "run"]
    assert data.num_classes == 3 and data.class_name(2) == "run" and data.class_name(7) == "7"


def test_per_split_label_names_must_agree(npz_file, rng):
    arrays = _classification(rng)
    for split in ("train", "valid", "test"):
        arrays[f"{split}/label_names"] = np.array(["a", "b", "c"])
    assert load_dataset(npz_file(arrays)).class_names == ["a", "b", "c"]
    arrays["test/label_names"] = np.array(["a", "b", "x"])
    with pytest.raises(DataError, match=r"'test/label_names' gives class names \['a', 'b', 'x'\]"):
        load_dataset(npz_file(arrays, "disagree.npz"))


def test_more_names_than_labels_count_a_class_with_no_sample(npz_file, rng):
    arrays = {**_classification(rng, classes=3), "label_names": np.array(["a", "b", "c", "never seen"])}
    data = load_dataset(npz_file(arrays))
    assert data.num_classes == 4 and data.class_names[-1] == "never seen"


@pytest.mark.parametrize(("names", "message"), [
    (np.array(["a", "b"]), r"has 2 names but the labels go up to class 2; expected at least 3"),
    (np.array(["a", "a", "b"]), r"names 'a' more than once"),
    (np.array(["a", " ", "b"]), r"holds an empty name"),
    (np.array([1, 2, 3]), r"holds dtype int64 and shape \(3,\); expected a 1-D array of class names"),
    (np.array([["a", "b", "c"]]), r"holds dtype <U1 and shape \(1, 3\)"),
])
def test_bad_label_names_are_refused_with_the_key(npz_file, rng, names, message):
    arrays = {**_classification(rng), "label_names": names}
    with pytest.raises(DataError, match=r"data\.npz: key 'label_names' " + message):
        load_dataset(npz_file(arrays))


def test_label_names_with_regression_labels_are_refused(npz_file, rng):
    arrays = _classification(rng)
    for split in ("train", "valid", "test"):
        arrays[f"{split}/labels"] = arrays[f"{split}/labels"].astype(np.float32) + 0.5
    arrays["label_names"] = np.array(["a", "b", "c"])
    with pytest.raises(DataError, match="names classes, but the labels are floats"):
        load_dataset(npz_file(arrays))


def test_object_label_names_are_refused_not_unpickled(tmp_path, rng):
    path = tmp_path / "objects.npz"
    np.savez(path, **_classification(rng), label_names=np.array(["a", "b", "c"], dtype=object))
    with pytest.raises(DataError, match="'label_names' holds Python objects"):
        load_dataset(path)


def test_save_npz_round_trips_the_names(tmp_path):
    data = make_synthetic(40, 10, 10, task="classification", num_classes=3, seed=1)
    data.class_names = ["x", "y", "z"]
    save_npz(data, tmp_path / "named.npz")
    again = load_dataset_bytes((tmp_path / "named.npz").read_bytes(), "named.npz")  # through the sandbox
    assert again.class_names == ["x", "y", "z"]


# ------------------------------------------------------------------------------------------- MMSA


def _mmsa_classification(mmsa_payload, classes: int, ids=None):
    for split, part in mmsa_payload.items():
        del part["regression_labels"], part["annotations"]
        n = len(part["id"])
        part["classification_labels"] = np.arange(n, dtype=np.float32) % classes
        if ids is not None:
            part["id"] = np.array([ids(split, i) for i in range(n)], dtype=object)
    return mmsa_payload


@pytest.mark.parametrize(("classes", "first", "last"), [(4, "happy/excited", "neutral"), (6, "happy", "frustrated")])
def test_iemocap_is_recognised_by_its_utterance_ids(mmsa_payload, dump, classes, first, last):
    payload = _mmsa_classification(mmsa_payload, classes,
                                   ids=lambda s, i: f"Ses0{1 + i % 5}{'FM'[i % 2]}_impro0{i % 9}_F{i:03d}")
    data = load_dataset(dump(payload, "iemocap.pkl"))
    assert data.class_names[0] == first and data.class_names[-1] == last and len(data.class_names) == classes
    assert any("IEMOCAP recognised from its utterance ids" in note for note in data.report.notes)


def test_other_ids_get_no_names(mmsa_payload, dump):
    data = load_dataset(dump(_mmsa_classification(mmsa_payload, 4), "other.pkl"))
    assert data.class_names is None  # "vid0$_$0" ids: not recognisable, indices are shown


def test_iemocap_ids_with_an_unknown_class_count_get_no_names(mmsa_payload, dump):
    payload = _mmsa_classification(mmsa_payload, 5, ids=lambda s, i: f"Ses01F_impro01_F{i:03d}")
    assert load_dataset(dump(payload, "five.pkl")).class_names is None


def test_annotations_that_name_each_class_once_are_used(tmp_path):
    data = make_synthetic(40, 10, 10, widths={"text": 4, "audio": 3, "vision": 2}, task="classification",
                          num_classes=3, seed=2)
    data.class_names = ["calm", "tense", "angry"]
    write_mmsa_pickle(data, tmp_path / "named.pkl")  # annotations = the name of each sample's class
    again = load_dataset(tmp_path / "named.pkl")
    assert again.class_names == ["calm", "tense", "angry"]
    assert any("annotations" in note for note in again.report.notes)


def test_annotations_that_disagree_within_a_class_are_not_used(mmsa_payload, dump):
    payload = _mmsa_classification(mmsa_payload, 2)
    for part in payload.values():
        part["annotations"] = np.array([f"a{i}" for i in range(len(part["id"]))], dtype=object)
    assert load_dataset(dump(payload, "noisy.pkl")).class_names is None
