"""Bring models trained with the official taco-group/DecAlign code into this project.

The official model names its parts per modality letter (``proj_l``, ``encoder_uni_a``, ``trans_v``,
``pde_l``) and has one shared ``encoder_com`` and a head ``out_layer``. Ours keeps the same sub-module
layout inside dicts keyed by modality name, so importing is a renaming with shape checks. A ``use_bert``
model also holds its fine-tuned BERT under ``text_model.model.*`` (a ``transformers.BertModel`` inside the
official ``BertTextEncoder``); its shape is inferred from those tensors, so nothing is downloaded.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from .checkpoint import ModelCard, file_sha256, save_model
from .config import OFFICIAL_MODALITIES, DecAlignConfig
from .model.text_encoder import BERT_PREFIX, bert_fields, infer_bert_shape

_PREFIXES = {"proj": "projections", "encoder_uni": "unique_encoders", "trans": "transformers",
             "pde": "distribution_encoders"}
_KEY = re.compile(r"^(proj|encoder_uni|trans|pde)_([lav])\.(.+)$")
_BERT_KEY = re.compile(r"^text_model\.(?:model\.)?(.+)$")  # the BertModel inside BertTextEncoder
# Buffers that older transformers versions saved with a BertModel; they are rebuilt, not weights.
_BERT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class OfficialImportError(ValueError):
    """An official state_dict or config that cannot be imported; the message says what and where."""


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` saved by the official code with ``torch.load(weights_only=True)`` and nothing else."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise OfficialImportError(f"{path}: file not found") from exc
    except Exception as exc:  # torch raises several types for foreign or unsafe content
        raise OfficialImportError(f"{path}: not a state_dict loadable with weights_only=True ({exc})") from exc
    for wrapper in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialImportError(f"{path}: expected a dict of tensors (a state_dict)")
    return _strip_wrappers(state)


def _strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop prefixes that wrappers add to every key (``module.`` from DataParallel, ``Model.`` from MMSA's
    AMIO), as long as the first component is not one of the official model's own parts."""
    while state:
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) != 1 or not all("." in k for k in state):
            break
        head = heads.pop()
        if _KEY.match(head + ".x") or head in ("encoder_com", "out_layer", "text_model"):
            break
        state = {k.split(".", 1)[1]: v for k, v in state.items()}
    return state


