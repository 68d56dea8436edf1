"""Load a dataset file of any supported format, validate it once, and return a MultimodalDataset.

The format readers (:mod:`.mmsa`, :mod:`.npz`) only take a file apart into :class:`~.raw.RawSplit` objects;
every check that does not depend on the format (ranks, sample counts, widths, dtypes, NaN/inf, label
type, missing splits) happens here, in :func:`build_dataset`, so both formats give the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import mmsa, npz
from .class_names import check_class_names
from .dataset import SPLITS, DataError, LoadReport, MultimodalDataset, Split
from .raw import RawData, RawSplit
from .splitting import carve_missing, small_data_warnings
from .tokens import TEXT, TOKENS_FIELD, check_token_array

DEFAULT_MAX_BYTES = 4 * 1024**3  # 4 GiB: larger than any MMSA release (MOSEI unaligned is ~3.3 GiB)
SUFFIXES = {".pkl": "MMSA pickle", ".pickle": "MMSA pickle", ".npz": "npz archive"}


# ----------------------------------------------------------------------------------------- dispatch


def load_dataset(
    path: str | Path,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    sandbox: bool = True,
    suffix: str | None = None,
    mapped: bool = False,
) -> MultimodalDataset:
    """Read an MMSA pickle (``.pkl``/``.pickle``) or an npz archive (``.npz``) and validate it.

    Parameters
    ----------
    path
        The file. The format follows its extension (or ``name``'s, where the path has none we know).
    name
        What error messages and ``report.source`` call the file (e.g. an upload's original name).
    max_bytes
        Files larger than this are refused before reading.
    sandbox
        Parse in a short-lived child process with memory and time limits (:mod:`decalign.sandbox`), so
        no file can crash or exhaust this process. ``False`` parses here: only for files this program
        wrote itself, and inside that child.
    suffix
        The format's extension, overriding the one taken from ``path`` and ``name``.
    mapped
        Unsandboxed only: an npz's stored arrays are read-only views of the file mapped into memory
        (``npz.read_npz``), which must then not change while they are used; for the sandbox's child.

    Raises
    ------
    DataError
        One message naming the file, the key, what was found and what was expected.
    """
    path = Path(path)
    shown = name or str(path)
    if not path.is_file():
        raise DataError(f"{shown}: no such file; expected an existing .pkl, .pickle or .npz file")
    if suffix is None:
        suffix = path.suffix.lower() if path.suffix.lower() in SUFFIXES else Path(shown).suffix.lower()
    _check_size(path.stat().st_size, shown, max_bytes)
    _check_suffix(suffix, shown)
    if sandbox:
        from .untrusted import load_sandboxed

        return load_sandboxed(path, shown, suffix, max_bytes)
    with path.open("rb") as file:
        return _load_stream(file, shown, suffix, max_bytes, mapped=mapped)


def load_dataset_bytes(
    data: bytes, filename: str, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> MultimodalDataset:
    """:func:`load_dataset` for an upload held in memory (always sandboxed); messages call it ``filename``."""
    from .untrusted import load_sandboxed

    suffix = Path(filename).suffix.lower()
    _check_size(len(data), filename, max_bytes)
    _check_suffix(suffix, filename)
    return load_sandboxed(None, filename, suffix, max_bytes, data=data)


def _check_suffix(suffix: str, shown: str) -> None:
    if suffix not in SUFFIXES:
        raise DataError(
            f"{shown}: unsupported extension {suffix or '(none)'!r}; expected .pkl or .pickle (MMSA) or .npz"
        )


def _check_size(size: int, shown: str, max_bytes: int) -> None:
    if size == 0:
        raise DataError(f"{shown}: the file is empty (0 bytes); expected an MMSA pickle or an npz archive")
    if size > max_bytes:
        raise DataError(f"{shown}: the file has {size:,} bytes, more than the limit of {max_bytes:,} bytes")


def _load_stream(file: BinaryIO, shown: str, suffix: str, max_bytes: int, *, mapped: bool = False
                 ) -> MultimodalDataset:
    _check_suffix(suffix, shown)
    head = file.read(8)
    file.seek(0)
    content = sniff(head)
    # Protocol 0 pickles are text and protocol 1 ones have no magic number, so for a pickle only
    # content we can positively name as something else is refused before unpickling.
    expected = "a zip archive" if suffix == ".npz" else "a pickle"
    if content != expected and (suffix == ".npz" or content not in ("text", "unrecognised binary data")):
        raise DataError(
            f"{shown}: the extension {suffix} says {SUFFIXES[suffix]}, but the content is {content}; "
            f"expected {expected}"
        )
    if suffix == ".npz":
        raw = npz.read_npz(file, shown, max_bytes, mapped=mapped)
    else:
        raw = mmsa.read_mmsa(file, shown, hint="; the content looks like text" if content == "text" else "",
                             mapped=mapped)
    return build_dataset(raw, shown)


def sniff(head: bytes) -> str:
    """Name the kind of content from a file's first bytes (magic numbers)."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "a zip archive"
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return "a pickle"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "unrecognised binary data"
    return "text" if all(c.isprintable() or c.isspace() for c in text) else "unrecognised binary data"


# --------------------------------------------------------------------------------------- validation


def build_dataset(raw: RawData, source: str) -> MultimodalDataset:
    """Check ``raw`` and turn it into a :class:`MultimodalDataset` (float32 features, typed labels).

    Features: float32, C-contiguous, ``[N, T, D]`` (``[N, D]`` becomes ``[N, 1, D]``), NaN/inf replaced
    by 0 and counted. Labels: ``[N]`` or ``[N, 1]``, finite; int64 with ``num_classes = max + 1`` for
    classification, float32 for regression. Class names (npz ``label_names``, or recognised in an MMSA
    file) are checked against the labels. Missing valid/test splits are carved out of train (stratified
    for classification), and splits too small to trust are named in ``report.warnings``.
    """
    report = LoadReport(source=source, notes=list(raw.notes))
    if not raw.splits:
        raise DataError(f"{source}: no split found; expected at least one of {', '.join(SPLITS)}")
    _check_modalities(raw, source)
    order = [s for s in SPLITS if s in raw.splits]
    splits = {s: _build_split(s, raw.splits[s], source, report) for s in order}
    _check_widths(splits, raw, source)
    task = _task(raw, source)
    num_classes = _finish_labels(splits, raw, task, source)
    names = _class_names(raw, task, num_classes, source)
    if names is not None:
        num_classes = max(num_classes or 0, len(names))  # a named class may have no sample in the file
    splits = carve_missing(splits, source, report, task)
    report.warnings = small_data_warnings(splits, task, num_classes, names)
    return MultimodalDataset(splits=splits, task=task, num_classes=num_classes, report=report, class_names=names)


def _class_names(raw: RawData, task: str, num_classes: int | None, source: str) -> list[str] | None:
    """The one list of class names the file gives (top level or per split, all equal), checked."""
    given = {raw.label_names_key: raw.label_names} if raw.label_names is not None else {}
    given.update({raw.splits[s].keys.get("label_names", f"{s}/label_names"): r.label_names
                  for s, r in raw.splits.items() if r.label_names is not None})
    if not given:
        return None
    if task != "classification":
        raise DataError(f"{source}: key {next(iter(given))!r} names classes, but the labels are floats "
                        "(regression); expected integer class indices with label_names, or no label_names")
    checked = {key: check_class_names(v, f"{source}: key {key!r}", num_classes) for key, v in given.items()}
    first_key, first = next(iter(checked.items()))
    for key, names in checked.items():
        if names != first:
            raise DataError(f"{source}: key {key!r} gives class names {names[:6]} but {first_key!r} gives "
                            f"{first[:6]}; expected the same names everywhere")
    return first


def _where(source: str, raw: RawSplit, fieldname: str) -> str:
    return f"{source}: key {raw.keys.get(fieldname, fieldname)!r}"


def _check_modalities(raw: RawData, source: str) -> None:
    sets = {s: list(r.features) for s, r in raw.splits.items()}
    for split, names in sets.items():
        if len(names) < 2:
            raise DataError(
                f"{source}: split {split!r} has {len(names)} modality array(s) {names}; "
                "expected at least two modalities, each a float array [N, T, D]"
            )
    first = next(iter(sets))
    for split, names in sets.items():
        if set(names) != set(sets[first]):
            raise DataError(
                f"{source}: splits have different modalities: {first} has {sorted(sets[first])}, "
                f"{split} has {sorted(names)}; expected the same modalities in every split"
            )


def _build_split(split: str, raw: RawSplit, source: str, report: LoadReport) -> Split:
    features = {
        m: _features(x, _where(source, raw, m), f"{split}/{m}", report) for m, x in raw.features.items()
    }
    counts = {raw.keys.get(m, m): len(x) for m, x in features.items()}
    n = next(iter(counts.values()))
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{k!r} has {c}" for k, c in counts.items())
        raise DataError(
            f"{source}: split {split!r} has different sample counts: {found}; expected the same N"
        )
    lengths = {}
    for m, value in raw.lengths.items():
        where = _where(source, raw, f"lengths/{m}")
        if m not in features:
            raise DataError(
                f"{where} gives lengths of {m!r}, which has no features; expected one of {sorted(features)}"
            )
        lengths[m] = _lengths(value, n, features[m].shape[1], where, report)
    ids = (
        _default_ids(split, n) if raw.ids is None else _strings(raw.ids, n, _where(source, raw, "ids"), split)
    )
    text = raw.raw_text
    return Split(
        features=features,
        labels=_labels(raw.labels, n, _where(source, raw, "labels"), counts),
        ids=ids,
        raw_text=None if text is None else _strings(text, n, _where(source, raw, "raw_text"), split),
        lengths=lengths,
        text_bert=_tokens(raw.text_bert, n, _where(source, raw, "text_bert"), report),
    )


def _tokens(value: Any, n: int, where: str, report: LoadReport) -> np.ndarray | None:
    """MMSA's BERT tokens as int64 (N, 3, T), or None with a note when the field is not usable tokens
    (only a model with a BERT reads them, and it then says the field is missing)."""
    if value is None:
        return None
    arr = _as_array(value, where, "integer BERT tokens [N, 3, T]")
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)  # whole numbers stored as floats
    try:
        tokens = check_token_array(arr, where) if arr.dtype.kind in "biuf" else None
    except DataError as err:
        report.notes.append(f"ignored: {err}")
        return None
    if tokens is None or len(tokens) != n:
        found = f"dtype {arr.dtype}" if tokens is None else f"{len(tokens)} samples, expected {n}"
        report.notes.append(f"ignored: {where}: not usable BERT tokens ({found})")
        return None
    return tokens


def _as_array(value: Any, where: str, expected: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged nested lists and the like
        raise DataError(f"{where} could not be read as an array ({err}); expected {expected}") from None


def _features(value: Any, where: str, count_key: str, report: LoadReport) -> np.ndarray:
    expected = "a float array [N, T, D] (or [N, D])"
    arr = _as_array(value, where, expected)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} holds dtype {arr.dtype} ({_kind_words(arr)}); expected {expected}")
    if arr.ndim == 2:
        arr = arr[:, None, :]
        note = f"{count_key.split('/')[1]}: 2-D [N, D] features read as [N, 1, D] (one time step)"
        if note not in report.notes:
            report.notes.append(note)
    if arr.ndim != 3:
        raise DataError(f"{where} has rank {arr.ndim} (shape {arr.shape}); expected {expected}")
    if 0 in arr.shape:
        raise DataError(
            f"{where} has shape {arr.shape} with an empty axis; expected N, T and D of at least 1"
        )
    # float64 values beyond float32's range become inf here; they are counted and zeroed below.
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(x)
    if not finite.all():
        bad = ~finite
        if not x.flags.writeable:  # a view of the file's read-only bytes: copied only when it must change
            x = x.copy()
        x[bad] = 0.0
        report.nonfinite_replaced[count_key] = int(bad.sum())
    return x


def _kind_words(arr: np.ndarray) -> str:
    return {"U": "strings", "S": "byte strings", "O": "Python objects", "c": "complex numbers"}.get(
        arr.dtype.kind, "not numbers"
    )


def _labels(value: Any, n: int, where: str, counts: dict[str, int]) -> np.ndarray | None:
    if value is None:
        return None
    arr = _as_array(value, where, "numeric labels [N] or [N, 1]")
    if arr.dtype.kind == "O":
        try:  # lists of Python numbers pickled as object arrays
            arr = arr.astype(np.float64)
        except (ValueError, TypeError):
            pass
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} holds dtype {arr.dtype} ({_kind_words(arr)}); expected numeric labels [N]")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{where} has shape {arr.shape}; expected labels of shape [N] or [N, 1]")
    if len(arr) != n:
        first = next(iter(counts))
        raise DataError(f"{where} has {len(arr)} labels but {first!r} has {n} samples; expected the same N")
    bad = int((~np.isfinite(arr.astype(np.float64))).sum()) if arr.dtype.kind == "f" else 0
    if bad:
        raise DataError(
            f"{where} has {bad} NaN/inf label(s) out of {n}; expected finite labels "
            "(NaN/inf in features are replaced by 0, in labels they are an error)"
        )
    return arr


