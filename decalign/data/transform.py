"""The input transforms a run applies to its features: percentile clipping with standardisation, and
averaging over time (the official ``need_feature_standardized`` and ``need_normalized``).

Statistics come from the training split only; the fitted transform is stored with the run (model card,
``extra["feature_transform"]``) and every consumer of a run -- evaluation, prediction, reports, alignment
levels, the dashboard -- applies it through :func:`apply_feature_transform`, so new data get exactly
the training transform. As in the official loader (``data_loader.py``), standardisation comes first:

    low, high = percentile(x, [p_low, p_high]) over samples and time steps, per feature (train only)
    x' = (clip(x, low, high) - mean) / max(std, 1e-6)     mean, std of the clipped train values (population std)

then averaging replaces a modality's sequence by its mean over time steps (T becomes 1). As in the
official loader, the statistics are fitted in float64 and stored, and applied, in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..config import DataConfig
from .dataset import DataError, MultimodalDataset, Split

TRANSFORM_KEY = "feature_transform"  # where a model card keeps the fitted transform (``card.extra``)
STD_FLOOR = 1e-6
STATS = ("low", "high", "mean", "std")


@dataclass(frozen=True)
class FeatureTransform:
    """A fitted transform: per-feature statistics (D,) of each standardised modality, and the averaged ones."""

    standardize: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # modality -> STATS -> (D,)
    time_average: tuple[str, ...] = ()
    clip_percentiles: tuple[float, float] = (0.5, 99.5)

    @property
    def is_identity(self) -> bool:
        return not self.standardize and not self.time_average

    def apply_split(self, split: Split) -> Split:
        features = dict(split.features)
        for m, stats in self.standardize.items():
            clipped = np.clip(features[m], stats["low"], stats["high"])
            features[m] = np.nan_to_num((clipped - stats["mean"]) / stats["std"], nan=0.0, posinf=0.0,
                                        neginf=0.0).astype(np.float32)
        lengths = dict(split.lengths)
        for m in self.time_average:
            features[m] = np.nan_to_num(features[m].mean(axis=1, keepdims=True), nan=0.0).astype(np.float32)
            if m in lengths:
                lengths[m] = np.ones_like(lengths[m])
        return replace(split, features=features, lengths=lengths)

    def to_dict(self) -> dict[str, Any]:
        return {"standardize": {m: {k: v.tolist() for k, v in s.items()} for m, s in self.standardize.items()},
                "time_average": list(self.time_average), "clip_percentiles": list(self.clip_percentiles)}

    @classmethod
    def from_dict(cls, data: Any, widths: dict[str, int], source: str) -> FeatureTransform:
        """Read a stored transform, checking every modality, width and value against ``widths``."""
        where = f"{source}: feature_transform"
        if not isinstance(data, dict) or set(data) != {"standardize", "time_average", "clip_percentiles"}:
            raise DataError(f"{where}: expected an object with standardize, time_average and clip_percentiles")
        standardize = data["standardize"]
        if not isinstance(standardize, dict):
            raise DataError(f"{where}: standardize must be an object of modality statistics")
        stats = {m: _stored_stats(s, widths, m, where) for m, s in standardize.items()}
        averaged = data["time_average"]
        if not isinstance(averaged, list) or any(not isinstance(m, str) or m not in widths for m in averaged):
            raise DataError(f"{where}: time_average must list modalities of the model {sorted(widths)}, "
                            f"found {averaged!r:.200}")
        percentiles = data["clip_percentiles"]
        if not (isinstance(percentiles, list) and len(percentiles) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in percentiles)):
            raise DataError(f"{where}: clip_percentiles must be two numbers, found {percentiles!r:.200}")
        return cls(stats, tuple(averaged), (float(percentiles[0]), float(percentiles[1])))


def fit_feature_transform(config: DataConfig, train: Split, source: str) -> FeatureTransform:
    """Fit the transform ``config`` asks for on the training split; a modality it names that the data
    lack is an error naming it."""
    _check_named(config, set(train.features), source)
    standardize = {m: _fit_stats(train.features[m], config.clip_percentiles)
                   for m in config.standardize_modalities}
    return FeatureTransform(standardize, tuple(config.time_average_modalities), config.clip_percentiles)


def apply_feature_transform(dataset: MultimodalDataset, transform: FeatureTransform | None) -> MultimodalDataset:
    """``dataset`` with ``transform`` applied to every split (the same dataset when there is nothing to do)."""
    if transform is None or transform.is_identity:
        return dataset
    _check_named_modalities(transform, dataset)
    splits = {name: transform.apply_split(split) for name, split in dataset.splits.items()}
    note = _describe(transform)
    return dataset.derived(splits=splits, report=replace(dataset.report, notes=[*dataset.report.notes, note]))


def _fit_stats(x: np.ndarray, percentiles: tuple[float, float]) -> dict[str, np.ndarray]:
    """Per-feature clip bounds, mean and std over samples and time steps, as the official loader."""
    low, high = np.percentile(x, list(percentiles), axis=(0, 1))  # (D,) each, float64 as in the official
    clipped = np.clip(x, low, high)
    mean, std = clipped.mean(axis=(0, 1)), clipped.std(axis=(0, 1))
    return {"low": low.astype(np.float32), "high": high.astype(np.float32), "mean": mean.astype(np.float32),
            "std": np.maximum(std, STD_FLOOR).astype(np.float32)}


def _check_named(config: DataConfig, present: set[str], source: str) -> None:
    for name in ("standardize_modalities", "time_average_modalities"):
        absent = [m for m in getattr(config, name) if m not in present]
        if absent:
            raise DataError(f"{source}: the configuration's {name} names {', '.join(map(repr, absent))}, which "
                            f"the data do not have; the data's modalities are {', '.join(sorted(present))}")


def _check_named_modalities(transform: FeatureTransform, dataset: MultimodalDataset) -> None:
    widths = dataset.widths
    for m, stats in transform.standardize.items():
        if m not in widths or widths[m] != len(stats["mean"]):
            raise DataError(f"{dataset.report.source}: the model standardises modality {m!r} of width "
                            f"{len(stats['mean'])}; the data have {sorted(widths.items())}")
    absent = [m for m in transform.time_average if m not in widths]
    if absent:
        raise DataError(f"{dataset.report.source}: the model averages {absent} over time; the data lack them")


def _stored_stats(stats: Any, widths: dict[str, int], modality: str, where: str) -> dict[str, np.ndarray]:
    if modality not in widths:  # JSON object keys are strings
        raise DataError(f"{where}: standardises {modality!r}, which is not a modality of the model")
    if not isinstance(stats, dict) or set(stats) != set(STATS):
        raise DataError(f"{where}: {modality!r} needs exactly {', '.join(STATS)}")
    out = {}
    for key in STATS:
        try:
            value = np.asarray(stats[key], dtype=np.float32)
        except (TypeError, ValueError):
            value = np.zeros(0, dtype=np.float32)
        if value.shape != (widths[modality],) or not np.isfinite(value).all():
            raise DataError(f"{where}: {modality}.{key} must be {widths[modality]} finite numbers")
        out[key] = value
    if (out["std"] <= 0).any() or (out["low"] > out["high"]).any():
        raise DataError(f"{where}: {modality}: std must be positive and low at most high")
    return out


def _describe(transform: FeatureTransform) -> str:
    parts = []
    if transform.standardize:
        low, high = transform.clip_percentiles
        parts.append(f"{', '.join(transform.standardize)} clipped at the training split's {low:g}th and "
                     f"{high:g}th percentiles and standardised with its mean and std")
    if transform.time_average:
        parts.append(f"{', '.join(transform.time_average)} averaged over time")
    return "input transform of the model: " + "; ".join(parts)
