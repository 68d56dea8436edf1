"""Typed outputs of the model: everything an explanation needs, no dicts of magic strings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..loss_names import ALIGNMENT_LEVELS


@dataclass
class Prototypes:
    """A diagonal Gaussian mixture over one modality's pooled unique features."""

    means: torch.Tensor  # (K, d)
    variances: torch.Tensor  # (K, d)
    weights: torch.Tensor  # (K,) mixture weights
    posteriors: torch.Tensor | None = None  # (N, K) responsibilities of the batch's samples


@dataclass
class TransportResult:
    """Multi-marginal entropic OT between all modalities' prototypes."""

    plan: torch.Tensor  # (K_1, ..., K_M) joint plan; its marginals are the mean posteriors
    cost: torch.Tensor  # (K_1, ..., K_M) joint cost (sum of pairwise Gaussian costs)
    pair_costs: dict[tuple[str, str], torch.Tensor]  # (K_i, K_j) Gaussian cost per pair (official or Bures)
    marginals: dict[str, torch.Tensor]  # (K_m,) target marginal per modality
    transport_cost: torch.Tensor  # scalar <plan, cost>
    iterations: int
    marginal_error: float | torch.Tensor  # largest L1 gap between a plan marginal and its target, at the end
    converged: bool | torch.Tensor
    reg: float | torch.Tensor = 0.0  # entropic weight used: lambda_ot (official) or lambda_ot * mean(cost) (studio)
    entropy_term: float | torch.Tensor = 0.0  # official: reg * sum P (log max(P, 1e-8) - 1); studio: 0

    @property
    def loss(self) -> torch.Tensor:
        """The transport term of the objective: ``<P, C>`` plus the official entropy term (0 for studio)."""
        return self.transport_cost + self.entropy_term

    @property
    def order(self) -> list[str]:
        """The modality of each axis of ``plan``."""
        return list(self.marginals)

    def pair_plan(self, a: str, b: str, order: list[str] | None = None) -> torch.Tensor:
        """(K_a, K_b) marginal of the joint plan over the two named modalities."""
        order = self.order if order is None else order
        ia, ib = order.index(a), order.index(b)
        others = tuple(i for i in range(len(order)) if i not in (ia, ib))
        plan = self.plan.sum(dim=others) if others else self.plan
        return plan if ia < ib else plan.T

    def pair_plans(self) -> dict[tuple[str, str], torch.Tensor]:
        """Every two-modality marginal, keyed (a, b) with a before b in ``order``."""
        return {(a, b): self.pair_plan(a, b) for a, b in itertools.combinations(self.order, 2)}


@dataclass
class AlignmentLevels:
    """The five levels of the hierarchy, each a scalar, with per-modality and per-pair detail.

    ``objective`` says which terms were computed and how the detail makes the level: the mean over
    modalities, pairs or ordered pairs (``"official"``) or the sum (``"studio"``). Under the official objective the
    prototype transport includes the entropy term and can be negative; every other level is >= 0 (up
    to the official cost's 1e-8 guard).
    """

    decoupling: torch.Tensor  # (1) squared cosine between unique and common parts, combined over modalities
    prototype_transport: torch.Tensor  # (2) global heterogeneity: the transport term (TransportResult.loss)
    sample_to_prototype: torch.Tensor  # (3) local heterogeneity
    moment_matching: torch.Tensor  # (4) semantic homogeneity
    mmd: torch.Tensor  # (5) RKHS homogeneity
    decoupling_per_modality: dict[str, torch.Tensor] = field(default_factory=dict)
    sample_to_prototype_per_pair: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    moment_matching_per_pair: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    mmd_per_pair: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    objective: str = "studio"

    LEVELS = ALIGNMENT_LEVELS
    GROUPS = ("heterogeneous", "homogeneous")

    @property
    def heterogeneity(self) -> torch.Tensor:
        """Transport + sample-to-prototype: the official ``hete_loss`` under the official objective."""
        return self.prototype_transport + self.sample_to_prototype

    @property
    def homogeneity(self) -> torch.Tensor:
        """Moments + MMD: the official ``homo_loss`` under the official objective."""
        return self.moment_matching + self.mmd

    def as_floats(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in self.LEVELS}


@dataclass
class DecAlignOutput:
    """What ``DecAlign.forward`` returns. Modalities are keyed by name, in the model's order."""

    prediction: torch.Tensor  # (N, out) regression value or class logits
    unique: dict[str, torch.Tensor]  # (N, T_m, d) modality-unique sequences
    common: dict[str, torch.Tensor]  # (N, T_m, d) modality-common sequences
    unique_pooled: dict[str, torch.Tensor]  # (N, d)
    common_pooled: dict[str, torch.Tensor]  # (N, d)
    fused: dict[str, torch.Tensor]  # (N, d) mean-pooled cross-modal transformer output per modality
    branch_inputs: torch.Tensor  # (N, 2*M*d) the linear head's input: [fused..., common_pooled...]
    branch_names: list[str]  # 2*M names: "unique:<m>" then "common:<m>"
    attention: dict[str, list[torch.Tensor]]  # per modality, per layer (N, T_q, T_k), head-averaged
    attention_keys: dict[str, list[tuple[str, int]]]  # per modality: (source modality, length) of keys
    distribution: dict[str, torch.Tensor] | None = None  # (N, pde_dim) distribution-encoder outputs
    prototypes: dict[str, Prototypes] | None = None
    transport: TransportResult | None = None
    alignment: AlignmentLevels | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.unique)
