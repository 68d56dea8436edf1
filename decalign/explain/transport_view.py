"""Prototypes and their optimal-transport plan, as tables and arrays for the dashboard and the CLI.

Two sources of prototypes are supported: the training prototypes saved in the model card, and
prototypes fitted on the current data (:func:`fit_prototypes`). :func:`solve_plan` re-solves the
multi-marginal plan between them at any entropy setting with the model's own solver.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..inference import InferenceResult
from ..model import Prototypes, fit_gmm, gaussian_cost, joint_cost, multimarginal_sinkhorn, posteriors


@dataclass
class PlanView:
    """A solved multi-marginal plan in numpy, with the pairwise views the dashboard draws."""

    order: list[str]  # modality of each axis of ``plan``
    plan: np.ndarray  # (K_1, ..., K_M), sums to 1
    cost: np.ndarray  # (K_1, ..., K_M) joint cost, sum of the pair costs
    pair_plans: dict[tuple[str, str], np.ndarray]  # (K_a, K_b) two-modality marginal of the plan
    pair_costs: dict[tuple[str, str], np.ndarray]  # (K_a, K_b) Bures cost between prototypes
    marginals: dict[str, np.ndarray]  # (K_m,) target marginals
    lambda_ot: float
    reg: float  # lambda_ot * mean(cost)
    transport_cost: float  # <P, C>
    entropy: float  # H(P) = -sum P log P, in nats
    iterations: int
    marginal_error: float
    converged: bool


def fit_prototypes(result: InferenceResult, num_prototypes: int, *, iterations: int = 20,
                   var_floor: float = 1e-4) -> dict[str, Prototypes]:
    """Fit K diagonal-Gaussian prototypes to each modality's pooled unique features of ``result``.

    Uses the model's EM (``decalign.model.fit_gmm``, deterministic farthest-point start).
    """
    return {m: _detach(fit_gmm(torch.from_numpy(np.asarray(x, dtype=np.float32)), num_prototypes,
                               iterations=iterations, var_floor=var_floor))
            for m, x in result.unique_pooled.items()}


def assignments(result: InferenceResult, prototypes: dict[str, Prototypes]) -> dict[str, np.ndarray]:
    """(N, K) posteriors ``p(k | x)`` of every sample of ``result`` under each modality's prototypes."""
    out = {}
    for m, proto in prototypes.items():
        x = torch.from_numpy(np.asarray(result.unique_pooled[m], dtype=np.float32))
        fixed = Prototypes(proto.means.float(), proto.variances.float(), proto.weights.float())
        out[m] = posteriors(x, fixed).numpy().astype(np.float64)
    return out


def label_groups(labels: np.ndarray | None, task: str) -> np.ndarray | None:
    """What "the same label" means for purity: the class, or for regression the sign of the label."""
    if labels is None:
        return None
    if task == "regression":
        sign = np.sign(np.asarray(labels, dtype=np.float64))
        return np.where(sign > 0, "positive", np.where(sign < 0, "negative", "zero"))
    return np.asarray(labels).astype(str)


