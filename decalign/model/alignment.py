"""DecAlign's alignment losses as plain functions. Each returns a non-negative scalar tensor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .output import Prototypes


def decoupling_loss(unique: torch.Tensor, common: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine similarity between a sample's unique and common sequences.

    ``L_dec = 1/N sum_i cos(vec(u_i), vec(c_i))^2`` over the flattened (T * d) sequences: zero when the
    two parts are orthogonal, one when they are parallel (either sign).
    """
    n = unique.shape[0]
    cos = F.cosine_similarity(unique.reshape(n, -1), common.reshape(n, -1), dim=1, eps=1e-8)
    return cos.pow(2).mean()


def sample_to_prototype_loss(features: torch.Tensor, own: Prototypes, other: Prototypes,
                             pair_plan: torch.Tensor) -> torch.Tensor:
    """Local heterogeneity: posterior-weighted squared distance from samples to another modality's prototypes.

    A sample of modality m with posterior ``r_i`` over m's prototypes is carried by the transport plan to
    a distribution over modality n's prototypes, ``q_i = r_i P_mn / a_m``; the loss is
    ``1/N sum_i sum_l q_il ||x_i - mu^n_l||^2``. The plan supplies the correspondence between the two
    mixtures, whose component indices are otherwise arbitrary.

    Parameters
    ----------
    features : (N, d) pooled unique features of modality m.
    own, other : prototypes of m (with posteriors) and of n.
    pair_plan : (K_m, K_n) marginal of the transport plan over (m, n), treated as a constant.
    """
    conditional = pair_plan / pair_plan.sum(1, keepdim=True).clamp_min(1e-12)  # (K_m, K_n) rows sum to 1
    carried = own.posteriors @ conditional.detach()  # (N, K_n)
    dist_sq = (features.unsqueeze(1) - other.means.unsqueeze(0)).pow(2).sum(-1)  # (N, K_n)
    return (carried * dist_sq).sum(1).mean()


def moments(z: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (p,), covariance (p, p) and per-dimension skewness (p,) of samples ``z`` (N, p).

    Computed from centred values (no ``E[z^2] - mu^2`` cancellation); divided by N so one sample works.
    """
    mean = z.mean(0)
    centred = z - mean
    cov = centred.T @ centred / z.shape[0]
    var = centred.pow(2).mean(0)
    skew = centred.pow(3).mean(0) / (var + eps).pow(1.5)
    return mean, cov, skew


def moment_matching_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Semantic homogeneity: ``||mu_a - mu_b||^2 + ||Sigma_a - Sigma_b||_F^2 + ||skew_a - skew_b||^2``."""
    (m_a, c_a, s_a), (m_b, c_b, s_b) = moments(z_a), moments(z_b)
    return (m_a - m_b).pow(2).sum() + (c_a - c_b).pow(2).sum() + (s_a - s_b).pow(2).sum()


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Squared maximum mean discrepancy with the Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / (2 s^2))``.

    The biased (V-statistic) estimate ``mean K_xx + mean K_yy - 2 mean K_xy`` equals
    ``||mean phi(x) - mean phi(y)||^2`` in the RKHS, hence is non-negative; round-off is clamped at zero.
    """
    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dist_sq = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
        return torch.exp(-dist_sq / (2 * bandwidth**2)).mean()

    return (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)).clamp_min(0.0)
