"""What the training set looked like, kept beside a checkpoint so explanations and audits can compare.

A :class:`TrainingReference` holds the training set's mean input per modality (the "missing modality"
stand-in), the prototypes, the pooled unique and common features of every training sample, the pooled
features of held-out samples the model did not fit (:class:`HeldOut`, from the validation split), and the
thresholds the audit flags use. It is written as ``reference.safetensors`` (arrays) plus
``reference.json`` (ids, raw text, thresholds) in the run directory; nothing is pickled.

Typicality (out-of-distribution) distance, per modality: for a pooled unique feature ``x`` and the
training prototypes ``(mu_k, var_k)``,

``dist(x) = min_k sqrt( sum_j (x_j - mu_kj)^2 / var_kj )``

the diagonal Mahalanobis distance to the nearest prototype. The OOD threshold is its 99th percentile
over the held-out (validation) samples, so about 1% of new data like the validation split is flagged.
Training samples would give a threshold that is too low: the model fitted them, so their features sit
closer to the prototypes than new data does. Only a reference without held-out samples (written before
they were stored) keeps thresholds calibrated on the training samples (``thresholds_from == "train"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..atomic import atomic_write, atomic_write_json
from ..checkpoint import CheckpointError, ModelCard
from ..config import ModelConfig
from ..data.dataset import Split
from ..data.tokens import is_token_input
from ..inference import InferenceResult, run_inference
from ..maps import JOINT, PcaMap, fit_pca_maps
from ..model import DecAlign, Prototypes, TransportResult, fit_prototypes, transport_plan

REFERENCE_ARRAYS = "reference.safetensors"
REFERENCE_JSON = "reference.json"
REFERENCE_FORMAT = 3  # 2: held-out (validation) features and thresholds calibrated on them; 3: projection maps
OOD_QUANTILE = 0.99
DECOUPLING_QUANTILE = 0.99
MAX_HELD_OUT = 1000  # held-out samples kept (a seeded subsample of larger validation splits)
MAX_TRAIN_KEPT = 5000  # training samples whose pooled features are kept (a seeded subsample beyond)
HELD_OUT_SEED = 0
REFERENCE_EM_ITERS = 50  # EM steps when the card has no prototypes and the reference fits its own


@dataclass
class HeldOut:
    """Pooled features of held-out samples the model did not fit: the drift reference, and what the
    flag thresholds are calibrated on.

    Attributes
    ----------
    unique, common : modality -> (n, d) pooled unique / common features.
    ids : (n,) str ids of the samples kept.
    source : where they come from, in words ("the validation split stored with the run").
    n_total : samples in that split before the seeded subsample of at most ``MAX_HELD_OUT``.
    """

    unique: dict[str, np.ndarray]
    common: dict[str, np.ndarray]
    ids: np.ndarray
    source: str
    n_total: int

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class TrainingReference:
    """Summary of a model's training set, used by counterfactuals, flags, drift and prototype stories.

    Attributes
    ----------
    input_means : modality -> (T, D) mean training input (step-wise, over samples valid at that step).
    prototypes : modality -> training prototypes (means, variances, weights).
    ood_thresholds : modality -> 99th percentile of :func:`prototype_distance` over the held-out samples
        (over the training samples when ``thresholds_from == "train"``).
    train_unique, train_common : modality -> (N_train, d) pooled unique / common features.
    train_ids : (N_train,) str; train_labels : (N_train,) or None; train_raw_text : (N_train,) str or None:
        the kept training samples, a seeded subsample of at most ``MAX_TRAIN_KEPT``.
    decoupling_threshold : 99th percentile, over the same samples as ``ood_thresholds``, of the largest
        (over modalities) ``|cos(unique_pooled, common_pooled)|``.
    held_out : pooled features of the validation split (:class:`HeldOut`); None in references written
        before they were stored.
    thresholds_from : "valid" or "train": which samples the thresholds were calibrated on.
    train_distribution : modality -> (N_train, pde_dim) distribution encoders' outputs of the kept training
        samples (the "common" space the Embeddings page shows); None in references written before it was stored.
    maps : space -> PCA map fitted on the kept training samples (``decalign.maps``); empty in
        references written before they were stored (:func:`with_maps` fits them from the model).
    """

    input_means: dict[str, np.ndarray]
    prototypes: dict[str, Prototypes]
    ood_thresholds: dict[str, float]
    train_unique: dict[str, np.ndarray]
    train_common: dict[str, np.ndarray]
    train_ids: np.ndarray
    train_labels: np.ndarray | None
    train_raw_text: np.ndarray | None = None
    decoupling_threshold: float = 1.0
    held_out: HeldOut | None = None
    thresholds_from: str = "train"
    train_total: int | None = None  # training samples summarised; more than len(train_ids) when subsampled
    train_distribution: dict[str, np.ndarray] | None = None
    maps: dict[str, PcaMap] = field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.input_means)


# ---------------------------------------------------------------------------------------------
# Distances used by flags and stories
# ---------------------------------------------------------------------------------------------

def mahalanobis_to_prototypes(x: np.ndarray, prototypes: Prototypes) -> np.ndarray:
    """(N, K) diagonal Mahalanobis distances ``sqrt(sum_j (x_j - mu_kj)^2 / var_kj)``."""
    means = prototypes.means.detach().cpu().double().numpy()
    variances = prototypes.variances.detach().cpu().double().numpy()
    diff_sq = (np.asarray(x, dtype=np.float64)[:, None, :] - means[None]) ** 2  # (N, K, d)
    return np.sqrt((diff_sq / variances[None]).sum(-1))


def prototype_distance(x: np.ndarray, prototypes: Prototypes) -> np.ndarray:
    """(N,) distance of each pooled unique feature to its nearest prototype (see module docstring)."""
    return mahalanobis_to_prototypes(x, prototypes).min(1)


def abs_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) ``|<a_i, b_i>| / (||a_i|| ||b_i||)``; 0 where either vector is zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.abs((a * b).sum(1))
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def decoupling_cosines(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """modality -> (N,) |cos| between each sample's pooled unique and common features."""
    return {m: abs_cosine(unique[m], common[m]) for m in unique}


