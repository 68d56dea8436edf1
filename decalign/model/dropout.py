"""Dropout with the exact probability and a cheaper random mask than ``F.dropout`` on the CPU.

On the CPU ``torch.bernoulli_`` took a fifth of a training step. Here each element gets one random byte
(eight per 64-bit draw of torch's generator, so ``torch.manual_seed`` and a saved RNG state govern it), and
the elements whose byte sits exactly on the threshold (one in 256) draw a double-precision uniform to
settle it, so an element is dropped with probability ``p`` exactly (to double precision), independently
of the others, as in the official code.
On a GPU the mask is ``torch.rand(...) < p``, as ``F.dropout`` draws it, without a host synchronisation.
"""

from __future__ import annotations

import math

import torch

_LEVELS = 256


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by 1 / (1 - p)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return x.masked_fill(drop_mask(x.shape, p, x.device), 0.0).mul_(1.0 / (1.0 - p))


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of ``shape``: True (drop) with probability p, independently per element.

    Callers zero with ``masked_fill`` (a float times a bool mask costs an extra cast pass) and scale what
    is kept by 1 / (1 - p) where it is cheapest (attention scales its small output, not its weights).
    ``0 < p < 1``.
    """
    count = math.prod(shape)
    if device.type != "cpu":
        return torch.rand(shape, device=device) < p
    padded = -(-count // 8) * 8  # whole 64-bit words
    bits = torch.empty(padded // 8, dtype=torch.int64).random_(-(2**63), None).view(torch.int8)
    # bits: uniform on [-128, 128). Drop when U < p, U = (u + V) / 256 with u = bits + 128 and V uniform
    # on [0, 1): u below the cut drops, u above it keeps, and only u equal to the cut needs V.
    threshold = p * _LEVELS  # exact in double
    cut = int(threshold) - _LEVELS // 2
    drop = bits < cut
    fraction = threshold - int(threshold)
    if fraction > 0:
        tied = _positions(bits == cut)
        drop[tied] = torch.rand(tied.numel(), dtype=torch.float64) < fraction
    return drop[:count].view(shape)


def _positions(flags: torch.Tensor) -> torch.Tensor:
    """Indices of the few True entries of a bool tensor whose length is a multiple of 8: ``nonzero``
    over eight flags per 64-bit word first, eight times less to scan than the flags themselves."""
    words = flags.view(torch.int64).nonzero().squeeze(1)
    candidates = (words.unsqueeze(1) * 8 + torch.arange(8)).flatten()
    return candidates[flags[candidates]]
