"""The official objective's Sinkhorn sweeps with a hand-written backward (:func:`official_sweeps`).

The official code differentiates through every one of its ``ot_num_iters`` sweeps. Run as torch
operations under autograd, the 3 x 50 updates of a MOSI-sized plan (8 x 8 x 8) cost 20-31 ms of a training
step (forward and backward), nearly all of it torch's fixed cost per operation and autograd's bookkeeping
on 512 numbers; this module takes 7-13 ms on the same machine in the same runs. Here the
forward keeps each update's softmax and the backward walks the updates in reverse by hand: the same
gradient (to round-off, tested against autograd through the plain loop), written once for any array
module. On the CPU, small plans run on numpy views of the tensors, whose fixed cost per operation is a
fraction of torch's; elsewhere (a GPU, bfloat16, large plans) the same code runs on torch tensors, with no
host read, so a CUDA graph can still capture it. The smallest CPU plans (MOSI's 512 cells) run in the native
kernel ``sinkhorn_sweeps.c`` where it loads (``decalign.model.native``): the same updates, in double
precision, one pass over the cells each, with no fixed cost per operation (1.1-1.9 ms a training step
against numpy's 5.4 ms).

One update of axis ``m`` (``total`` and ``lse`` as below; ``guard`` is the official ``log 1e-8``, or
``-inf`` where the official kernel underflows)::

    total = C' + sum_{n != m} g_n             (C' = -C / reg, each g_n broadcast along its axis)
    lse   = logsumexp over the other axes of total
    g_m   = log nu_m - logaddexp(lse, guard)

Its reverse, for the adjoint ``a`` of the new ``g_m``: ``d log nu_m += a``; with
``w = exp(lse - logaddexp(lse, guard))`` and ``S = softmax of total over the other axes``,
``d total = -(a w) S`` (broadcast along ``m``), which adds to ``d C'`` and, summed over every axis but
``n``, to the adjoint of each ``g_n``; the old ``g_m`` was overwritten unread, so its adjoint restarts at 0.
"""

from __future__ import annotations

import numpy as np
import torch

from . import native

# At most this many plan cells run on numpy: numpy's loops are single-threaded, torch's not, so a large plan
# gains nothing from numpy's smaller fixed cost per operation. Measured (forward and backward, 50 sweeps,
# 2 threads): 512 cells 12 ms against torch's 26, 13,824 cells 33 against 52, 32,768 cells 43 against 45,
# 64,000 cells 85 against 65.
HOST_MAX_CELLS = 1 << 15
# At most this many cells run in the native kernel (one thread, double precision, a scalar exp): forward and
# backward, 50 sweeps, 512 cells 1.1-1.9 ms against numpy's 5.4; 4,096 cells 6.3 against 8.0; 8,000 cells
# 12.4 against 10.5 (numpy's float32 exp is vectorised).
NATIVE_MAX_CELLS = 1 << 12


def official_sweeps(scaled: torch.Tensor, guard: torch.Tensor, sweeps: int,
                    log_nu: list[torch.Tensor]) -> list[torch.Tensor]:
    """The potentials ``g_m = log u_m`` after ``sweeps`` official sweeps from zero, differentiable in
    ``scaled`` (``-C / reg``) and ``log_nu`` (the marginals' logs); ``guard`` is a 0-d tensor."""
    needs_grad = torch.is_grad_enabled() and (scaled.requires_grad or any(a.requires_grad for a in log_nu))
    return list(_OfficialSweeps.apply(_backend(scaled), needs_grad, scaled, guard, sweeps, *log_nu))


def _backend(scaled: torch.Tensor) -> str:
    """"native" (``sinkhorn_sweeps.c``, in float64: the smallest CPU plans), "numpy" (small CPU plans) or
    "torch"."""
    if not (scaled.device.type == "cpu" and scaled.dtype in (torch.float32, torch.float64)
            and scaled.numel() <= HOST_MAX_CELLS):
        return "torch"
    fits_kernel = scaled.numel() <= NATIVE_MAX_CELLS and scaled.dim() <= native.MAX_SWEEP_AXES
    if fits_kernel and native.library() is not None:
        return "native"
    return "numpy"