def prototype_table(result: InferenceResult, prototypes: dict[str, Prototypes],
                    labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (modality, prototype): weight, size, share of samples, label purity.

    ``size`` counts the samples whose most probable prototype is k (argmax of the posterior); ``purity``
    is the share of the majority label group (:func:`label_groups`) among them, NaN for an empty
    prototype or without labels; ``mean_posterior`` is ``1/N sum_i p(k | x_i)``.

    Parameters
    ----------
    result : inference on the current data (its pooled unique features are assigned).
    prototypes : modality -> Prototypes.
    labels : (N,) label groups (e.g. from :func:`label_groups`), or None.
    """
    post = assignments(result, prototypes)
    rows = []
    for m, proto in prototypes.items():
        hard = post[m].argmax(1)
        for k in range(proto.means.shape[0]):
            members = labels[hard == k] if labels is not None else np.array([])
            majority, purity = _majority(members)
            rows.append({"modality": m, "prototype": k, "weight": float(proto.weights[k]),
                         "mean_posterior": float(post[m][:, k].mean()) if len(hard) else float("nan"),
                         "size": int((hard == k).sum()), "share": float((hard == k).mean()) if len(hard) else 0.0,
                         "majority_label": majority, "purity": purity})
    return pd.DataFrame(rows)


def _majority(members: np.ndarray) -> tuple[str | None, float]:
    if len(members) == 0:
        return None, float("nan")
    values, counts = np.unique(members, return_counts=True)
    return str(values[counts.argmax()]), float(counts.max() / len(members))


def solve_plan(prototypes: dict[str, Prototypes], marginals: dict[str, np.ndarray] | None = None, *,
               lambda_ot: float, max_iter: int = 500, tol: float = 1e-9) -> PlanView:
    """Multi-marginal entropic OT between the prototypes of all modalities, in float64.

    ``min_P <P, C> - reg H(P)`` s.t. the m-th marginal of P is ``a_m``, with
    ``C[i_1..i_M] = sum_{m<n} W2^2(N_m,i_m, N_n,i_n)`` (diagonal Bures cost) and ``reg = lambda_ot * mean(C)``,
    exactly as in training (``decalign.model.align_prototypes``), solved by the model's log-domain
    ``multimarginal_sinkhorn``. Smaller ``lambda_ot`` gives a sharper plan (lower entropy, lower cost).

    Parameters
    ----------
    prototypes : modality -> Prototypes (means, variances, weights), at least two modalities.
    marginals : modality -> (K_m,) target marginals; default the prototypes' weights. Normalised to sum 1.
    lambda_ot : entropic regularisation relative to the mean cost, > 0.
    """
    order = list(prototypes)
    if len(order) < 2:
        raise ValueError(f"solve_plan needs prototypes of at least two modalities, found {order}")
    if not lambda_ot > 0:
        raise ValueError(f"lambda_ot must be positive, found {lambda_ot}")
    proto = {m: _as64(p) for m, p in prototypes.items()}
    targets = {m: _marginal(m, proto[m], None if marginals is None else marginals.get(m)) for m in order}
    pairs = list(itertools.combinations(range(len(order)), 2))
    costs = {(i, j): gaussian_cost(proto[order[i]].means, proto[order[i]].variances,
                                   proto[order[j]].means, proto[order[j]].variances) for i, j in pairs}
    cost = joint_cost(costs, len(order))
    reg = lambda_ot * float(cost.mean().clamp_min(1e-12))
    solved = multimarginal_sinkhorn(cost, [torch.from_numpy(targets[m]) for m in order], reg,
                                    max_iter=max_iter, tol=tol)
    plan = solved.plan.numpy()
    return PlanView(
        order=order, plan=plan, cost=cost.numpy(),
        pair_plans={(order[i], order[j]): _pair(plan, i, j) for i, j in pairs},
        pair_costs={(order[i], order[j]): c.numpy() for (i, j), c in costs.items()},
        marginals=targets, lambda_ot=float(lambda_ot), reg=reg,
        transport_cost=float((plan * cost.numpy()).sum()), entropy=plan_entropy(plan),
        iterations=solved.iterations, marginal_error=solved.marginal_error, converged=solved.converged,
    )


def plan_entropy(plan: np.ndarray) -> float:
    """Shannon entropy ``H(P) = -sum P log P`` (nats), with ``0 log 0 = 0``."""
    p = np.asarray(plan, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def entropy_sweep(prototypes: dict[str, Prototypes], marginals: dict[str, np.ndarray] | None,
                  lambdas: list[float], **solver) -> pd.DataFrame:
    """Entropy, transport cost and convergence of the plan for each ``lambda_ot`` in ``lambdas``."""
    rows = []
    for lam in lambdas:
        view = solve_plan(prototypes, marginals, lambda_ot=lam, **solver)
        rows.append({"lambda_ot": lam, "entropy": view.entropy, "transport_cost": view.transport_cost,
                     "iterations": view.iterations, "converged": view.converged})
    return pd.DataFrame(rows)


def sankey_links(view: PlanView, order: list[str] | None = None) -> pd.DataFrame:
    """Flows between consecutive modalities of ``order``: one row per (prototype of a, prototype of b).

    ``value`` is the two-modality marginal ``P_ab[k, l]`` of the joint plan, so the values of each
    consecutive pair sum to 1 and the flow into a middle node equals the flow out of it (both are that
    modality's marginal). Nodes are named ``"<modality>:<k>"``.
    """
    order = list(view.order if order is None else order)
    if sorted(order) != sorted(view.order):
        raise ValueError(f"order must list the plan's modalities {view.order}, found {order}")
    rows = []
    for a, b in itertools.pairwise(order):
        pair = _pair(view.plan, view.order.index(a), view.order.index(b))
        for k, row in enumerate(pair):
            for j, value in enumerate(row):
                rows.append({"source": f"{a}:{k}", "target": f"{b}:{j}", "pair": f"{a} → {b}",
                             "value": float(value)})
    return pd.DataFrame(rows)


def _pair(plan: np.ndarray, i: int, j: int) -> np.ndarray:
    """(K_i, K_j) marginal of the joint plan over axes i and j (rows follow axis i)."""
    others = tuple(a for a in range(plan.ndim) if a not in (i, j))
    pair = plan.sum(axis=others) if others else plan
    return pair if i < j else pair.T


def _marginal(name: str, proto: Prototypes, given: np.ndarray | None) -> np.ndarray:
    a = proto.weights.numpy() if given is None else np.asarray(given, dtype=np.float64)
    k = proto.means.shape[0]
    if a.shape != (k,) or not np.isfinite(a).all() or (a < 0).any() or a.sum() <= 0:
        raise ValueError(f"marginal of {name!r} must be {k} non-negative finite values with a positive sum, "
                         f"found {a}")
    return a / a.sum()


def _as64(p: Prototypes) -> Prototypes:
    return Prototypes(p.means.detach().cpu().double(), p.variances.detach().cpu().double(),
                      p.weights.detach().cpu().double())


def _detach(p: Prototypes) -> Prototypes:
    return Prototypes(p.means.detach(), p.variances.detach(), p.weights.detach(),
                      None if p.posteriors is None else p.posteriors.detach())