# ---------------------------------------------------------------------------------------------
# Building, saving, loading
# ---------------------------------------------------------------------------------------------

def build_reference(model: DecAlign, card: ModelCard, train_split: Split, valid_split: Split | None = None, *,
                    batch_size: int = 256, train_result: InferenceResult | None = None,
                    valid_result: InferenceResult | None = None) -> TrainingReference:
    """Summarise ``train_split`` as seen by ``model`` (run in eval mode, no gradients).

    Uses the card's prototypes; if the card has none, fits a diagonal GMM (K = ``num_prototypes``) to the
    training pooled unique features. The pooled features of a seeded subsample of at most
    ``MAX_TRAIN_KEPT`` training samples are kept (the mean inputs cover every sample). With
    ``valid_split`` (held out from fitting: the validation split) its pooled features are kept
    (:func:`with_held_out`) and the flag thresholds are calibrated on them; without it they are calibrated
    on the kept training samples and ``held_out`` stays None. ``train_result`` / ``valid_result``: the
    model's inference over those whole splits, when the caller has it already (the trainer's final pass).
    """
    if len(train_split) < 2:
        raise ValueError(f"build_reference: the training split has {len(train_split)} samples, need at least 2")
    prototypes = card.prototype_tensors()
    rows = seeded_rows(len(train_split), MAX_TRAIN_KEPT)
    kept = train_split if rows is None else train_split.subset(rows)
    if train_result is not None:
        result = train_result if rows is None else train_result.subset(rows)
    else:
        result = run_inference(model, kept, task=card.task, batch_size=batch_size)
    if prototypes is None:
        prototypes = _fit_prototypes(result.unique_pooled, model.config)
    prototypes = {m: Prototypes(p.means.float(), p.variances.float(), p.weights.float())
                  for m, p in prototypes.items()}
    reference = TrainingReference(
        input_means=_input_means(train_split, model, batch_size), prototypes=prototypes, ood_thresholds={},
        train_unique=result.unique_pooled, train_common=result.common_pooled,
        train_ids=np.asarray(kept.ids).astype(str), train_labels=kept.labels,
        train_raw_text=None if kept.raw_text is None else np.asarray(kept.raw_text).astype(str),
        train_total=len(train_split), train_distribution=result.distribution or None,
    )
    if reference.train_distribution is not None:
        reference.maps = fit_pca_maps(reference.train_unique, reference.train_distribution)
    _calibrate(reference, result.unique_pooled, result.common_pooled, "train")
    if valid_split is not None and len(valid_split) >= 2:
        reference = with_held_out(reference, model, card, valid_split, "the validation split stored with the run",
                                  batch_size=batch_size, result=valid_result)
    return reference


