"""The five alignment levels of DecAlign on any data, their official groupings, and their course over epochs.

:func:`alignment_levels` is the one owner of the levels a model reaches on data: the Alignment page, the
Compare page and ``decalign levels`` all call it. It runs the model in eval mode (no dropout) with the
alignment of its own objective (``ModelConfig.objective``), so for imported official weights the
``heterogeneous`` and ``homogeneous`` groups are the official ``hete_loss`` and ``homo_loss``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import TrainConfig
from ..data import Split, iterate_batches
from ..model import AlignmentLevels, DecAlign, Prototypes

LEVELS = AlignmentLevels.LEVELS
GROUPS = {"heterogeneous": ("prototype_transport", "sample_to_prototype"),  # official hete_loss
          "homogeneous": ("moment_matching", "mmd")}  # official homo_loss
WEIGHTED = "weighted_alignment"  # dec_loss_weight * decoupling + alpha * heterogeneous + beta * homogeneous
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
                           "means the modality-specific structures are far apart. Under the official "
                           "objective it includes the plan's entropy term, lambda * sum P (log P - 1), which "
                           "is negative, so the level can be below zero.",
    "sample_to_prototype": "How far samples lie from the other modalities' prototypes that correspond to "
                           "their own (by prototype index under the official objective, through the transport "
                           "plan under the studio one): low means a sample's clusters agree across "
                           "modalities, high means they disagree.",
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
                     batch_size: int | None = 256, max_samples: int = 4096, seed: int = 0, first: bool = False,
                     weights: TrainConfig | None = None) -> pd.DataFrame:
    """Value of every alignment level on ``split``: totals, parts, the official groupings and the weighted sum.

    The model runs with ``align=True`` in eval mode without gradients over chunks of at most ``batch_size``
    samples (``None``: the whole selection as one batch; equal-sized chunks, so no chunk is tiny); each
    value is the mean over chunks weighted by chunk size. The levels are batch statistics, as in
    training: the prototype transport of a chunk solves the plan between that chunk's prototypes
    (fitted on the chunk, or ``prototypes`` with the chunk's posteriors as marginals), and moments and
    MMD compare the chunk's distributions, so the values depend on the chunk size. Above
    ``max_samples`` samples, the first ``max_samples`` (``first``) or a seeded random subset are used.

    Rows (column ``kind``):

    * ``total``: the five levels;
    * ``modality`` / ``pair``: decoupling per modality, sample-to-prototype per ordered pair (a → b),
      moments and MMD per pair (a – b); they make their level by the model objective's rule, the mean
      (official) or the sum (studio);
    * ``pair`` and ``term`` of ``prototype_transport``: ``<P_ab, C_ab>`` per pair and (official) the
      entropy term; these always add up to the level;
    * ``group``: ``heterogeneous`` (transport + sample-to-prototype, the official ``hete_loss``) and
      ``homogeneous`` (moments + MMD, the official ``homo_loss``);
    * ``weighted``: with ``weights`` (the run's ``TrainConfig``), ``dec_loss_weight * decoupling + alpha *
      heterogeneous + beta * homogeneous``, the alignment part of the training loss.

    Returns
    -------
    DataFrame with columns level, scope ("total", a modality, "a → b", "a – b", "entropy term"), kind,
    value, samples.
    """
    if len(split) == 0:
        raise ValueError("alignment_levels needs at least one sample")
    if (batch_size is not None and batch_size < 1) or max_samples < 1:
        raise ValueError(f"batch_size and max_samples must be at least 1, found {batch_size}, {max_samples}")
    rows = np.arange(len(split))
    if len(rows) > max_samples:
        rows = rows[:max_samples] if first else np.sort(
            np.random.default_rng(seed).choice(len(rows), max_samples, replace=False))
    chunks = np.array_split(rows, math.ceil(len(rows) / (batch_size or len(rows))))
    sums: dict[tuple[str, str, str], float] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in chunks:
                for key, value in _chunk_levels(model, split.subset(chunk), prototypes, weights).items():
                    sums[key] = sums.get(key, 0.0) + value * len(chunk)
    finally:
        model.train(was_training)
    return pd.DataFrame([{"level": level, "scope": scope, "kind": kind, "value": total / len(rows),
                          "samples": len(rows)} for (level, scope, kind), total in sums.items()])


def level_totals(levels: pd.DataFrame) -> dict[str, float]:
    """The five levels, the two groups and (when computed) the weighted sum of an ``alignment_levels`` frame."""
    picked = levels[levels.kind.isin(("total", "group", "weighted"))]
    return {str(r.level): float(r.value) for r in picked.itertuples()}


def _chunk_levels(model: DecAlign, part: Split, prototypes: dict[str, Prototypes] | None,
                  weights: TrainConfig | None) -> dict[tuple[str, str, str], float]:
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
    if levels.objective == "official":
        values[("prototype_transport", "entropy term", "term")] = float(out.transport.entropy_term)
    values.update({("sample_to_prototype", f"{a} → {b}", "pair"): float(v)
                   for (a, b), v in levels.sample_to_prototype_per_pair.items()})
    for group, members in GROUPS.items():
        values[(group, "total", "group")] = sum(values[(m, "total", "total")] for m in members)
    if weights is not None:
        values[(WEIGHTED, "total", "weighted")] = (
            weights.dec_loss_weight * values[("decoupling", "total", "total")]
            + weights.alpha * values[("heterogeneous", "total", "group")]
            + weights.beta * values[("homogeneous", "total", "group")])
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
