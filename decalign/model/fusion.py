"""Cross-modal transformer encoders, laid out parameter for parameter like the official DecAlign's."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dropout import dropout, keep_mask

EXPLICIT_CPU_BACKWARD = True  # see MultiheadAttention.forward


class MultiheadAttention(nn.Module):
    """Multi-head attention with a packed input projection (``in_proj_weight``: q, k, v rows)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None, need_weights: bool = False):
        """query (B, Tq, d), key/value (B, Tk, d), mask (B or 1, Tq, Tk) bool, True = may attend.

        Returns the output (B, Tq, d) and, if asked, the head-averaged weights (B, Tq, Tk).
        """
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._split(F.linear(query, w_q, b_q))  # (B, h, Tq, hd)
        k = self._split(F.linear(key, w_k, b_k))  # (B, h, Tk, hd)
        v = self._split(F.linear(value, w_v, b_v))
        mask = None if mask is None else mask.unsqueeze(1)  # broadcast over heads
        drop = self.dropout if self.training else 0.0
        # Explicit softmax attention when weights are wanted, with dropout (SDPA would fall back to slow
        # Bernoulli draws), or for backward on the CPU, where SDPA's flash backward is twice as slow for
        # head widths as small as DecAlign's (4).
        explicit = need_weights or drop > 0 or (EXPLICIT_CPU_BACKWARD and query.device.type == "cpu"
                                                and torch.is_grad_enabled())
        if explicit:
            # Scale q and the output, both (B, h, T, hd), rather than the (B, h, Tq, Tk) weights.
            scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            keep, rescale = keep_mask(weights, drop) if drop > 0 else (None, 1.0)
            out = (weights if keep is None else weights * keep) @ v
            out = out * rescale if keep is not None else out
            averaged = weights.mean(1) if need_weights else None
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            averaged = None
        b, h, t, hd = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * hd)), averaged

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)


class EncoderLayer(nn.Module):
    """Post-norm layer: attention, dropout, residual, LayerNorm; then ReLU MLP (d -> 4d -> d), same again."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, attn_dropout)
        self.attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout

    def forward(self, x, key, value, mask=None, need_weights=False):
        attended, weights = self.self_attn(x, key, value, mask, need_weights)
        x = self.attn_layer_norm(x + dropout(attended, self.res_dropout, self.training))
        hidden = dropout(F.relu(self.fc1(x)), self.relu_dropout, self.training)
        x = self.final_layer_norm(x + dropout(self.fc2(hidden), self.res_dropout, self.training))
        return x, weights


class CrossModalEncoder(nn.Module):
    """A stack of ``EncoderLayer`` in which one modality's sequence queries a key/value sequence.

    Query and key/value inputs are scaled by sqrt(d) (then embedding dropout), as in the official model;
    sinusoidal positions are added after scaling only when ``positional_encoding`` is on.
    """

    def __init__(self, dim: int, heads: int, layers: int, *, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, embed_dropout: float, positional_encoding: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers)
        )
        self.scale, self.embed_dropout, self.positional = math.sqrt(dim), embed_dropout, positional_encoding

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None, mask=None,
                need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """query (B, Tq, d); memory (B, Tk, d) or None for self-attention. Returns (B, Tq, d), weights."""
        x = self._embed(query)
        kv = x if memory is None else self._embed(memory)
        weights = []
        for layer in self.layers:
            # As in the official encoder, keys and values stay the embedded input in every layer.
            x, w = layer(x, kv, kv, mask, need_weights)
            if need_weights:
                weights.append(w)
        return x, weights

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale * x
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype)
        return dropout(x, self.embed_dropout, self.training)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) table ``PE[t, 2i] = sin(t / 10000^(2i/d))``, ``PE[t, 2i+1] = cos(...)``."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table.to(dtype)
