"""Cross-modal attention of one sample: who each modality's steps looked at, layer by layer.

Each modality's transformer uses its own steps as queries and the other modalities' steps, concatenated,
as keys (``DecAlignOutput.attention_keys`` says which key columns belong to which modality). Weights are
averaged over heads; each query row sums to 1.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..data.dataset import Split
from ..model import DecAlign
from .counterfactual import sample_inputs


def key_labels(keys: list[tuple[str, int]]) -> list[str]:
    """``["<source>:0", ..., "<source>:T-1", ...]`` for the key axis described by ``attention_keys``."""
    return [f"{source}:{t}" for source, length in keys for t in range(length)]


def cross_modal_attention(model: DecAlign, split: Split, row: int) -> dict[str, list[pd.DataFrame]]:
    """modality -> one (T_q, T_k) DataFrame per layer; index "<m>:t", columns "<source>:t"."""
    device = next(model.parameters()).device
    inputs, lengths = sample_inputs(split, row, device)
    model.eval()
    with torch.inference_mode():
        out = model(inputs, lengths or None, need_attention=True)
    result = {}
    for m, layers in out.attention.items():
        columns = key_labels(out.attention_keys[m])
        result[m] = [pd.DataFrame(w[0].float().cpu().numpy(), columns=columns,
                                  index=[f"{m}:{t}" for t in range(w.shape[1])]) for w in layers]
    return result
