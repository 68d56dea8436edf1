"""The official EM's steps with a hand-written backward, for ``prototypes.fit_gmm_official``.

The official code differentiates through every step of its EM. Under autograd, the 5 steps for 3 modalities
of 32 samples (K = 7, d = 40) took about 10 ms of a training step, forward and backward, nearly all of it
torch's fixed cost per operation on arrays of a few thousand numbers. Here the forward keeps what each step
computed and the backward walks the steps in reverse by hand, in one code for any array module (as
``sweeps.py`` does): numpy for CPU fits, whose fixed cost per operation is a fraction of torch's; torch
tensors elsewhere (a GPU, large fits), with no host read. Where the native kernels load
(``decalign.model.native``), CPU fits run in ``official_em.c``: the same steps and reverses in float64, a
few passes over the cells a step, one thread per mixture.

One step from (mu, v, w), on centred features ``x`` (N, d), with ``c`` the centre:

* E: ``L_ik = -1/2 sum_d [(x_id - mu_kd)^2 / v_kd + log(2 pi v_kd)] + log max(w_k, 1e-8)``, ``r = softmax_k L``;
* M: ``m_k = sum_i r_ik``, ``n_k = max(m_k, 1e-6)``, ``s_k = m_k / n_k``, ``w'_k = n_k / N``,
  ``raw_k = sum_i r_ik x_i / n_k + c s_k``, ``mu'_k = raw_k - c``,
  ``v'_k = max(sum_i r_ik (x_i - mu'_k)^2 / n_k + raw_k^2 (1 - s_k), floor)``.

Each reverse below differentiates these lines in turn; a clamp passes its gradient where its input is at
least the bound, as torch's ``clamp_min`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import native

# CPU fits run in the native kernel where it loads; else at most this many (sample, prototype, dimension)
# cells a step run on numpy, more on torch. Measured (3 mixtures, K = 7, d = 40, 5 steps, float32 features,
# 2 threads; autograd through the same steps in torch for comparison): forward and backward, N = 32 (26,880
# cells) native 2.2 ms, numpy 6.3, autograd 12.7; N = 512 13.8, 42.5, 58.5; N = 1,024 25.9, 96.4, 130.0 (the
# torch code here without autograd 147). Forward alone without gradients (a trainer's final prototypes),
# N = 5,000: native 33 ms, numpy 297, torch 330.
HOST_MAX_CELLS = 1 << 20


def official_em(x: torch.Tensor, k: int, iterations: int, var_floor: float) -> tuple[torch.Tensor, ...]:
    """(means, variances, weights, posteriors) of the official EM on ``x`` (B, N, d), differentiable in x."""
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    return _OfficialEM.apply(x, k, iterations, var_floor, needs_grad)


def start_indices(n: int, k: int) -> list[int]:
    """The official start: samples ``round(linspace(0, N-1, K))``, or the samples repeated in order when N < K."""
    if n >= k:
        return torch.linspace(0, n - 1, steps=k).round().long().tolist()
    return [i % n for i in range(k)]


def gaussian_log_likelihood(x, means, variances):
    """Per-component log density of diagonal Gaussians, for torch tensors or numpy arrays (both EM variants and
    ``prototypes.posteriors`` use it).

    ``log N(x | mu_k, diag(var_k)) = -1/2 * sum_d [log(2 pi var_kd) + (x_d - mu_kd)^2 / var_kd]``

    Parameters
    ----------
    x : (..., N, d) samples; means, variances : (..., K, d), with the same leading dimensions.

    Returns
    -------
    (..., N, K) log densities.
    """
    xp = np if isinstance(x, np.ndarray) else torch
    diff = x[..., :, None, :] - means[..., None, :, :]  # (..., N, K, d)
    return -0.5 * ((diff * diff / variances[..., None, :, :]).sum(axis=-1)
                   + xp.log(2 * math.pi * variances).sum(axis=-1)[..., None, :])


class _OfficialEM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k: int, iterations: int, var_floor: float, needs_grad: bool):
        ctx.backend = backend = _backend(x, k)
        if backend == "torch":
            with torch.autocast(x.device.type, enabled=False):  # the steps in the features' dtype, as on the host
                outputs, ctx.tape = forward_steps(torch, x.detach(), k, iterations, var_floor, needs_grad)
            return outputs
        if backend == "native":
            outputs, ctx.tape = native.em_forward(x.detach().numpy(), k, iterations, var_floor,
                                                  start_indices(x.shape[1], k), needs_grad)
        else:
            outputs, ctx.tape = forward_steps(np, x.detach().numpy(), k, iterations, var_floor, needs_grad)
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(x.dtype) for a in outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        tape = ctx.tape  # kept on ctx: a graph retained for a second backward reads it again
        if ctx.backend == "torch":
            return reverse_steps(torch, list(grads), tape), None, None, None, None
        arrays = [g.numpy() for g in grads]
        d_x = native.em_reverse(tape, arrays) if ctx.backend == "native" else reverse_steps(np, arrays, tape)
        return torch.from_numpy(np.ascontiguousarray(d_x)).to(grads[0].dtype), None, None, None, None


def _backend(x: torch.Tensor, k: int) -> str:
    """"native" (``official_em.c``, in float64), "numpy" (smaller CPU fits) or "torch" (a GPU, larger fits)."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()):
        return "torch"
    if native.library() is not None:
        return "native"
    return "numpy" if x.shape[0] * x.shape[1] * k * x.shape[2] <= HOST_MAX_CELLS else "torch"