def seeded_rows(n: int, most: int, seed: int = HELD_OUT_SEED) -> np.ndarray | None:
    """Sorted rows of a seeded subsample of ``most`` out of ``n``; None when all ``n`` are kept."""
    if n <= most:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def with_held_out(reference: TrainingReference, model: DecAlign, card: ModelCard, split: Split, source: str, *,
                  batch_size: int = 256, result: InferenceResult | None = None) -> TrainingReference:
    """A copy of ``reference`` with the pooled features of ``split`` (held-out samples; a seeded subsample of
    at most ``MAX_HELD_OUT``) as ``held_out``, and its flag thresholds calibrated on them.

    ``source`` says in words where the samples come from; it is shown beside every drift verdict.
    ``result``: the model's inference over the whole ``split``, when the caller has it already.
    """
    if len(split) < 2:
        raise ValueError(f"held-out reference: {source} has {len(split)} samples, need at least 2")
    rows = seeded_rows(len(split), MAX_HELD_OUT)
    kept = split if rows is None else split.subset(rows)
    if result is None:
        result = run_inference(model, kept, task=card.task, batch_size=batch_size)
    elif rows is not None:
        result = result.subset(rows)
    out = replace(reference, ood_thresholds={}, held_out=HeldOut(
        result.unique_pooled, result.common_pooled, np.asarray(kept.ids).astype(str), source, len(split)))
    _calibrate(out, result.unique_pooled, result.common_pooled, "valid")
    return out


def _calibrate(reference: TrainingReference, unique: dict[str, np.ndarray], common: dict[str, np.ndarray],
               name: str) -> None:
    """Set the OOD and decoupling thresholds to the quantiles over the given samples (see module docstring)."""
    reference.ood_thresholds = {
        m: float(np.quantile(prototype_distance(unique[m], reference.prototypes[m]), OOD_QUANTILE))
        for m in reference.modalities}
    worst = np.max(np.stack(list(decoupling_cosines(unique, common).values())), axis=0)
    reference.decoupling_threshold = float(np.quantile(worst, DECOUPLING_QUANTILE))
    reference.thresholds_from = name


def with_maps(reference: TrainingReference, model: DecAlign) -> TrainingReference:
    """``reference`` with the distribution encoders' outputs of its training samples and its PCA maps; a
    reference written before they were stored gets them from ``model`` (the distribution encoders applied
    to the stored pooled common features, as inference computes them). Raises ``CheckpointError`` when the
    reference's widths do not fit the model."""
    _check_widths(reference, model)
    if reference.maps and reference.train_distribution is not None:
        return reference
    distribution = reference.train_distribution
    if distribution is None:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        with torch.inference_mode():
            distribution = {m: model.distribution_encoders[m](torch.from_numpy(x).float().to(device)).cpu().numpy()
                            for m, x in reference.train_common.items()}
        model.train(was_training)
    return replace(reference, train_distribution=distribution, maps=fit_pca_maps(reference.train_unique, distribution))