def convert_state_dict(official: dict[str, torch.Tensor], widths: dict[str, int], d_model: int,
                       source: str = "state_dict") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename official keys to ours. Returns the new state and the official keys that were not used."""
    converted, unused = {}, []
    for key, tensor in official.items():
        new_key = _rename(key)
        if new_key is None:
            unused.append(key)
            continue
        match = _KEY.match(key)
        if match and match.group(1) == "proj" and widths[OFFICIAL_MODALITIES[match.group(2)]] == d_model:
            if tensor.dim() != 3 or tensor.shape[1] != d_model:  # (d, D_m, k) records the trained width
                modality = OFFICIAL_MODALITIES[match.group(2)]
                raise OfficialImportError(f"{source}: {key} has shape {tuple(tensor.shape)}: the weights were "
                                          f"trained on {modality} width {tensor.shape[1]}, --feature-dims "
                                          f"gives {d_model}")
            unused.append(key)  # the official forward skips the projection when D == d
            continue
        converted[new_key] = tensor
    return converted, unused


def _rename(key: str) -> str | None:
    bert = _BERT_KEY.match(key)
    if bert:
        return None if bert.group(1) in _BERT_BUFFERS else BERT_PREFIX + bert.group(1)
    if key.startswith("encoder_com."):
        return "common_encoder." + key.removeprefix("encoder_com.")
    if key.startswith("out_layer."):
        return "head." + key.removeprefix("out_layer.")
    match = _KEY.match(key)
    if not match:
        return None
    part, letter, rest = match.groups()
    return f"{_PREFIXES[part]}.{OFFICIAL_MODALITIES[letter]}.{rest}"


def import_official(state_dict_path: str | Path, config_path: str | Path, feature_dims: list[int],
                    out_dir: str | Path) -> ModelCard:
    """Convert an official DecAlign state_dict + config into a run directory of this project.

    Parameters
    ----------
    state_dict_path : ``.pth`` from the official code (``torch.save(model.state_dict())``).
    config_path : the official config JSON it was trained with (e.g. ``dec_mosi_config.json``).
    feature_dims : input widths of text, audio and vision, e.g. ``[768, 5, 20]`` for MOSI; with a BERT
        (``use_bert``), the text width is the BERT's hidden size.
    out_dir : run directory to write (``card.json``, ``best.safetensors``, ``last.safetensors``).
    """
    if len(feature_dims) != 3 or any(int(w) < 1 for w in feature_dims):
        raise OfficialImportError(f"--feature-dims: expected three positive widths (text,audio,vision), "
                                  f"found {feature_dims}")
    config = DecAlignConfig.from_json(config_path)
    official = load_official_state_dict(state_dict_path)
    widths = dict(zip(OFFICIAL_MODALITIES.values(), (int(w) for w in feature_dims)))
    head = official.get("out_layer.weight")
    if head is None:
        raise OfficialImportError(f"{state_dict_path}: no out_layer.weight: not an official DecAlign state_dict")
    config = _fit_config(config, official, head, Path(state_dict_path))
    state, unused = convert_state_dict(official, widths, config.model.d_model, str(state_dict_path))
    config = _fit_bert(config, state, widths, str(state_dict_path))
    card = ModelCard(config=config, widths=widths, task="regression" if head.shape[0] == 1 else "classification",
                     output_dim=int(head.shape[0]), num_classes=None if head.shape[0] == 1 else int(head.shape[0]),
                     source="imported-official",
                     extra={"official_state_dict": Path(state_dict_path).name,
                            "official_state_dict_sha256": file_sha256(state_dict_path),
                            "official_config": Path(config_path).name, "unused_official_keys": unused})
    model = card.build_model()
    _check_shapes(model, state, str(state_dict_path))
    model.load_state_dict(state)
    if unused:
        warnings.warn(f"{state_dict_path}: keys not used by the forward pass were ignored: "
                      f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}", stacklevel=2)
    save_model(out_dir, model, card, tag="last", write_card=False)
    save_model(out_dir, model, card, tag="best")
    return card


def _fit_config(config: DecAlignConfig, official, head: torch.Tensor, path: Path) -> DecAlignConfig:
    """Check the config against the weights, and set what only the weights know (layers, task loss)."""
    d = config.model.d_model
    if head.shape[1] % d or head.shape[1] // d != 6:
        raise OfficialImportError(f"{path}: out_layer.weight has {head.shape[1]} inputs; the config's width "
                                  f"d={d} implies 6*d={6 * d}")
    layers = {int(m.group(1)) for k in official if (m := re.match(r"trans_l\.layers\.(\d+)\.", k))}
    if layers and len(layers) != config.model.num_layers:
        raise OfficialImportError(f"{path}: the weights have {len(layers)} transformer layers, the config's "
                                  f"nlevels is {config.model.num_layers}")
    train = config.train
    if head.shape[0] > 1 and train.task_loss != "cross_entropy":
        train = replace(train, task_loss="cross_entropy")
    return replace(config, train=train)


def _fit_bert(config: DecAlignConfig, state: dict[str, torch.Tensor], widths: dict[str, int],
              source: str) -> DecAlignConfig:
    """Record the BERT's shape, inferred from its tensors, in the config. The weights decide use_bert:
    the official code builds and saves a BERT exactly when the config's use_bert is true."""
    has_bert = any(k.startswith(BERT_PREFIX) for k in state)
    if has_bert != config.model.use_bert:
        found = "hold a BERT (text_model.*)" if has_bert else "hold no BERT (text_model.*)"
        warnings.warn(f"{source}: the config sets use_bert {str(config.model.use_bert).lower()} but the weights "
                      f"{found}; imported as the weights say", stacklevel=3)
    if not has_bert:
        return replace(config, model=replace(config.model, use_bert=False))
    try:
        shape = infer_bert_shape(state, BERT_PREFIX, source)
    except ValueError as exc:
        raise OfficialImportError(str(exc).replace(BERT_PREFIX, "text_model.model.")) from None
    if widths["text"] != shape["hidden_size"]:
        raise OfficialImportError(f"{source}: the BERT's hidden size is {shape['hidden_size']}, --feature-dims "
                                  f"gives text width {widths['text']}; the text width of a BERT model is the "
                                  "BERT's hidden size")
    return replace(config, model=replace(config.model, use_bert=True, **bert_fields(shape)))


def _check_shapes(model, state: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise OfficialImportError(f"{source}: missing official weights for {', '.join(missing[:6])}")
    for key, tensor in state.items():
        if key not in expected:
            raise OfficialImportError(f"{source}: unexpected weight {key}")
        if tensor.shape != expected[key].shape:
            raise OfficialImportError(f"{source}: {key} has shape {tuple(tensor.shape)}, expected "
                                      f"{tuple(expected[key].shape)} from the config and --feature-dims")

