"""Softmax attention for many small heads, laid out for the CPU, with its backward written out.

DecAlign's heads are 4 wide (d 40, 10 heads). A batched matmul whose result has only 4 columns runs
four to five times slower on the CPU than the same product transposed (4 rows), so queries, keys,
values and the output are kept head-major, ``(N, head_dim, T)``, and the backward is written by hand
so that every product that yields a head-width result yields it as rows. The work runs in blocks of
at most ``BLOCK_BYTES`` of scores, so scores, weights and their gradients stay in cache from one
product to the next. Attention dropout masks the weights after the softmax, as the official code
does; the 1 / (1 - p) factor is applied to the small output instead of the weights.

Where it applies (float32 on an x86-64 CPU with AVX2), the fused kernel of ``decalign.model.native``
does the same work one head at a time with every intermediate in cache: an eval layer at MOSI shapes on 2
threads took 2.7-3.1 ms against torch's 6.2-14.5 ms (20 alternating rounds, stop 33), and 2.1 ms against 2.7 ms
at AVX-512's 16 lanes against AVX2's 8 (12 alternating rounds). Both paths draw the dropout decisions block by block from
the same generator stream, so they drop the same elements and agree to rounding. Without dropout and without the
weights (eval and inference), the kernel puts queries rather than keys in its vector lanes (``sha_forward_eval``):
an eval layer at MOSI shapes took 1.08 ms against the key-lane path's 1.68 ms on 2 threads, 2.20 ms against 3.36 ms
on one (10 alternating processes each, stop 45), with its sums in another order, so an eval forward agrees with the
autograd forward (which keeps the weights) to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import native
from .dropout import keep_flags_in_spans, keep_mask

BLOCK_BYTES = 1 << 20  # measured best on the CPU among 128 KiB .. 8 MiB (less traffic beyond the L2 cache)


def attention(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, mask: torch.Tensor | None = None,
              drop: tuple[float, ...] = (0.0,), training: bool = False,
              need_weights: bool = False, mask_by_key: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(Q K^T + mask) V over ``N`` heads in ``G`` equal groups, each with its own dropout rate.

    Parameters
    ----------
    qt : (*H, hd, Tq) queries, head-major and already scaled by 1 / sqrt(hd), for the N heads indexed by the
        leading dimensions H (one to three; N is their product, in row-major order). Any strides: the fused
        kernel reads the projections' own layout, torch's path copies.
    kt, vt : (*H, hd, Tk) keys and values.
    mask : (S or 1, Tq, Tk) bool, True where a query may attend, for S samples of N / S consecutive
        heads each.
    drop : attention dropout probability of each of the G groups of N / G heads (one per modality).
    training : apply the dropout.
    need_weights : also return the (N, Tq, Tk) attention weights (before dropout).
    mask_by_key : optionally ``mask.transpose(1, 2).contiguous()``, the layout the fused kernel's eval path
        reads, from a caller that hands the same mask to several calls (``fusion.encode``, to every layer):
        transposed once, not once a call.

    Returns
    -------
    (*H, hd, Tq) the attended values, head-major (token-major in memory from the fused kernel), and the
    weights or None.
    """
    rates = tuple(float(p) if training else 0.0 for p in drop)
    heads = qt.shape[:-2]
    if native.applies(qt, kt, vt):
        differentiable = native.records_autograd(qt, kt, vt)
        if not (differentiable or need_weights or any(rates)):  # eval: the kernel itself, no autograd node
            return native.forward(qt, kt, vt, mask, None, None, False, mask_by_key=mask_by_key)
        out, weights = _FusedAttention.apply(qt, kt, vt, mask, rates, need_weights or differentiable, mask_by_key)
    else:
        flat = (t.reshape(-1, *t.shape[-2:]) for t in (qt, kt, vt))
        out, weights = _SmallHeadAttention.apply(*flat, mask, rates, need_weights)
        out = out.view(*heads, *out.shape[-2:])
    return out, weights if need_weights else None


class _FusedAttention(torch.autograd.Function):
    """The native kernel; the weights (before dropout) are kept when asked for or for the backward."""

    @staticmethod
    def forward(ctx, qt, kt, vt, mask, rates, keep_weights, mask_by_key):
        keep, head_scale = _dropout_flags(qt, kt, mask, rates)
        out, weights = native.forward(qt, kt, vt, mask, keep, head_scale, keep_weights, mask_by_key=mask_by_key)
        ctx.save_for_backward(qt, kt, vt, weights, keep, head_scale)
        return _outputs(ctx, out, weights)

    @staticmethod
    def backward(ctx, d_out, _):
        if d_out is None:
            return _NO_GRADIENTS + (None,)
        return (*native.backward(*ctx.saved_tensors, d_out), None, None, None, None)


_NO_GRADIENTS = (None,) * 6  # _SmallHeadAttention's six inputs (_FusedAttention takes a seventh)


