"""Gaussian costs between prototypes and multi-marginal entropic optimal transport (log domain).

Two objectives (``ModelConfig.objective``), one plan builder (:func:`transport_plan`):

* ``official``: the official cost (:func:`official_gaussian_cost`, means over feature dimensions), an
  absolute entropic weight ``lambda_ot``, exactly ``ot_num_iters`` sweeps (:func:`official_sinkhorn`),
  gradients through every sweep and through the marginals, and the loss
  ``<P, C> + lambda_ot * sum P (log max(P, 1e-8) - 1)``;
* ``studio``: the Bures cost summed over dimensions (:func:`gaussian_cost`), ``reg = lambda_ot * mean(C)``,
  sweeps until the marginals meet ``ot_tol`` (:func:`multimarginal_sinkhorn`), the envelope-theorem
  gradient, and the loss ``<P, C>``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from .output import Prototypes, TransportResult
from .sweeps import official_sweeps


def gaussian_cost(means_a: torch.Tensor, vars_a: torch.Tensor, means_b: torch.Tensor,
                  vars_b: torch.Tensor) -> torch.Tensor:
    """Objective ``studio``: squared 2-Wasserstein (Bures) distance between diagonal Gaussians.

    ``W2^2(N(m1, S1), N(m2, S2)) = ||m1 - m2||^2 + ||sqrt(s1) - sqrt(s2)||^2`` for diagonal S = diag(s).
    Written as a sum of squares, so it is never negative and is exactly zero between identical Gaussians.

    Parameters
    ----------
    means_a, vars_a : (K_a, d); means_b, vars_b : (K_b, d).

    Returns
    -------
    (K_a, K_b) costs.
    """
    mean_term = (means_a.unsqueeze(1) - means_b.unsqueeze(0)).pow(2).sum(-1)
    std_term = (vars_a.sqrt().unsqueeze(1) - vars_b.sqrt().unsqueeze(0)).pow(2).sum(-1)
    return mean_term + std_term


def official_gaussian_cost(means_a: torch.Tensor, vars_a: torch.Tensor, means_b: torch.Tensor,
                           vars_b: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Objective ``official``: the official Gaussian cost between diagonal Gaussians.

    ``C_ij = R_d (mu_i - mu_j)^2 + R_d (v_i + v_j - 2 sqrt(v_i v_j + 1e-8))`` with ``R_d`` the mean over the
    d feature dimensions (``hetero_cost_reduction: mean``, the official default) or the sum. The covariance
    term is computed as ``(sqrt v_i - sqrt v_j)^2 - 2e-8 / (sqrt(v_i v_j + 1e-8) + sqrt(v_i v_j))``: the same
    value (and gradient) without the cancellation of the official form. Because of the 1e-8 it is
    slightly negative between identical Gaussians, as in the official code.

    Parameters
    ----------
    means_a, vars_a : (K_a, d); means_b, vars_b : (K_b, d); reduction : "mean" or "sum".

    Returns
    -------
    (K_a, K_b) costs.
    """
    reduce = torch.mean if reduction == "mean" else torch.sum
    mean_term = reduce((means_a.unsqueeze(1) - means_b.unsqueeze(0)).pow(2), dim=-1)
    std_a, std_b = vars_a.sqrt().unsqueeze(1), vars_b.sqrt().unsqueeze(0)
    product = std_a * std_b  # sqrt(v_i v_j)
    guard = 2e-8 / (torch.sqrt(vars_a.unsqueeze(1) * vars_b.unsqueeze(0) + 1e-8) + product)
    return mean_term + reduce((std_a - std_b).pow(2) - guard, dim=-1)


def joint_cost(pair_costs: dict[tuple[int, int], torch.Tensor], num_modalities: int) -> torch.Tensor:
    """``C[i_1, ..., i_M] = sum_{m < n} c_mn[i_m, i_n]`` built by broadcasting the pairwise costs."""
    total = None
    for (m, n), cost in pair_costs.items():
        shape = [1] * num_modalities
        shape[m], shape[n] = cost.shape
        term = cost.reshape(shape)
        total = term if total is None else total + term
    return total


@dataclass
class SinkhornResult:
    plan: torch.Tensor  # (K_1, ..., K_M)
    potentials: list[torch.Tensor]  # f_m, (K_m,)
    iterations: int
    marginal_error: float | torch.Tensor  # max over modalities of the L1 gap between plan marginal and target
    converged: bool | torch.Tensor


