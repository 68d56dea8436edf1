"""npz archives: any modalities, [N, D] features, carved splits, save_npz round trips."""

from __future__ import annotations

import numpy as np
import pytest

from decalign.data import load_dataset, make_synthetic, save_npz


def _arrays(rng, splits=("train", "valid", "test"), n=(12, 5, 6), labels_dtype=np.float32):
    out = {}
    for split, count in zip(splits, n):
        out[f"{split}/eeg"] = rng.standard_normal((count, 7, 4))
        out[f"{split}/gaze"] = rng.standard_normal((count, 2)).astype(np.float32)  # [N, D]
        out[f"{split}/labels"] = (np.arange(count) % 3).astype(labels_dtype)
    return out


def test_full_npz_with_any_modality_names(npz_file, rng):
    arrays = _arrays(rng)
    arrays["test/ids"] = np.array([f"s{i}" for i in range(6)])
    arrays["test/raw_text"] = np.array(["hello"] * 6)
    data = load_dataset(npz_file(arrays))
    assert data.task == "regression"
    assert data.modalities == {"eeg": (7, 4), "gaze": (1, 2)}
    eeg = data.splits["valid"].features["eeg"]
    assert eeg.dtype == np.float32 and eeg.flags.c_contiguous
    np.testing.assert_allclose(eeg, arrays["valid/eeg"].astype(np.float32))
    np.testing.assert_array_equal(data.splits["train"].features["gaze"][:, 0, :], arrays["train/gaze"])
    assert data.splits["test"].ids[2] == "s2" and data.splits["test"].raw_text[0] == "hello"
    assert data.splits["train"].ids[3] == "train-3"  # made up where the file has none
    assert any("[N, 1, D]" in note for note in data.report.notes)


def test_integer_labels_mean_classification(npz_file, rng):
    data = load_dataset(npz_file(_arrays(rng, labels_dtype=np.int32)))
    assert data.task == "classification" and data.num_classes == 3
    assert data.splits["train"].labels.dtype == np.int64


def test_missing_valid_and_test_are_carved_from_train(npz_file, rng):
    arrays = _arrays(rng, splits=("train",), n=(40,))
    data = load_dataset(npz_file(arrays))
    sizes = {s: len(p) for s, p in data.splits.items()}
    assert sizes == {"train": 32, "valid": 4, "test": 4}
    assert data.report.carved_splits == ["valid", "test"]
    assert any("carved" in n or "moved into them" in n for n in data.report.notes)
    # The three parts partition train exactly, and the carve is the same on every load.
    ids = np.concatenate([p.ids for p in data.splits.values()])
    assert sorted(ids.tolist()) == sorted(f"train-{i}" for i in range(40))
    again = load_dataset(npz_file(arrays, "again.npz"))
    np.testing.assert_array_equal(again.splits["valid"].ids, data.splits["valid"].ids)
    # Features stay attached to their sample.
    row = int(data.splits["test"].ids[0].split("-")[1])
    np.testing.assert_allclose(
        data.splits["test"].features["eeg"][0], arrays["train/eeg"][row].astype(np.float32)
    )


def test_only_test_missing_is_carved(npz_file, rng):
    data = load_dataset(npz_file(_arrays(rng, splits=("train", "valid"), n=(20, 5))))
    assert data.report.carved_splits == ["test"]
    assert [len(p) for p in data.splits.values()] == [18, 5, 2]


def test_evaluation_only_file_keeps_its_splits(npz_file, rng):
    data = load_dataset(npz_file(_arrays(rng, splits=("test",), n=(6,))))
    assert list(data.splits) == ["test"] and data.report.carved_splits == []
    assert any("no train split" in n for n in data.report.notes)


