"""Diagonal-covariance Gaussian-mixture prototypes fitted by EM, differentiable in the features.

Two EM variants, one per objective (``ModelConfig.objective``; :func:`fit_prototypes` picks):
:func:`fit_gmm_official` starts and updates exactly as the official code, :func:`fit_gmm` (studio) starts
from farthest points and adds its variance floor.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .official_em import gaussian_log_likelihood, official_em
from .output import Prototypes


def posteriors(x: torch.Tensor, prototypes: Prototypes) -> torch.Tensor:
    """(..., N, K) responsibilities ``p(k | x)`` of each sample under a fitted mixture."""
    log_joint = gaussian_log_likelihood(x, prototypes.means, prototypes.variances)
    log_joint = log_joint + torch.log(prototypes.weights.clamp_min(1e-12)).unsqueeze(-2)
    return torch.softmax(log_joint, dim=-1)


def fit_prototypes(x: torch.Tensor, config: ModelConfig, *, num_components: int | None = None,
                   iterations: int | None = None) -> Prototypes:
    """The EM of the model's objective (official or studio) with its K, variance floor and step count;
    ``num_components`` and ``iterations`` override the config's."""
    fit = fit_gmm_official if config.objective == "official" else fit_gmm
    return fit(x, config.num_prototypes if num_components is None else num_components,
               iterations=config.gmm_em_iters if iterations is None else iterations, var_floor=config.gmm_var_floor)


def fit_gmm_official(x: torch.Tensor, num_components: int, *, iterations: int = ModelConfig.gmm_em_iters,
                     var_floor: float = ModelConfig.gmm_var_floor) -> Prototypes:
    """Objective ``official``: the official DecAlign EM, step for step; leading dimensions fit independent mixtures.

    Start: means at the samples ``round(linspace(0, N-1, K))`` (samples repeated in order when N < K),
    every variance the batch's biased variance ``max(var(x), floor)``, weights 1/K. Then ``iterations`` times

    * E-step: ``r_ik = softmax_k(log max(w_k, 1e-8) + log N(x_i | mu_k, var_k))``;
    * M-step: ``n_k = max(sum_i r_ik, 1e-6)``, ``w_k = n_k / N``, ``mu_k = sum_i r_ik x_i / n_k``,
      ``var_k = max(sum_i r_ik x_i^2 / n_k - mu_k^2, floor)`` (a clamp, not an added floor);

    and the posteriors are recomputed with the final parameters. The variance is evaluated in the
    stable form ``sum_i r_ik (x_i - mu_k)^2 / n_k + mu_k^2 (1 - s_k)``, ``s_k = sum_i r_ik / n_k``, which
    equals the official ``E[x^2] - mu^2`` exactly (``s_k = 1`` unless the clamp on ``n_k`` is active) without
    its cancellation; the features are centred first (``x = c + x_c``, means shifted back exactly, also
    when ``s_k < 1``). Gradients flow through every step, the start included, as in the official code, by
    the hand-written backward of ``decalign.model.official_em``.

    Parameters
    ----------
    x : (..., N, d) pooled features.
    num_components : K.
    iterations : EM steps.
    var_floor : the official ``gmm_var_floor``.

    Returns
    -------
    Prototypes with means and variances (..., K, d), weights (..., K) and posteriors (..., N, K).
    """
    if x.shape[-2] == 0:
        raise ValueError("cannot fit prototypes to an empty batch")
    batch = x.reshape(-1, *x.shape[-2:])  # leading dimensions as one
    means, variances, weights, resp = official_em(batch, num_components, iterations, var_floor)
    lead = x.shape[:-2]
    fitted = Prototypes(means.reshape(*lead, *means.shape[1:]), variances.reshape(*lead, *variances.shape[1:]),
                        weights.reshape(*lead, num_components))
    fitted.posteriors = resp.reshape(*lead, *resp.shape[1:])
    return fitted