class _OfficialSweeps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, backend: str, needs_grad: bool, scaled, guard, sweeps: int, *log_nu):
        ctx.backend, ctx.num, ctx.dtype = backend, scaled.dim(), scaled.dtype
        if backend == "torch":
            logs, ctx.tape = forward_updates(torch, scaled, guard, sweeps, list(log_nu), needs_grad)
            return tuple(logs)
        arrays = scaled.detach().numpy(), [a.detach().numpy() for a in log_nu]
        if backend == "native":
            logs, ctx.tape = native.sweeps_forward(arrays[0], float(guard), sweeps, arrays[1], needs_grad)
        else:
            logs, ctx.tape = forward_updates(np, arrays[0], guard.detach().numpy(), sweeps, arrays[1], needs_grad)
        return tuple(_tensor(g, ctx.dtype) for g in logs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        backend, tape = ctx.backend, ctx.tape
        del ctx.tape  # the softmaxes of every update: freed once used, as autograd frees its saved tensors
        if backend == "torch":
            d_scaled, d_nu = reverse_updates(torch, list(grads), tape, ctx.num)
            return (None, None, d_scaled, None, None, *d_nu)
        arrays = [g.numpy() for g in grads]
        d_scaled, d_nu = (native.sweeps_reverse(tape, arrays) if backend == "native"
                          else reverse_updates(np, arrays, tape, ctx.num))
        return (None, None, _tensor(d_scaled, ctx.dtype), None, None, *(_tensor(d, ctx.dtype) for d in d_nu))


def _tensor(array: np.ndarray | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _axis_shape(num: int, m: int) -> tuple[int, ...]:
    return tuple(-1 if i == m else 1 for i in range(num))


def _other_axes(num: int, m: int) -> tuple[int, ...]:
    return tuple(i for i in range(num) if i != m)


def forward_updates(xp, scaled, guard, sweeps: int, log_nu: list, keep: bool) -> tuple[list, list]:
    """(potentials after ``sweeps`` sweeps, tape): the tape holds, per update in order, (softmax of
    ``total`` over the other axes, ``-w``), empty unless ``keep``. ``xp`` is numpy or torch."""
    num = scaled.ndim
    shapes = [_axis_shape(num, m) for m in range(num)]
    logs = [xp.zeros_like(a) for a in log_nu]
    tape = []
    for _ in range(sweeps):
        for m in range(num):
            others = _other_axes(num, m)
            total = scaled
            for n in others:  # one at a time onto the plan, in axis order: the rounding of the plain loop
                total = total + logs[n].reshape(shapes[n])
            top = xp.amax(total, axis=others, keepdims=True) if others else total
            top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))  # all -inf: torch.logsumexp's rule
            shifted = xp.exp(total - top)
            summed = shifted.sum(axis=others, keepdims=True) if others else shifted
            lse = (xp.log(summed) + top).reshape(-1)
            denom = xp.logaddexp(lse, guard)
            logs[m] = log_nu[m] - denom
            if keep:
                tape.append((shifted / summed, -xp.exp(lse - denom)))
    return logs, tape


def reverse_updates(xp, grads: list, tape: list, num: int) -> tuple[object, list]:
    """(d scaled, [d log_nu_m]) from the adjoints ``grads`` of the final potentials; None stands for zero."""
    shapes = [_axis_shape(num, m) for m in range(num)]
    adjoint = list(grads)
    d_nu = [None] * num
    d_scaled = None
    for step in range(len(tape) - 1, -1, -1):
        m = step % num
        softmax, weight = tape[step]
        a = adjoint[m]
        adjoint[m] = None  # the old g_m was overwritten unread
        if a is None:
            continue
        d_nu[m] = a if d_nu[m] is None else d_nu[m] + a
        d_total = softmax * (a * weight).reshape(shapes[m])
        d_scaled = d_total if d_scaled is None else d_scaled + d_total
        collapsed = d_total.sum(axis=m)  # the other axes, in order
        for n in _other_axes(num, m):
            rest = tuple(i - (i > m) for i in _other_axes(num, n) if i != m)
            term = collapsed.sum(axis=rest) if rest else collapsed
            adjoint[n] = term if adjoint[n] is None else adjoint[n] + term
    return d_scaled, d_nu  # None where the gradient is zero, as autograd accepts