def _outputs(ctx, out: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both Functions' outputs: the weights (or an empty tensor) are not differentiable, and a missing
    output gradient stays None."""
    ctx.set_materialize_grads(False)
    weights = weights if weights is not None else out.new_empty(0)
    ctx.mark_non_differentiable(weights)
    return out, weights


def _dropout_flags(qt, kt, mask, rates) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(N, Tq, Tk) keep decisions and (N,) 1 / (1 - p) per head (0 without dropout), drawn block by block
    as ``_SmallHeadAttention`` draws its masks; (None, None) without dropout."""
    if not any(rate > 0 for rate in rates):
        return None, None
    heads, queries, keys = math.prod(qt.shape[:-2]), qt.shape[-1], kt.shape[-1]
    keep = torch.empty((heads, queries, keys), dtype=torch.bool)
    head_scale = np.zeros(heads, dtype=np.float32)  # numpy: in torch each block's slice assignment is 3 operators
    per_head, spans = queries * keys, []
    for block in _blocks(qt, kt, mask, rates):
        if block.rate > 0:
            spans.append((block.heads.start * per_head, block.heads.stop * per_head, block.rate))
            head_scale[block.heads] = 1.0 / (1.0 - block.rate)
    keep_flags_in_spans(spans, keep.numpy().reshape(-1))
    return keep, torch.from_numpy(head_scale)


class _SmallHeadAttention(torch.autograd.Function):
    # Products run in the inputs' dtype and the softmax in at least float32 (bfloat16 autocast on a GPU);
    # the ``.to`` calls are no-ops in float32.
    @staticmethod
    def forward(ctx, qt, kt, vt, mask, rates, need_weights):
        out = vt.new_empty(vt.shape[:2] + qt.shape[2:])
        saved = []
        for block in _blocks(qt, kt, mask, rates):
            scores = torch.bmm(qt[block.heads].transpose(1, 2), kt[block.heads])  # (n, Tq, Tk)
            if block.mask is not None:
                scores.view(block.mask.shape[0], -1, *scores.shape[1:]).masked_fill_(
                    ~block.mask.unsqueeze(1), float("-inf"))
            weights = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
            keep = keep_mask(weights.shape, block.rate, weights.device, weights.dtype) if block.rate > 0 else None
            dropped = (weights if keep is None else weights * keep).to(vt.dtype)
            torch.bmm(vt[block.heads], dropped.transpose(1, 2), out=out[block.heads])
            if keep is not None:
                out[block.heads].mul_(1.0 / (1.0 - block.rate))
            saved.append((weights,) if keep is None else (weights, keep, dropped))
        ctx.save_for_backward(qt, kt, vt, *[t for block in saved for t in block])
        ctx.mask, ctx.rates, ctx.has_keep = mask, rates, [len(block) > 1 for block in saved]
        return _outputs(ctx, out, torch.cat([block[0] for block in saved]) if need_weights else None)

    @staticmethod
    def backward(ctx, d_out, _):
        if d_out is None:
            return _NO_GRADIENTS
        qt, kt, vt, *saved = ctx.saved_tensors
        saved = iter(saved)
        d_out = d_out.contiguous()
        d_qt, d_kt, d_vt = (torch.empty_like(t, memory_format=torch.contiguous_format) for t in (qt, kt, vt))
        for block, has_keep in zip(_blocks(qt, kt, ctx.mask, ctx.rates), ctx.has_keep):
            weights = next(saved)
            keep, dropped = (next(saved), next(saved)) if has_keep else (None, weights)
            grad = d_out[block.heads] if keep is None else d_out[block.heads] * (1.0 / (1.0 - block.rate))
            torch.bmm(grad, dropped.to(grad.dtype), out=d_vt[block.heads])  # (n, hd, Tk)
            d_weights = torch.bmm(grad.transpose(1, 2), vt[block.heads]).to(weights.dtype)  # (n, Tq, Tk)
            if keep is not None:
                d_weights.mul_(keep)
            d_scores = torch._softmax_backward_data(d_weights, weights, -1, weights.dtype).to(kt.dtype)
            torch.bmm(kt[block.heads], d_scores.transpose(1, 2), out=d_qt[block.heads])  # (n, hd, Tq)
            torch.bmm(qt[block.heads], d_scores.to(qt.dtype), out=d_kt[block.heads])  # (n, hd, Tk)
        return d_qt, d_kt, d_vt, None, None, None


class _Block:
    """A slice of whole samples' heads within one dropout group."""

    def __init__(self, heads: slice, mask: torch.Tensor | None, rate: float):
        self.heads, self.mask, self.rate = heads, mask, rate


def _blocks(qt: torch.Tensor, kt: torch.Tensor, mask: torch.Tensor | None, rates: tuple[float, ...]):
    total, queries = math.prod(qt.shape[:-2]), qt.shape[-1]
    per_head = queries * kt.shape[-1] * qt.element_size()
    samples = mask.shape[0] if mask is not None and mask.shape[0] > 1 else None
    step = max(1, BLOCK_BYTES // per_head) if qt.device.type == "cpu" else total  # heads per block; a GPU
    # is better served by few large kernels than by cache-sized blocks
    if samples is not None:  # whole samples, so that a block takes a slice of the mask
        heads = total // samples
        step = max(1, step // heads) * heads
    group = total // len(rates)
    for g, rate in enumerate(rates):
        for start in range(g * group, (g + 1) * group, step):
            stop = min(start + step, (g + 1) * group)
            block_mask = mask if samples is None else mask[start // heads: stop // heads]
            yield _Block(slice(start, stop), block_mask, rate)

