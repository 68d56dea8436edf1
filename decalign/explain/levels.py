"""The five alignment levels of DecAlign on any data, and their course over the training epochs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data import Split, iterate_batches
from ..model import AlignmentLevels, DecAlign, Prototypes

LEVELS = AlignmentLevels.LEVELS
LEVEL_TITLES = {
    "decoupling": "1 · Decoupling",
    "prototype_transport": "2 · Prototype transport (global heterogeneity)",
    "sample_to_prototype": "3 · Sample-to-prototype (local heterogeneity)",
    "moment_matching": "4 · Moment matching (semantic homogeneity)",
    "mmd": "5 · MMD (RKHS homogeneity)",
}
LEVEL_MEANING = {
    "decoupling": "Decoupling measures how similar each modality's unique and common parts still are (squared "
                  "cosine): near 0 means they carry different information, near 1 means the split failed.",
    "prototype_transport": "The cost of the optimal transport plan between the modalities' prototypes: low "
                           "means each modality's clusters have a close counterpart in the others; high "
                           "means the modality-specific structures are far apart.",
    "sample_to_prototype": "How far samples lie from the prototypes of the other modality that the plan "
                           "matches them to: low means a sample's clusters agree across modalities, high "
                           "means they disagree.",
    "moment_matching": "Gap between the mean, covariance and skewness of the modalities' common features: "
                       "low means the common parts are distributed alike, high means they still differ.",
    "mmd": "Maximum mean discrepancy between the modalities' common features (Gaussian kernel): 0 means "
           "the two distributions cannot be told apart, larger means they can.",
}
# Words that identify a level in a history key (the trainer writes the level names themselves).
_HISTORY_ALIASES = {
    "decoupling": ("decoupling",),
    "prototype_transport": ("prototype_transport", "transport_cost"),
    "sample_to_prototype": ("sample_to_prototype",),
    "moment_matching": ("moment_matching",),
    "mmd": ("mmd",),
}


def alignment_levels(model: DecAlign, split: Split, *, prototypes: dict[str, Prototypes] | None = None,
                     batch_size: int = 256, max_samples: int = 4096, seed: int = 0) -> pd.DataFrame:
    """Value of every alignment level on ``split``, total and per modality pair (per modality for decoupling).

    The model runs with ``align=True`` in eval mode without gradients over chunks of at most
    ``batch_size`` samples (equal-sized chunks, so no chunk is tiny); each value is the mean over chunks
    weighted by chunk size. Like in training, the levels are batch statistics: the prototype transport of
    a chunk solves the plan between that chunk's prototypes (fitted on the chunk, or ``prototypes`` with
    the chunk's posteriors as marginals), and moments and MMD compare the chunk's distributions, so the
    values depend somewhat on ``batch_size``. Above ``max_samples`` samples a seeded random subset is used.

    Per-pair rows: ``sample_to_prototype`` for each ordered pair (a → b), ``moment_matching`` and ``mmd``
    for each unordered pair, ``prototype_transport`` for each unordered pair as ``<P_ab, C_ab>`` (the joint
    cost is the sum of pair costs, so these add up to the total). Per-pair (per-modality) rows of a level
    sum to its total row.

    Returns
    -------
    DataFrame with columns level, scope ("total", a modality, "a → b" or "a – b"), kind ("total",
    "modality", "pair"), value, samples.
    """
    if len(split) == 0:
        raise ValueError("alignment_levels needs at least one sample")
    if batch_size < 1 or max_samples < 1:
        raise ValueError(f"batch_size and max_samples must be at least 1, found {batch_size}, {max_samples}")
    rows = np.arange(len(split))
    if len(rows) > max_samples:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_samples, replace=False))
    chunks = np.array_split(rows, math.ceil(len(rows) / batch_size))
    sums: dict[tuple[str, str, str], float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in chunks:
                for key, value in _chunk_levels(model, split.subset(chunk), prototypes).items():
                    sums[key] = sums.get(key, 0.0) + value * len(chunk)
    finally:
        model.train(was_training)
    return pd.DataFrame([{"level": level, "scope": scope, "kind": kind, "value": total / len(rows),
                          "samples": len(rows)} for (level, scope, kind), total in sums.items()])


def _chunk_levels(model: DecAlign, part: Split, prototypes: dict[str, Prototypes] | None
                  ) -> dict[tuple[str, str, str], float]:
    device = next(model.parameters()).device
    batch = next(iterate_batches(part, len(part), shuffle=False, device=device))
    out = model(batch.inputs, batch.lengths, align=True, prototypes=prototypes)
    levels, order = out.alignment, model.modalities
    values = {(name, "total", "total"): float(getattr(levels, name)) for name in LEVELS}
    values.update({("decoupling", m, "modality"): float(v) for m, v in levels.decoupling_per_modality.items()})
    for a, b in itertools.combinations(order, 2):
        pair_cost = out.transport.pair_costs[(a, b)]
        values[("prototype_transport", f"{a} – {b}", "pair")] = float(
            (out.transport.pair_plan(a, b, order) * pair_cost).sum())
        values[("moment_matching", f"{a} – {b}", "pair")] = float(levels.moment_matching_per_pair[(a, b)])
        values[("mmd", f"{a} – {b}", "pair")] = float(levels.mmd_per_pair[(a, b)])
    values.update({("sample_to_prototype", f"{a} → {b}", "pair"): float(v)
                   for (a, b), v in levels.sample_to_prototype_per_pair.items()})
    return values


def levels_history(history: list[dict[str, Any]] | Any) -> pd.DataFrame:
    """The alignment levels per epoch from the rows of a run's history (``decalign.train.runs.read_history``).

    Parsed defensively: each row of ``history`` should be a dict for one epoch; level values are found at any depth under keys
    that name a level (e.g. ``{"epoch": 3, "train": {"decoupling": 0.1, ...}}``). Rows that are not dicts,
    and values that are not finite numbers, are skipped.

    Returns
    -------
    DataFrame with columns epoch, level, source (the path of the key, e.g. "train"), value; empty if no
    level was found.
    """
    rows = []
    if not isinstance(history, list):
        return pd.DataFrame(columns=["epoch", "level", "source", "value"])
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            continue
        epoch = entry.get("epoch", i + 1)
        epoch = epoch if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else i + 1
        for path, value in _leaves(entry, ()):
            level = _level_of(path[-1])
            if level is not None:
                rows.append({"epoch": int(epoch), "level": level, "source": "/".join(path[:-1]) or "epoch",
                             "value": value})
    return pd.DataFrame(rows, columns=["epoch", "level", "source", "value"])


def _leaves(node: dict, path: tuple[str, ...]):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, path + (str(key),))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            yield path + (str(key),), float(value)


def _level_of(key: str) -> str | None:
    lowered = key.lower()
    for level, words in _HISTORY_ALIASES.items():
        if any(word in lowered for word in words):
            return level
    return None
