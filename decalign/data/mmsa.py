"""MMSA pickles (CMU-MOSI, CMU-MOSEI, CH-SIMS, IEMOCAP) as MMSA and the official DecAlign code write them.

Layout (``mosi_aligned_50.pkl``, ``unaligned_39.pkl``, ...)::

    {"train": {"text": [N, T, 768], "audio": [N, T, 5], "vision": [N, T, 20],
               "regression_labels": [N] or [N, 1],     # IEMOCAP-like files: only classification_labels
               "classification_labels": [N], "raw_text": [N], "id": [N] ("video$_$clip"),
               "audio_lengths": [N], "vision_lengths": [N],   # unaligned files; lists or arrays
               "text_bert": [N, 3, T], "annotations": [N], "regression_labels_T": [N], ...},
     "valid": {...}, "test": {...}}

The file is unpickled once, through :mod:`.safe_pickle`, never with ``pickle.load``, and every field is
turned into a plain array by :func:`.plain.to_plain_array` within the file's allocation budget. MMSA
files in the wild carry more keys than these (per-modality labels, BERT inputs, annotations, and
whatever a lab added): unknown keys are ignored and the load report names them.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_write_file
from ..sandbox import mapped_view
from .class_names import recognise_mmsa_names
from .dataset import SPLITS, DataError, MultimodalDataset
from .pickle_numpy import AllocationBudget, type_name
from .plain import to_plain_array
from .raw import RawData, RawSplit
from .safe_pickle import safe_load

MODALITIES = ("text", "audio", "vision")  # the official fusion order (l, a, v)
LABEL_KEYS = ("regression_labels", "classification_labels")
LENGTH_KEYS = {"text_lengths": "text", "audio_lengths": "audio", "vision_lengths": "vision"}
IGNORED_KEYS = ("annotations",)
PER_MODALITY_LABEL = re.compile(r"(regression|classification)_labels_[A-Za-z]+$")
KNOWN_KEYS = (*MODALITIES, *LABEL_KEYS, *LENGTH_KEYS, *IGNORED_KEYS, "raw_text", "id", "text_bert")


def read_mmsa(file: BinaryIO, shown: str, hint: str = "", *, mapped: bool = False) -> RawData:
    """Unpickle an MMSA file safely and take it apart into raw splits (checked later, in one place).

    Regression is the task when ``regression_labels`` exist; otherwise (IEMOCAP-like files) the
    ``classification_labels``. ``text_bert``, ``annotations`` and per-modality labels are ignored
    and the report says so. ``mapped`` (a file on disk, in the sandbox's child only): large arrays are
    read-only views of the file mapped into memory (:func:`.safe_pickle.safe_load`'s ``view``).
    """
    here = file.tell()
    budget = AllocationBudget(file.seek(0, 2) - here, shown)
    file.seek(here)
    obj = safe_load(file, shown, hint, budget, view=mapped_view(file) if mapped else None)
    if not isinstance(obj, dict):
        raise DataError(
            f"{shown}: the pickle holds a {type_name(obj)} at the top level; "
            f"expected a dict with keys {', '.join(SPLITS)}"
        )
    unknown_top = sorted(repr(k)[:80] for k in obj if k not in SPLITS)
    obj = {k: v for k, v in obj.items() if k in SPLITS}
    if not obj:
        raise DataError(f"{shown}: no split key; expected a dict with keys {', '.join(SPLITS)}, found "
                        f"{', '.join(unknown_top) or 'an empty dict'}")
    for split, part in obj.items():
        _check_split(part, split, shown)
    label_key = _label_key(obj, shown)
    splits = {s: _raw_split(obj[s], s, label_key, shown, budget) for s in SPLITS if s in obj}
    task = {"regression_labels": "regression", "classification_labels": "classification"}.get(label_key)
    notes = _notes(obj, label_key)
    if unknown_top:
        notes.append(f"unknown top-level keys ignored: {', '.join(unknown_top)}")
    names, how = _class_names(obj, splits, task, shown, budget)
    if how:
        notes.append(how)
    return RawData(splits=splits, task=task, notes=notes, label_names=names,
                   label_names_key="class names recognised in the MMSA file")


def _class_names(obj: dict, splits: dict[str, RawSplit], task: str | None, shown: str,
                 budget: AllocationBudget) -> tuple[list[str] | None, str | None]:
    """Class names of a classification file, when recognisable (:mod:`.class_names`)."""
    if task != "classification":
        return None, None
    annotations = [_annotations(obj[s], s, shown, budget) for s in splits]
    return recognise_mmsa_names([p.labels for p in splits.values()], annotations,
                                [p.ids for p in splits.values()])


def _annotations(part: dict, split: str, shown: str, budget: AllocationBudget) -> np.ndarray | None:
    """A split's annotations as strings; None when absent or unreadable (only used for class names)."""
    if "annotations" not in part:
        return None
    try:
        return to_plain_array(part["annotations"], f"{shown}: key [{split!r}]['annotations']",
                              "a 1-D array of strings", budget)
    except DataError:
        return None


def _check_split(part: Any, split: str, shown: str) -> None:
    if not isinstance(part, dict):
        raise DataError(f"{shown}: key [{split!r}] holds a {type_name(part)}; expected a dict of arrays")


def _unknown_keys(part: dict) -> list[str]:
    return [repr(k)[:80] for k in part
            if k not in KNOWN_KEYS and not (isinstance(k, str) and PER_MODALITY_LABEL.match(k))]


def _label_key(obj: dict, shown: str) -> str | None:
    """regression_labels if any split has them, else classification_labels; every split must agree."""
    present = [k for k in LABEL_KEYS if any(k in part for part in obj.values())]
    if not present:
        return None
    key = present[0]
    for split, part in obj.items():
        if key not in part:
            raise DataError(f"{shown}: key [{split!r}][{key!r}] is missing; other splits have it")
    return key


def _raw_split(part: dict, split: str, label_key: str | None, shown: str, budget: AllocationBudget
               ) -> RawSplit:
    def key(name: str) -> str:
        return f"[{split!r}][{name!r}]"

    def field(name: str, expected: str):
        value = part.get(name)
        where = f"{shown}: key {key(name)!r}"
        return None if value is None else to_plain_array(value, where, expected, budget)

    keys = {m: key(m) for m in MODALITIES if m in part}
    keys.update(
        {"ids": key("id"), "raw_text": key("raw_text"), "labels": key(label_key or "regression_labels")}
    )
    keys.update({f"lengths/{m}": key(k) for k, m in LENGTH_KEYS.items()})
    keys["text_bert"] = key("text_bert")
    return RawSplit(
        features={m: field(m, "a float array [N, T, D] (or [N, D])") for m in MODALITIES if m in part},
        labels=field(label_key, "numeric labels [N] or [N, 1]") if label_key else None,
        ids=field("id", "a 1-D array of strings"),
        raw_text=field("raw_text", "a 1-D array of strings"),
        lengths={m: field(k, "integer lengths [N]") for k, m in LENGTH_KEYS.items() if k in part},
        text_bert=field("text_bert", "integer BERT tokens [N, 3, T]"),
        keys=keys,
    )


def _notes(obj: dict, label_key: str | None) -> list[str]:
    keys = {k for part in obj.values() for k in part}
    notes = []
    if "text_bert" in keys:
        notes.append("text_bert (BERT tokens) is read only by models with a BERT text encoder; other models "
                     "use the 'text' features")
    per_modality = sorted(k for k in keys if PER_MODALITY_LABEL.match(str(k)))
    if per_modality:
        notes.append(f"per-modality labels ignored: {', '.join(per_modality)}")
    if label_key == "regression_labels" and "classification_labels" in keys:
        notes.append("classification_labels ignored: the task is regression on regression_labels")
    if label_key is None:
        notes.append("no regression_labels or classification_labels: the data are unlabelled")
    unknown = sorted({k for part in obj.values() for k in _unknown_keys(part)})
    if unknown:
        notes.append(f"keys this program does not use were ignored: {', '.join(unknown)}")
    return notes


def write_mmsa_pickle(dataset: MultimodalDataset, path: str | Path) -> None:
    """Write ``dataset`` as a genuine MMSA pickle (plain ``pickle.dump``), atomically.

    For tests and benchmarks: the modalities must be among text/audio/vision. Like MMSA, a
    regression file also carries 3-class ``classification_labels`` (negative 0, neutral 1,
    positive 2) and ``annotations``; a classification file with class names carries them as annotations; ids and raw text are object arrays; audio/vision lengths are lists.
    """
    unknown = [m for m in dataset.widths if m not in MODALITIES]
    if unknown:
        raise ValueError(f"MMSA pickles hold only {', '.join(MODALITIES)}; found modalities {unknown}")
    payload = {name: _mmsa_split(part, dataset.task, dataset.class_names)
               for name, part in dataset.splits.items()}
    atomic_write_file(path, lambda file: pickle.dump(payload, file))


def _mmsa_split(part: Any, task: str, class_names: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {m: x for m, x in part.features.items()}
    out["id"] = np.array(part.ids.tolist(), dtype=object)
    if part.raw_text is not None:
        out["raw_text"] = np.array(part.raw_text.tolist(), dtype=object)
    if part.labels is not None and task == "regression":
        y = part.labels.astype(np.float32)
        out["regression_labels"] = y
        out["classification_labels"] = (np.sign(y) + 1).astype(np.float32)
        out["annotations"] = np.array(
            [("Negative", "Neutral", "Positive")[int(c)] for c in np.sign(y) + 1], dtype=object
        )
    elif part.labels is not None:
        out["classification_labels"] = part.labels.astype(np.float32)
        if class_names:  # MMSA's one string per sample: how a reader recognises the names
            out["annotations"] = np.array([class_names[int(c)] for c in part.labels], dtype=object)
    if part.text_bert is not None:
        out["text_bert"] = part.text_bert
    for key, m in LENGTH_KEYS.items():  # MMSA itself stores audio and vision lengths only
        if m in part.lengths:
            out[key] = part.lengths[m].tolist()
    return out
