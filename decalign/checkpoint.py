"""Checkpoints without pickle: safetensors weights plus a JSON model card, written atomically.

A run directory holds ``card.json``, ``best.safetensors`` and ``last.safetensors`` (and, while training,
``resume/``). ``load_model`` takes the run directory, a ``.safetensors`` file beside a card, or a zip of
a run directory (as uploaded in the dashboard). It reads them in the sandbox
(:mod:`decalign.checkpoint_files` in a memory- and time-limited child): the card is checked field by
field and its model's size computed before anything is built, and the weights come back as plain arrays.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from . import __version__, sandbox
from .atomic import atomic_write, atomic_write_json
from .cache import SignatureCache
from .card_schema import CheckpointError, check_card, read_card_file
from .checkpoint_files import CARD_NAME, MAX_ZIP_BYTES, zip_input_size
from .config import ConfigError, DecAlignConfig
from .data import DataError, MultimodalDataset
from .data.tokens import bert_inputs
from .data.transform import TRANSFORM_KEY, FeatureTransform, apply_feature_transform

# torch and the model are imported where weights are built or written: reading a card (the dashboard's first
# page, a run's history) must not pay for importing torch (1.3 s).
if TYPE_CHECKING:
    import torch

    from .model import DecAlign, Prototypes

CARD_FORMAT = 1
ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # the bundled demo data and model
DATA_SUFFIXES = (".npz", ".pkl", ".pickle")


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
        """A card from its JSON, every field checked first (:func:`decalign.card_schema.check_card`)."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(data).__name__}")
        data = dict(data)
        data["config"] = check_card(data, source)
        data.pop("format", None)
        try:
            card = cls(**data)
        except (ConfigError, TypeError) as exc:
            raise CheckpointError(f"{source}: not a DecAlign model card ({exc})") from exc
        card.feature_transform()  # a stored input transform must fit the model before anything uses it
        return card

    def prototype_tensors(self) -> dict[str, Prototypes] | None:
        if not self.prototypes:
            return None
        import torch

        from .model import Prototypes

        return {m: Prototypes(torch.tensor(p["means"]), torch.tensor(p["variances"]), torch.tensor(p["weights"]))
                for m, p in self.prototypes.items()}

    def set_prototypes(self, prototypes: dict[str, Prototypes]) -> None:
        self.prototypes = {m: {"means": p.means.detach().cpu().tolist(),
                               "variances": p.variances.detach().cpu().tolist(),
                               "weights": p.weights.detach().cpu().tolist()} for m, p in prototypes.items()}

    def build_model(self) -> DecAlign:
        from .model import DecAlign

        return DecAlign(self.config.model, self.widths, self.output_dim)

    def feature_transform(self) -> FeatureTransform | None:
        """The input transform fitted on the training split (``decalign.data.transform``), if the run has one."""
        stored = self.extra.get(TRANSFORM_KEY)
        if stored is None:
            return None
        try:
            return FeatureTransform.from_dict(stored, self.widths, "card")
        except DataError as exc:
            raise CheckpointError(str(exc)) from exc

    @property
    def has_bert(self) -> bool:
        """The model encodes its text with a BERT, so it reads the data's ``text_bert`` tokens."""
        return self.config.model.use_bert

    def prepare(self, dataset: MultimodalDataset) -> MultimodalDataset:
        """``dataset`` as this model reads it: the run's input transform applied to every split, and for a
        BERT model the text replaced by the ``text_bert`` tokens (checked against the BERT's vocabulary).
        Every consumer of a model (evaluation, prediction, reports, levels, the dashboard) goes through here."""
        prepared = apply_feature_transform(dataset, self.feature_transform())
        return bert_inputs(prepared, self.config.model) if self.has_bert else prepared


def save_model(run_dir: str | Path, model: DecAlign, card: ModelCard, *, tag: str = "best",
               write_card: bool = True) -> Path:
    """Write ``<tag>.safetensors`` (and the card) atomically into ``run_dir``."""
    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    target = run_dir / f"{tag}.safetensors"
    path = atomic_write(target, lambda tmp: _save_weights(state, tmp, tag, target))
    if write_card:
        save_card(run_dir, card)
    return path


def _save_weights(state: dict[str, torch.Tensor], tmp: str, tag: str, target: Path) -> None:
    from safetensors.torch import save_file

    try:
        save_file(state, tmp, {"tag": tag})
    except SafetensorError as exc:  # the Rust writer's I/O errors (a full disk) as the OSError they are
        match = re.search(r"os error (\d+)", str(exc))
        code = int(match.group(1)) if match else errno.EIO
        raise OSError(code, os.strerror(code), str(target)) from exc


def save_card(run_dir: str | Path, card: ModelCard) -> Path:
    return atomic_write_json(Path(run_dir) / CARD_NAME, card.to_dict())


def load_card(run_dir: str | Path) -> ModelCard:
    """The card of a run directory this program trained (read here, with the card's size and field checks)."""
    path = Path(run_dir) / CARD_NAME
    data = read_card_file(path, missing=f"{run_dir}: no {CARD_NAME} (is this a DecAlign run directory?)")
    return ModelCard.from_dict(data, source=str(path))


