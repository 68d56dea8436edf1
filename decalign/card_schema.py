"""What a model card may hold, checked before anything is built from it. Imports no torch.

A card comes from a file a user may have written by hand: it is read with a size and nesting cap, every
field is type-checked, every number of the configuration is range-checked (:mod:`decalign.config`), and
the model's parameter count is computed from the card (:func:`parameter_count`) so that an absurd
model is refused before a single layer is allocated. The sandboxed checkpoint reader
(:mod:`decalign.checkpoint_files`) and :class:`decalign.checkpoint.ModelCard` share these checks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .config import ConfigError, DecAlignConfig, ModelConfig, with_legacy_objective

MAX_CARD_BYTES = 64 << 20
MAX_JSON_DEPTH = 32
MAX_MODALITIES = 64
MAX_WIDTH = 1 << 20  # input feature width of one modality
MAX_SEQ_LEN = 1 << 20
MAX_OUTPUTS = 100_000
MAX_TEXT = 4096  # characters of a free-text field
MAX_PARAMETERS = 250_000_000  # 1 GB of float32 weights; DecAlign models have about a million
MODALITY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}$")
TASKS = ("regression", "classification")
_TEXT_FIELDS = ("data_fingerprint", "data_source", "source", "library_version", "created_at")
CARD_FIELDS = ("config", "widths", "task", "output_dim", "seq_lens", "num_classes", "label_range",
               "class_names", "metrics", "data_fingerprint", "data_source", "seed", "best_epoch",
               "prototypes", "source", "metric_convention", "error", "baseline", "library_version", "created_at",
               "extra", "format")
# The metric conventions a card may record and the one per-sample error each implies
# (decalign.train.metrics decides and uses them).
CONVENTION_ERRORS = {"mosi": "absolute", "sims": "absolute_clipped", "classification": "misclassification"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def parse_card_json(data: bytes, source: str) -> dict[str, Any]:
    """The card's JSON object, refusing an oversized, non-UTF-8, non-JSON or deeply nested file."""
    if len(data) > MAX_CARD_BYTES:
        raise CheckpointError(f"{source}: {len(data):,} bytes, more than the {MAX_CARD_BYTES:,} a card may have")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{source}: JSON nested too deeply (expected at most {MAX_JSON_DEPTH} levels)"
                              ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: expected a JSON object, found {type(value).__name__}")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{source}: JSON nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def read_card_file(path: str | Path, missing: str | None = None) -> dict[str, Any]:
    """:func:`parse_card_json` of a file, refusing an oversized one before reading it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CARD_BYTES:
            raise CheckpointError(f"{path}: {size:,} bytes, more than the {MAX_CARD_BYTES:,} a card may have")
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(missing or f"{path}: file not found") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return parse_card_json(data, str(path))


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_card(data: dict[str, Any], source: str) -> DecAlignConfig:
    """Check every field of a card's JSON; returns its configuration. CheckpointError naming the key."""
    unknown = sorted(str(k) for k in data if k not in CARD_FIELDS)
    missing = [k for k in ("config", "widths", "task", "output_dim") if k not in data]
    if unknown or missing:
        raise CheckpointError(f"{source}: not a DecAlign model card (unknown keys {unknown[:5]}, missing "
                              f"keys {missing})")
    try:
        # a card written before ``objective`` existed was trained with the studio terms
        config = DecAlignConfig.from_dict(with_legacy_objective(_object(data["config"], "config", source)),
                                          source=f"{source}: config")
    except ConfigError as exc:
        message = str(exc)
        raise CheckpointError(message if message.startswith(source) else f"{source}: config: {message}") from None
    widths = _widths(data["widths"], source)
    task, output_dim = data["task"], data["output_dim"]
    if task not in TASKS:
        raise CheckpointError(f"{source}: 'task' must be regression or classification, found {task!r:.80}")
    _integer(output_dim, "output_dim", 1, 1 if task == "regression" else MAX_OUTPUTS, source)
    _optional_fields(data, widths, source)
    _bert(config.model, widths, source)
    _prototypes(data.get("prototypes"), widths, config.model, source)
    count = parameter_count(config.model, widths, output_dim)
    if count > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: the card describes a model of {count:,} parameters, more than the "
                              f"{MAX_PARAMETERS:,} this program loads")
    return config


