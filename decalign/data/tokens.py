"""MMSA's BERT token field ``text_bert``: token ids, attention mask and segment ids per sample.

MMSA stores ``text_bert`` as ``(N, 3, T)`` integers, rows ``[input_ids, attention_mask, segment_ids]``;
some older loaders wrote ``[input_ids, segment_ids, attention_mask]``. Like the official
``BertTextEncoder``, the mask row is inferred instead of assumed: row 1 is the mask unless row 2 sums to
more (segment ids of single sentences are all zero, a mask is mostly ones). A model reads the tokens with
time on axis 1, ``(N, T, 3)``, like every other modality (:func:`bert_view`).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .dataset import DataError, MultimodalDataset, Split

TOKENS_FIELD = "text_bert"
TEXT = "text"  # the modality a BERT encodes, as in the official model


def token_rows(tokens):
    """``(ids, mask, segments)`` of ``(..., T, 3)`` tokens (numpy or torch), the mask row inferred over the
    whole array as the official encoder does over a batch."""
    ids, row_1, row_2 = tokens[..., 0], tokens[..., 1], tokens[..., 2]
    if row_2.sum() == 0 or row_1.sum() >= row_2.sum():
        return ids, row_1, row_2
    return ids, row_2, row_1


def check_token_array(value: np.ndarray, where: str) -> np.ndarray:
    """A file's ``text_bert`` as int64 ``(N, 3, T)``; DataError naming ``where`` otherwise."""
    if value.ndim != 3 or value.shape[1] != 3 or value.shape[2] < 1:
        raise DataError(f"{where}: expected MMSA BERT tokens of shape (N, 3, T) [input_ids, attention_mask, "
                        f"segment_ids], found shape {value.shape}")
    if not (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
        raise DataError(f"{where}: expected integer token ids, found dtype {value.dtype}")
    value = value.astype(np.int64)
    if value.size and value.min() < 0:
        raise DataError(f"{where}: token ids, masks and segment ids must be non-negative, found {value.min()}")
    return value


def check_token_ranges(tokens, vocab_size: int, type_vocab_size: int, max_positions: int, where: str) -> None:
    """ValueError (DataError) when ``(N, T, 3)`` tokens do not fit a BERT: ids past its vocabulary, segment
    ids past its type vocabulary, a mask that is not 0/1, or more steps than its positions."""
    ids, mask, segments = token_rows(tokens)
    if tokens.shape[-2] > max_positions:
        raise DataError(f"{where}: {tokens.shape[-2]} token positions, the BERT has {max_positions}")
    if ids.numel() if hasattr(ids, "numel") else ids.size:
        checks = ((ids, vocab_size, "token id", "vocabulary size"),
                  (segments, type_vocab_size, "segment id", "type vocabulary size"))
        for values, limit, what, name in checks:
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= limit:
                bad = low if low < 0 else high
                raise DataError(f"{where}: {what} {bad} is outside the BERT's {name} {limit} (0..{limit - 1})")
        if int(mask.min()) < 0 or int(mask.max()) > 1:
            raise DataError(f"{where}: the attention mask row holds values other than 0 and 1")


def bert_view(dataset: MultimodalDataset) -> MultimodalDataset:
    """``dataset`` as a BERT model reads it: the text modality replaced by the ``text_bert`` tokens,
    ``(N, T, 3)`` int64, with the valid lengths from the attention mask."""
    splits = {}
    for name, split in dataset.splits.items():
        if split.text_bert is None:
            raise DataError(f"{dataset.report.source}: split {name!r} has no field {TOKENS_FIELD!r}: the model "
                            f"has a BERT text encoder and reads MMSA's {TOKENS_FIELD} tokens (N, 3, T)")
        splits[name] = _token_split(split)
    return dataset.derived(splits=splits)


def _token_split(split: Split) -> Split:
    tokens = np.ascontiguousarray(split.text_bert.transpose(0, 2, 1))  # (N, T, 3)
    _, mask, _ = token_rows(tokens)
    lengths = {**split.lengths, TEXT: np.maximum(mask.sum(1), 1).astype(np.int64)}
    features = {m: tokens if m == TEXT else x for m, x in split.features.items()}
    features.setdefault(TEXT, tokens)  # a file may hold text only as tokens
    return replace(split, features=features, lengths=lengths)


def bert_inputs(dataset: MultimodalDataset, model) -> MultimodalDataset:
    """:func:`bert_view` with every split's tokens checked against the ``ModelConfig``'s BERT."""
    view = bert_view(dataset)
    for name, split in view.splits.items():
        check_token_ranges(split.features[TEXT], model.bert_vocab_size, model.bert_type_vocab_size,
                           model.bert_max_positions, f"{dataset.report.source}: split {name!r}: {TOKENS_FIELD}")
    return view


def token_positions(tokens: np.ndarray):
    """One sample's (T, 3) tokens as a table of its valid positions: position, token id, segment id.
    Masked (padding) positions are left out; ids stay ids (no vocabulary ships with a model)."""
    import pandas as pd

    ids, mask, segments = token_rows(np.asarray(tokens))
    keep = np.flatnonzero(mask)
    return pd.DataFrame({"position": keep, "token id": ids[keep], "segment": segments[keep]})


def is_token_input(x) -> bool:
    """True for ``(N, T, 3)`` integer tokens (numpy or torch), the form :func:`bert_view` gives."""
    dtype = str(x.dtype)
    return x.ndim == 3 and x.shape[-1] == 3 and ("int" in dtype)