def multimarginal_sinkhorn(cost: torch.Tensor, marginals: list[torch.Tensor], reg: float, *,
                           max_iter: int = 50, tol: float = 1e-6, check_every: int = 1) -> SinkhornResult:
    """Objective ``studio``: entropic multi-marginal OT by Sinkhorn iterations on log-domain potentials.

    Solves ``min_P <P, C> - reg * H(P)`` subject to ``P`` having marginals ``a_1, ..., a_M``. The plan is
    ``P = exp((f_1 (+) ... (+) f_M - C) / reg)`` and each sweep sets, for every m,
    ``f_m <- f_m + reg * (log a_m - log marg_m(P))``, computed with logsumexp, so no kernel ``exp(-C/reg)``
    is ever formed and nothing under- or overflows whatever the ratio of cost to ``reg``. With M = 2 this
    is the classical Sinkhorn-Knopp algorithm (Cuturi 2013) in log form.

    Parameters
    ----------
    cost : (K_1, ..., K_M) joint cost.
    marginals : M probability vectors, (K_m,) each.
    reg : entropic regularisation, > 0.
    max_iter : cap on full sweeps.
    tol : stop once every marginal's L1 gap is at most ``tol``.
    check_every : test convergence every this many sweeps; 0 runs ``max_iter`` sweeps with no test, so a
        GPU never waits for the host (the error and the converged flag then stay 0-d device tensors).

    Returns
    -------
    SinkhornResult with the plan, the potentials and how the solver converged.
    """
    num = cost.dim()
    if len(marginals) != num:
        raise ValueError(f"cost has {num} dimensions but {len(marginals)} marginals were given")
    log_a = [torch.log(a.clamp_min(1e-30)) for a in marginals]
    potentials = [torch.zeros_like(a) for a in marginals]
    scaled = -cost / reg
    error, done, sweeps = float("inf"), False, 0
    for sweeps in range(1, max_iter + 1):
        for m in range(num):
            potentials[m] = potentials[m] + reg * (log_a[m] - _log_marginal(scaled, potentials, reg, m))
        if check_every and (sweeps % check_every == 0 or sweeps == max_iter):
            error = float(_marginal_error(scaled, potentials, reg, marginals))
            if error <= tol:
                done = True
                break
    if not check_every:  # no host read: report as device tensors
        error = _marginal_error(scaled, potentials, reg, marginals)
        done = error <= tol
    plan = torch.exp(_log_plan(scaled, potentials, reg))
    return SinkhornResult(plan, potentials, sweeps, error, done)


def _log_plan(scaled: torch.Tensor, potentials: list[torch.Tensor], reg: float) -> torch.Tensor:
    num = scaled.dim()
    out = scaled
    for m, f in enumerate(potentials):
        shape = [1] * num
        shape[m] = -1
        out = out + (f / reg).reshape(shape)
    return out


def _log_marginal(scaled, potentials, reg, m: int) -> torch.Tensor:
    log_plan = _log_plan(scaled, potentials, reg)
    others = [i for i in range(scaled.dim()) if i != m]
    return torch.logsumexp(log_plan, dim=others) if others else log_plan


def _marginal_error(scaled, potentials, reg, marginals) -> torch.Tensor:
    return _plan_marginal_error(torch.exp(_log_plan(scaled, potentials, reg)), marginals)


def _plan_marginal_error(plan: torch.Tensor, marginals) -> torch.Tensor:
    gaps = []
    for m, a in enumerate(marginals):
        others = [i for i in range(plan.dim()) if i != m]
        gaps.append((plan.sum(dim=others) - a).abs().sum())
    return torch.stack(gaps).max()


