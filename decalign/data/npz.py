"""npz archives: any modalities, one array per ``<split>/<field>`` key, read without pickle.

Keys::

    train/<modality>          float [N, T, D] or [N, D] (read as [N, 1, D]); any name but the reserved ones
    train/labels              [N]; float for regression, integer for classification (optional)
    train/ids, train/raw_text [N] strings, fixed-width unicode (optional)
    train/lengths/<modality>  [N] integer valid time steps (optional)
    valid/..., test/...       the same; missing valid/test splits are carved out of train

Read with ``np.load(allow_pickle=False)``: object arrays are refused, not unpickled.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..atomic import atomic_write_file
from .dataset import SPLITS, DataError, MultimodalDataset
from .raw import RawData, RawSplit

RESERVED = ("labels", "ids", "raw_text", "lengths")
MODALITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")
EXPECTED_KEYS = "'<split>/<modality>', '<split>/labels', '<split>/ids', '<split>/raw_text' or "
EXPECTED_KEYS += f"'<split>/lengths/<modality>', with <split> one of {', '.join(SPLITS)}"


def read_npz(file: BinaryIO, shown: str, max_bytes: int) -> RawData:
    """Open an npz archive (no pickle), check its keys and take it apart into raw splits."""
    try:
        archive = np.load(file, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{shown}: not a readable npz archive (truncated or corrupt: {err})") from None
    with archive:
        total = sum(info.file_size for info in archive.zip.infolist())
        if total > max_bytes:  # a small zip can decompress to a huge array
            raise DataError(
                f"{shown}: the archive unpacks to {total:,} bytes, more than the limit of {max_bytes:,}"
            )
        if not archive.files:
            raise DataError(f"{shown}: the archive holds no arrays; expected keys {EXPECTED_KEYS}")
        splits: dict[str, RawSplit] = {}
        for key in archive.files:
            split, fieldname = _parse_key(key, shown)
            part = splits.setdefault(split, RawSplit(features={}))
            _put(part, fieldname, _read_member(archive, key, shown))
            part.keys[fieldname] = key
    return RawData(splits={s: splits[s] for s in SPLITS if s in splits})


def _parse_key(key: str, shown: str) -> tuple[str, str]:
    split, _, fieldname = key.partition("/")
    parts = fieldname.split("/")
    ok = split in SPLITS and (
        (len(parts) == 1 and (parts[0] in RESERVED[:3] or MODALITY_NAME.match(parts[0])))
        or (len(parts) == 2 and parts[0] == "lengths" and MODALITY_NAME.match(parts[1]))
    )
    if not ok:
        raise DataError(f"{shown}: unknown key {key!r}; expected {EXPECTED_KEYS}")
    return split, fieldname


def _read_member(archive: Any, key: str, shown: str) -> np.ndarray:
    try:
        return archive[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(
                f"{shown}: key {key!r} holds Python objects (dtype object), which are not loaded; "
                "expected a numeric array, or strings as fixed-width unicode (np.array(values, dtype=str))"
            ) from None
        raise DataError(f"{shown}: key {key!r} could not be read ({err}); expected a .npy array") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise DataError(f"{shown}: key {key!r} could not be read (truncated or corrupt: {err})") from None


def _put(part: RawSplit, fieldname: str, value: np.ndarray) -> None:
    if fieldname == "labels":
        part.labels = value
    elif fieldname == "ids":
        part.ids = value
    elif fieldname == "raw_text":
        part.raw_text = value
    elif fieldname.startswith("lengths/"):
        part.lengths[fieldname.split("/", 1)[1]] = value
    else:
        part.features[fieldname] = value


def save_npz(dataset: MultimodalDataset, path: str | Path, *, compress: bool = True) -> None:
    """Write ``dataset`` in the npz format above, atomically (``decalign.atomic``)."""
    arrays: dict[str, np.ndarray] = {}
    for split, part in dataset.splits.items():
        for m, x in part.features.items():
            if m in RESERVED or not MODALITY_NAME.match(m):
                raise ValueError(
                    f"modality name {m!r} cannot be stored; expected a name like 'audio', not {RESERVED}"
                )
            arrays[f"{split}/{m}"] = x
        if part.labels is not None:
            arrays[f"{split}/labels"] = part.labels
        arrays[f"{split}/ids"] = np.asarray(part.ids, dtype=str)
        if part.raw_text is not None:
            arrays[f"{split}/raw_text"] = np.asarray(part.raw_text, dtype=str)
        arrays.update({f"{split}/lengths/{m}": v for m, v in part.lengths.items()})
    writer = np.savez_compressed if compress else np.savez
    atomic_write_file(path, lambda file: writer(file, **arrays))  # a file object: numpy adds no ".npz"
