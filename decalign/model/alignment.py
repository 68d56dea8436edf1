"""DecAlign's alignment losses as plain functions, each returning a scalar tensor.

Every function says which objective (``ModelConfig.objective``) it computes. ``official`` ones follow the
official taco-group/DecAlign code term by term, reductions included; ``studio`` ones are this project's
scale-free variants. The model (``DecAlign._align``) combines them per modality or pair: means under
the official objective, sums under the studio one. :func:`decoupling_loss` serves both.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .output import Prototypes


def decoupling_loss(unique: torch.Tensor, common: torch.Tensor) -> torch.Tensor:
    """Both objectives: mean squared cosine similarity between a sample's unique and common sequences.

    ``L_dec = 1/N sum_i cos(vec(u_i), vec(c_i))^2`` over the flattened (T * d) sequences: zero when the
    two parts are orthogonal, one when they are parallel (either sign).
    """
    return decoupling_per_sample(unique, common).mean()


def decoupling_per_sample(unique: torch.Tensor, common: torch.Tensor) -> torch.Tensor:
    """(N,) each sample's ``cos(vec(u_i), vec(c_i))^2``: :func:`decoupling_loss` of that sample alone."""
    n = unique.shape[0]
    return _SquaredCosine.apply(unique.reshape(n, -1), common.reshape(n, -1))


class _SquaredCosine(torch.autograd.Function):
    """(N,) ``cos(u_i, c_i)^2`` of the rows of u, c (N, D), each norm clamped at 1e-8 as ``F.cosine_similarity``
    clamps it. ``F.cosine_similarity`` divides both inputs by their norms first and its backward runs about
    twenty passes over them; here a dot product and two norms forward, two passes over each input backward
    (6.8 -> 2.3 ms at MOSI shapes with the backward)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        norm_u = torch.linalg.vector_norm(u, dim=1).clamp_min(1e-8)
        norm_c = torch.linalg.vector_norm(c, dim=1).clamp_min(1e-8)
        cos = torch.linalg.vecdot(u, c) / (norm_u * norm_c)
        ctx.save_for_backward(u, c, norm_u, norm_c, cos)
        return cos.pow(2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        # d cos / du = c / (|u| |c|) - cos u / |u|^2, and symmetrically for c
        u, c, norm_u, norm_c, cos = ctx.saved_tensors
        grad_cos = 2.0 * cos * grad
        across = (grad_cos / (norm_u * norm_c)).unsqueeze(1)
        grad_u = torch.addcmul(c * across, u, (grad_cos * cos / norm_u.pow(2)).unsqueeze(1), value=-1)
        grad_c = torch.addcmul(u * across, c, (grad_cos * cos / norm_c.pow(2)).unsqueeze(1), value=-1)
        return grad_u, grad_c


def sample_to_prototype_loss(features: torch.Tensor, own: Prototypes, other: Prototypes,
                             pair_plan: torch.Tensor) -> torch.Tensor:
    """Objective ``studio``: local heterogeneity carried through the transport plan.

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
    """Objective ``studio``: mean (p,), covariance (p, p) and per-dimension skewness (p,) of ``z`` (N, p).

    Computed from centred values (no ``E[z^2] - mu^2`` cancellation); divided by N so one sample works.
    """
    mean = z.mean(0)
    centred = z - mean
    cov = centred.T @ centred / z.shape[0]
    var = centred.pow(2).mean(0)
    skew = centred.pow(3).mean(0) / (var + eps).pow(1.5)
    return mean, cov, skew


def moment_matching_loss(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Objective ``studio``: ``||mu_a - mu_b||^2 + ||Sigma_a - Sigma_b||_F^2 + ||skew_a - skew_b||^2``."""
    (m_a, c_a, s_a), (m_b, c_b, s_b) = moments(z_a), moments(z_b)
    return (m_a - m_b).pow(2).sum() + (c_a - c_b).pow(2).sum() + (s_a - s_b).pow(2).sum()


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Objective ``studio``: squared MMD with the Gaussian kernel ``k(x, y) = exp(-||x - y||^2 / (2 s^2))``.

    The biased (V-statistic) estimate ``mean K_xx + mean K_yy - 2 mean K_xy`` equals
    ``||mean phi(x) - mean phi(y)||^2`` in the RKHS, hence is non-negative; round-off is clamped at zero.
    """
    def kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        dist_sq = (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)
        return torch.exp(-dist_sq / (2 * bandwidth**2)).mean()

    return (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)).clamp_min(0.0)