def _optional_fields(data: dict[str, Any], widths: dict[str, int], source: str) -> None:
    seq_lens = data.get("seq_lens") or {}
    if not isinstance(seq_lens, dict):
        raise CheckpointError(f"{source}: 'seq_lens' must be an object of modality lengths")
    for name, value in seq_lens.items():
        if name not in widths:
            raise CheckpointError(f"{source}: 'seq_lens' names {name!r:.80}, which is not in 'widths'")
        _integer(value, f"seq_lens[{name!r}]", 1, MAX_SEQ_LEN, source)
    for name, low, high in (("num_classes", 1, MAX_OUTPUTS), ("seed", 0, 2**63 - 1), ("best_epoch", 0, 2**63 - 1)):
        if data.get(name) is not None:
            _integer(data[name], name, low, high, source)
    for name in _TEXT_FIELDS:
        if data.get(name) is not None:
            _text(data[name], name, source)
    label_range = data.get("label_range")
    if label_range is not None and not (isinstance(label_range, list) and len(label_range) == 2
                                        and all(_finite(v) for v in label_range)):
        raise CheckpointError(f"{source}: 'label_range' must be [low, high], found {label_range!r:.80}")
    names = data.get("class_names")
    if names is not None:
        if not isinstance(names, list) or len(names) > MAX_OUTPUTS:
            raise CheckpointError(f"{source}: 'class_names' must be a list of names")
        for i, name in enumerate(names):
            _text(name, f"class_names[{i}]", source, 200)
    _metrics(data.get("metrics"), source)
    _recorded(data, source)
    if data.get("extra") is not None and not isinstance(data["extra"], dict):
        raise CheckpointError(f"{source}: 'extra' must be an object")


def _recorded(data: dict[str, Any], source: str) -> None:
    """The metric convention fits the task, the error fits the convention, the baseline holds metrics."""
    convention, error = data.get("metric_convention"), data.get("error")
    if convention is not None:
        fits = (convention == "classification") == (data["task"] == "classification")
        if convention not in CONVENTION_ERRORS or not fits:
            expected = "classification" if data["task"] == "classification" else "mosi or sims"
            raise CheckpointError(f"{source}: 'metric_convention' must be {expected} for a {data['task']} model, "
                                  f"found {convention!r:.40}")
    allowed = [CONVENTION_ERRORS[convention]] if convention is not None else list(CONVENTION_ERRORS.values())
    if error is not None and error not in allowed:
        raise CheckpointError(f"{source}: 'error' must be {' or '.join(allowed)}, found {error!r:.40}")
    baseline = data.get("baseline")
    if baseline is not None:
        if not isinstance(baseline, dict) or not isinstance(baseline.get("metrics"), dict):
            raise CheckpointError(f"{source}: 'baseline' must be an object with 'metrics'")
        _metrics(baseline["metrics"], f"{source}: baseline")


def _widths(value: Any, source: str) -> dict[str, int]:
    if not isinstance(value, dict) or not 2 <= len(value) <= MAX_MODALITIES:
        raise CheckpointError(f"{source}: 'widths' must name at least two modalities (at most {MAX_MODALITIES}) with their "
                              f"input widths, found {value!r:.80}")
    for name, width in value.items():
        if not MODALITY_NAME.match(name):
            raise CheckpointError(f"{source}: 'widths' has the modality name {name!r:.80}; expected letters, "
                                  "digits and _ (starting with a letter, at most 64)")
        _integer(width, f"widths[{name!r}]", 1, MAX_WIDTH, source)
    return value


def _bert(model: ModelConfig, widths: dict[str, int], source: str) -> None:
    """A BERT model's card records its BERT's whole shape, and its text width is the BERT's width."""
    if not model.use_bert:
        return
    if not model.bert_shape_known:
        raise CheckpointError(f"{source}: config: use_bert is true but the BERT's shape (bert_hidden_size, "
                              "bert_vocab_size, ...) is not recorded")
    if widths.get("text") != model.bert_hidden_size:
        raise CheckpointError(f"{source}: widths['text'] must be the BERT's hidden size {model.bert_hidden_size}, "
                              f"found {widths.get('text')!r:.80}")