def load_model(path: str | Path, *, tag: str = "best", device: str | torch.device = "cpu"
               ) -> tuple[DecAlign, ModelCard]:
    """Load a model in eval mode from a run directory, a ``.safetensors`` file beside a card, or a zip.

    The files are read in the sandbox; every failure is one CheckpointError naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; expected a run directory or its zip")
    if path.is_file() and path.suffix.lower() == ".zip":
        size = zip_input_size(path.stat().st_size)
    else:
        files = [path] if path.is_file() else [path / CARD_NAME, path / f"{tag}.safetensors"]
        size = sum(f.stat().st_size for f in files if f.is_file())
    args = {"path": str(path.resolve()), "shown": str(path), "tag": tag}
    return _load_sandboxed(args, None, size, str(path), device)


def load_model_zip(data: bytes, name: str, *, tag: str = "best", device: str | torch.device = "cpu"
                   ) -> tuple[DecAlign, ModelCard]:
    """Load from the bytes of a zipped run directory (card.json and weights at its top or one folder down)."""
    if len(data) > MAX_ZIP_BYTES:
        raise CheckpointError(f"{name}: {len(data):,} bytes, more than the {MAX_ZIP_BYTES >> 20} MiB a zipped "
                              "checkpoint may have")
    args = {"file": "checkpoint.zip", "shown": name, "tag": tag}
    return _load_sandboxed(args, {"checkpoint.zip": data}, zip_input_size(len(data)), name, device)


def _load_sandboxed(args: dict, files: dict[str, bytes] | None, size: int, shown: str,
                    device: str | torch.device) -> tuple[DecAlign, ModelCard]:
    try:
        result = sandbox.run("checkpoint", args, sandbox.Limits.for_input(size), files=files)
    except sandbox.SandboxError as err:
        refused = err.error_type in ("CheckpointError", "ConfigError")
        raise CheckpointError(str(err) if refused else f"{shown}: {err}") from err
    value = result.value
    card = ModelCard.from_dict(value["card"], source=f"{shown}: {CARD_NAME}")
    model = card.build_model()
    _load_weights(model, value["weights"], shown)
    return model.to(device).eval(), card


def _load_weights(model: DecAlign, weights: dict[str, np.ndarray], shown: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{shown}: weights do not fit the card: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for key, array in weights.items():
        if tuple(array.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{shown}: {key} has shape {tuple(array.shape)}, the card's model "
                                  f"expects {tuple(expected[key].shape)}")
    import torch

    model.load_state_dict({key: torch.from_numpy(array) for key, array in weights.items()})


def card_data_path(card: ModelCard, run_dir: str | Path | None) -> tuple[Path | None, str | None]:
    """The data file a card names, if it may be read: one inside the run folder or the bundled assets.

    Returns ``(path, None)``; ``(None, None)`` when the card names no file that is there; or
    ``(None, warning)`` when it names a file outside both folders (an absolute path, ``..``, a link),
    which is never read: a card comes from whoever wrote the checkpoint. A relative name is looked up
    in the run folder, then as a path in this repository (``assets/uci_digits.npz``); a path ending in
    ``assets/<name>``, as a card written on another machine names the bundled data, means this
    installation's ``assets/<name>``.
    """
    if not card.data_source:
        return None, None
    named = Path(card.data_source)
    allowed = [ASSETS_DIR.resolve()] + ([Path(run_dir).resolve()] if run_dir is not None else [])
    candidates = [named] if named.is_absolute() else [Path(run_dir) / named] if run_dir is not None else []
    if not named.is_absolute():
        candidates.append(ASSETS_DIR.parent / named)
    if named.parent.name == "assets":
        candidates.append(ASSETS_DIR / named.name)
    outside = False
    for candidate in candidates:
        resolved = candidate.resolve()
        if not any(resolved.is_relative_to(folder) for folder in allowed):
            outside = outside or resolved.exists() or named.is_absolute() or ".." in named.parts
        elif resolved.is_file() and resolved.suffix.lower() in DATA_SUFFIXES:
            return resolved, None
    if outside:
        return None, (f"The model card names the data file {card.data_source!r}, which is outside the run "
                      "folder and the bundled assets, so it was not read.")
    return None, None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    return _hash_file(path, hashlib.sha256()).hexdigest()


def model_fingerprint(run_dir: str | Path, tag: str = "best") -> str:
    """sha256 of the weights file and the card: identifies a checkpoint in the audit trail.

    Read in 1 MiB blocks: the files may be large (or hostile) and are not loaded whole. The dashboard asks
    for it several times a rerun, so the weights' part of the hash is remembered per file signature (a
    440 MB BERT checkpoint is hashed once, not on every call); the small card is hashed every time.
    """
    weights = Path(run_dir) / f"{tag}.safetensors"
    digest = _weights_digest(weights) if weights.is_file() else hashlib.sha256()
    card = Path(run_dir) / CARD_NAME
    if card.is_file():
        _hash_file(card, digest)
    return digest.hexdigest()


_WEIGHT_DIGESTS = SignatureCache(kept=32)  # the sha256 state after a weights file's bytes


def _weights_digest(path: Path) -> Any:
    """A fresh sha256 object that has read ``path``'s bytes, from the signature cache when it is unchanged."""
    return _WEIGHT_DIGESTS.get(path, lambda p: _hash_file(p, hashlib.sha256())).copy()


def _hash_file(path: str | Path, digest: Any) -> Any:
    """``digest`` updated with the file's bytes, read in 1 MiB blocks (never loaded whole)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest


def _finite(value: Any) -> Any:
    """JSON has no NaN: store non-finite floats as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
