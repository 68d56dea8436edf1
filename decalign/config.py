"""One typed configuration for the model, its training and its input transforms, every default written once.

``DecAlignConfig.from_json`` reads this project's own JSON (``{"model": {...}, "train": {...}, "data": {...}}``)
and the official taco-group/DecAlign config files (flat keys such as ``dst_feature_dim_nheads``). Unknown keys
are errors that name the key; official keys this project does not use (BERT settings, bookkeeping) are
accepted with a warning naming them. A key an official file leaves out takes the official code's default
(``OFFICIAL_DEFAULTS``), not this project's, and an official file always selects ``objective: official``.
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
OBJECTIVES = ("official", "studio")


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
    # Which alignment objective the losses compute (README, "The objective"): "official" is every term as
    # the official code computes it; "studio" is this project's scale-free variant. Cards written before
    # the setting existed were trained with the studio terms and load as "studio".
    objective: str = "official"
    hetero_cost_reduction: str = "mean"  # official: mean or sum over feature dimensions [hetero_cost_reduction]
    local_proto_mahalanobis: bool = False  # official: local cost divided by the prototype variance
    # BERT text encoder (official use_bert): the "text" modality is read as MMSA text_bert tokens and
    # encoded by a transformers.BertModel of the shape below, inferred from an imported checkpoint's
    # tensors or read from the local folder ``pretrained`` when training; 0 means not known yet.
    use_bert: bool = False
    use_finetune: bool = True  # false: the BERT is frozen (no gradient), as the official encoder
    pretrained: str = ""  # a local Hugging Face BERT folder (config.json + weights); training only
    bert_vocab_size: int = 0
    bert_hidden_size: int = 0
    bert_num_layers: int = 0
    bert_num_heads: int = 0
    bert_intermediate_size: int = 0
    bert_max_positions: int = 0
    bert_type_vocab_size: int = 0
    bert_layer_norm_eps: float = 1e-12
    bert_hidden_act: str = "gelu"

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
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be official or studio, found {self.objective!r}")
        if self.hetero_cost_reduction not in ("mean", "sum"):
            raise ConfigError(f"hetero_cost_reduction must be mean or sum, found {self.hetero_cost_reduction!r}")
        self._validate_bert()

    @property
    def bert_shape_known(self) -> bool:
        return self.use_bert and self.bert_hidden_size > 0

    def bert_shape(self) -> dict[str, int | float | str]:
        """The BERT's architecture as ``transformers.BertConfig`` keyword arguments."""
        return {"vocab_size": self.bert_vocab_size, "hidden_size": self.bert_hidden_size,
                "num_hidden_layers": self.bert_num_layers, "num_attention_heads": self.bert_num_heads,
                "intermediate_size": self.bert_intermediate_size,
                "max_position_embeddings": self.bert_max_positions, "type_vocab_size": self.bert_type_vocab_size,
                "layer_norm_eps": self.bert_layer_norm_eps, "hidden_act": self.bert_hidden_act}

    def _validate_bert(self) -> None:
        if len(self.pretrained) > 4096:
            raise ConfigError(f"pretrained must be a folder path of at most 4096 characters, found "
                              f"{len(self.pretrained):,}")
        if self.bert_hidden_act not in BERT_ACTIVATIONS:
            raise ConfigError(f"bert_hidden_act must be one of {', '.join(BERT_ACTIVATIONS)}, "
                              f"found {self.bert_hidden_act!r}")
        if not 0 < self.bert_layer_norm_eps < 1:
            raise ConfigError(f"bert_layer_norm_eps must be in (0, 1), found {self.bert_layer_norm_eps}")
        sizes = {name: getattr(self, name) for name in BERT_SIZE_FIELDS}
        if self.use_bert and any(sizes.values()) and not all(sizes.values()):
            missing = [name for name, value in sizes.items() if not value]
            raise ConfigError(f"use_bert: the BERT shape is incomplete ({', '.join(missing)} missing)")
        if self.bert_shape_known and self.bert_hidden_size % self.bert_num_heads:
            raise ConfigError(f"bert_hidden_size ({self.bert_hidden_size}) must be a multiple of "
                              f"bert_num_heads ({self.bert_num_heads})")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loss weights (official names)."""

    task_loss: str = "mse"  # mse | l1 | smooth_l1 for regression; cross_entropy for classification
    smooth_l1_beta: float = 1.0  # the threshold of smooth_l1
    binary_task_weight: float = 0.0  # regression: weight of BCE(prediction, y > 0) on nonzero labels
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
    scheduler_metric: str = "auto"  # the validation value ReduceLROnPlateau follows; auto = selection_metric
    scheduler_mode: str = "auto"  # min | max | auto (from the metric)
    seed: int = 1111
    bert_learning_rate: float = 0.0  # the BERT's own learning rate (its Adam group); 0: learning_rate
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
        for name in ("selection_mode", "scheduler_mode"):
            if getattr(self, name) not in ("auto", "min", "max"):
                raise ConfigError(f"{name} must be auto, min or max, found {getattr(self, name)!r}")
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
    # BERT: bert-base has 30,522 words, width 768, 12 layers, 12 heads, 3,072 inner, 512 positions, 2 types
    "bert_vocab_size": (0, 1 << 20), "bert_hidden_size": (0, 4096), "bert_num_layers": (0, 64),
    "bert_num_heads": (0, 256), "bert_intermediate_size": (0, 16384), "bert_max_positions": (0, 1 << 16),
    "bert_type_vocab_size": (0, 1024),
}
BERT_SIZE_FIELDS = ("bert_vocab_size", "bert_hidden_size", "bert_num_layers", "bert_num_heads",
                    "bert_intermediate_size", "bert_max_positions", "bert_type_vocab_size")
BERT_ACTIVATIONS = ("gelu", "relu", "gelu_new", "gelu_python", "silu", "tanh")
TRAIN_RANGES: dict[str, tuple[float, float]] = {
    "batch_size": (1, 1 << 20), "num_epochs": (1, 1_000_000), "early_stop_patience": (0, 1_000_000),
    "scheduler_patience": (0, 1_000_000), "dec_loss_weight": (0.0, 1e6), "alpha": (0.0, 1e6),
    "beta": (0.0, 1e6), "ct_weight": (0.0, 1e6), "ct_temperature": (1e-6, 1e6), "weight_decay": (0.0, 1e6),
    "factor": (0.0, 1.0), "clip": (0.0, 1e6), "binary_task_weight": (0.0, 1e6), "smooth_l1_beta": (0.0, 1e6),
    "bert_learning_rate": (0.0, 1e6),
}


def _check_ranges(section: Any, ranges: dict[str, tuple[float, float]]) -> None:
    for name, (low, high) in ranges.items():
        value = getattr(section, name)
        if not low <= value <= high:  # also false for NaN
            raise ConfigError(f"{name} must be in {low:g}..{high:g}, found {value}")


@dataclass(frozen=True)
class DataConfig:
    """What the run does to its input features before the model sees them (``decalign.data.transform``).

    The statistics come from the training split only and are stored with the run, so evaluation,
    prediction and the dashboard apply exactly the training transform to new data.
    """

    # Clip each feature at these percentiles, then standardise it (official need_feature_standardized,
    # feature_standardize_modalities, feature_clip_percentiles); empty: no modality is standardised.
    standardize_modalities: tuple[str, ...] = ()
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    time_average_modalities: tuple[str, ...] = ()  # mean over time steps (official need_normalized)

    def validate(self) -> None:
        low, high = self.clip_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"clip_percentiles (official feature_clip_percentiles) must be [low, high] with "
                              f"0 <= low < high <= 100, found {list(self.clip_percentiles)}")
        for name in ("standardize_modalities", "time_average_modalities"):
            names = getattr(self, name)
            if len(set(names)) != len(names) or not all(names):
                raise ConfigError(f"{name} must list distinct modality names, found {list(names)}")


@dataclass(frozen=True)
class DecAlignConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> DecAlignConfig:
        self.model.validate()
        self.train.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> DecAlignConfig:
        if set(data) <= set(SECTIONS) and data:
            sections = {name: _section_from_dict(kind, data.get(name, {}), f"{source}: {name}")
                        for name, kind in SECTIONS.items()}
            return cls(**sections).validate()
        return from_official_dict(data, source)

    @classmethod
    def from_json(cls, path: str | Path) -> DecAlignConfig:
        data = read_json_object(path, ConfigError)
        return cls.from_dict(data, source=str(path))

    def override(self, assignments: list[str]) -> DecAlignConfig:
        """Apply ``key=value`` strings (``train.learning_rate=1e-3`` or a bare unique field name)."""
        sections = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"--set {item!r}: expected key=value")
            section, name = _locate_field(key.strip(), sections)
            sections[section][name] = _parse_value(raw.strip())
        return DecAlignConfig.from_dict(sections, source="--set")


SECTIONS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}


def with_legacy_objective(config: dict[str, Any]) -> dict[str, Any]:
    """A card's config as written before ``objective`` existed: those runs were trained with the studio
    terms, so a ``model`` section without the key means ``studio`` (a config file without it means the
    default, ``official``)."""
    model = config.get("model") if isinstance(config, dict) else None
    if isinstance(model, dict) and set(config) <= set(SECTIONS) and "objective" not in model:
        return {**config, "model": {**model, "objective": "studio"}}
    return config


# Official keys this project accepts but does not use: bookkeeping or data-loading details of the
# official scripts (``when`` is read by nothing).
_OFFICIAL_UNUSED = ("model_name", "dataset_name", "need_data_aligned", "loss_contract", "num_classes",
                    "feature_dims", "seq_lens", "iemocap_protocol", "when", "alpha1", "alpha2", "KeyEval",
                    "language", "train_samples", "active_modalities")

# Official flat keys that map one to one onto a field.
_OFFICIAL_MODEL_KEYS = {
    "nlevels": "num_layers", "num_prototypes": "num_prototypes", "gmm_em_iters": "gmm_em_iters",
    "gmm_var_floor": "gmm_var_floor", "lambda_ot": "lambda_ot", "ot_num_iters": "ot_num_iters",
    "use_cross_modal_attention": "cross_modal_attention", "pde_dim": "pde_dim",
    "mmd_bandwidth": "mmd_bandwidth", "attn_dropout": "attn_dropout", "relu_dropout": "relu_dropout",
    "embed_dropout": "embed_dropout", "res_dropout": "res_dropout", "output_dropout": "output_dropout",
    "attn_mask": "attn_mask", "use_sequence_mask": "use_sequence_mask",
    "hetero_cost_reduction": "hetero_cost_reduction", "local_proto_mahalanobis": "local_proto_mahalanobis",
    "use_bert": "use_bert", "use_finetune": "use_finetune", "pretrained": "pretrained",
}
_OFFICIAL_TRAIN_KEYS = {
    "task_loss": "task_loss", "dec_loss_weight": "dec_loss_weight", "alpha": "alpha", "beta": "beta",
    "ct_weight": "ct_weight", "ct_temperature": "ct_temperature", "class_weight": "class_weight",
    "batch_size": "batch_size", "learning_rate": "learning_rate", "weight_decay": "weight_decay",
    "num_epochs": "num_epochs", "early_stop_patience": "early_stop_patience",
    "scheduler_patience": "scheduler_patience", "factor": "factor", "clip": "clip",
    "selection_metric": "selection_metric", "selection_mode": "selection_mode",
    "scheduler_metric": "scheduler_metric", "scheduler_mode": "scheduler_mode", "seed": "seed",
    "binary_task_weight": "binary_task_weight", "smooth_l1_beta": "smooth_l1_beta",
    "bert_learning_rate": "bert_learning_rate",  # null (the official default): the learning_rate
}
_OFFICIAL_DATA_KEYS = ("need_feature_standardized", "feature_standardize_modalities", "feature_clip_percentiles",
                       "need_normalized")
_OFFICIAL_LOOP_KEYS = ("patience", "train_mode")

# What the official code uses when a config file leaves a key out (its config.py defaults, else the
# getattr defaults of models/model.py and trains/ATIO.py). ``pde_dim`` defaults to the width d, and
# ``selection_metric`` to the validation loss (regression) or WAF1 (classification); see from_official_dict.
OFFICIAL_DEFAULTS: dict[str, Any] = {
    "dst_feature_dim_nheads": [40, 10], "nlevels": 5, "conv1d_kernel_size_l": 1, "conv1d_kernel_size_a": 1,
    "conv1d_kernel_size_v": 1, "num_prototypes": 8, "gmm_em_iters": 5, "gmm_var_floor": 1e-4, "lambda_ot": 0.1,
    "ot_num_iters": 50, "use_cross_modal_attention": True, "mmd_bandwidth": 1.0, "attn_dropout": 0.1,
    "attn_dropout_a": 0.0, "attn_dropout_v": 0.0, "relu_dropout": 0.1, "embed_dropout": 0.25,
    "res_dropout": 0.1, "output_dropout": 0.0, "text_dropout": 0.0, "attn_mask": True,
    "use_sequence_mask": False, "hetero_cost_reduction": "mean", "local_proto_mahalanobis": False,
    "task_loss": "mae", "dec_loss_weight": 1.0, "alpha": 0.1, "beta": 0.1, "ct_weight": 0.0,
    "ct_temperature": 0.1, "class_weight": "none", "binary_task_weight": 0.0, "smooth_l1_beta": 1.0,
    "batch_size": 24, "learning_rate": 1e-3, "weight_decay": 0.0, "num_epochs": 100, "patience": 20,
    "clip": 0.8, "factor": 0.1, "need_feature_standardized": False,
    "feature_standardize_modalities": ["audio", "vision"], "feature_clip_percentiles": [0.5, 99.5],
    "need_normalized": False,
}


def from_official_dict(data: dict[str, Any], source: str = "config") -> DecAlignConfig:
    """Translate an official taco-group/DecAlign config (flat keys) into a ``DecAlignConfig``.

    Keys the file leaves out (or sets to null) take ``OFFICIAL_DEFAULTS``; the objective is always
    ``official``. ``patience`` stands in for ``early_stop_patience`` and ``scheduler_patience`` when
    those are absent, as in the official trainer.
    """
    unknown = [k for k in data if k not in _OFFICIAL_KNOWN and not _per_modality_key(k)]
    if unknown:
        raise ConfigError(f"{source}: unknown config key {unknown[0]!r}")
    _check_active_modalities(data.get("active_modalities"), source)
    if data.get("iemocap_protocol", "session_valid") != "session_valid":  # paper_count merges train+valid
        raise ConfigError(f"{source}: iemocap_protocol {data['iemocap_protocol']!r}: only session_valid (the "
                          "file's own splits) is supported; merge the splits in the data file instead")
    given = {k: v for k, v in data.items() if v is not None}
    values = {**OFFICIAL_DEFAULTS, **given}
    model, train = _official_model(values, source), _official_train(values, given)
    _check_transformers(given.get("transformers", "bert"), source)
    _warn_unused(sorted(k for k in given if k in _OFFICIAL_UNUSED), source)
    config = DecAlignConfig(
        _section_from_dict(ModelConfig, model, source),
        _section_from_dict(TrainConfig, train, source),
        _section_from_dict(DataConfig, _official_data(values, source), source),
    )
    try:
        return config.validate()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


_OFFICIAL_KNOWN = {"transformers", *_OFFICIAL_UNUSED, *_OFFICIAL_MODEL_KEYS, *_OFFICIAL_TRAIN_KEYS,
                   *_OFFICIAL_DATA_KEYS, *_OFFICIAL_LOOP_KEYS, "dst_feature_dim_nheads", "text_dropout",
                   "attn_dropout_a", "attn_dropout_v"}


def _per_modality_key(key: str) -> bool:
    return key.startswith("conv1d_kernel_size_") and key[-1:] in OFFICIAL_MODALITIES and len(key) == 20


def _official_model(values: dict[str, Any], source: str) -> dict[str, Any]:
    model = {field_name: values[key] for key, field_name in _OFFICIAL_MODEL_KEYS.items() if key in values}
    shape = values["dst_feature_dim_nheads"]
    if not (isinstance(shape, list) and len(shape) == 2):
        raise ConfigError(f"{source}: dst_feature_dim_nheads must be [width, heads], found {shape!r}")
    model["d_model"], model["num_heads"] = _whole(shape[0], source), _whole(shape[1], source)
    model.setdefault("pde_dim", model["d_model"])
    model["conv_kernel_sizes"] = [[name, values[f"conv1d_kernel_size_{letter}"]]
                                  for letter, name in OFFICIAL_MODALITIES.items()]
    model["attn_dropouts"] = [["audio", values["attn_dropout_a"]], ["vision", values["attn_dropout_v"]]]
    model["input_dropouts"] = [["text", values["text_dropout"]]]
    model["objective"] = "official"
    return model


def _official_train(values: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    train = {name: values[key] for key, name in _OFFICIAL_TRAIN_KEYS.items() if key in values}
    train["task_loss"] = _official_task_loss(values["task_loss"])
    for name in ("early_stop_patience", "scheduler_patience"):
        train.setdefault(name, values["patience"])
    classification = values.get("train_mode") == "classification"
    if classification:  # the official trainer ignores task_loss for classification
        train["task_loss"] = "cross_entropy"
    if "selection_metric" not in given:  # official: the dataset's validation loss, or F1 for classes
        train["selection_metric"] = "WAF1" if classification else "loss"
    return train


def _official_data(values: dict[str, Any], source: str) -> dict[str, Any]:
    modalities = values["feature_standardize_modalities"]
    if not (isinstance(modalities, list) and all(isinstance(m, str) for m in modalities)):
        raise ConfigError(f"{source}: feature_standardize_modalities must be a list of modality names, "
                          f"found {modalities!r}")
    percentiles = values["feature_clip_percentiles"]
    if not (isinstance(percentiles, list) and len(percentiles) == 2):
        raise ConfigError(f"{source}: feature_clip_percentiles must be [low, high], found {percentiles!r}")
    return {"standardize_modalities": modalities if _flag(values, "need_feature_standardized", source) else [],
            "clip_percentiles": percentiles,
            # the official loader averages audio and vision over time (data_loader.py, __normalize)
            "time_average_modalities": ["audio", "vision"] if _flag(values, "need_normalized", source) else []}


def _flag(values: dict[str, Any], key: str, source: str) -> bool:
    if not isinstance(values[key], bool):
        raise ConfigError(f"{source}: {key} must be true or false, found {values[key]!r}")
    return values[key]


def _whole(value: Any, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ConfigError(f"{source}: dst_feature_dim_nheads must hold whole numbers, found {value!r}")
    return int(value)


def _check_active_modalities(value: Any, source: str) -> None:
    """The official ablation switch: this project trains the modalities its data holds instead."""
    if value is None:
        return
    names = value if isinstance(value, list) else [value]
    alias = {"t": "text", "l": "text", "a": "audio", "v": "vision"}
    found = {alias.get(str(n).lower(), str(n).lower()) for n in names}
    if found != {"text", "audio", "vision"}:
        raise ConfigError(f"{source}: active_modalities {value!r}: only all three modalities are supported; "
                          "to leave a modality out, train on data without it")


def _check_transformers(value: Any, source: str) -> None:
    """The official encoder builds a BERT whatever ``transformers`` says; only ``bert`` means that here."""
    if not (isinstance(value, str) and value.lower() == "bert"):
        raise ConfigError(f"{source}: transformers {value!r}: only 'bert' text encoders are supported")


def _warn_unused(keys: list[str], source: str) -> None:
    if keys:
        warnings.warn(f"{source}: official keys not used by this project are ignored: {', '.join(keys)}",
                      stacklevel=3)


def _official_task_loss(value: Any) -> Any:
    if isinstance(value, str):
        lowered = value.lower()
        return {"smoothl1": "smooth_l1", "huber": "smooth_l1", "ce": "cross_entropy", "mae": "l1"}.get(
            lowered, lowered)
    return value


def _section_to_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if f.name in _PAIR_FIELDS:
            value = [list(pair) for pair in value]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
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


# Tuple fields: [modality, value] pairs, lists of names, and the two percentiles.
_PAIR_FIELDS = {"conv_kernel_sizes": 1, "attn_dropouts": 0.0, "input_dropouts": 0.0}
_NAME_LISTS = ("standardize_modalities", "time_average_modalities")


def _coerce(value: Any, f: dataclasses.Field, source: str) -> Any:
    default = f.default
    if f.name in _PAIR_FIELDS:
        return _coerce_pairs(value, f.name, source)
    if f.name in _NAME_LISTS:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {f.name} must be a list of modality names, found {value!r}")
        return tuple(value)
    if f.name == "clip_percentiles":
        if (not isinstance(value, (list, tuple)) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"{source}: {f.name} must be [low, high] percentiles, found {value!r}")
        return (float(value[0]), float(value[1]))
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


def _coerce_pairs(value: Any, name: str, source: str) -> tuple:
    kind = type(_PAIR_FIELDS[name])
    try:
        items = value.items() if isinstance(value, dict) else value
        return tuple((str(key), kind(val)) for key, val in items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} must be a list of [modality, value] pairs") from exc


def _locate_field(key: str, sections: dict[str, dict]) -> tuple[str, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section in sections and name in sections[section]:
            return section, name
        raise ConfigError(f"--set: unknown config key {key!r}")
    for section, fields in sections.items():
        if key in fields:
            return section, key
    raise ConfigError(f"--set: unknown config key {key!r}")


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
