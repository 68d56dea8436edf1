"""npz archives: any modalities, one array per ``<split>/<field>`` key, read without pickle.

Keys::

    train/<modality>          float [N, T, D] or [N, D] (read as [N, 1, D]); any name but the reserved ones
    train/labels              [N]; float for regression, integer for classification (optional)
    train/ids, train/raw_text [N] strings, fixed-width unicode (optional)
    train/lengths/<modality>  [N] integer valid time steps (optional)
    train/text_bert           [N, 3, T] integer BERT tokens, MMSA's layout (optional; for BERT models)
    train/label_names         [C] class names, fixed-width unicode (optional; or one top-level label_names)
    valid/..., test/...       the same; missing valid/test splits are carved out of train

Read member by member without pickle: object arrays are refused, not unpickled, and every ``.npy``
header is checked against the member's size before anything is allocated.
"""

from __future__ import annotations

import math
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..atomic import atomic_write_file
from ..safe_zip import MAX_RATIO, RATIO_SLACK, ZIP_ERRORS, check_member, open_archive
from ..sandbox import is_plain_dtype, mapped_view, read_npy_header
from .dataset import SPLITS, DataError, MultimodalDataset
from .raw import RawData, RawSplit

RESERVED = ("labels", "ids", "raw_text", "text_bert", "lengths", "label_names")
LABEL_NAMES = "label_names"
READ_CHUNK = 8 << 20  # bytes of a member read at once
MODALITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*$")
EXPECTED_KEYS = "'<split>/<modality>', '<split>/labels', '<split>/ids', '<split>/raw_text', '<split>/text_bert', "
EXPECTED_KEYS += "'<split>/label_names', '<split>/lengths/<modality>' (with <split> one of "
EXPECTED_KEYS += f"{', '.join(SPLITS)}) or a top-level 'label_names'"


def read_npz(file: BinaryIO, shown: str, max_bytes: int, *, mapped: bool = False) -> RawData:
    """Open an npz archive (no pickle), check its keys and take it apart into raw splits.

    Every member is checked before it is read: encryption and compression method, a plain dtype in
    its ``.npy`` header, and a shape whose size is what the member holds. The archive as a whole may
    unpack to at most ``max_bytes`` and to at most :data:`MAX_RATIO` times its own size (plus
    :data:`RATIO_SLACK`): a small zip that unpacks to gigabytes is refused before it is read.

    ``mapped`` (a file on disk, in the sandbox's child only): each stored (uncompressed) member's array
    is a read-only view of the file mapped into memory, its CRC checked over the mapping, instead of a
    copy. A 1,000-sample MOSI upload (151 MB) was otherwise copied into new memory once more before the
    child wrote it back: its child spent 0.6-0.7 s, most of it the kernel's page faults, in a server
    whose browser was drawing. A file truncated while mapped stops the process that maps it (SIGBUS):
    only the sandbox's child maps files, so that ends as a crash the parent reports, not as the program's.
    """
    size = file.seek(0, 2)
    file.seek(0)
    archive = open_archive(file, shown, DataError, "an npz archive")
    view = mapped_view(file) if mapped else None
    with archive:
        members = archive.infolist()
        total = sum(info.file_size for info in members)
        if total > max_bytes:
            raise DataError(
                f"{shown}: the archive unpacks to {total:,} bytes, more than the limit of {max_bytes:,}"
            )
        if total > MAX_RATIO * size + RATIO_SLACK:
            raise DataError(
                f"{shown}: the archive unpacks to {total:,} bytes from {size:,} (more than {MAX_RATIO} times "
                "its size); refused as a likely zip bomb"
            )
        if not members:
            raise DataError(f"{shown}: the archive holds no arrays; expected keys {EXPECTED_KEYS}")
        splits: dict[str, RawSplit] = {}
        names = None
        for info in members:
            key = info.filename.removesuffix(".npy")
            if key == LABEL_NAMES:
                names = _read_member(archive, info, key, shown, view)
                continue
            split, fieldname = _parse_key(key, shown)
            part = splits.setdefault(split, RawSplit(features={}))
            _put(part, fieldname, _read_member(archive, info, key, shown, view))
            part.keys[fieldname] = key
    return RawData(splits={s: splits[s] for s in SPLITS if s in splits}, label_names=names)