class _Tape:
    """What the backward needs: the centred features, the start, and each step's values."""

    def __init__(self, centred, centre, start, mean_sq, var_floor):
        self.centred, self.centre, self.start, self.mean_sq, self.var_floor = centred, centre, start, mean_sq, var_floor
        self.e_steps: list[dict] = []  # per E-step: its inputs (mu, v, w) and posteriors
        self.m_steps: list[dict] = []  # per M-step: what its reverse reads


def forward_steps(xp, x, k: int, iterations: int, var_floor: float, keep: bool):
    """((means, variances, weights, posteriors), tape or None) for x (B, N, d); ``xp`` is numpy or torch."""
    n = x.shape[-2]
    centre = x.mean(axis=-2, keepdims=True)  # (B, 1, d)
    xc = x - centre
    start = start_indices(n, k)
    means = xc[:, start, :]
    mean_sq = (xc * xc).mean(axis=-2, keepdims=True)
    variances = mean_sq.clip(min=var_floor) + xp.zeros_like(means)
    weights = xp.zeros_like(means[..., 0]) + 1.0 / k
    tape = _Tape(xc, centre, start, mean_sq, var_floor) if keep else None
    for _ in range(iterations):
        resp = _e_step(xp, xc, means, variances, weights, tape)
        means, variances, weights = _m_step(xp, xc, centre, resp, var_floor, tape)
    resp = _e_step(xp, xc, means, variances, weights, tape)
    return (means + centre, variances, weights, resp), tape


def _e_step(xp, xc, means, variances, weights, tape):
    log_joint = gaussian_log_likelihood(xc, means, variances) + xp.log(weights.clip(min=1e-8))[:, None, :]
    shifted = xp.exp(log_joint - xp.amax(log_joint, axis=-1, keepdims=True))
    resp = shifted / shifted.sum(axis=-1, keepdims=True)
    if tape is not None:
        tape.e_steps.append({"means": means, "variances": variances, "weights": weights, "resp": resp})
    return resp


def _m_step(xp, xc, centre, resp, var_floor, tape):
    n = xc.shape[-2]
    mass = resp.sum(axis=-2)  # (B, K)
    counts = mass.clip(min=1e-6)
    share = mass / counts
    weighted = resp.swapaxes(-1, -2) @ xc  # (B, K, d)
    raw = weighted / counts[..., None] + centre * share[..., None]
    means = raw - centre
    diff = xc[:, None, :, :] - means[:, :, None, :]  # (B, K, N, d)
    spread = (resp.swapaxes(-1, -2)[..., None] * (diff * diff)).sum(axis=-2) / counts[..., None]
    before_floor = spread + raw * raw * (1 - share)[..., None]
    if tape is not None:
        tape.m_steps.append({"resp": resp, "mass": mass, "counts": counts, "share": share, "weighted": weighted,
                             "raw": raw, "means": means, "spread": spread, "before_floor": before_floor})
    return means, before_floor.clip(min=var_floor), counts / n