def fit_gmm(x: torch.Tensor, num_components: int, *, iterations: int = ModelConfig.gmm_em_iters,
            var_floor: float = ModelConfig.gmm_var_floor, init_means: torch.Tensor | None = None) -> Prototypes:
    """Objective ``studio``: fit a diagonal Gaussian mixture to ``x`` with EM; leading dimensions fit
    independent mixtures.

    E-step: ``r_ik = softmax_k(log w_k + log N(x_i | mu_k, var_k))``;
    M-step: ``n_k = sum_i r_ik``, ``w_k = n_k / N``, ``mu_k = sum_i r_ik x_i / n_k``,
    ``var_k = sum_i r_ik (x_i - mu_k)^2 / n_k + floor``.

    Variances are computed from centred differences, never as ``E[x^2] - mu^2``, so they cannot cancel
    to negative values. Gradients flow back to ``x`` through every step. Works for N < K: the surplus
    components start on repeated samples and keep the floor variance. Stacking modalities as a leading
    dimension (all with the same N and d) fits all their mixtures in one set of kernels.

    Parameters
    ----------
    x : (..., N, d) pooled features.
    num_components : K.
    iterations : EM steps (default: the config's ``gmm_em_iters``).
    var_floor : added to every variance (default: the config's ``gmm_var_floor``; callers with a model pass
        its own).
    init_means : optional (..., K, d) starting means (e.g. the previous batch's prototypes); by default a
        deterministic farthest-point choice among the samples.

    Returns
    -------
    Prototypes with means and variances (..., K, d), weights (..., K) and posteriors (..., N, K).
    """
    if x.shape[-2] == 0:
        raise ValueError("cannot fit prototypes to an empty batch")
    # EM is translation-equivariant: fit the centred features and shift the means back. Sums of raw
    # features (e.g. 1e4 + noise in float32) would lose the noise in round-off before centring.
    centre = x.mean(-2, keepdim=True)  # (..., 1, d)
    x = x - centre
    means = _farthest_point_init(x.detach(), num_components) if init_means is None else init_means - centre
    spread = x.pow(2).mean(-2, keepdim=True) + var_floor  # (..., 1, d)
    variances = spread.expand(*means.shape)
    weights = x.new_full(means.shape[:-1], 1.0 / num_components)
    for _ in range(iterations):
        resp = posteriors(x, Prototypes(means, variances, weights))  # (..., N, K)
        counts = resp.sum(-2) + 1e-8  # (..., K)
        means = resp.transpose(-1, -2) @ x / counts.unsqueeze(-1)
        centred_sq = (x.unsqueeze(-2) - means.unsqueeze(-3)).pow(2)  # (..., N, K, d)
        variances = (resp.unsqueeze(-1) * centred_sq).sum(-3) / counts.unsqueeze(-1) + var_floor
        weights = counts / counts.sum(-1, keepdim=True)
    fitted = Prototypes(means + centre, variances, weights)
    fitted.posteriors = posteriors(x, Prototypes(means, variances, weights))
    return fitted


def _farthest_point_init(x: torch.Tensor, k: int) -> torch.Tensor:
    """Deterministic k-means++-style seeding: the sample nearest the mean, then farthest points.

    Works on (..., N, d); indices stay on the device (no ``int()``), so seeding causes no host sync.
    """
    n = x.shape[-2]
    flat = x.reshape(-1, n, x.shape[-1])  # (B, N, d)
    rows = torch.arange(flat.shape[0], device=x.device)
    first = torch.argmin((flat - flat.mean(1, keepdim=True)).pow(2).sum(-1), dim=1)  # (B,)
    chosen = [first]
    nearest = (flat - flat[rows, first].unsqueeze(1)).pow(2).sum(-1)  # (B, N)
    for _ in range(1, min(k, n)):
        nxt = torch.argmax(nearest, dim=1)
        chosen.append(nxt)
        nearest = torch.minimum(nearest, (flat - flat[rows, nxt].unsqueeze(1)).pow(2).sum(-1))
    chosen += [chosen[i % n] for i in range(len(chosen), k)]  # fewer samples than prototypes: reuse
    index = torch.stack(chosen, dim=1)  # (B, K)
    return flat[rows.unsqueeze(1), index].reshape(*x.shape[:-2], k, x.shape[-1]).clone()