def _check_widths(reference: TrainingReference, model: DecAlign) -> None:
    config, mods = model.config, list(model.modalities)
    tables = {"train_unique": (reference.train_unique, config.d_model),
              "train_common": (reference.train_common, config.d_model),
              "train_distribution": (reference.train_distribution, config.pde_dim)}
    for name, (table, width) in tables.items():
        if table is not None and (sorted(table) != sorted(mods) or any(x.shape[1] != width for x in table.values())):
            found = {m: x.shape[1] for m, x in table.items()}
            raise CheckpointError(f"the training reference's {name} has widths {found}; the model expects width "
                                  f"{width} for modalities {mods}")
    expected = {**{f"unique:{m}": config.d_model for m in mods}, **{f"common:{m}": config.pde_dim for m in mods},
                JOINT: config.pde_dim}
    for space, pca_map in reference.maps.items():
        if expected.get(space) != len(pca_map.mean):
            raise CheckpointError(f"the training reference's map {space!r} has width {len(pca_map.mean)}; the model "
                                  f"has spaces {expected}")


def _encoded_text(model: DecAlign, tokens: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, T, H) BERT output of (N, T, 3) tokens, in batches, eval mode, no gradients."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[start:start + batch_size]).to(device)
            parts.append(model.text_encoder(batch).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts)


def _fit_prototypes(unique: dict[str, np.ndarray], config: ModelConfig) -> dict[str, Prototypes]:
    # The model's EM, with more steps than in training: a one-off fit on the whole set, not a per-batch estimate.
    return {m: fit_prototypes(torch.from_numpy(x).double(), config, iterations=REFERENCE_EM_ITERS)
            for m, x in unique.items()}


def _input_means(split: Split, model: DecAlign, batch_size: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """(T, D) mean input; at step t only samples whose length exceeds t count (padding excluded). A BERT's
    tokens are summarised by the mean of the BERT's output (T, H), the input its model's explanations vary.

    Summed in float64 a chunk of samples at a time: a float64 copy of a whole MOSI-sized text array
    would be the largest allocation of a training run."""
    means = {}
    for m, x in split.features.items():
        if is_token_input(x):
            x = _encoded_text(model, x, batch_size)
        n, steps = x.shape[:2]
        lengths = split.lengths.get(m, np.full(n, steps))
        valid = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.float64)  # (N, T)
        total = np.zeros(x.shape[1:], dtype=np.float64)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            total += np.einsum("nt,ntd->td", valid[rows], x[rows].astype(np.float64))
        means[m] = (total / np.maximum(valid.sum(0), 1.0)[:, None]).astype(np.float32)
    return means


def save_reference(run_dir: str | Path, ref: TrainingReference) -> Path:
    """Write ``reference.safetensors`` and ``reference.json`` into ``run_dir`` atomically; returns the JSON path."""
    run_dir = Path(run_dir)
    arrays = {}
    for m in ref.modalities:
        p = ref.prototypes[m]
        arrays[f"input_means/{m}"] = ref.input_means[m].astype(np.float32)
        arrays[f"prototypes/{m}/means"] = p.means.detach().cpu().float().numpy()
        arrays[f"prototypes/{m}/variances"] = p.variances.detach().cpu().float().numpy()
        arrays[f"prototypes/{m}/weights"] = p.weights.detach().cpu().float().numpy()
        arrays[f"train_unique/{m}"] = np.asarray(ref.train_unique[m], dtype=np.float32)
        arrays[f"train_common/{m}"] = np.asarray(ref.train_common[m], dtype=np.float32)
        if ref.held_out is not None:
            arrays[f"held_out_unique/{m}"] = np.asarray(ref.held_out.unique[m], dtype=np.float32)
            arrays[f"held_out_common/{m}"] = np.asarray(ref.held_out.common[m], dtype=np.float32)
        if ref.train_distribution is not None:
            arrays[f"train_distribution/{m}"] = np.asarray(ref.train_distribution[m], dtype=np.float32)
    for space, pca_map in ref.maps.items():
        arrays[f"maps/{space}/mean"] = pca_map.mean.astype(np.float64)
        arrays[f"maps/{space}/axes"] = pca_map.axes.astype(np.float64)
    if ref.train_labels is not None:
        arrays["train_labels"] = np.asarray(ref.train_labels)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic_write(run_dir / REFERENCE_ARRAYS, lambda tmp: save_file(arrays, tmp))
    meta = {
        "format": REFERENCE_FORMAT, "modalities": ref.modalities,
        "train_ids": [str(i) for i in ref.train_ids],
        "train_raw_text": None if ref.train_raw_text is None else [str(t) for t in ref.train_raw_text],
        "ood_thresholds": ref.ood_thresholds, "decoupling_threshold": ref.decoupling_threshold,
        "thresholds_from": ref.thresholds_from, "train_total": ref.train_total,
        "held_out": None if ref.held_out is None else {
            "ids": [str(i) for i in ref.held_out.ids], "source": ref.held_out.source,
            "n_total": int(ref.held_out.n_total)},
        "maps": {space: int(pca_map.fitted_on) for space, pca_map in ref.maps.items()},
    }
    return atomic_write_json(run_dir / REFERENCE_JSON, meta)


