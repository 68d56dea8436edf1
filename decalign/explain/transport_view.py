"""Prototypes and their optimal-transport plan, as tables and arrays for the dashboard and the CLI.

Two sources of prototypes are supported: the training prototypes saved in the model card, and
prototypes fitted on the current data (:func:`fit_prototypes`). :func:`solve_plan` re-solves the
multi-marginal plan between them at any entropy setting with the model's own plan builder
(``decalign.model.transport_plan``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..config import ModelConfig
from ..inference import InferenceResult
from ..model import Prototypes, TransportResult, plan_entropy, posteriors, transport_plan
from ..model import fit_prototypes as fit_model_prototypes

# How the dashboard names the cost and the entropy setting of each objective (decalign.model.transport).
COST_NAMES = {"official": "official Gaussian cost", "studio": "Bures W2²"}
LAMBDA_UNITS = {"official": "absolute, as in the official objective", "studio": "relative to the mean cost"}
FIT_EM_ITERS = 20  # EM steps for prototypes fitted on the current data: one fit over a split, not per batch


@dataclass
class PlanView:
    """A solved multi-marginal plan in numpy, with the pairwise views the dashboard draws."""

    order: list[str]  # modality of each axis of ``plan``
    plan: np.ndarray  # (K_1, ..., K_M), sums to 1
    cost: np.ndarray  # (K_1, ..., K_M) joint cost, sum of the pair costs
    pair_plans: dict[tuple[str, str], np.ndarray]  # (K_a, K_b) two-modality marginal of the plan
    pair_costs: dict[tuple[str, str], np.ndarray]  # (K_a, K_b) cost between prototypes (``cost_name``)
    marginals: dict[str, np.ndarray]  # (K_m,) target marginals
    lambda_ot: float
    reg: float  # the entropic weight used: lambda_ot (official) or lambda_ot * mean(cost) (studio)
    transport_cost: float  # <P, C>
    entropy: float  # H(P) = -sum P log P, in nats
    iterations: int
    marginal_error: float
    converged: bool
    cost_name: str = COST_NAMES["studio"]
    lambda_unit: str = LAMBDA_UNITS["studio"]


def fit_prototypes(result: InferenceResult, config: ModelConfig, num_prototypes: int | None = None, *,
                   iterations: int = FIT_EM_ITERS) -> dict[str, Prototypes]:
    """Fit K diagonal-Gaussian prototypes to each modality's pooled unique features of ``result``.

    Uses the EM of the model's objective (``decalign.model.fit_prototypes``: the official evenly spaced
    start, or the studio farthest-point one) with the model's variance floor; K defaults to
    ``config.num_prototypes``.
    """
    return {m: _detach(fit_model_prototypes(torch.from_numpy(np.asarray(x, dtype=np.float32)), config,
                                            num_components=num_prototypes, iterations=iterations))
            for m, x in result.unique_pooled.items()}


def assignments(result: InferenceResult | dict[str, np.ndarray], prototypes: dict[str, Prototypes]
                ) -> dict[str, np.ndarray]:
    """(N, K) posteriors ``p(k | x)`` under each modality's prototypes, of the pooled unique features of
    ``result`` (or of a dict modality -> (N, d) features, e.g. the training reference's)."""
    features = result.unique_pooled if isinstance(result, InferenceResult) else result
    out = {}
    for m, proto in prototypes.items():
        x = torch.from_numpy(np.asarray(features[m], dtype=np.float32))
        fixed = Prototypes(proto.means.float(), proto.variances.float(), proto.weights.float())
        out[m] = posteriors(x, fixed).numpy().astype(np.float64)
    return out


def label_groups(labels: np.ndarray | None, task: str, class_names: list[str] | None = None) -> np.ndarray | None:
    """What "the same label" means for purity: the class (its name when ``class_names`` has one), or for
    regression the sign of the label."""
    if labels is None:
        return None
    if task == "regression":
        sign = np.sign(np.asarray(labels, dtype=np.float64))
        return np.where(sign > 0, "positive", np.where(sign < 0, "negative", "zero"))
    if class_names:
        return np.array([class_names[int(c)] if 0 <= int(c) < len(class_names) else str(int(c)) for c in labels])
    return np.asarray(labels).astype(str)


def prototype_table(result: InferenceResult | dict[str, np.ndarray], prototypes: dict[str, Prototypes],
                    labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (modality, prototype): weight, size, share of samples, label purity.

    ``size`` counts the samples whose most probable prototype is k (argmax of the posterior); ``purity``
    is the share of the majority label group (:func:`label_groups`) among them, NaN for an empty
    prototype or without labels; ``mean_posterior`` is ``1/N sum_i p(k | x_i)``.

    Parameters
    ----------
    result : inference on the current data (its pooled unique features are assigned), or modality ->
        (N, d) pooled unique features (the training reference's, for purities on the training set).
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


def solve_plan(prototypes: dict[str, Prototypes], config: ModelConfig,
               marginals: dict[str, np.ndarray] | None = None, *, lambda_ot: float | None = None) -> PlanView:
    """The model's multi-marginal plan between ``prototypes`` (``decalign.model.transport_plan``), in float64.

    Everything but the entropy setting comes from ``config`` (iteration cap, tolerance), exactly as in
    training; ``lambda_ot`` overrides ``config.lambda_ot``. Smaller ``lambda_ot`` gives a sharper plan
    (lower entropy, lower cost).

    Parameters
    ----------
    prototypes : modality -> Prototypes (means, variances, weights), at least two modalities.
    config : the model's settings.
    marginals : modality -> (K_m,) target marginals; default the prototypes' weights. Normalised to sum 1.
    lambda_ot : entropic regularisation, > 0: absolute (official objective) or relative to the mean cost
        (studio).
    """
    proto = {m: _as64(p) for m, p in prototypes.items()}
    targets = None if marginals is None else {m: torch.from_numpy(np.asarray(a, dtype=np.float64))
                                              for m, a in marginals.items()}
    result = transport_plan(proto, config, lambda_ot=lambda_ot, marginals=targets)
    return plan_view(result, config.lambda_ot if lambda_ot is None else lambda_ot, config.objective)


def plan_view(result: TransportResult, lambda_ot: float, objective: str = "studio") -> PlanView:
    """A solved ``TransportResult`` in numpy, with its pairwise views; ``objective`` names its cost."""
    plan = result.plan.detach().cpu().double().numpy()
    cost = result.cost.detach().cpu().double().numpy()
    return PlanView(
        order=result.order, plan=plan, cost=cost,
        pair_plans={k: v.detach().cpu().double().numpy() for k, v in result.pair_plans().items()},
        pair_costs={k: c.detach().cpu().double().numpy() for k, c in result.pair_costs.items()},
        marginals={m: a.detach().cpu().double().numpy() for m, a in result.marginals.items()},
        lambda_ot=float(lambda_ot), reg=float(result.reg), transport_cost=float((plan * cost).sum()),
        entropy=plan_entropy(plan), iterations=int(result.iterations),
        marginal_error=float(result.marginal_error), converged=bool(result.converged),
        cost_name=COST_NAMES[objective], lambda_unit=LAMBDA_UNITS[objective],
    )


def entropy_sweep(prototypes: dict[str, Prototypes], config: ModelConfig, marginals: dict[str, np.ndarray] | None,
                  lambdas: list[float]) -> pd.DataFrame:
    """Entropy, transport cost and convergence of the plan for each ``lambda_ot`` in ``lambdas``."""
    rows = []
    for lam in lambdas:
        view = solve_plan(prototypes, config, marginals, lambda_ot=lam)
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
        pair = view.pair_plans[(a, b)] if (a, b) in view.pair_plans else view.pair_plans[(b, a)].T
        for k, row in enumerate(pair):
            for j, value in enumerate(row):
                rows.append({"source": f"{a}:{k}", "target": f"{b}:{j}", "pair": f"{a} → {b}",
                             "value": float(value)})
    return pd.DataFrame(rows)


def _as64(p: Prototypes) -> Prototypes:
    return Prototypes(p.means.detach().cpu().double(), p.variances.detach().cpu().double(),
                      p.weights.detach().cpu().double())


def _detach(p: Prototypes) -> Prototypes:
    return Prototypes(p.means.detach(), p.variances.detach(), p.weights.detach(),
                      None if p.posteriors is None else p.posteriors.detach())
