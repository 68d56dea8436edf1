"""The official BERT text encoder: ``transformers.BertModel`` over MMSA's ``text_bert`` tokens.

Built from the shape recorded in the config (inferred from a checkpoint's tensors, or read from a local
Hugging Face folder when training), so nothing is ever downloaded. ``transformers`` is imported here
only, when a model has a BERT. As the official ``BertTextEncoder``: the output is the last hidden state
(N, T, H); tokens are ``[input_ids, attention_mask, segment_ids]`` with the mask row inferred per batch;
already-encoded float features (N, T, H) pass through unchanged; ``use_finetune`` false freezes the BERT.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, ModelConfig
from ..data.tokens import check_token_ranges, is_token_input, token_rows

BERT_PREFIX = "text_encoder.bert."


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local folders only, never the hub
    import transformers

    transformers.logging.set_verbosity_error()  # its "weights not initialised" chatter is not for users
    transformers.utils.logging.disable_progress_bar()
    return transformers


class BertTextEncoder(nn.Module):
    """A ``BertModel`` (with its pooler, as the official checkpoints have it) of ``config``'s BERT shape."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.bert_shape_known:
            raise ConfigError("use_bert: the BERT's shape is unknown; import an official checkpoint or train "
                              "with --set pretrained=/path/to/a/local/bert folder")
        transformers = _transformers()
        self.shape = config.bert_shape()
        self.bert = transformers.BertModel(transformers.BertConfig(**self.shape))
        self.use_finetune = config.use_finetune
        if not self.use_finetune:
            self.bert.requires_grad_(False)

    def check_tokens(self, tokens: torch.Tensor, where: str = "text tokens") -> None:
        check_token_ranges(tokens, self.shape["vocab_size"], self.shape["type_vocab_size"],
                           self.shape["max_position_embeddings"], where)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(N, T, 3) integer tokens -> (N, T, H) last hidden state; float (N, T, H) features pass through."""
        if not is_token_input(text):
            return text
        ids, mask, segments = token_rows(text.long())
        # Official: no gradient through a frozen BERT in training; in eval the caller decides (explanations
        # take gradients with respect to the BERT's output, which does not change any value).
        frozen = self.training and not self.use_finetune
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.bert(input_ids=ids, token_type_ids=segments, attention_mask=mask).last_hidden_state


def load_pretrained_bert(folder: str) -> tuple[dict[str, int | float | str], dict[str, torch.Tensor]]:
    """The shape and weights of a local Hugging Face BERT folder (``save_pretrained`` output).

    Raises ConfigError with one line saying what to provide when the folder is not a usable BERT.
    """
    hint = "expected a local Hugging Face BERT folder (config.json and model.safetensors or pytorch_model.bin)"
    path = Path(folder) if folder else None
    if path is None or not path.is_dir():
        raise ConfigError(f"pretrained {folder!r}: not a local folder; {hint}, given with "
                          "--set pretrained=/path/to/bert-base-uncased (nothing is downloaded)")
    if not (path / "config.json").is_file():
        raise ConfigError(f"pretrained {folder}: no config.json; {hint}")
    transformers = _transformers()
    try:
        model = transformers.BertModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"pretrained {folder}: not a loadable BERT ({first}); {hint}") from None
    c = model.config
    if c.model_type != "bert":
        raise ConfigError(f"pretrained {folder}: model_type {c.model_type!r}; {hint}")
    shape = {"vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
             "num_attention_heads": c.num_attention_heads, "intermediate_size": c.intermediate_size,
             "max_position_embeddings": c.max_position_embeddings, "type_vocab_size": c.type_vocab_size,
             "layer_norm_eps": c.layer_norm_eps, "hidden_act": c.hidden_act}
    return shape, model.state_dict()


def bert_fields(shape: dict[str, int | float | str]) -> dict[str, int | float | str]:
    """``ModelConfig`` field values of a BERT shape (``BertConfig`` names)."""
    names = {"vocab_size": "bert_vocab_size", "hidden_size": "bert_hidden_size",
             "num_hidden_layers": "bert_num_layers", "num_attention_heads": "bert_num_heads",
             "intermediate_size": "bert_intermediate_size", "max_position_embeddings": "bert_max_positions",
             "type_vocab_size": "bert_type_vocab_size", "layer_norm_eps": "bert_layer_norm_eps",
             "hidden_act": "bert_hidden_act"}
    return {names[key]: value for key, value in shape.items()}


def infer_bert_shape(state: dict[str, torch.Tensor], prefix: str, source: str) -> dict[str, int]:
    """A BERT's shape from its tensors (keys ``prefix + 'embeddings.word_embeddings.weight'``, ...).

    Heads are not recorded in the tensors: as for every released BERT, one head per 64 channels.
    Raises ValueError naming the tensor when the tensors do not describe one consistent BERT.
    """
    def tensor(name: str) -> torch.Tensor:
        value = state.get(prefix + name)
        if value is None or value.dim() != 2:
            raise ValueError(f"{source}: {prefix}{name} is missing or not a matrix: not a complete BERT text "
                             "encoder")
        return value

    words = tensor("embeddings.word_embeddings.weight")
    hidden = words.shape[1]
    layers = {int(k[len(prefix):].split(".")[2]) for k in state if k.startswith(prefix + "encoder.layer.")}
    if not layers or layers != set(range(len(layers))):
        raise ValueError(f"{source}: the BERT text encoder's layers {prefix}encoder.layer.* are numbered "
                         f"{sorted(layers)[:8]}: expected layers 0..L-1")
    if hidden % 64:
        raise ValueError(f"{source}: the BERT's width {hidden} is not a multiple of 64, so its number of "
                         "attention heads (width / 64) cannot be inferred")
    shape = {"vocab_size": words.shape[0], "hidden_size": hidden, "num_hidden_layers": len(layers),
             "num_attention_heads": hidden // 64,
             "intermediate_size": tensor("encoder.layer.0.intermediate.dense.weight").shape[0],
             "max_position_embeddings": tensor("embeddings.position_embeddings.weight").shape[0],
             "type_vocab_size": tensor("embeddings.token_type_embeddings.weight").shape[0]}
    return {key: int(value) for key, value in shape.items()}
