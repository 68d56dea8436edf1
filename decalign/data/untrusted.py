"""Dataset files from users, parsed in a memory- and time-limited child process (:mod:`decalign.sandbox`).

The child runs the ordinary in-process loader (:func:`.loading.load_dataset` with ``sandbox=False``:
the restricted unpickler or the npz reader, then every check of :func:`.loading.build_dataset`) and
hands back the validated dataset as plain arrays. The parent only checks their kinds and shapes and
assembles a :class:`MultimodalDataset`, holding one copy of the arrays. A child that refuses the file
gives its own message; one that runs out of memory or time, or crashes, gives one line naming the file.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from .. import sandbox
from ..safe_zip import MAX_RATIO, RATIO_SLACK
from .dataset import SPLITS, DataError, LoadReport, MultimodalDataset, Split


def load_sandboxed(path: Path | None, shown: str, suffix: str, max_bytes: int, *, data: bytes | None = None
                   ) -> MultimodalDataset:
    """Parse the file at ``path`` (or the bytes ``data``) in the sandbox; DataError on any failure."""
    size = len(data) if data is not None else path.stat().st_size
    args: dict[str, Any] = {"shown": shown, "suffix": suffix, "max_bytes": max_bytes}
    files = None
    if data is not None:
        args["file"] = "input" + suffix
        files = {args["file"]: data}
    else:
        args["path"] = str(path.resolve())
    try:
        result = sandbox.run("dataset", args, sandbox.Limits.for_input(_unpacked_size(size, suffix, max_bytes)),
                             files=files)
    except sandbox.SandboxError as err:
        message = str(err) if err.error_type == "DataError" else f"{shown}: {err}"
        raise DataError(message) from err
    dataset = dataset_from_payload(result.value, shown)
    dataset.report.parser_peak_rss_bytes = result.report.peak_rss_bytes
    return dataset


def _unpacked_size(size: int, suffix: str, max_bytes: int) -> int:
    """What parsing may need to hold: the file, or for a compressed npz what it may unpack to."""
    if suffix == ".npz":
        return min(max_bytes, MAX_RATIO * size + RATIO_SLACK)
    return size


# ------------------------------------------------------------------------------------ child side


def parse_dataset(args: dict[str, Any]) -> dict[str, Any]:
    """The sandbox task: load and validate the file in this (child) process, return plain arrays."""
    from .loading import load_dataset

    path = Path(args["folder"]) / args["file"] if "file" in args else Path(args["path"])
    dataset = load_dataset(path, name=args["shown"], max_bytes=args["max_bytes"], sandbox=False,
                           suffix=args["suffix"], mapped=True)  # the child's own copy, or a file it only reads
    return dataset_payload(dataset)


def dataset_payload(dataset: MultimodalDataset) -> dict[str, Any]:
    splits = {name: {"features": part.features, "labels": part.labels, "ids": part.ids,
                     "raw_text": part.raw_text, "lengths": part.lengths, "text_bert": part.text_bert}
              for name, part in dataset.splits.items()}
    return {"task": dataset.task, "num_classes": dataset.num_classes, "report": asdict(dataset.report),
            "splits": splits, "class_names": dataset.class_names}


# ----------------------------------------------------------------------------------- parent side


def dataset_from_payload(value: Any, shown: str) -> MultimodalDataset:
    """Rebuild the dataset from the child's arrays, checking what a correct child always hands back."""
    try:
        splits = {name: _split(part) for name, part in value["splits"].items() if name in SPLITS}
        report = LoadReport(**{f.name: value["report"][f.name] for f in fields(LoadReport)
                               if f.name in value["report"]})
        task, num_classes = value["task"], value["num_classes"]
        if not splits or task not in ("regression", "classification"):
            raise ValueError("no split or no task")
        names = _names(value.get("class_names"), num_classes)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{shown}: the parser handed back an unusable result ({err})") from None
    report.source = shown
    return MultimodalDataset(splits=splits, task=task, num_classes=num_classes, report=report, class_names=names)


def _names(value: Any, num_classes: int | None) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) != num_classes:
        raise ValueError("class names are not one string per class")
    return value


def _split(part: dict[str, Any]) -> Split:
    features = {str(m): _array(x, "f", 3) for m, x in part["features"].items()}
    n = {len(x) for x in features.values()}
    ids = _array(part["ids"], "U", 1)
    if len(features) < 2 or n != {len(ids)}:
        raise ValueError("features and ids disagree")
    labels = None if part["labels"] is None else _array(part["labels"], "fi", 1, len(ids))
    raw_text = None if part["raw_text"] is None else _array(part["raw_text"], "U", 1, len(ids))
    lengths = {str(m): _array(v, "i", 1, len(ids)) for m, v in part["lengths"].items()}
    tokens = part.get("text_bert")
    text_bert = None if tokens is None else _array(tokens, "i", 3, len(ids))
    return Split(features=features, labels=labels, ids=ids, raw_text=raw_text, lengths=lengths,
                 text_bert=text_bert)


def _array(value: Any, kinds: str, ndim: int, n: int | None = None) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds or value.ndim != ndim:
        raise ValueError(f"unexpected {type(value).__name__} {getattr(value, 'dtype', '')}")
    if n is not None and len(value) != n:
        raise ValueError("length differs from the ids")
    return value
