"""Missing validation and test splits carved out of train, and warnings for splits too small to trust.

Classification data are carved stratified: each class keeps its share in every part (within one sample),
so a 10% validation split of a small file does not lose a class by chance. Regression and unlabelled data
are carved by a seeded random permutation.
"""

from __future__ import annotations

import numpy as np

from .dataset import SPLITS, DataError, LoadReport, Split

CARVE_FRACTION = 0.1  # share of train moved to each missing valid/test split
CARVE_SEED = 0
MIN_PER_CLASS = 10  # fewer samples of a class in a split than this: its metrics are noise
MIN_SPLIT = 10  # fewer samples in a regression split than this: likewise


def carve_missing(splits: dict[str, Split], source: str, report: LoadReport, task: str) -> dict[str, Split]:
    """Move 10% of train (seeded) into each missing valid/test split; train keeps the rest."""
    missing = [s for s in ("valid", "test") if s not in splits]
    if "train" not in splits:
        report.notes.append(f"no train split: {', '.join(splits)} only, usable for evaluation, not training")
        return splits
    if not missing:
        return splits
    train = splits["train"]
    n = len(train)
    k = max(1, round(CARVE_FRACTION * n))
    if n - k * len(missing) < 1:
        raise DataError(
            f"{source}: {' and '.join(missing)} missing and train has only {n} samples; expected at least "
            f"{k * len(missing) + 1} to carve {k} per missing split out of train"
        )
    stratified = task == "classification" and train.labels is not None
    picks = carve_indices(n, k, len(missing), CARVE_SEED, train.labels if stratified else None)
    kept = np.setdiff1d(np.arange(n), np.concatenate(picks))
    out = {**splits, "train": train.subset(kept)}
    out.update({s: train.subset(idx) for s, idx in zip(missing, picks)})
    report.carved_splits = list(missing)
    how = "stratified by class" if stratified else "seeded permutation"
    report.notes.append(
        f"{' and '.join(missing)} missing from the file, so {k} training samples each "
        f"({CARVE_FRACTION:.0%}, {how}, seed {CARVE_SEED}) were moved into them; train keeps {len(kept)}"
    )
    return {s: out[s] for s in SPLITS if s in out}


def carve_indices(n: int, size: int, parts: int, seed: int, labels: np.ndarray | None = None
                  ) -> list[np.ndarray]:
    """``parts`` disjoint sorted sets of ``size`` row indices out of ``n``.

    Without ``labels``: consecutive blocks of one seeded permutation. With ``labels`` (stratified):
    shuffle (seeded), sort by class (stable, so the order within a class stays random), take
    ``size * parts`` evenly spaced positions and deal them round-robin to the parts. Each class is a
    contiguous block, so it gets its proportional share of the positions within one sample, and each part
    its share of those.
    """
    order = np.random.default_rng(seed).permutation(n)
    if labels is None:
        return [np.sort(order[i * size:(i + 1) * size]) for i in range(parts)]
    order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    total = size * parts
    chosen = order[np.floor((np.arange(total) + 0.5) * n / total).astype(np.int64)]
    return [np.sort(chosen[i::parts]) for i in range(parts)]


def small_data_warnings(splits: dict[str, Split], task: str, num_classes: int | None,
                        class_names: list[str] | None = None) -> list[str]:
    """Plain sentences about splits too small to trust: classes with fewer than :data:`MIN_PER_CLASS`
    samples in a split, classes of train missing from valid or test, regression splits under
    :data:`MIN_SPLIT` samples."""
    name = (lambda c: repr(class_names[c])) if class_names else (lambda c: str(c))
    labelled = {s: p for s, p in splits.items() if p.labels is not None}
    if task != "classification":
        return [f"{s} has only {len(p)} samples (fewer than {MIN_SPLIT}): its metrics swing with every sample"
                for s, p in labelled.items() if len(p) < MIN_SPLIT]
    out = []
    counts = {s: np.bincount(p.labels, minlength=num_classes or 0) for s, p in labelled.items()}
    in_train = set(np.flatnonzero(counts["train"]).tolist()) if "train" in counts else set()
    for split, count in counts.items():
        absent = sorted(c for c in in_train if count[c] == 0) if split != "train" else []
        if absent:
            out.append(f"{split} has no sample of class {', '.join(name(c) for c in absent)}: its accuracy and "
                       f"F1 {'during training' if split == 'valid' else 'at the end'} say nothing about "
                       f"{'it' if len(absent) == 1 else 'them'}")
        few = [c for c in range(len(count)) if 0 < count[c] < MIN_PER_CLASS]
        if few:
            listed = ", ".join(f"{name(c)} ({count[c]})" for c in few[:8]) + (" …" if len(few) > 8 else "")
            out.append(f"{split}: {len(few)} class{'es' if len(few) > 1 else ''} with fewer than {MIN_PER_CLASS} "
                       f"samples: {listed}; per-class results there are noise")
    return out