def official_local_loss(features: torch.Tensor, own_posteriors: torch.Tensor, other: Prototypes, *,
                        reduction: str = "mean", mahalanobis: bool = False, var_floor: float = 1e-4
                        ) -> torch.Tensor:
    """Objective ``official``: local heterogeneity of modality m towards modality n, by prototype index.

    ``1/N sum_i sum_k r^m_ik c(x_i, mu^n_k)`` with ``c(x, mu) = R_d (x - mu)^2`` (``R_d`` the mean over
    dimensions, or the sum with ``hetero_cost_reduction: sum``; divided by ``max(var^n_k, floor)`` with
    ``local_proto_mahalanobis``): the posterior of m's k-th prototype weights the distance to n's k-th
    prototype. The pairing is by index, as in the official code, so both mixtures need the same K.

    Parameters
    ----------
    features : (..., N, d) pooled unique features of m; own_posteriors : (..., N, K) their posteriors under
    m's mixture; other : n's prototypes, (..., K, d). Leading dimensions broadcast
    (:func:`official_local_loss_matrix` passes every pair at once).
    """
    if own_posteriors.shape[-1] != other.means.shape[-2]:
        raise ValueError(f"the official local loss pairs prototypes by index: both modalities need the same "
                         f"number of prototypes, found {own_posteriors.shape[-1]} and {other.means.shape[-2]}")
    cost = (features.unsqueeze(-2) - other.means.unsqueeze(-3)).pow(2)  # (..., N, K, d)
    if mahalanobis:
        cost = cost / other.variances.clamp_min(var_floor).unsqueeze(-3)
    cost = cost.sum(-1) if reduction == "sum" else cost.mean(-1)
    return (own_posteriors * cost).sum(-1).mean(-1)


def official_local_loss_matrix(features: Sequence[torch.Tensor], prototypes: Sequence[Prototypes],
                               **options) -> torch.Tensor:
    """(M, M): entry (m, n) is ``official_local_loss(features[m], prototypes[m].posteriors, prototypes[n],
    **options)``, every pair in one set of operations (the diagonal is computed too, and unused by the
    objective). ``features``: M tensors (N, d); ``prototypes``: M mixtures with posteriors, all with one K."""
    counts = {p.means.shape[0] for p in prototypes}
    if len(counts) > 1:
        raise ValueError(f"the official local loss pairs prototypes by index: every modality needs the same "
                         f"number of prototypes, found {sorted(counts)}")
    others = Prototypes(*(torch.stack([getattr(p, part) for p in prototypes]).unsqueeze(0)
                          for part in ("means", "variances", "weights")))
    own_posteriors = torch.stack([p.posteriors for p in prototypes]).unsqueeze(1)
    return official_local_loss(torch.stack(list(features)).unsqueeze(1), own_posteriors, others, **options)


def official_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Objective ``official``: mean (..., p), covariance (..., p, p) with ``1 / max(N - 1, 1)``, and skewness
    (..., p) ``E[(z - mu)^3] / v^1.5`` with the biased per-dimension variance ``v = max(E[(z - mu)^2], 1e-6)``,
    of ``z`` (..., N, p)."""
    mean = z.mean(-2)
    centred = z - mean.unsqueeze(-2)
    cov = centred.mT @ centred / max(z.shape[-2] - 1, 1)
    var = centred.pow(2).mean(-2).clamp_min(1e-6)
    return mean, cov, centred.pow(3).mean(-2) / var.pow(1.5)


def official_moment_distance(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """Objective ``official``: ``mse(mu_a, mu_b) + mse(Sigma_a, Sigma_b) + mse(skew_a, skew_b)``, each a mean
    over its elements (:func:`official_moments`)."""
    return _official_moment_mse(official_moments(z_a), official_moments(z_b))


def official_moment_distance_matrix(z: Sequence[torch.Tensor]) -> torch.Tensor:
    """(M, M): entry (a, b) is ``official_moment_distance(z[a], z[b])`` for M tensors (N, p), each set's
    moments computed once and every pair in one set of operations."""
    stats = official_moments(torch.stack(list(z)))
    return _official_moment_mse([s.unsqueeze(1) for s in stats], [s.unsqueeze(0) for s in stats])


def _official_moment_mse(stats_a, stats_b) -> torch.Tensor:
    (m_a, c_a, s_a), (m_b, c_b, s_b) = stats_a, stats_b
    return (m_a - m_b).pow(2).mean(-1) + (c_a - c_b).pow(2).mean((-2, -1)) + (s_a - s_b).pow(2).mean(-1)


def official_mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 1.0) -> torch.Tensor:
    """Objective ``official``: biased MMD^2 with the kernel ``exp(-||x - y||^2 / (2 * bandwidth))``.

    The official kernel divides by twice the bandwidth itself, not its square. ``mean K_xx + mean K_yy -
    2 mean K_xy``, not clamped; squared distances from the norm expansion clamped at 0, as in the official
    code (memory O(N^2), not O(N^2 p)).
    """
    return (_official_kernel_mean(x, x, bandwidth) + _official_kernel_mean(y, y, bandwidth)
            - 2.0 * _official_kernel_mean(x, y, bandwidth))


def official_mmd_matrix(z: Sequence[torch.Tensor], bandwidth: float = 1.0) -> torch.Tensor:
    """(M, M): entry (a, b) is ``official_mmd(z[a], z[b], bandwidth)`` for M tensors (N, p), from the (M, M)
    kernel means of all sets at once (each computed once; the memory of the pairwise calls, M^2 N^2)."""
    stacked = torch.stack(list(z))
    kernel_means = _official_kernel_mean(stacked.unsqueeze(1), stacked.unsqueeze(0), bandwidth)
    own = kernel_means.diagonal()
    return own.unsqueeze(1) + own.unsqueeze(0) - 2.0 * kernel_means


def _official_kernel_mean(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Mean of the official Gaussian kernel between the rows of a (..., N_a, p) and b (..., N_b, p)."""
    dist_sq = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2) - 2.0 * a @ b.mT
    gamma = 1.0 / (2.0 * bandwidth)
    return torch.exp(-gamma * dist_sq.clamp_min(0.0)).mean((-2, -1))
