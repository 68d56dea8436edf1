"""Dropout with the exact probability and a cheaper random mask than ``F.dropout`` on the CPU.

On the CPU ``torch.bernoulli_`` took a fifth of a training step. Here each element gets one random byte
(eight per 64-bit draw of torch's generator, so ``torch.manual_seed`` and a saved RNG state govern it), and
the elements whose byte sits exactly on the threshold (one in 256) draw a double-precision uniform to
settle it, so an element is dropped with probability ``p`` exactly (to double precision), independently
of the others, as in the official code. On a GPU (and under ``torch.compile``) the mask comes from
``torch.rand``, as ``F.dropout`` draws it there, without a host synchronisation.
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
    return x * keep_mask(x.shape, p, x.device, x.dtype, scale=1.0 / (1.0 - p))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device,
              dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """A float tensor of ``shape`` holding 0 (dropped, probability p) or ``scale`` (kept), independently
    per element. ``0 < p < 1``.

    A float mask, not a bool one: on the CPU, comparisons to bool, ``masked_fill`` and multiplying by a
    bool tensor are unvectorised and cost several times a float multiply, forwards and backwards.
    """
    if device.type != "cpu" or torch.compiler.is_compiling():  # inductor draws these inside its kernels
        return (torch.rand(shape, device=device) >= p).to(dtype) * scale
    count = math.prod(shape)
    words = torch.empty(-(-count // 8), dtype=torch.int64).random_(-(2**63), None)
    # Byte b, uniform on [-128, 128): drop when U < p with U = (b + 128 + V) / 256 and V uniform on
    # [0, 1): bytes below the cut drop, bytes above it keep, a byte equal to the cut drops when V < the
    # fraction of p * 256 above the cut. clamp(b - cut + 1, 0, 1) is 1 from the cut up, exactly.
    threshold = p * _LEVELS  # exact in double
    cut = int(threshold) - _LEVELS // 2
    keep = words.view(torch.int8).to(torch.float32).sub_(cut - 1).clamp_(0, 1)
    fraction = threshold - int(threshold)
    if fraction > 0:
        tied = _byte_positions(words, cut)
        keep[tied] = (torch.rand(tied.numel(), dtype=torch.float64) >= fraction).to(torch.float32)
    keep = keep[:count].view(shape).to(dtype)
    return keep.mul_(scale) if scale != 1.0 else keep


_ONES = 0x0101010101010101
_HIGHS = 0x8080808080808080 - (1 << 64)  # as a signed 64-bit integer


def _byte_positions(words: torch.Tensor, value: int) -> torch.Tensor:
    """Indices (into ``words.view(torch.int8)``) of the bytes equal to ``value``, which are few.

    Words holding a zero byte after XOR with ``value`` in every byte are found eight bytes at a time with
    the classic test ``(v - 0x01..01) & ~v & 0x80..80 != 0`` (exact about whether a word has one); only
    those words' bytes are then compared one by one.
    """
    pattern = (value & 0xFF) * _ONES
    v = words ^ (pattern - (1 << 64) if pattern >= 1 << 63 else pattern)
    flags = (v - _ONES).bitwise_and_(v.bitwise_not_()).bitwise_and_(_HIGHS)
    hits = flags.nonzero().squeeze(1)
    candidates = (hits.unsqueeze(1) * 8 + torch.arange(8)).flatten()
    return candidates[words.view(torch.int8)[candidates] == value]
