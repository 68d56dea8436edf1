"""Names of the classes of a classification data set: given in the file, or recognised for MMSA files.

An npz archive names its classes itself (``<split>/label_names`` or a top-level ``label_names``);
:func:`check_class_names` checks them once, whatever the format. MMSA pickles have no place for names,
so :func:`recognise_mmsa_names` recognises them, and says how, in this order:

1. the file's own ``annotations`` (MMSA writes one string per sample): used when every class index
   carries exactly one annotation and different classes carry different ones;
2. IEMOCAP, recognised by its utterance ids (``Ses01F_impro01_F000``: every id starts ``Ses0<1-5><F|M>_``)
   with 4 classes (the official DecAlign ``scripts/prepare_iemocap.py`` mapping) or 6 classes (the
   six-way order of the widely shared IEMOCAP feature files: hap, sad, neu, ang, exc, fru).

Anything else gets no names (charts then show class indices).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .dataset import DataError

MAX_NAME_CHARS = 200  # as a model card allows (decalign.card_schema)
IEMOCAP_ID = re.compile(r"Ses0[1-5][FM]_")
IEMOCAP_NAMES = {
    4: ["happy/excited", "sad", "angry", "neutral"],
    6: ["happy", "sad", "neutral", "angry", "excited", "frustrated"],
}
IEMOCAP_SOURCES = {4: "the official DecAlign 4-class mapping (scripts/prepare_iemocap.py)",
                   6: "the six-way order of the common IEMOCAP feature files (hap, sad, neu, ang, exc, fru)"}


def check_class_names(value: Any, where: str, num_classes: int | None) -> list[str]:
    """``value`` as a list of distinct, non-empty names, at least one per class; DataError otherwise.

    ``num_classes`` is the number the labels need (largest label + 1); more names than that is fine
    (a class with no sample in the file), fewer is an error naming the first unnamed class.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "US" or arr.ndim != 1 or len(arr) == 0:
        raise DataError(f"{where} holds dtype {arr.dtype} and shape {arr.shape}; expected a 1-D array of class "
                        "names as fixed-width strings (np.array(names, dtype=str))")
    names = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    bad = [n for n in names if not n.strip() or len(n) > MAX_NAME_CHARS]
    if bad:
        raise DataError(f"{where} holds an empty name or one longer than {MAX_NAME_CHARS} characters "
                        f"({bad[0][:40]!r}); expected a short name per class")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{where} names {repeated[0]!r} more than once; expected one distinct name per class")
    if num_classes is not None and len(names) < num_classes:
        raise DataError(f"{where} has {len(names)} names but the labels go up to class {num_classes - 1}; "
                        f"expected at least {num_classes} names (one per class index 0..{num_classes - 1})")
    return names


def recognise_mmsa_names(labels: list[Any], annotations: list[Any], ids: list[Any]
                         ) -> tuple[list[str] | None, str | None]:
    """(names, how they were recognised) for an MMSA classification file, or (None, None).

    ``labels``, ``annotations`` and ``ids`` hold one array (or None) per split, unchecked.
    """
    y = _class_indices(labels)
    if y is None:
        return None, None
    k = int(y.max()) + 1
    names = _names_from_annotations(y, annotations, k)
    if names is not None:
        return names, "class names taken from the file's annotations (each class index has one annotation)"
    if k in IEMOCAP_NAMES and _all_iemocap_ids(ids):
        return list(IEMOCAP_NAMES[k]), (f"IEMOCAP recognised from its utterance ids (Ses0<session><F|M>_...) with "
                                        f"{k} classes: class names from {IEMOCAP_SOURCES[k]}")
    return None, None


def _class_indices(labels: list[Any]) -> np.ndarray | None:
    try:
        parts = [np.asarray(v, dtype=np.float64).reshape(-1) for v in labels if v is not None]
    except (TypeError, ValueError):
        return None
    y = np.concatenate(parts) if parts else np.array([])
    if not len(y) or not np.isfinite(y).all() or (y < 0).any() or (y != np.round(y)).any():
        return None
    return y.astype(np.int64)


def _names_from_annotations(y: np.ndarray, annotations: list[Any], k: int) -> list[str] | None:
    if not annotations or any(a is None for a in annotations):
        return None
    try:
        text = np.concatenate([np.asarray(a).reshape(-1).astype(str) for a in annotations])
    except (TypeError, ValueError):
        return None
    if len(text) != len(y):
        return None
    names = []
    for c in range(k):
        found = set(text[y == c].tolist())
        if len(found) != 1:
            return None
        names.append(found.pop())
    ok = len(set(names)) == k and all(n.strip() and len(n) <= MAX_NAME_CHARS for n in names)
    return names if ok else None


def _all_iemocap_ids(ids: list[Any]) -> bool:
    try:
        values = [str(v) for part in ids if part is not None for v in np.asarray(part).reshape(-1).tolist()]
    except (TypeError, ValueError):
        return False
    return bool(values) and all(IEMOCAP_ID.match(v) for v in values)