def _strings(value: Any, n: int, where: str, split: str) -> np.ndarray:
    arr = _as_array(value, where, "a 1-D array of strings")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{where} has shape {arr.shape}; expected [{n}] (one string per sample of {split})")
    out = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    return np.array(out, dtype=str) if out else np.array([], dtype="<U1")


def _default_ids(split: str, n: int) -> np.ndarray:
    return np.array([f"{split}-{i}" for i in range(n)], dtype=str)


def _lengths(value: Any, n: int, steps: int, where: str, report: LoadReport) -> np.ndarray:
    arr = _as_array(value, where, "integer lengths [N]")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.dtype.kind not in "iuf" or arr.ndim != 1 or len(arr) != n:
        raise DataError(
            f"{where} has dtype {arr.dtype} and shape {arr.shape}; expected integer lengths [{n}]"
        )
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and np.all(arr == np.round(arr))):
        raise DataError(f"{where} holds non-integer values; expected whole numbers of time steps")
    if arr.min() < 0:
        raise DataError(
            f"{where} holds a negative length ({arr.min().item()}); expected lengths in 0..{steps}"
        )
    over = int((arr > steps).sum())
    if over:
        # MMSA records lengths before padding/truncation to T; only T steps exist.
        report.notes.append(
            f"{where}: {over} length(s) above the {steps} stored time steps were clipped to {steps}"
        )
    return np.minimum(arr, steps).astype(np.int64)


