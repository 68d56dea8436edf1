"""What a format reader hands over: the file's arrays, not yet checked, and where each came from.

The readers (:mod:`.mmsa`, :mod:`.npz`) produce these; :func:`.loading.build_dataset` checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawSplit:
    """One split as a reader found it: arrays not yet checked, plus the file key of every field.

    ``keys`` maps a canonical field (a modality name, ``"labels"``, ``"ids"``, ``"raw_text"`` or
    ``"lengths/<modality>"``) to the name the file uses for it, for error messages.
    """

    features: dict[str, Any]
    labels: Any | None = None
    ids: Any | None = None
    raw_text: Any | None = None
    lengths: dict[str, Any] = field(default_factory=dict)
    text_bert: Any | None = None  # MMSA BERT tokens [N, 3, T] (decalign.data.tokens)
    keys: dict[str, str] = field(default_factory=dict)
    label_names: Any | None = None  # (C,) class names given with this split


@dataclass
class RawData:
    """What a reader returns: splits, the task if the format says it (else ``None``), notes, and class
    names given for the whole file (``label_names_key`` says where, for messages)."""

    splits: dict[str, RawSplit]
    task: str | None = None
    notes: list[str] = field(default_factory=list)
    label_names: Any | None = None
    label_names_key: str = "label_names"