def test_save_npz_round_trip(tmp_path):
    dataset = make_synthetic(
        15, 4, 5, widths={"text": 6, "audio": 3, "vision": 4}, seq_len=5, variable_lengths=True
    )
    path = tmp_path / "round.npz"
    save_npz(dataset, path)
    back = load_dataset(path)
    assert back.fingerprint() == dataset.fingerprint()
    for split, part in dataset.splits.items():
        np.testing.assert_array_equal(back.splits[split].ids, part.ids)
        np.testing.assert_array_equal(back.splits[split].raw_text, part.raw_text)
        for m in part.lengths:
            np.testing.assert_array_equal(back.splits[split].lengths[m], part.lengths[m])
    assert [p.name for p in tmp_path.iterdir()] == ["round.npz"]  # no temp file left behind


def test_save_npz_replaces_atomically_and_refuses_reserved_names(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"old")
    save_npz(make_synthetic(5, 2, 2, widths={"a": 2, "b": 2}, seq_len=2), path)
    assert len(load_dataset(path).splits["train"]) == 5
    bad = make_synthetic(5, 2, 2, widths={"labels": 2, "b": 2}, seq_len=2)
    with pytest.raises(ValueError, match="labels"):
        save_npz(bad, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()


@pytest.mark.parametrize("compressed", [False, True])
def test_members_are_read_a_chunk_at_a_time_into_writeable_arrays(tmp_path, rng, monkeypatch, compressed):
    """``read_npz`` fills one array per member chunk by chunk (a 3-byte chunk crosses every boundary here);
    the result equals numpy's own reading, in C and Fortran order, and is writeable (no copy made later)."""
    import io

    from decalign.data import npz

    arrays = {"train/eeg": np.asfortranarray(rng.standard_normal((3, 4, 5))), "train/ids": np.array(["a", "bcd", "é"]),
              "train/labels": np.arange(3, dtype=np.int64), "train/empty": np.zeros((3, 0, 2), dtype=np.float32)}
    path = tmp_path / "x.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    monkeypatch.setattr(npz, "READ_CHUNK", 3)
    with open(path, "rb") as handle:
        raw = npz.read_npz(handle, "x.npz", 1 << 20).splits["train"]
    reference = np.load(path)
    got = {"train/eeg": raw.features["eeg"], "train/ids": raw.ids, "train/labels": raw.labels,
           "train/empty": raw.features["empty"]}
    for key, array in got.items():
        assert array.dtype == reference[key].dtype and array.flags.writeable, key
        np.testing.assert_array_equal(array, reference[key])
    buffer = io.BytesIO(path.read_bytes()[:-40])  # the central directory cut short: refused, not half read
    with pytest.raises(Exception, match="x.npz"):
        npz.read_npz(buffer, "x.npz", 1 << 20)


@pytest.mark.parametrize("compressed", [False, True])
def test_stored_members_are_read_only_views_of_the_mapped_file(tmp_path, rng, compressed):
    """``mapped`` (the sandbox's child): a stored member's array is a read-only view of the file mapped into
    memory, equal to numpy's own reading in C and Fortran order and when empty; a compressed member is read
    as a stream into a writeable array, as before."""
    from decalign.data import npz

    arrays = {"train/eeg": np.asfortranarray(rng.standard_normal((3, 4, 5))), "train/ids": np.array(["a", "bcd", "é"]),
              "train/labels": np.arange(3, dtype=np.int64), "train/empty": np.zeros((3, 0, 2), dtype=np.float32),
              "train/gaze": rng.standard_normal((3, 2)).astype(np.float32)}
    path = tmp_path / "x.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    with open(path, "rb") as handle:
        raw = npz.read_npz(handle, "x.npz", 1 << 20, mapped=True).splits["train"]
    reference = np.load(path)
    got = {"train/eeg": raw.features["eeg"], "train/ids": raw.ids, "train/labels": raw.labels,
           "train/empty": raw.features["empty"], "train/gaze": raw.features["gaze"]}
    for key, array in got.items():
        assert array.dtype == reference[key].dtype and array.flags.writeable == compressed, key
        assert array.flags.owndata is False or compressed, key
        np.testing.assert_array_equal(array, reference[key])


@pytest.mark.parametrize("mapped", [False, True])
def test_a_stored_member_whose_bytes_do_not_match_its_crc_is_refused(tmp_path, rng, mapped):
    """One flipped byte at the end of a stored member's array. The member is larger than the zip reader's
    read-ahead (4 KiB), so reading its .npy header does not reach the zip reader's own CRC check: mapped, the
    refusal is the mapping's check, in the process and in the sandbox's child."""
    eeg = rng.standard_normal((400, 3, 2))
    path = tmp_path / "x.npz"
    np.savez(path, **{"train/eeg": eeg, "train/labels": np.zeros(400, np.float32)})
    data = bytearray(path.read_bytes())
    data[data.find(eeg.tobytes()) + eeg.nbytes - 1] ^= 0x40  # the array's last byte; its CRC left as it was
    path.write_bytes(bytes(data))
    found = "its bytes do not match its CRC" if mapped else "Bad CRC-32"
    with pytest.raises(Exception, match=rf"x.npz: key 'train/eeg' could not be read \(truncated or corrupt: {found}"):
        load_dataset(path, name="x.npz", sandbox=False, mapped=mapped)
    with pytest.raises(Exception, match=r"x.npz: key 'train/eeg' could not be read \(truncated or corrupt: its bytes do not "
                                        "match its CRC"):
        load_dataset(path, name="x.npz")  # the sandbox's child maps it


def test_nonfinite_features_of_a_mapped_file_are_zeroed_in_a_copy_and_the_file_is_unchanged(tmp_path, rng):
    eeg = rng.standard_normal((20, 3, 2)).astype(np.float32)
    eeg[1, 2, 0], eeg[14, 0, 1] = np.nan, np.inf
    path = tmp_path / "x.npz"
    np.savez(path, **{"train/eeg": eeg, "train/gaze": rng.standard_normal((20, 4)).astype(np.float32),
                      "train/labels": np.arange(20, dtype=np.float32)})
    before = path.read_bytes()
    expected = np.nan_to_num(eeg, nan=0.0, posinf=0.0)
    for data in (load_dataset(path, sandbox=False, mapped=True), load_dataset(path)):
        got = np.concatenate([data.splits[s].features["eeg"] for s in ("train", "valid", "test")])
        ids = np.concatenate([data.splits[s].ids for s in ("train", "valid", "test")])
        order = np.argsort([int(i.rsplit("-", 1)[1]) for i in ids])
        np.testing.assert_array_equal(got[order], expected)
        assert data.report.nonfinite_replaced == {"train/eeg": 2}
    assert path.read_bytes() == before


@pytest.mark.parametrize("compressed", [False, True])
def test_an_uploaded_npz_comes_back_equal_with_its_stored_features_handed_back_where_they_lay(
        tmp_path, rng, sandbox_in_memory, upload_matches_file, compressed):
    """The sandbox's child hands an upload's large stored members back from the parent's copy of the file in
    memory (moved to aligned offsets there, ``decalign._sandbox_worker._in_place_plan``) instead of writing
    them again: every split equals the in-process read; a compressed member is written as before."""
    sizes = {"train": 100, "valid": 30, "test": 50}
    arrays = {}
    for split, n in sizes.items():  # text: 2.4, 0.7 and 1.2 MB
        arrays.update({f"{split}/text": rng.standard_normal((n, 20, 300)).astype(np.float32),
                       f"{split}/audio": rng.standard_normal((n, 20, 5)).astype(np.float32),
                       f"{split}/labels": rng.standard_normal(n).astype(np.float32)})
    path = tmp_path / "x.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    upload_matches_file(path)
    in_place = arrays["train/text"].nbytes + arrays["test/text"].nbytes  # valid's: under 1 MiB, copied
    assert sandbox_in_memory[-1].in_place_bytes == (0 if compressed else in_place)