def load_reference(run_dir: str | Path) -> TrainingReference | None:
    """Read the reference written by :func:`save_reference`; None when the run directory has none."""
    run_dir = Path(run_dir)
    meta_path, arrays_path = run_dir / REFERENCE_JSON, run_dir / REFERENCE_ARRAYS
    if not meta_path.exists() or not arrays_path.exists():
        return None
    meta = _read_meta(meta_path)
    try:
        arrays = load_file(str(arrays_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{arrays_path}: not a readable safetensors file ({exc})") from exc
    mods = meta["modalities"]
    get = lambda key: _array(arrays, key, arrays_path)
    ref = TrainingReference(
        input_means={m: get(f"input_means/{m}") for m in mods},
        prototypes={m: Prototypes(*(torch.from_numpy(get(f"prototypes/{m}/{part}"))
                                    for part in ("means", "variances", "weights"))) for m in mods},
        ood_thresholds={m: float(meta["ood_thresholds"][m]) for m in mods},
        train_unique={m: get(f"train_unique/{m}") for m in mods},
        train_common={m: get(f"train_common/{m}") for m in mods},
        train_ids=np.asarray(meta["train_ids"], dtype=str),
        train_labels=arrays.get("train_labels"),
        train_raw_text=None if meta["train_raw_text"] is None else np.asarray(meta["train_raw_text"], dtype=str),
        decoupling_threshold=float(meta["decoupling_threshold"]),
        held_out=_held_out(meta, mods, get, meta_path), thresholds_from=_thresholds_from(meta, meta_path),
        train_total=_train_total(meta, meta_path),
        train_distribution={m: get(f"train_distribution/{m}") for m in mods}
        if all(f"train_distribution/{m}" in arrays for m in mods) else None,
        maps=_maps(meta, get, meta_path),
    )
    _check_sizes(ref, arrays_path)
    return ref


def _held_out(meta: dict, mods: list[str], get, path: Path) -> HeldOut | None:
    """The held-out part of a reference; None for format 1 (written before it was stored)."""
    info = meta.get("held_out")
    if info is None:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("ids"), list) or not isinstance(info.get("source"), str):
        raise CheckpointError(f"{path}: 'held_out' must be null or an object with 'ids' (a list), 'source' "
                              f"(text) and 'n_total', found {str(info)[:80]!r}")
    ids = np.asarray([str(i) for i in info["ids"]], dtype=str)
    held = HeldOut({m: get(f"held_out_unique/{m}") for m in mods}, {m: get(f"held_out_common/{m}") for m in mods},
                   ids, info["source"], int(info.get("n_total", len(ids))))
    for m in mods:
        for name, x in (("held_out_unique", held.unique[m]), ("held_out_common", held.common[m])):
            if x.ndim != 2 or len(x) != len(ids):
                raise CheckpointError(f"{path}: {name}/{m} has shape {x.shape}, expected ({len(ids)}, d)")
    return held


def _maps(meta: dict, get, path: Path) -> dict[str, PcaMap]:
    """The stored PCA maps; none in references written before they were stored."""
    info = meta.get("maps") or {}
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: 'maps' must be an object of space -> rows fitted, found {str(info)[:80]!r}")
    maps = {}
    for space, fitted_on in info.items():
        mean, axes = get(f"maps/{space}/mean"), get(f"maps/{space}/axes")
        counted = isinstance(fitted_on, int) and not isinstance(fitted_on, bool) and fitted_on > 0
        finite = np.isfinite(mean).all() and np.isfinite(axes).all()
        if mean.ndim != 1 or axes.shape != (2, len(mean)) or not counted or not finite:
            raise CheckpointError(f"{path}: map {space!r} has a mean of shape {mean.shape} and axes of shape "
                                  f"{axes.shape}, fitted on {fitted_on!r:.20}; expected finite (d,) and (2, d) arrays and a "
                                  "positive count of rows")
        maps[space] = PcaMap(mean, axes, fitted_on)
    return maps


def _thresholds_from(meta: dict, path: Path) -> str:
    value = meta.get("thresholds_from", "train")
    if value not in ("train", "valid"):
        raise CheckpointError(f"{path}: 'thresholds_from' must be 'train' or 'valid', found {value!r:.40}")
    return value


def _train_total(meta: dict, path: Path) -> int | None:
    """Training samples summarised; None in references written before it was recorded."""
    value = meta.get("train_total")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise CheckpointError(f"{path}: 'train_total' must be null or a count of samples, found {value!r:.40}")
    if value is not None and value < len(meta["train_ids"]):
        raise CheckpointError(f"{path}: 'train_total' ({value}) is smaller than the {len(meta['train_ids'])} "
                              "training samples kept")
    return value


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    required = ("modalities", "train_ids", "train_raw_text", "ood_thresholds", "decoupling_threshold")
    if not isinstance(meta, dict) or any(k not in meta for k in required):
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: expected a JSON object with keys {list(required)}, found {found}")
    if meta.get("format", REFERENCE_FORMAT) > REFERENCE_FORMAT:
        raise CheckpointError(f"{path}: format {meta['format']} is newer than this program's ({REFERENCE_FORMAT})")
    missing = [m for m in meta["modalities"] if m not in meta["ood_thresholds"]]
    if missing:
        raise CheckpointError(f"{path}: 'ood_thresholds' lacks modalities {missing}")
    return meta


def _array(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{path}: missing array {key!r}")
    return arrays[key]


def _check_sizes(ref: TrainingReference, path: Path) -> None:
    n = len(ref.train_ids)
    for m in ref.modalities:
        tables = (("train_unique", ref.train_unique[m]), ("train_common", ref.train_common[m]),
                  ("train_distribution", None if ref.train_distribution is None else ref.train_distribution[m]))
        for name, x in (t for t in tables if t[1] is not None):
            if x.ndim != 2 or len(x) != n:
                raise CheckpointError(f"{path}: {name}/{m} has shape {x.shape}, expected ({n}, d)")
            if not np.isfinite(x).all():  # the maps, flags and drift are computed from these rows
                raise CheckpointError(f"{path}: {name}/{m} holds {int((~np.isfinite(x)).sum())} non-finite "
                                      "values; expected finite features")
    for name, x in (("train_labels", ref.train_labels), ("train_raw_text", ref.train_raw_text)):
        if x is not None and len(x) != n:
            raise CheckpointError(f"{path}: {name} has {len(x)} entries, expected {n} (one per train id)")


# ---------------------------------------------------------------------------------------------
# The transport plan between the training prototypes
# ---------------------------------------------------------------------------------------------

def training_plan(reference: TrainingReference, config: ModelConfig) -> TransportResult:
    """The model's plan (``decalign.model.transport_plan``) between the training prototypes, in float64, with
    the training mixture weights as marginals. Pure in its arguments (the dashboard may cache it).
    """
    protos = {m: Prototypes(p.means.double(), p.variances.double(), p.weights.double())
              for m, p in reference.prototypes.items()}
    with torch.no_grad():
        return transport_plan(protos, config)