def _parse_key(key: str, shown: str) -> tuple[str, str]:
    split, _, fieldname = key.partition("/")
    parts = fieldname.split("/")
    ok = split in SPLITS and (
        (len(parts) == 1 and (parts[0] in (*RESERVED[:4], LABEL_NAMES) or MODALITY_NAME.match(parts[0])))
        or (len(parts) == 2 and parts[0] == "lengths" and MODALITY_NAME.match(parts[1]))
    )
    if not ok:
        raise DataError(f"{shown}: unknown key {key!r}; expected {EXPECTED_KEYS}")
    return split, fieldname


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, shown: str,
                 view: memoryview | None = None) -> np.ndarray:
    check_member(info, shown, DataError)
    try:
        with archive.open(info) as stream:
            shape, fortran, dtype = _header(stream, key, shown)
            nbytes = math.prod(shape) * dtype.itemsize
            if stream.tell() + nbytes != info.file_size:
                raise DataError(
                    f"{shown}: key {key!r} declares shape {shape} of {dtype} ({nbytes:,} bytes) but holds "
                    f"{info.file_size - stream.tell():,} bytes; expected a complete .npy array"
                )
            start = _stored_data_start(view, info) if view is not None else None
            if start is None:
                data = _read_into_array(stream, nbytes)
                stream.read()  # to the end, so the CRC is checked
            else:
                data = _mapped_array(view, info, start, stream.tell(), key, shown)
    except DataError:
        raise
    except ZIP_ERRORS as err:
        raise DataError(f"{shown}: key {key!r} could not be read (truncated or corrupt: {err})") from None
    if len(data) < nbytes:
        raise DataError(f"{shown}: key {key!r} could not be read (truncated: {len(data):,} of {nbytes:,} bytes)")
    return data.view(dtype).reshape(shape, order="F" if fortran else "C")


LOCAL_HEADER = struct.Struct("<4s2xHH4x4x4x4xHH")  # signature, flags, method, name and extra lengths


def _stored_data_start(view: memoryview, info: zipfile.ZipInfo) -> int | None:
    """Where a stored member's bytes begin in the mapped archive (after its local header); None for a
    compressed member, or one whose local header does not say stored (then it is read as a stream)."""
    if info.compress_type != zipfile.ZIP_STORED or info.header_offset + LOCAL_HEADER.size > len(view):
        return None
    signature, _, method, name_length, extra_length = LOCAL_HEADER.unpack_from(view, info.header_offset)
    if signature != b"PK\x03\x04" or method != zipfile.ZIP_STORED:
        return None
    return info.header_offset + LOCAL_HEADER.size + name_length + extra_length


def _mapped_array(view: memoryview, info: zipfile.ZipInfo, start: int, header: int, key: str, shown: str
                  ) -> np.ndarray:
    """The array bytes of a stored member (``header`` bytes of .npy header first): a read-only view of the
    mapping, after the member's CRC is checked over it as the zip reader would."""
    end = start + info.file_size
    if end > len(view) or zlib.crc32(view[start:end]) != info.CRC:
        raise DataError(f"{shown}: key {key!r} could not be read (truncated or corrupt: its bytes do not match "
                        "its CRC); expected a complete .npy array")
    return np.frombuffer(view[start + header:end], dtype=np.uint8)


def _read_into_array(stream: BinaryIO, nbytes: int) -> np.ndarray:
    """Up to ``nbytes`` from ``stream`` into one new writeable byte array, a chunk at a time: reading the
    member whole made two more copies of it (the zip reader's joined buffer, then a writeable copy of
    the read-only array over it), 0.3 GB for a 1,000-sample MOSI upload. Shorter when the stream ends."""
    out = np.empty(nbytes, dtype=np.uint8)
    view, got = memoryview(out), 0
    while got < nbytes:
        chunk = stream.read(min(READ_CHUNK, nbytes - got))
        if not chunk:
            return out[:got]
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    return out


def _header(stream: BinaryIO, key: str, shown: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        shape, fortran, dtype = read_npy_header(stream, plain=False)
    except ValueError as err:
        raise DataError(f"{shown}: key {key!r} could not be read ({err}); expected a .npy array") from None
    if dtype.hasobject:
        raise DataError(
            f"{shown}: key {key!r} holds Python objects (dtype object), which are not loaded; "
            "expected a numeric array, or strings as fixed-width unicode (np.array(values, dtype=str))"
        )
    if not is_plain_dtype(dtype):
        raise DataError(f"{shown}: key {key!r} holds dtype {dtype}; expected a plain numeric, bool or string "
                        "array (no structured, date or void types)")
    return shape, fortran, dtype


def _put(part: RawSplit, fieldname: str, value: np.ndarray) -> None:
    if fieldname == "labels":
        part.labels = value
    elif fieldname == "ids":
        part.ids = value
    elif fieldname == "raw_text":
        part.raw_text = value
    elif fieldname == "text_bert":
        part.text_bert = value
    elif fieldname == LABEL_NAMES:
        part.label_names = value
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
        if part.text_bert is not None:
            arrays[f"{split}/text_bert"] = part.text_bert
    if dataset.class_names:
        arrays[LABEL_NAMES] = np.asarray(dataset.class_names, dtype=str)
    writer = np.savez_compressed if compress else np.savez
    atomic_write_file(path, lambda file: writer(file, **arrays))  # a file object: numpy adds no ".npz"
