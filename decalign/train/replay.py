"""Record, per epoch, how alignment forms on a fixed probe batch, and load it back for a replay.

After every epoch the model runs (eval mode, no gradients, ``align=True``) on the same probe batch: the
first ``PROBE_SIZE`` validation samples. Stored per epoch, without pickle::

    replay/epoch_0003.safetensors   prototypes/<i>/{means,variances,weights}  (K, d), (K, d), (K,)
                                    plan          (K_1, ..., K_M) joint plan (only up to MAX_JOINT cells)
                                    pair_plan/<i>/<j>  (K_i, K_j) for i < j
                                    unique/<i>, common/<i>  (n, d) pooled features of the probe
                                    labels        (n,)
    replay/index.json               modalities (the <i> order), probe ids, one entry per epoch with the
                                    five alignment levels and the solver's convergence

The prototypes are those the training step would fit on this batch (EM on the batch, as in training),
so the replay shows what the alignment losses saw. ``load_replay`` turns the files into a ``Replay``:

* projections: each epoch's pooled unique and common features of all modalities are projected to 2-D
  by a PCA fitted on that epoch (so every frame is a faithful projection of its own epoch), then rotated
  or reflected onto the previous epoch's frame by orthogonal Procrustes over the probe samples
  (``R = argmin_{R^T R = I} ||Y_e R - Y_{e-1}||_F = U V^T`` with ``U S V^T = Y_e^T Y_{e-1}``), so the
  animation does not jump when PCA flips a sign. Prototype means go through the same map.
* plan entropy ``H(P) = -sum P log P`` (nats, ``0 log 0 = 0``; ``decalign.model.plan_entropy``), and the
  same divided by ``log(#cells)``: 1 for a uniform plan, falling as the plan sharpens onto a few prototype
  tuples.
* separation of the unique and common spaces: per modality the silhouette score (scikit-learn,
  Euclidean) of the probe's unique vs common features, averaged over modalities; in [-1, 1], higher is
  more separated. The decoupling level (mean squared cosine) is reported next to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

from ..atomic import atomic_write, atomic_write_json
from ..config import DecAlignConfig
from ..data.dataset import MultimodalDataset, Split
from ..data.torch_batches import iterate_batches
from ..model import DecAlign, plan_entropy

REPLAY_DIR = "replay"
PROBE_SIZE = 256
MAX_JOINT = 1_000_000  # joint plans with more cells are not stored (pair plans always are)


class ReplayError(ValueError):
    """A replay folder that cannot be read (missing or malformed files)."""


# ------------------------------------------------------------------------------------------ recording


def probe_split(dataset: MultimodalDataset, size: int = PROBE_SIZE) -> Split:
    """The fixed probe: the first ``size`` samples of the validation split (train split if none)."""
    split = dataset.splits.get("valid") or dataset.splits["train"]
    return split.subset(np.arange(min(size, len(split))))


def record_epoch(run_dir: str | Path, model: DecAlign, probe: Split, epoch: int, config: DecAlignConfig
                 ) -> dict[str, Any]:
    """Run ``model`` on ``probe`` and write ``replay/epoch_<epoch>.safetensors``; update ``index.json``.

    Returns the index entry of the epoch. Recording an epoch again (after a resume) replaces it.
    The model's train/eval mode is restored afterwards; no RNG is consumed (EM starts deterministically).
    """
    tensors, levels, transport = _probe_tensors(model, probe)
    folder = Path(run_dir) / REPLAY_DIR
    name = f"epoch_{epoch:04d}.safetensors"
    atomic_write(folder / name, lambda tmp: save_file(tensors, tmp))
    entry = {"epoch": epoch, "file": name, "levels": levels, **transport}
    index = _read_index(folder) if (folder / "index.json").exists() else _new_index(model, probe, config)
    index["epochs"] = sorted([e for e in index["epochs"] if e["epoch"] != epoch] + [entry],
                             key=lambda e: e["epoch"])
    atomic_write_json(folder / "index.json", index)
    return entry


class ReplayRecorder:
    """Records every epoch of one run on a fixed probe (see ``record_epoch``)."""

    def __init__(self, run_dir: str | Path, dataset: MultimodalDataset, config: DecAlignConfig,
                 size: int = PROBE_SIZE):
        self.run_dir, self.config = Path(run_dir), config
        self.probe = probe_split(dataset, size)

    def record(self, model: DecAlign, epoch: int) -> dict[str, Any]:
        return record_epoch(self.run_dir, model, self.probe, epoch, self.config)


def _probe_tensors(model: DecAlign, probe: Split) -> tuple[dict[str, torch.Tensor], dict, dict]:
    device = next(model.parameters()).device
    batch = next(iterate_batches(probe, len(probe), shuffle=False, device=device))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch.inputs, batch.lengths, align=True)
    finally:
        model.train(was_training)
    order = model.modalities
    tensors: dict[str, torch.Tensor] = {}
    for i, m in enumerate(order):
        p = out.prototypes[m]
        tensors.update({f"prototypes/{i}/means": p.means, f"prototypes/{i}/variances": p.variances,
                        f"prototypes/{i}/weights": p.weights, f"unique/{i}": out.unique_pooled[m],
                        f"common/{i}": out.common_pooled[m]})
    tensors.update({f"pair_plan/{order.index(a)}/{order.index(b)}": plan
                    for (a, b), plan in out.transport.pair_plans().items()})
    if out.transport.plan.numel() <= MAX_JOINT:
        tensors["plan"] = out.transport.plan
    if batch.labels is not None:
        tensors["labels"] = batch.labels
    tensors = {k: v.detach().float().cpu().clone() for k, v in tensors.items()}  # no shared storage
    transport = {"converged": bool(out.transport.converged), "iterations": int(out.transport.iterations),
                 "marginal_error": float(out.transport.marginal_error)}
    return tensors, out.alignment.as_floats(), transport


def _new_index(model: DecAlign, probe: Split, config: DecAlignConfig) -> dict[str, Any]:
    return {"format": 1, "modalities": list(model.modalities), "probe_ids": [str(i) for i in probe.ids],
            "num_prototypes": config.model.num_prototypes, "epochs": []}


def _read_index(folder: Path) -> dict[str, Any]:
    path = folder / "index.json"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReplayError(f"{path}: cannot read the replay index: {exc}") from exc
    for key in ("modalities", "probe_ids", "epochs"):
        if not isinstance(index, dict) or not isinstance(index.get(key), list):
            raise ReplayError(f"{path}: field {key!r} missing or not a list")
    return index


# -------------------------------------------------------------------------------------------- loading


@dataclass
class ReplayEpoch:
    """One recorded epoch, with 2-D coordinates in the (Procrustes-aligned) frame of the replay."""

    epoch: int
    means: dict[str, np.ndarray]  # modality -> (K, d) prototype means
    variances: dict[str, np.ndarray]  # (K, d)
    weights: dict[str, np.ndarray]  # (K,)
    plan: np.ndarray | None  # (K_1, ..., K_M) joint plan, None when too large to store
    pair_plans: dict[tuple[str, str], np.ndarray]  # (K_a, K_b), a before b in the model's order
    unique_xy: dict[str, np.ndarray]  # (n, 2) probe's pooled unique features
    common_xy: dict[str, np.ndarray]  # (n, 2)
    prototype_xy: dict[str, np.ndarray]  # (K, 2) prototype means in the same frame
    levels: dict[str, float]
    plan_entropy: float  # nats; NaN without a stored joint plan
    pair_entropy: dict[tuple[str, str], float]  # normalised to [0, 1]
    separation: float  # mean silhouette of unique vs common features
    converged: bool = True


@dataclass
class Replay:
    run_dir: Path
    modalities: list[str]
    probe_ids: list[str]
    labels: np.ndarray | None
    epochs: list[ReplayEpoch] = field(default_factory=list)

    @property
    def epoch_numbers(self) -> list[int]:
        return [e.epoch for e in self.epochs]

    def at(self, epoch: int) -> ReplayEpoch:
        for e in self.epochs:
            if e.epoch == epoch:
                return e
        raise KeyError(f"no recorded epoch {epoch}; recorded: {self.epoch_numbers}")

    def summary(self) -> pd.DataFrame:
        """One row per epoch: plan entropy (nats and normalised), mean pair entropy, separation, levels."""
        rows = []
        for e in self.epochs:
            cells = np.prod(e.plan.shape) if e.plan is not None else np.nan
            rows.append({"epoch": e.epoch, "plan_entropy": e.plan_entropy,
                         "plan_entropy_normalised": e.plan_entropy / np.log(cells) if cells > 1 else np.nan,
                         "pair_entropy": float(np.mean(list(e.pair_entropy.values()))),
                         "separation": e.separation, **e.levels})
        return pd.DataFrame(rows)


def has_replay(run_dir: str | Path) -> bool:
    return (Path(run_dir) / REPLAY_DIR / "index.json").is_file()


def load_replay(run_dir: str | Path) -> Replay:
    """Read ``replay/`` of a run (see the module docstring for what is derived). Raises ReplayError."""
    folder = Path(run_dir) / REPLAY_DIR
    if not (folder / "index.json").is_file():
        raise ReplayError(f"{folder}: no replay recorded (index.json missing); train with --replay")
    index = _read_index(folder)
    order = [str(m) for m in index["modalities"]]
    raw = [(entry, _load_epoch_file(folder, entry)) for entry in index["epochs"]]
    replay = Replay(Path(run_dir), order, index["probe_ids"], None)
    previous = None
    for entry, tensors in raw:
        epoch, previous = _build_epoch(entry, tensors, order, previous)
        replay.epochs.append(epoch)
        if replay.labels is None and "labels" in tensors:
            replay.labels = tensors["labels"]
    return replay


def _load_epoch_file(folder: Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    name = str(entry.get("file", ""))
    path = folder / Path(name).name  # never leave the folder
    if not name or not path.is_file():
        raise ReplayError(f"{folder / 'index.json'}: epoch {entry.get('epoch')} names file {name!r}, "
                          "which is not there")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise ReplayError(f"{path}: not a readable safetensors file: {exc}") from exc


def _build_epoch(entry: dict, t: dict[str, np.ndarray], order: list[str], previous: np.ndarray | None
                 ) -> tuple[ReplayEpoch, np.ndarray]:
    idx = range(len(order))
    try:
        unique = {order[i]: t[f"unique/{i}"] for i in idx}
        common = {order[i]: t[f"common/{i}"] for i in idx}
        means = {order[i]: t[f"prototypes/{i}/means"] for i in idx}
        variances = {order[i]: t[f"prototypes/{i}/variances"] for i in idx}
        weights = {order[i]: t[f"prototypes/{i}/weights"] for i in idx}
        pairs = {(order[i], order[j]): t[f"pair_plan/{i}/{j}"] for i in idx for j in idx if i < j}
    except KeyError as exc:
        raise ReplayError(f"replay epoch {entry.get('epoch')}: tensor {exc.args[0]!r} missing") from exc
    coords, proto_xy, frame = project_epoch(unique, common, means, previous)
    n = len(next(iter(unique.values())))
    plan = t.get("plan")
    epoch = ReplayEpoch(
        epoch=int(entry["epoch"]), means=means, variances=variances, weights=weights, plan=plan,
        pair_plans=pairs, unique_xy={m: coords[m][:n] for m in order}, common_xy={m: coords[m][n:] for m in order},
        prototype_xy=proto_xy, levels={k: float(v) for k, v in entry.get("levels", {}).items()},
        plan_entropy=plan_entropy(plan) if plan is not None else float("nan"),
        pair_entropy={k: plan_entropy(p) / np.log(p.size) if p.size > 1 else 0.0 for k, p in pairs.items()},
        separation=separation_score(unique, common), converged=bool(entry.get("converged", True)))
    return epoch, frame


# ------------------------------------------------------------------------------------------- the maths


def separation_score(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> float:
    """Mean over modalities of the silhouette score of {unique, common} features (Euclidean)."""
    from sklearn.metrics import silhouette_score

    scores = []
    for m, u in unique.items():
        x = np.concatenate([u, common[m]]).astype(np.float64)
        groups = np.r_[np.zeros(len(u)), np.ones(len(common[m]))]
        if len(u) < 2 or np.allclose(x, x[0]):
            scores.append(0.0)
            continue
        scores.append(float(silhouette_score(x, groups, metric="euclidean")))
    return float(np.mean(scores))


def procrustes_rotation(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Orthogonal R minimising ``||current @ R - target||_F``: ``U V^T`` from ``svd(current^T target)``.

    Rows are paired samples; centre both sides first for the map between two point clouds. The one
    Procrustes of the product: the replay's frames and the Compare page's feature spaces use it.
    """
    u, _, vt = np.linalg.svd(current.T @ target)
    return u @ vt


def project_epoch(unique: dict[str, np.ndarray], common: dict[str, np.ndarray], means: dict[str, np.ndarray],
                  previous: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """2-D PCA of one epoch's stacked unique and common features, Procrustes-aligned to ``previous``.

    Returns (per modality (2n, 2) coordinates: unique rows then common rows; per modality (K, 2)
    prototype means; this epoch's stacked (2nM, 2) coordinates, the target of the next epoch).
    """
    order = list(unique)
    stacked = np.concatenate([np.concatenate([unique[m], common[m]]) for m in order]).astype(np.float64)
    centre = stacked.mean(0)
    x = stacked - centre
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2].T  # (d, 2); fewer than 2 components when d == 1
    if axes.shape[1] < 2:
        axes = np.pad(axes, ((0, 0), (0, 2 - axes.shape[1])))
    frame = x @ axes
    if previous is not None and previous.shape == frame.shape:
        axes = axes @ procrustes_rotation(frame, previous)
        frame = x @ axes
    rows = 2 * len(next(iter(unique.values())))
    coords = {m: frame[i * rows:(i + 1) * rows] for i, m in enumerate(order)}
    proto = {m: (means[m].astype(np.float64) - centre) @ axes for m in order}
    return coords, proto, frame
