"""One typed configuration for the model and its training, every default written once.

``DecAlignConfig.from_json`` reads this project's own JSON (``{"model": {...}, "train": {...}}``) and the
official taco-group/DecAlign config files (flat keys such as ``dst_feature_dim_nheads``). Unknown keys are
errors that name the key; keys that only concern the official BERT text encoder are accepted with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import read_json_object

# Official single-letter modality suffixes, in the official fusion order.
OFFICIAL_MODALITIES = {"l": "text", "a": "audio", "v": "vision"}


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and alignment settings (the official names are in brackets)."""

    d_model: int = 40  # shared width d [dst_feature_dim_nheads[0]]
    num_heads: int = 10  # [dst_feature_dim_nheads[1]]
    num_layers: int = 5  # transformer layers per modality [nlevels]
    conv_kernel_size: int = 1  # temporal projection kernel for every modality not listed below
    conv_kernel_sizes: tuple[tuple[str, int], ...] = ()  # per modality [conv1d_kernel_size_l/a/v]
    num_prototypes: int = 7  # K [num_prototypes]
    gmm_em_iters: int = 5
    gmm_var_floor: float = 1e-4
    lambda_ot: float = 0.1  # entropic regularisation of the transport, relative to the mean cost
    ot_num_iters: int = 50  # Sinkhorn iteration cap
    ot_tol: float = 1e-6  # Sinkhorn stops when every marginal is this close
    cross_modal_attention: bool = True  # [use_cross_modal_attention]
    pde_dim: int = 40  # width of the distribution encoders' output
    mmd_bandwidth: float = 1.0
    attn_dropout: float = 0.1
    attn_dropouts: tuple[tuple[str, float], ...] = ()  # per modality [attn_dropout_a/v]
    relu_dropout: float = 0.1
    embed_dropout: float = 0.25
    res_dropout: float = 0.1
    output_dropout: float = 0.0
    input_dropouts: tuple[tuple[str, float], ...] = ()  # per modality input dropout [text_dropout]
    attn_mask: bool = True  # causal mask when a modality attends to itself
    positional_encoding: bool = False  # sinusoidal; the official model has none
    use_sequence_mask: bool = False  # mask padded steps using per-sample lengths

    def kernel_size(self, modality: str) -> int:
        return dict(self.conv_kernel_sizes).get(modality, self.conv_kernel_size)

    def attn_dropout_for(self, modality: str) -> float:
        return dict(self.attn_dropouts).get(modality, self.attn_dropout)

    def input_dropout_for(self, modality: str) -> float:
        return dict(self.input_dropouts).get(modality, 0.0)

    def validate(self) -> None:
        _check_ranges(self, MODEL_RANGES)
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"d_model ({self.d_model}) must be a positive multiple of num_heads ({self.num_heads})"
            )
        for name in ("lambda_ot", "mmd_bandwidth", "gmm_var_floor", "ot_tol"):
            if not 0 < getattr(self, name) < math.inf:
                raise ConfigError(f"{name} must be positive and finite, found {getattr(self, name)}")
        for name in ("conv_kernel_sizes", "attn_dropouts", "input_dropouts"):
            low, high = MODEL_RANGES["conv_kernel_size" if name == "conv_kernel_sizes" else "attn_dropout"]
            for modality, value in getattr(self, name):
                if not low <= value <= high:
                    raise ConfigError(f"{name}[{modality!r}] must be in {low}..{high}, found {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loss weights (official names)."""

    task_loss: str = "mse"  # mse | l1 | smooth_l1 for regression; cross_entropy for classification
    dec_loss_weight: float = 1.0
    alpha: float = 0.05  # weight of heterogeneity alignment (transport + local)
    beta: float = 0.0  # weight of homogeneity alignment (moments + MMD)
    ct_weight: float = 0.0  # supervised contrastive term
    ct_temperature: float = 0.1
    class_weight: str = "none"  # none | balanced (classification)
    batch_size: int = 32
    learning_rate: float = 2e-4
    weight_decay: float = 0.005
    num_epochs: int = 50
    early_stop_patience: int = 10
    scheduler_patience: int = 5
    factor: float = 0.1
    clip: float = 0.6
    selection_metric: str = "auto"  # a validation metric name, or auto (loss)
    selection_mode: str = "auto"  # min | max | auto (from the metric)
    seed: int = 1111
    mixed_precision: bool = False  # bf16 autocast for the transformers on CUDA; alignment stays float32
    global_alignment: bool = True  # distributed: prototypes and alignment losses over the global batch

    def validate(self) -> None:
        _check_ranges(self, TRAIN_RANGES)
        if self.task_loss not in ("mse", "l1", "smooth_l1", "cross_entropy"):
            raise ConfigError(
                f"task_loss must be mse, l1, smooth_l1 or cross_entropy, found {self.task_loss!r}"
            )
        if self.class_weight not in ("none", "balanced"):
            raise ConfigError(f"class_weight must be none or balanced, found {self.class_weight!r}")
        if self.selection_mode not in ("auto", "min", "max"):
            raise ConfigError(f"selection_mode must be auto, min or max, found {self.selection_mode!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"learning_rate must be positive and finite, found {self.learning_rate}")


# Inclusive ranges of the numbers a configuration may hold. The upper bounds are far beyond any
# DecAlign model (the official configs use d 30-60, 4-6 layers, under 20 prototypes) and keep a
# hostile model card from asking for millions of layers or gigabytes of weights before anything is built.
MODEL_RANGES: dict[str, tuple[float, float]] = {
    "d_model": (1, 4096), "num_heads": (1, 256), "num_layers": (1, 64), "conv_kernel_size": (1, 256),
    "num_prototypes": (1, 1024), "gmm_em_iters": (1, 10_000), "ot_num_iters": (1, 100_000),
    "pde_dim": (1, 4096), "attn_dropout": (0.0, 1.0), "relu_dropout": (0.0, 1.0), "embed_dropout": (0.0, 1.0),
    "res_dropout": (0.0, 1.0), "output_dropout": (0.0, 1.0),
}
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "batch_size": (1, 1 << 20), "num_epochs": (1, 1_000_000), "early_stop_patience": (0, 1_000_000),
    "scheduler_patience": (0, 1_000_000), "dec_loss_weight": (0.0, 1e6), "alpha": (0.0, 1e6),
    "beta": (0.0, 1e6), "ct_weight": (0.0, 1e6), "ct_temperature": (1e-6, 1e6), "weight_decay": (0.0, 1e6),
    "factor": (0.0, 1.0), "clip": (0.0, 1e6),
}


def _check_ranges(section: Any, ranges: dict[str, tuple[float, float]]) -> None:
    for name, (low, high) in ranges.items():
        value = getattr(section, name)
        if not low <= value <= high:  # also false for NaN
            raise ConfigError(f"{name} must be in {low:g}..{high:g}, found {value}")


@dataclass(frozen=True)
class DecAlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> DecAlignConfig:
        self.model.validate()
        self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"model": _section_to_dict(self.model), "train": _section_to_dict(self.train)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DecAlignConfig:
        if set(data) <= {"model", "train"} and data:
            model = _section_from_dict(ModelConfig, data.get("model", {}), f"{source}: model")
            train = _section_from_dict(TrainConfig, data.get("train", {}), f"{source}: train")
            return cls(model, train).validate()
        return from_official_dict(data, source)

    @classmethod
    def from_json(cls, path: str | Path) -> DecAlignConfig:
        data = read_json_object(path, ConfigError)
        return cls.from_dict(data, source=str(path))

    def override(self, assignments: list[str]) -> DecAlignConfig:
        """Apply ``key=value`` strings (``train.learning_rate=1e-3`` or a bare unique field name)."""
        model, train = _section_to_dict(self.model), _section_to_dict(self.train)
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected key=value")
            section, name = _locate_field(key.strip(), model, train)
            target = model if section == "model" else train
            target[name] = _parse_value(raw.strip())
        return DecAlignConfig.from_dict({"model": model, "train": train}, source="--set")


# Official keys that only concern the BERT text encoder or bookkeeping: accepted, warned about, ignored.
_OFFICIAL_IGNORED = {
    "use_bert", "use_finetune", "transformers", "pretrained", "bert_learning_rate", "model_name",
    "need_data_aligned", "loss_contract", "train_mode", "num_classes", "feature_dims", "seq_lens",
    "active_modalities", "iemocap_protocol", "when", "patience", "scheduler_metric", "scheduler_mode",
    "alpha1", "alpha2", "dataset_name", "KeyEval",
}
_BERT_ONLY = {"use_bert", "use_finetune", "transformers", "pretrained", "bert_learning_rate"}

# Official flat keys that map one to one onto a field.
_OFFICIAL_MODEL_KEYS = {
    "nlevels": "num_layers", "num_prototypes": "num_prototypes", "gmm_em_iters": "gmm_em_iters",
    "gmm_var_floor": "gmm_var_floor", "lambda_ot": "lambda_ot", "ot_num_iters": "ot_num_iters",
    "use_cross_modal_attention": "cross_modal_attention", "pde_dim": "pde_dim",
    "mmd_bandwidth": "mmd_bandwidth", "attn_dropout": "attn_dropout", "relu_dropout": "relu_dropout",
    "embed_dropout": "embed_dropout", "res_dropout": "res_dropout", "output_dropout": "output_dropout",
    "attn_mask": "attn_mask", "use_sequence_mask": "use_sequence_mask",
}
_OFFICIAL_TRAIN_KEYS = {
    "task_loss": "task_loss", "dec_loss_weight": "dec_loss_weight", "alpha": "alpha", "beta": "beta",
    "ct_weight": "ct_weight", "ct_temperature": "ct_temperature", "class_weight": "class_weight",
    "batch_size": "batch_size", "learning_rate": "learning_rate", "weight_decay": "weight_decay",
    "num_epochs": "num_epochs", "early_stop_patience": "early_stop_patience",
    "scheduler_patience": "scheduler_patience", "factor": "factor", "clip": "clip",
    "selection_metric": "selection_metric", "selection_mode": "selection_mode", "seed": "seed",
}


def from_official_dict(data: dict[str, Any], source: str = "config") -> DecAlignConfig:
    """Translate an official taco-group/DecAlign config (flat keys) into a ``DecAlignConfig``."""
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    kernels, attn_drops, input_drops = [], [], []
    ignored = []
    for key, value in data.items():
        if key in _OFFICIAL_MODEL_KEYS:
            model[_OFFICIAL_MODEL_KEYS[key]] = value
        elif key in _OFFICIAL_TRAIN_KEYS:
            train[_OFFICIAL_TRAIN_KEYS[key]] = _official_train_value(key, value)
        elif key == "dst_feature_dim_nheads":
            if not (isinstance(value, list) and len(value) == 2):
                raise ConfigError(f"{source}: dst_feature_dim_nheads must be [width, heads], found {value!r}")
            model["d_model"], model["num_heads"] = int(value[0]), int(value[1])
        elif key.startswith("conv1d_kernel_size_") and key[-1] in OFFICIAL_MODALITIES:
            kernels.append((OFFICIAL_MODALITIES[key[-1]], int(value)))
        elif key in ("attn_dropout_a", "attn_dropout_v"):
            attn_drops.append((OFFICIAL_MODALITIES[key[-1]], float(value)))
        elif key == "text_dropout":
            input_drops.append(("text", float(value)))
        elif key in _OFFICIAL_IGNORED:
            ignored.append(key)
        else:
            raise ConfigError(f"{source}: unknown config key {key!r}")
    bert_keys = sorted(k for k in ignored if k in _BERT_ONLY)
    if bert_keys:
        warnings.warn(f"{source}: keys for the BERT text encoder are ignored: {', '.join(bert_keys)}",
                      stacklevel=2)
    if data.get("train_mode") == "classification" and "task_loss" not in data:
        train["task_loss"] = "cross_entropy"
    model.update(conv_kernel_sizes=tuple(kernels), attn_dropouts=tuple(attn_drops),
                 input_dropouts=tuple(input_drops))
    return DecAlignConfig(
        _section_from_dict(ModelConfig, model, f"{source}"),
        _section_from_dict(TrainConfig, train, f"{source}"),
    ).validate()


def _official_train_value(key: str, value: Any) -> Any:
    if key == "task_loss" and isinstance(value, str):
        return {"smoothl1": "smooth_l1", "ce": "cross_entropy", "mae": "l1"}.get(value.lower(), value.lower())
    return value


def _section_to_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        out[f.name] = [list(pair) for pair in value] if isinstance(value, tuple) else value
    return out


def _section_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected an object, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown config key {key!r}")
        kwargs[key] = _coerce(value, fields[key], source)
    return cls(**kwargs)


def _coerce(value: Any, f: dataclasses.Field, source: str) -> Any:
    default = f.default
    if isinstance(default, tuple):
        try:
            return tuple((str(k), type(v)(val)) for k, v, val in _pairs(value, f.name))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {f.name} must be a list of [modality, value] pairs") from exc
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {f.name} must be true or false, found {value!r}")
    if isinstance(default, (int, float)) and not isinstance(value, bool):
        try:
            cast = type(default)(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ConfigError(f"{source}: {f.name} must be a number, found {value!r}") from exc
        if isinstance(default, int) and cast != value:
            raise ConfigError(f"{source}: {f.name} must be a whole number, found {value!r}")
        return cast
    if isinstance(default, str) and isinstance(value, str):
        return value
    raise ConfigError(f"{source}: {f.name} has the wrong type: found {value!r}")


def _pairs(value: Any, name: str):
    items = value.items() if isinstance(value, dict) else value
    sample = {"conv_kernel_sizes": 1, "attn_dropouts": 0.0, "input_dropouts": 0.0}[name]
    for item in items:
        key, val = item
        yield key, sample, val


def _locate_field(key: str, model: dict, train: dict) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section in ("model", "train") and name in (model if section == "model" else train):
            return section, name
        raise ConfigError(f"--set: unknown config key {key!r}")
    if key in model:
        return "model", key
    if key in train:
        return "train", key
    raise ConfigError(f"--set: unknown config key {key!r}")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
