"""Checkpoints without pickle: safetensors weights plus a JSON model card, written atomically.

A run directory holds ``card.json``, ``best.safetensors`` and ``last.safetensors`` (and, while training,
``resume/``). ``load_model`` takes the run directory, a ``.safetensors`` file beside a card, or a zip of
a run directory (as uploaded in the dashboard).
"""

from __future__ import annotations

import hashlib
import io
import math
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_write, atomic_write_json, read_json_object
from .config import ConfigError, DecAlignConfig
from .model import DecAlign, Prototypes

CARD_NAME = "card.json"
CARD_FORMAT = 1
MAX_ZIP_BYTES = 2 << 30


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


@dataclass
class ModelCard:
    """Everything needed to rebuild, describe and audit a model, kept as JSON next to the weights."""

    config: DecAlignConfig
    widths: dict[str, int]  # modality -> feature width, in model order
    task: str  # regression | classification
    output_dim: int
    seq_lens: dict[str, int] = field(default_factory=dict)
    num_classes: int | None = None
    label_range: list[float] | None = None
    class_names: list[str] | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value
    data_fingerprint: str | None = None
    data_source: str | None = None
    seed: int | None = None
    best_epoch: int | None = None
    prototypes: dict[str, dict[str, list]] | None = None  # modality -> means/variances/weights
    source: str = "trained"  # trained | imported-official
    # Decided once at training or import (decalign.train.metrics.metric_convention): mosi | sims |
    # classification, and the per-sample error it implies (absolute | absolute_clipped | misclassification).
    metric_convention: str | None = None
    error: str | None = None
    baseline: dict[str, Any] | None = None  # decalign.train.baseline.fit_baseline: a linear model's scores
    library_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["format"] = CARD_FORMAT
        return _finite(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = CARD_NAME) -> ModelCard:
        data = dict(data)
        data.pop("format", None)
        try:
            data["config"] = DecAlignConfig.from_dict(data["config"], source=f"{source}: config")
            card = cls(**data)
        except ConfigError as exc:
            raise CheckpointError(str(exc)) from exc
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: not a DecAlign model card ({exc})") from exc
        if not isinstance(card.widths, dict) or len(card.widths) < 2:
            raise CheckpointError(f"{source}: 'widths' must name at least two modalities")
        _check_recorded(card, source)
        return card

    def prototype_tensors(self) -> dict[str, Prototypes] | None:
        if not self.prototypes:
            return None
        return {m: Prototypes(torch.tensor(p["means"]), torch.tensor(p["variances"]), torch.tensor(p["weights"]))
                for m, p in self.prototypes.items()}

    def set_prototypes(self, prototypes: dict[str, Prototypes]) -> None:
        self.prototypes = {m: {"means": p.means.detach().cpu().tolist(),
                               "variances": p.variances.detach().cpu().tolist(),
                               "weights": p.weights.detach().cpu().tolist()} for m, p in prototypes.items()}

    def build_model(self) -> DecAlign:
        return DecAlign(self.config.model, self.widths, self.output_dim)


def _check_recorded(card: ModelCard, source: str) -> None:
    """Types of the recorded convention, error and baseline (their meaning: ``train.metrics.card_convention``)."""
    for name in ("metric_convention", "error"):
        value = getattr(card, name)
        if value is not None and not isinstance(value, str):
            raise CheckpointError(f"{source}: {name!r} must be text or null, found {type(value).__name__}")
    if card.baseline is not None and not isinstance(card.baseline, dict):
        raise CheckpointError(f"{source}: 'baseline' must be an object or null, found {type(card.baseline).__name__}")


def save_model(run_dir: str | Path, model: DecAlign, card: ModelCard, *, tag: str = "best",
               write_card: bool = True) -> Path:
    """Write ``<tag>.safetensors`` (and the card) atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = atomic_write(run_dir / f"{tag}.safetensors", lambda tmp: save_file(state, tmp, {"tag": tag}))
    if write_card:
        save_card(run_dir, card)
    return path


def save_card(run_dir: str | Path, card: ModelCard) -> Path:
    return atomic_write_json(Path(run_dir) / CARD_NAME, card.to_dict())


def load_card(run_dir: str | Path) -> ModelCard:
    path = Path(run_dir) / CARD_NAME
    data = read_json_object(path, CheckpointError,
                            missing=f"{run_dir}: no {CARD_NAME} (is this a DecAlign run directory?)")
    return ModelCard.from_dict(data, source=str(path))


def load_model(path: str | Path, *, tag: str = "best", device: str | torch.device = "cpu"
               ) -> tuple[DecAlign, ModelCard]:
    """Load a model in eval mode from a run directory, a ``.safetensors`` file beside a card, or a zip."""
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        return load_model_zip(path.read_bytes(), path.name, tag=tag, device=device)
    if path.is_file():
        run_dir, weights = path.parent, path
    else:
        run_dir, weights = path, path / f"{tag}.safetensors"
    card = load_card(run_dir)
    model = card.build_model()
    _load_weights(model, weights)
    return model.to(device).eval(), card


def load_model_zip(data: bytes, name: str, *, tag: str = "best", device: str | torch.device = "cpu"
                   ) -> tuple[DecAlign, ModelCard]:
    """Load from the bytes of a zipped run directory (card.json and weights at its top or one folder down)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{name}: not a zip file") from exc
    with archive, tempfile.TemporaryDirectory() as tmp:
        members = [i for i in archive.infolist() if Path(i.filename).name in (CARD_NAME, f"{tag}.safetensors")]
        if sum(i.file_size for i in members) > MAX_ZIP_BYTES:
            raise CheckpointError(f"{name}: the checkpoint inside is larger than {MAX_ZIP_BYTES >> 20} MiB")
        cards = [i for i in members if Path(i.filename).name == CARD_NAME]
        if not cards:
            raise CheckpointError(f"{name}: no {CARD_NAME} inside the zip")
        folder = str(Path(cards[0].filename).parent)
        for info in members:  # extract by basename only: no path traversal
            if str(Path(info.filename).parent) == folder:
                (Path(tmp) / Path(info.filename).name).write_bytes(archive.read(info))
        return load_model(tmp, tag=tag, device=device)


def _load_weights(model: DecAlign, weights: Path) -> None:
    try:
        state = load_file(str(weights))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{weights}: weights file not found") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit the card: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{weights}: {key} has shape {tuple(tensor.shape)}, the card's model "
                                  f"expects {tuple(expected[key].shape)}")
    model.load_state_dict(state)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_fingerprint(run_dir: str | Path, tag: str = "best") -> str:
    """sha256 of the weights file and the card: identifies a checkpoint in the audit trail."""
    digest = hashlib.sha256()
    for name in (f"{tag}.safetensors", CARD_NAME):
        path = Path(run_dir) / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _finite(value: Any) -> Any:
    """JSON has no NaN: store non-finite floats as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
