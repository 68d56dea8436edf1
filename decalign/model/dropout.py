"""Dropout with the exact probability and a cheaper random mask than ``F.dropout`` on the CPU.

On the CPU ``torch.bernoulli_`` took a fifth of a training step. Here each element gets one random byte
(eight per 64-bit word of numpy's PCG64, which one draw of torch's generator seeds for each mask, so
``torch.manual_seed`` and a saved RNG state govern it), and the elements whose byte sits exactly on the
threshold (one in 256) draw a double-precision uniform from the same stream to settle it, so an element
is dropped with probability ``p`` exactly (to double precision), independently of the others, as in the
official code. On a GPU (and under ``torch.compile``) the mask comes from ``torch.rand``, as ``F.dropout``
draws it there, without a host synchronisation. Where the native kernels load (``decalign.model.native``),
a float32 mask and the attention's decisions are made by ``dropout_mask.c`` from the same PCG64 stream in
one pass, the same bits as the numpy path below (which runs everywhere else).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import native

_LEVELS = 256


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero each element of ``x`` with probability ``p`` and scale the rest by 1 / (1 - p)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    return x * keep_mask(x.shape, p, x.device, x.dtype, scale=1.0 / (1.0 - p))


def relu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``dropout(torch.relu(x), p, training)``. Where the native kernels load (float32 on the CPU), the mask
    is drawn and applied to the ReLU in one pass and the backward reads only the output (an element passes
    exactly where its input was positive and it was kept): the same decisions and numbers as the two steps
    (for a non-finite gradient at a dropped element, 0 where the two steps give 0 x inf = NaN), with two
    passes fewer forward, one backward, and one saved tensor instead of two."""
    if not (training and 0.0 < p < 1.0 and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling() and native.library() is not None):
        return dropout(torch.relu(x), p, training)
    return _ReluDropout.apply(x, p)


class _ReluDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        ctx.scale = 1.0 / (1.0 - p)
        out = torch.empty(x.shape, dtype=torch.float32)
        native.dropout_decisions(_seed(), x.numel(), *_cut(p), ctx.scale, mask=out,
                                 applied_to=x.contiguous(), relu=True)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return native.relu_dropout_backward(out, grad, ctx.scale), None


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
    if dtype == torch.float32 and native.library() is not None:
        mask = torch.empty(shape, dtype=torch.float32)
        native.dropout_decisions(_seed(), count, *_cut(p), scale, mask=mask)
        return mask
    stream, as_bytes, cut, fraction = _draw_bytes(count, p)
    # clamp(b - cut + 1, 0, 1) is 1 from the cut up, exactly: one vectorised pass in torch
    keep = torch.from_numpy(as_bytes).to(torch.float32).sub_(cut - 1).clamp_(0, 1)
    if fraction > 0:
        # numpy finds the few tied bytes: torch's nonzero took 3-6x longer (0.36 ms against 0.11 ms for the
        # 260,000 bytes of an attention mask at MOSI shapes)
        tied = np.flatnonzero(as_bytes == cut)
        keep.numpy()[tied] = stream.random(tied.size) >= fraction  # V: doubles, as torch.rand's
    keep = keep[:count].view(shape).to(dtype)
    return keep.mul_(scale) if scale != 1.0 else keep


def keep_flags(count: int, p: float, out: np.ndarray | None = None) -> np.ndarray:
    """The decisions ``keep_mask((count,), p)`` makes from the same generator state, as a bool array
    (True: kept; written into ``out`` when given), for the fused attention kernel. That kernel runs only where
    the native kernels load (``decalign.model.native``), so this needs them too. ``0 < p < 1``."""
    flags = np.empty(count, dtype=bool) if out is None else out
    keep_flags_in_spans([(0, count, p)], flags)
    return flags


def keep_flags_in_spans(spans: list[tuple[int, int, float]], out: np.ndarray) -> None:
    """``keep_flags(stop - start, p, out[start:stop])`` for each ``(start, stop, p)`` of ``spans`` in turn (the
    same generator draws), in one native call that splits the spans among torch's threads."""
    seeds = torch.empty(len(spans), dtype=torch.int64).random_().tolist()  # as len(spans) calls of _seed()
    native.dropout_flag_blocks(seeds, [(start, stop - start, *_cut(p)) for start, stop, p in spans], out)


def _seed() -> int:
    # One 64-bit draw of torch's generator seeds numpy's PCG64, which makes the bytes: torch's CPU generator
    # took 9.6 ns a 64-bit word (19 ms of a training step's masks at MOSI shapes), PCG64 4-5 ns. The native
    # kernels seed PCG64 from it themselves, as numpy does.
    return int(torch.empty((), dtype=torch.int64).random_())


def _cut(p: float) -> tuple[int, float]:
    """The byte at which elements start to be kept and the fraction of p * 256 above it (see _draw_bytes)."""
    threshold = p * _LEVELS  # exact in double
    return int(threshold) - _LEVELS // 2, threshold - int(threshold)


def _draw_bytes(count: int, p: float) -> tuple[np.random.Generator, np.ndarray, int, float]:
    """One random byte per element (at least ``count``, whole 64-bit words), the cut and the fraction.

    Byte b, uniform on [-128, 128): drop when U < p with U = (b + 128 + V) / 256 and V uniform on [0, 1):
    bytes below the cut drop, bytes above it keep, a byte equal to the cut drops when V < the fraction of
    p * 256 above the cut (V is drawn from the returned stream, in the order of the tied bytes).
    """
    stream = np.random.Generator(np.random.PCG64(_seed()))
    as_bytes = stream.bit_generator.random_raw(-(-count // 8)).view(np.int8)
    return stream, as_bytes, *_cut(p)
