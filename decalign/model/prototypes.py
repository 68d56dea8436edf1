"""Diagonal-covariance Gaussian-mixture prototypes fitted by EM, differentiable in the features."""

from __future__ import annotations

import math

import torch

from .output import Prototypes


def gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """Per-component log density of diagonal Gaussians.

    ``log N(x | mu_k, diag(var_k)) = -1/2 * sum_d [log(2 pi var_kd) + (x_d - mu_kd)^2 / var_kd]``

    Parameters
    ----------
    x : (N, d) samples; means, variances : (K, d).

    Returns
    -------
    (N, K) log densities.
    """
    diff_sq = (x.unsqueeze(1) - means.unsqueeze(0)).pow(2)  # (N, K, d)
    return -0.5 * ((diff_sq / variances.unsqueeze(0)).sum(-1) + torch.log(2 * math.pi * variances).sum(-1))


def posteriors(x: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
    """(N, K) responsibilities ``p(k | x)`` of each sample under a fitted mixture."""
    log_joint = gaussian_log_likelihood(x, prototypes.means, prototypes.variances)
    log_joint = log_joint + torch.log(prototypes.weights.clamp_min(1e-12)).unsqueeze(0)
    return torch.softmax(log_joint, dim=1)


def fit_gmm(x: torch.Tensor, num_components: int, *, iterations: int = 5, var_floor: float = 1e-4,
            init_means: torch.Tensor | None = None) -> Prototypes:
    """Fit a diagonal Gaussian mixture to ``x`` with EM.

    E-step: ``r_ik = softmax_k(log w_k + log N(x_i | mu_k, var_k))``;
    M-step: ``n_k = sum_i r_ik``, ``w_k = n_k / N``, ``mu_k = sum_i r_ik x_i / n_k``,
    ``var_k = sum_i r_ik (x_i - mu_k)^2 / n_k + floor``.

    Variances are computed from centred differences, never as ``E[x^2] - mu^2``, so they cannot cancel
    to negative values. Gradients flow back to ``x`` through every step. Works for N < K: the surplus
    components start on repeated samples and keep the floor variance.

    Parameters
    ----------
    x : (N, d) pooled features.
    num_components : K.
    iterations : EM steps.
    var_floor : added to every variance.
    init_means : optional (K, d) starting means (e.g. the previous batch's prototypes); by default a
        deterministic farthest-point choice among the samples.

    Returns
    -------
    Prototypes with means, variances, weights and the final posteriors of ``x``.
    """
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot fit prototypes to an empty batch")
    # EM is translation-equivariant: fit the centred features and shift the means back. Sums of raw
    # features (e.g. 1e4 + noise in float32) would lose the noise in round-off before centring.
    centre = x.mean(0, keepdim=True)  # (1, d)
    x = x - centre
    if init_means is None:
        means = _farthest_point_init(x.detach(), num_components)
    else:
        means = init_means - centre
    spread = x.pow(2).mean(0) + var_floor  # (d,)
    variances = spread.unsqueeze(0).expand(num_components, d)
    weights = x.new_full((num_components,), 1.0 / num_components)
    for _ in range(iterations):
        resp = posteriors(x, Prototypes(means, variances, weights))  # (N, K)
        counts = resp.sum(0) + 1e-8  # (K,)
        means = resp.T @ x / counts.unsqueeze(1)
        centred_sq = (x.unsqueeze(1) - means.unsqueeze(0)).pow(2)  # (N, K, d)
        variances = (resp.unsqueeze(2) * centred_sq).sum(0) / counts.unsqueeze(1) + var_floor
        weights = counts / counts.sum()
    fitted = Prototypes(means + centre, variances, weights)
    fitted.posteriors = posteriors(x, Prototypes(means, variances, weights))
    return fitted


def _farthest_point_init(x: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic k-means++-style seeding: the sample nearest the mean, then farthest points.

    Indices stay on the device (no ``int()``), so seeding causes no host synchronisation.
    """
    n = x.shape[0]
    first = torch.argmin((x - x.mean(0)).pow(2).sum(1))
    chosen = [first]
    nearest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, min(k, n)):
        nxt = torch.argmax(nearest)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (x - x[nxt]).pow(2).sum(1))
    chosen += [chosen[i % n] for i in range(len(chosen), k)]  # fewer samples than prototypes: reuse
    return x[torch.stack(chosen)].clone()
