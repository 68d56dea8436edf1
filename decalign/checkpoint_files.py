"""Read a checkpoint a user gave us into a checked card and plain float32 arrays. Imports no torch.

A checkpoint is a run directory (``card.json`` + ``<tag>.safetensors``), a ``.safetensors`` file beside
a card, or a zip of a run directory. This module runs inside the sandbox (:mod:`decalign.sandbox`):
the card is read with a size cap and checked field by field (:mod:`decalign.card_schema`) first, so the
weights file can be judged against the model the card describes before it is read. A safetensors
header over :data:`MAX_HEADER_BYTES`, a weights file larger than the card's model needs, a tensor
outside the file, or a dtype other than a float is refused with one line naming the file.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

from .card_schema import CheckpointError, check_card, parameter_count, parse_card_json, read_card_file
from .safe_zip import MAX_RATIO, RATIO_SLACK, open_archive, read_member
from .sandbox import mapped_view

CARD_NAME = "card.json"
MAX_HEADER_BYTES = 8 << 20  # a DecAlign header is tens of kB; safetensors itself allows 100 MB
MAX_ZIP_BYTES = 2 << 30
MAX_NDIM = 8
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}


def read_checkpoint_files(args: dict[str, Any]) -> dict[str, Any]:
    """The sandbox task: ``{"card": card JSON, "weights": {name: float32 array}}`` of a checkpoint."""
    path = Path(args["folder"]) / args["file"] if "file" in args else Path(args["path"])
    shown, tag = args["shown"], args["tag"]
    if path.is_file() and path.suffix.lower() == ".zip":
        return _from_zip(path, shown, tag)
    run_dir, weights = (path.parent, path) if path.is_file() else (path, path / f"{tag}.safetensors")
    card_path = run_dir / CARD_NAME
    card = read_card_file(card_path, missing=f"{shown}: no {CARD_NAME} (is this a DecAlign run directory?)")
    values = _values_needed(card, str(card_path))
    try:
        with open(weights, "rb") as handle:
            tensors = read_safetensors(handle, os.fstat(handle.fileno()).st_size, str(weights), values,
                                       view=mapped_view(handle))  # this runs in the sandbox's child
    except FileNotFoundError:
        raise CheckpointError(f"{weights}: weights file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{weights}: weights file not readable ({exc.strerror or exc})") from None
    return {"card": card, "weights": tensors}


def _from_zip(path: Path, shown: str, tag: str) -> dict[str, Any]:
    expected = f"a zipped run directory ({CARD_NAME} and {tag}.safetensors)"
    with open_archive(str(path), shown, CheckpointError, expected) as archive:
        members = [i for i in archive.infolist() if not i.is_dir()]
        cards = sorted((i for i in members if PurePosixPath(i.filename).name == CARD_NAME),
                       key=lambda i: i.filename.count("/"))
        if not cards:
            raise CheckpointError(f"{shown}: no {CARD_NAME} inside the zip; expected {expected}")
        folder = PurePosixPath(cards[0].filename).parent
        card = parse_card_json(read_member(archive, cards[0], shown, CheckpointError, 64 << 20),
                               f"{shown}: {cards[0].filename}")
        values = _values_needed(card, f"{shown}: {cards[0].filename}")
        weights = [i for i in members if PurePosixPath(i.filename) == folder / f"{tag}.safetensors"]
        if not weights:
            raise CheckpointError(f"{shown}: no {tag}.safetensors beside {cards[0].filename}")
        data = read_member(archive, weights[0], shown, CheckpointError, _max_file_bytes(values))
    where = f"{shown}: {weights[0].filename}"
    return {"card": card, "weights": read_safetensors(io.BytesIO(data), len(data), where, values)}


def _values_needed(card: dict[str, Any], source: str) -> int:
    config = check_card(card, source)
    return parameter_count(config.model, card["widths"], card["output_dim"])


def _max_file_bytes(values: int) -> int:
    return 8 + MAX_HEADER_BYTES + 8 * values  # float64 at most per value


def zip_input_size(size: int) -> int:
    """What reading a zip of ``size`` bytes may hold in memory: what it may unpack to, capped."""
    return min(MAX_ZIP_BYTES, MAX_RATIO * size + RATIO_SLACK)


def read_safetensors(handle: BinaryIO, size: int, shown: str, max_values: int,
                     view: memoryview | None = None) -> dict[str, np.ndarray]:
    """Tensors of a safetensors stream as float32 arrays, after checking the header against the file.

    ``max_values``: how many values the card's model has; a file larger than that many float64 values
    (plus the largest header allowed) is refused unread. ``view``: the whole file mapped (the sandbox's child):
    float32 tensors are then read-only views of it, not read into memory and copied again (a 752 MB weights
    file's tensors were read, then widened by a copy, before the child wrote them back).
    """
    if size > _max_file_bytes(max_values):
        raise CheckpointError(f"{shown}: {size:,} bytes, more than the card's model needs "
                              f"({max_values:,} values); refused without reading it")
    if size < 8:
        raise CheckpointError(f"{shown}: not a safetensors file (only {size} bytes)")
    (header_size,) = struct.unpack("<Q", handle.read(8))
    if header_size > min(MAX_HEADER_BYTES, size - 8):
        raise CheckpointError(f"{shown}: safetensors header of {header_size:,} bytes (the file has {size:,}, "
                              f"at most {MAX_HEADER_BYTES:,} allowed); not a readable safetensors file")
    # Within that size the tensors are read, and the parent names any that do not fit the card's model.
    entries = _entries(_header(handle.read(header_size), shown), size - 8 - header_size, shown)
    start = 8 + header_size
    return {name: _tensor(handle, start + begin, dtype, shape, view) for name, dtype, shape, begin in entries}


def _header(raw: bytes, shown: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{shown}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shown}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def _entries(header: dict[str, Any], data_size: int, shown: str) -> list[tuple[str, str, tuple, int]]:
    """(name, dtype name, shape, offset) of every tensor, each checked to lie inside the data."""
    entries = []
    for name, info in header.items():
        where = f"{shown}: tensor {name!r:.80}"
        if not isinstance(info, dict) or info.get("dtype") not in DTYPES:
            found = info.get("dtype") if isinstance(info, dict) else info
            raise CheckpointError(f"{where} has dtype {found!r:.40}; expected F32, F64, F16 or BF16")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(type(n) is int and n >= 0
                                                                           for n in shape)):
            raise CheckpointError(f"{where} has shape {shape!r:.80}; expected up to {MAX_NDIM} sizes")
        dtype = DTYPES[info["dtype"]]
        nbytes = math.prod(shape) * dtype.itemsize
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size and offsets[1] - offsets[0] == nbytes):
            raise CheckpointError(f"{where} has data_offsets {offsets!r:.80}, which do not fit its shape "
                                  f"({nbytes:,} bytes) inside the file's {data_size:,} bytes of data")
        entries.append((str(name), info["dtype"], tuple(shape), offsets[0]))
    return entries


def _tensor(handle: BinaryIO, offset: int, kind: str, shape: tuple[int, ...], view: memoryview | None
            ) -> np.ndarray:
    dtype, count = DTYPES[kind], math.prod(shape)
    if view is not None:
        raw = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    else:
        handle.seek(offset)
        raw = np.frombuffer(handle.read(count * dtype.itemsize), dtype=dtype)
    if kind == "BF16":  # the upper half of a float32: widen through uint32
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return raw.astype(np.float32, copy=False).reshape(shape)  # float32 already: no copy