def _check_widths(splits: dict[str, Split], raw: RawData, source: str) -> None:
    first = next(iter(splits))
    for split, part in splits.items():
        for m, x in part.features.items():
            d0 = splits[first].features[m].shape[2]
            if x.shape[2] != d0:
                key = raw.splits[split].keys.get(m, m)
                raise DataError(
                    f"{source}: key {key!r} has width D={x.shape[2]}, but {m!r} in {first} has D={d0}; "
                    "expected the same feature width in every split"
                )


def _task(raw: RawData, source: str) -> str:
    if raw.task is not None:
        return raw.task
    kinds = {s: r.labels.dtype.kind for s, r in raw.splits.items() if r.labels is not None}
    tasks = {s: "classification" if k in "biu" else "regression" for s, k in kinds.items()}
    if len(set(tasks.values())) > 1:
        found = ", ".join(f"{raw.splits[s].keys.get('labels', 'labels')!r} is {t}" for s, t in tasks.items())
        raise DataError(
            f"{source}: labels disagree on the task ({found}); expected integer labels (classification) "
            "in every split or float labels (regression) in every split"
        )
    return next(iter(tasks.values()), "regression")


def _finish_labels(splits: dict[str, Split], raw: RawData, task: str, source: str) -> int | None:
    """Cast labels for the task; for classification check they are class indices and count classes."""
    labelled = {s: p for s, p in splits.items() if p.labels is not None}
    if not labelled:
        return None
    for split, part in labelled.items():
        where = _where(source, raw.splits[split], "labels")
        if task == "regression":
            part.labels = part.labels.astype(np.float32)
            continue
        values = part.labels
        whole = values == np.round(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
        if not whole.all() or values.min() < 0:
            bad = (values[~whole][0] if not whole.all() else values.min()).item()
            raise DataError(
                f"{where} holds {bad!r}; expected class indices 0, 1, 2, ... (non-negative integers)"
            )
        part.labels = values.astype(np.int64)
    if task == "classification":
        return int(max(p.labels.max() for p in labelled.values())) + 1
    return None


# ---------------------------------------------------------------------------------- compatibility


def check_compatible(dataset: MultimodalDataset, expected: dict[str, int], source: str, *,
                     bert_text: bool = False) -> None:
    """Raise DataError if ``dataset``'s modalities and widths are not exactly ``expected`` (name -> D).

    The message lists every mismatch: a missing modality, a different width, a modality the
    checkpoint does not know. ``bert_text``: the model encodes the text modality with a BERT, so it
    reads the ``text_bert`` tokens of every split instead of the text features.
    """
    widths = dataset.widths
    problems = []
    if bert_text:
        missing = [name for name, split in dataset.splits.items() if split.text_bert is None]
        if missing:
            raise DataError(f"{source}: split {missing[0]!r} has no field {TOKENS_FIELD!r}: the model has a BERT "
                            f"text encoder and reads MMSA's {TOKENS_FIELD} tokens (N, 3, T)")
        widths = {m: d for m, d in widths.items() if m != TEXT}
        expected = {m: d for m, d in expected.items() if m != TEXT}
    for m, d in expected.items():
        if m not in widths:
            problems.append(f"modality {m!r} is missing (expected width {d})")
        elif widths[m] != d:
            problems.append(f"modality {m!r} has width {widths[m]}, expected {d}")
    problems += [
        f"modality {m!r} (width {d}) is not one the checkpoint expects"
        for m, d in widths.items()
        if m not in expected
    ]
    if problems:
        wanted = ", ".join(f"{m}={d}" for m, d in expected.items())
        raise DataError(f"{source}: does not match the checkpoint ({wanted}): " + "; ".join(problems))