def official_sinkhorn(cost: torch.Tensor, marginals: list[torch.Tensor], reg: float,
                      sweeps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Objective ``official``: the official multi-marginal Sinkhorn, in the log domain; differentiable.

    The official code scales ``u, v, w`` (one per modality) of the kernel ``G = max(exp(-C / reg), 1e-30)``:
    each of ``sweeps`` sweeps sets, in turn, ``u <- nu_1 / (sum_{jk} G v_j w_k + 1e-8)`` and likewise ``v``
    and ``w``, and the plan is ``P = u (x) v (x) w * G``. Here the same sweeps run on ``g_m = log u_m``:

        g_m <- log nu_m - logaddexp(logsumexp_{others}(sum_{n != m} g_n - C / reg), log 1e-8)

    so the kernel is never formed. Where the official kernel does not underflow (``C / reg <= log 1e30``
    everywhere) this is the official iteration, its 1e-8 guard included, and gives the official plan to
    round-off. Where it does, the official plan is degenerate (floored kernel, the guard swamping the
    sums); there the guard is dropped and the sweeps give the right Sinkhorn plan, finite at any
    ``C / reg``. The switch is a tensor, so a GPU never waits for it. The gradient runs through every
    sweep, as in the official code (:mod:`decalign.model.sweeps` walks them back by hand).

    Returns
    -------
    The plan (K_1, ..., K_M) and the official loss ``<P, C> + reg * sum P (log max(P, 1e-8) - 1)``.
    """
    scaled = -cost / max(reg, 1e-6)
    log_nu = [torch.log(a.clamp_min(1e-30)) for a in marginals]  # a marginal of exactly 0 stays finite
    underflows = (-scaled.detach()).max() > _LOG_KERNEL_FLOOR
    # filled on the device, not copied from the host: a copy waited for the GPU, and a CUDA graph refuses it
    guard = torch.where(underflows, torch.full((), -torch.inf, dtype=scaled.dtype, device=scaled.device),
                        torch.full((), _LOG_GUARD, dtype=scaled.dtype, device=scaled.device))
    logs = official_sweeps(scaled, guard, sweeps, log_nu)  # the sweeps above, with a hand-written backward
    log_plan = _log_plan(scaled, logs, 1.0)
    plan = torch.exp(log_plan)
    entropy = (plan * (log_plan.clamp_min(_LOG_PLAN_FLOOR) - 1.0)).sum()
    return plan, (plan * cost).sum() + reg * entropy


_LOG_PLAN_FLOOR = float(np.log(1e-8))  # the official log(max(P, 1e-8))
_LOG_GUARD = float(np.log(1e-8))  # the official "+ 1e-8" in each denominator
_LOG_KERNEL_FLOOR = float(np.log(1e30))  # beyond this C / reg the official kernel sits on its 1e-30 floor


def transport_plan(prototypes: dict[str, Prototypes], config: ModelConfig, *, lambda_ot: float | None = None,
                   marginals: dict[str, torch.Tensor] | None = None, check_every: int = 1) -> TransportResult:
    """Global heterogeneity alignment: multi-marginal entropic OT between all modalities' prototypes.

    Every transport plan of the product is built here, from the model's config: training (the model's
    forward, so also the replay and the alignment levels), the plan between the training prototypes
    (the story, the Sample page) and the Prototypes page. The settings are ``config.objective``,
    ``config.lambda_ot``, the sweep count ``config.ot_num_iters`` and (studio) the tolerance
    ``config.ot_tol``; ``lambda_ot`` overrides the entropy setting alone (the Prototypes page's slider).

    Objective ``official`` (:func:`_official_plan`): the pairwise costs are :func:`official_gaussian_cost`
    (``config.hetero_cost_reduction``), ``reg = lambda_ot`` (absolute), exactly ``ot_num_iters`` sweeps of
    :func:`official_sinkhorn` with gradients through them and through the marginals, and the transport
    loss ``<P, C> + lambda_ot * sum P (log max(P, 1e-8) - 1)`` (``transport_cost`` + ``entropy_term``).
    Marginals: the mean posteriors normalised by ``max(sum, 1e-8)``, as the official code.

    Objective ``studio``: cost ``C[i_1..i_M] = sum_{m<n} W2^2(N_m,i_m, N_n,i_n)`` (:func:`gaussian_cost`, :func:`joint_cost`) and
    ``reg = lambda_ot * mean(C)``, so the plan does not depend on the overall scale of the features.
    Marginals: ``marginals`` when given (checked, then normalised to sum 1); else the mean posteriors of
    each modality's samples when the prototypes carry posteriors (training); else the mixture weights.
    The plan is solved without autograd in the prototypes' dtype; its gradient follows the envelope
    theorem: ``d<P*, C>/dC = P*`` and ``d/da_m = f_m`` (the potentials), the same rule POT uses for
    ``sinkhorn2``. ``transport_cost`` is ``<P, C>``, not the entropic objective.

    Parameters
    ----------
    prototypes : modality -> Prototypes, at least two modalities, in the order of the plan's axes.
    config : the model's settings.
    lambda_ot : entropic regularisation relative to the mean cost, > 0; default ``config.lambda_ot``.
    marginals : modality -> (K_m,) target marginals.
    check_every : see :func:`multimarginal_sinkhorn` (0 on a GPU: no host synchronisation).
    """
    names = list(prototypes)
    if len(names) < 2:
        raise ValueError(f"a transport plan needs prototypes of at least two modalities, found {names}")
    lam = config.lambda_ot if lambda_ot is None else lambda_ot
    if not lam > 0:
        raise ValueError(f"lambda_ot must be positive, found {lam}")
    pair_costs, cost = prototype_costs(prototypes, config)
    official = config.objective == "official"
    targets = {m: _target_marginal(m, p, None if marginals is None else marginals.get(m), official)
               for m, p in prototypes.items()}
    if official:
        return _official_plan(pair_costs, cost, targets, lam, config, check_every)
    with torch.no_grad():
        reg = lam * cost.detach().mean().clamp_min(1e-12)  # a tensor: no host synchronisation
        solved = multimarginal_sinkhorn(cost.detach(), [targets[m].detach() for m in names], reg,
                                        max_iter=config.ot_num_iters, tol=config.ot_tol, check_every=check_every)
    value = (solved.plan * cost).sum()
    dual = sum((f * (targets[m] - targets[m].detach())).sum() for f, m in zip(solved.potentials, names))
    return TransportResult(plan=solved.plan, cost=cost, pair_costs=pair_costs, marginals=targets,
                           transport_cost=value + dual, iterations=solved.iterations,
                           marginal_error=solved.marginal_error, converged=solved.converged, reg=reg)


def _official_plan(pair_costs, cost, targets, lam: float, config: ModelConfig, check_every: int) -> TransportResult:
    names = list(targets)
    plan, loss = official_sinkhorn(cost, [targets[m] for m in names], lam, config.ot_num_iters)
    value = (plan * cost).sum()
    with torch.no_grad():  # how far the fixed sweep count got: reported, not used
        error = _plan_marginal_error(plan, [targets[m] for m in names])
    if check_every:
        error = float(error)
    return TransportResult(plan=plan, cost=cost, pair_costs=pair_costs, marginals=targets, transport_cost=value,
                           iterations=config.ot_num_iters, marginal_error=error, converged=error <= config.ot_tol,
                           reg=lam, entropy_term=loss - value)


def prototype_costs(prototypes: dict[str, Prototypes], config: ModelConfig | None = None
                    ) -> tuple[dict[tuple[str, str], torch.Tensor], torch.Tensor]:
    """The cost of every modality pair (a before b in the dict's order) and their joint cost, under the
    objective of ``config`` (default: the studio Bures cost)."""
    names = list(prototypes)
    by_index = {}
    for i, j in itertools.combinations(range(len(names)), 2):
        a, b = prototypes[names[i]], prototypes[names[j]]
        if config is not None and config.objective == "official":
            by_index[(i, j)] = official_gaussian_cost(a.means, a.variances, b.means, b.variances,
                                                      config.hetero_cost_reduction)
        else:
            by_index[(i, j)] = gaussian_cost(a.means, a.variances, b.means, b.variances)
    pairs = {(names[i], names[j]): c for (i, j), c in by_index.items()}
    return pairs, joint_cost(by_index, len(names))


def _target_marginal(name: str, proto: Prototypes, given: torch.Tensor | None, official: bool) -> torch.Tensor:
    if given is None:
        if proto.posteriors is not None:
            mean = proto.posteriors.mean(0)
            return mean / mean.sum().clamp_min(1e-8) if official else mean
        return proto.weights / proto.weights.sum()
    a = torch.as_tensor(given, dtype=proto.means.dtype, device=proto.means.device)
    k = proto.means.shape[0]
    if a.shape != (k,) or not bool(torch.isfinite(a).all()) or bool((a < 0).any()) or not float(a.sum()) > 0:
        raise ValueError(f"marginal of {name!r} must be {k} non-negative finite values with a positive sum, "
                         f"found {a.tolist()}")
    return a / a.sum()


def plan_entropy(plan: torch.Tensor | np.ndarray) -> float:
    """Shannon entropy ``H(P) = -sum P log P`` (nats) of a plan normalised to sum 1, with ``0 log 0 = 0``.

    A uniform plan over n cells has entropy ``log n``; it falls as the plan sharpens onto a few cells.
    """
    if isinstance(plan, torch.Tensor):
        plan = plan.detach().cpu().double().numpy()
    p = np.clip(np.asarray(plan, dtype=np.float64).ravel(), 0.0, None)
    total = p.sum()
    if not total > 0:
        raise ValueError("entropy of a plan with no mass")
    p = p[p > 0] / total
    return float(-(p * np.log(p)).sum())
