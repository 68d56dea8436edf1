"""The validated in-memory dataset every loader returns and every consumer reads."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """A file that cannot be used; the message names the file, the key, what was found and expected."""


@dataclass
class Split:
    """One split: features per modality, labels and sample metadata, all with the same N."""

    features: dict[str, np.ndarray]  # name -> float32 (N, T, D)
    labels: np.ndarray | None  # (N,) float32 for regression, int64 for classification; None if unlabelled
    ids: np.ndarray  # (N,) str
    raw_text: np.ndarray | None = None  # (N,) str
    lengths: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) int64 valid steps
    text_bert: np.ndarray | None = None  # (N, 3, T) int64 MMSA BERT tokens (decalign.data.tokens), if any

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> Split:
        return Split(
            features={m: x[index] for m, x in self.features.items()},
            labels=None if self.labels is None else self.labels[index],
            ids=self.ids[index],
            raw_text=None if self.raw_text is None else self.raw_text[index],
            lengths={m: v[index] for m, v in self.lengths.items()},
            text_bert=None if self.text_bert is None else self.text_bert[index],
        )


@dataclass
class LoadReport:
    """What the loader did to the data, for the user to see."""

    source: str
    nonfinite_replaced: dict[str, int] = field(default_factory=dict)  # "split/modality" -> count
    carved_splits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # small or lopsided splits: results may mislead
    parser_peak_rss_bytes: int | None = None  # peak memory of the sandboxed parser, when there was one


@dataclass
class MultimodalDataset:
    splits: dict[str, Split]  # subset of SPLITS, in that order
    task: str  # "regression" | "classification"
    num_classes: int | None = None
    report: LoadReport = field(default_factory=lambda: LoadReport(source="memory"))
    class_names: list[str] | None = None  # one per class index, when the file names them
    # The fingerprint of the data as read, kept by the views a model derives from them (``derived``).
    source_fingerprint: str | None = field(default=None, repr=False)

    def class_name(self, k: int) -> str:
        """The name of class ``k``, or its index as text."""
        return self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)

    @property
    def modalities(self) -> dict[str, tuple[int, int]]:
        """name -> (T, D) taken from the first split."""
        first = next(iter(self.splits.values()))
        return {m: (x.shape[1], x.shape[2]) for m, x in first.features.items()}

    @property
    def widths(self) -> dict[str, int]:
        return {m: d for m, (_, d) in self.modalities.items()}

    def file_fingerprint(self) -> str:
        """The fingerprint of the data as read from the file: the same for the views derived from it (a run's
        input transform, a BERT model's tokens), so a card recognises its own data however it was prepared.
        Hashed once per object and kept outside the dataclass fields, so ``dataclasses.replace`` (a copy
        with other splits) does not carry it over; arrays are not changed in place once read."""
        if self.source_fingerprint is not None:
            return self.source_fingerprint
        if "_hashed" not in self.__dict__:
            self._hashed = self.fingerprint()
        return self._hashed

    def derived(self, **changes) -> MultimodalDataset:
        """A view of these data with ``changes`` (``dataclasses.replace``) that keeps ``file_fingerprint``."""
        return replace(self, **changes, source_fingerprint=self.file_fingerprint())

    def fingerprint(self, split: str | None = None) -> str:
        """sha256 over the feature and label bytes (of one split, or all), in a fixed order."""
        digest = hashlib.sha256()
        for name in [split] if split else list(self.splits):
            part = self.splits[name]
            digest.update(name.encode())
            for m in sorted(part.features):
                digest.update(m.encode())
                digest.update(_raw_bytes(part.features[m]))
            if part.labels is not None:
                digest.update(_raw_bytes(part.labels))
            if part.text_bert is not None:
                digest.update(b"text_bert")
                digest.update(_raw_bytes(part.text_bert))
        return digest.hexdigest()


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The array's bytes in C order as ``tobytes()`` gives them, as a view of a contiguous array: the hash
    reads the buffer itself (at MOSI shapes ``tobytes`` copied 340 MB on the way)."""
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