def _prototypes(value: Any, widths: dict[str, int], model: ModelConfig, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not set(value) <= set(widths):
        raise CheckpointError(f"{source}: 'prototypes' must map modalities of 'widths' to prototypes")
    for name, proto in value.items():
        where = f"prototypes[{name!r}]"
        if not isinstance(proto, dict) or set(proto) != {"means", "variances", "weights"}:
            raise CheckpointError(f"{source}: {where} must hold means, variances and weights")
        k = _matrix(proto["means"], f"{where}['means']", model.d_model, source)
        if _matrix(proto["variances"], f"{where}['variances']", model.d_model, source) != k:
            raise CheckpointError(f"{source}: {where}: variances and means have different numbers of rows")
        weights = proto["weights"]
        if not isinstance(weights, list) or len(weights) != k or not all(_finite(w) for w in weights):
            raise CheckpointError(f"{source}: {where}['weights'] must be {k} finite numbers")


def _matrix(value: Any, where: str, columns: int, source: str) -> int:
    """Rows of a finite ``[K][columns]`` list with 1 <= K <= 1024."""
    if not isinstance(value, list) or not 1 <= len(value) <= 1024 or not all(
        isinstance(row, list) and len(row) == columns and all(_finite(v) for v in row) for row in value
    ):
        raise CheckpointError(f"{source}: {where} must be 1 to 1024 rows of {columns} finite numbers")
    return len(value)


def _metrics(value: Any, source: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(
        isinstance(split, dict) and all(v is None or _finite(v) for v in split.values())
        for split in value.values()
    ):
        raise CheckpointError(f"{source}: 'metrics' must map splits to metric names and numbers")


def _object(value: Any, name: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{source}: '{name}' must be an object, found {type(value).__name__}")
    return value


def _integer(value: Any, name: str, low: int, high: int, source: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CheckpointError(f"{source}: {name} must be a whole number in {low:,}..{high:,}, "
                              f"found {value!r:.80}")
    return value


def _text(value: Any, name: str, source: str, limit: int = MAX_TEXT) -> None:
    if not isinstance(value, str) or len(value) > limit:
        raise CheckpointError(f"{source}: '{name}' must be text of at most {limit} characters")


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def parameter_count(model: ModelConfig, widths: dict[str, int], output_dim: int) -> int:
    """The number of values in the state dict of ``DecAlign(model, widths, output_dim)``, from the card.

    Per modality: a temporal projection (none when the width already is d), the unique encoder, a
    cross-modal transformer (per layer: packed q/k/v and output projections, two LayerNorms, a 4d MLP)
    and a distribution encoder; shared: the common encoder and the linear head over 2 * M * d inputs.
    ``tests/model`` checks it against the built model.
    """
    d, p = model.d_model, model.pde_dim
    per_layer = (3 * d * d + 3 * d) + (d * d + d) + 2 * (2 * d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    total = d * d + 2 * len(widths) * d * output_dim + output_dim
    for name, width in widths.items():
        projection = 0 if width == d else width * d * model.kernel_size(name)
        total += projection + d * d + model.num_layers * per_layer + (d * d + d) + (d * p + p)
    return total + bert_parameter_count(model)


def bert_parameter_count(model: ModelConfig) -> int:
    """Values in a ``transformers.BertModel`` with its pooler, of the config's BERT shape (0 without one):
    word, position and type embeddings and their LayerNorm; per layer the q/k/v/output projections, two
    LayerNorms and the two-matrix MLP; the pooler."""
    if not model.use_bert:
        return 0
    h, inner = model.bert_hidden_size, model.bert_intermediate_size
    embeddings = (model.bert_vocab_size + model.bert_max_positions + model.bert_type_vocab_size) * h + 2 * h
    per_layer = 4 * (h * h + h) + 2 * (2 * h) + (inner * h + inner) + (h * inner + h)
    return embeddings + model.bert_num_layers * per_layer + (h * h + h)