def reverse_steps(xp, grads: list, tape: _Tape):
    """d x (B, N, d) from the gradients of (means, variances, weights, posteriors)."""
    d_means, d_var, d_weights, d_resp = grads
    xc = tape.centred
    n = xc.shape[-2]
    d_centre = d_means.sum(axis=-2, keepdims=True)  # the outputs' means are mu + c
    d_xc, d_mu, d_v, d_w = _e_reverse(xp, xc, tape.e_steps[-1], d_resp)
    d_mu, d_v, d_w = d_mu + d_means, d_v + d_var, d_w + d_weights
    for m_step, e_step in zip(reversed(tape.m_steps), reversed(tape.e_steps[:-1])):
        d_resp, d_xc_m, d_centre_m = _m_reverse(xp, xc, tape.centre, m_step, d_mu, d_v, d_w, tape.var_floor)
        d_xc_e, d_mu, d_v, d_w = _e_reverse(xp, xc, e_step, d_resp)
        d_xc, d_centre = d_xc + d_xc_m + d_xc_e, d_centre + d_centre_m
    # the start: mu = x_c[start], v = max(mean x_c^2, floor) for every prototype, w constant
    d_xc = _add_rows(xp, d_xc, tape.start, d_mu)
    d_mean_sq = xp.where(tape.mean_sq >= tape.var_floor, d_v.sum(axis=-2, keepdims=True), 0.0)
    d_xc = d_xc + d_mean_sq * 2.0 * xc / n
    return d_xc + (d_centre - d_xc.sum(axis=-2, keepdims=True)) / n  # x_c = x - c, c = mean x


def _e_reverse(xp, xc, step: dict, d_resp):
    """(d x_c, d mu, d v, d w) of one E-step from the gradient of its posteriors."""
    resp, means, variances, weights = step["resp"], step["means"], step["variances"], step["weights"]
    d_log_joint = resp * (d_resp - (d_resp * resp).sum(axis=-1, keepdims=True))  # softmax
    scaled = (xc[:, :, None, :] - means[:, None, :, :]) / variances[:, None]  # (x - mu) / v, (B, N, K, d)
    pulled = d_log_joint[..., None] * scaled
    per_prototype = d_log_joint.sum(axis=-2)  # (B, K)
    d_var = 0.5 * (pulled * scaled).sum(axis=-3) - 0.5 * per_prototype[..., None] / variances
    d_weights = xp.where(weights >= 1e-8, per_prototype / weights.clip(min=1e-8), 0.0)
    return -pulled.sum(axis=-2), pulled.sum(axis=-3), d_var, d_weights


def _m_reverse(xp, xc, centre, step: dict, d_means, d_var, d_weights, var_floor):
    """(d r, d x_c, d c) of one M-step from the gradients of its (mu', v', w')."""
    resp, mass, counts, share = step["resp"], step["mass"], step["counts"], step["share"]
    raw, spread, weighted = step["raw"], step["spread"], step["weighted"]
    d_before = xp.where(step["before_floor"] >= var_floor, d_var, 0.0)
    d_raw = d_before * 2.0 * raw * (1 - share)[..., None]
    d_share = -(d_before * raw * raw).sum(axis=-1)
    d_counts = -(d_before * spread).sum(axis=-1) / counts
    d_summed = d_before / counts[..., None]  # of sum_i r_ik (x_i - mu'_k)^2
    diff = xc[:, None, :, :] - step["means"][:, :, None, :]  # (B, K, N, d)
    d_resp = (d_summed[:, :, None, :] * diff * diff).sum(axis=-1).swapaxes(-1, -2)
    pulled = (2.0 * resp.swapaxes(-1, -2))[..., None] * diff * d_summed[:, :, None, :]
    d_xc = pulled.sum(axis=1)
    d_new_means = d_means - pulled.sum(axis=2)
    d_raw = d_raw + d_new_means  # mu' = raw - c
    d_centre = -d_new_means.sum(axis=1, keepdims=True)
    d_weighted = d_raw / counts[..., None]  # raw = weighted / n_k + c s_k
    d_counts = d_counts - (d_raw * weighted).sum(axis=-1) / (counts * counts)
    d_centre = d_centre + (d_raw * share[..., None]).sum(axis=1, keepdims=True)
    d_share = d_share + (d_raw * centre).sum(axis=-1)
    d_resp = d_resp + xc @ d_weighted.swapaxes(-1, -2)
    d_xc = d_xc + resp @ d_weighted
    d_counts = d_counts - d_share * mass / (counts * counts) + d_weights / xc.shape[-2]
    d_mass = d_share / counts + xp.where(mass >= 1e-6, d_counts, 0.0)
    return d_resp + d_mass[:, None, :], d_xc, d_centre


def _add_rows(xp, target, rows: list[int], values):
    """``target[:, rows] += values``, rows repeated or not."""
    if xp is np:
        target = target.copy()
        np.add.at(target, (slice(None), rows), values)
        return target
    return target.index_add(1, torch.tensor(rows, device=target.device), values)
