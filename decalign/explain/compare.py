"""Compare two models on the same data: metrics, changed predictions, slices, alignment levels, prototypes.

All functions take ``InferenceResult``s of both models on the same split (same ids, same order) and
return DataFrames or small dataclasses; nothing here draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from ..model import Prototypes, gaussian_cost
from ..train.metrics import display_name, metric_direction
from ..train.replay import procrustes_rotation
from .slices import result_errors, result_metrics, slice_metrics


def _check_same_samples(a: InferenceResult, b: InferenceResult) -> None:
    if len(a) != len(b) or not np.array_equal(np.asarray(a.ids).astype(str), np.asarray(b.ids).astype(str)):
        raise ValueError(f"the two results must cover the same samples in the same order; found {len(a)} and "
                         f"{len(b)} samples" + ("" if len(a) != len(b) else " with different ids"))
    if a.task != b.task:
        raise ValueError(f"the two models do different tasks: {a.task} and {b.task}")


def compare_metrics(result_a: InferenceResult, result_b: InferenceResult, card_a: ModelCard, card_b: ModelCard
                    ) -> pd.DataFrame:
    """Columns metric (key), name, A, B, change (B - A) and better ("A", "B" or "same") by the metric's direction."""
    _check_same_samples(result_a, result_b)
    ma, mb = result_metrics(result_a, card_a), result_metrics(result_b, card_b)
    rows = []
    for key in [k for k in ma if k in mb]:
        a, b = float(ma[key]), float(mb[key])
        sign = -1.0 if metric_direction(key) == "min" else 1.0
        better = "same" if np.isclose(a, b, rtol=0, atol=1e-12) else ("B" if sign * (b - a) > 0 else "A")
        rows.append({"metric": key, "name": display_name(key), "A": a, "B": b, "change": b - a, "better": better})
    return pd.DataFrame(rows)


def prediction_changes(result_a: InferenceResult, result_b: InferenceResult, card_a: ModelCard | None = None,
                       card_b: ModelCard | None = None) -> pd.DataFrame:
    """One row per sample: id, label, prediction of A and B, and how it changed, most changed first.

    Classification: ``changed`` = the predicted class differs (a flip), ``shift`` = total variation
    distance between the two probability vectors, ``0.5 * sum_k |p_A - p_B|``; ``correct_A``/``correct_B``.
    Regression: ``shift`` = ``|pred_B - pred_A|``, ``changed`` = the sign differs (the binary sentiment
    flipped); with the cards, ``error_A``/``error_B`` = each model's error by its card's one definition
    (``result_errors``).
    Sorted by changed (flips first), then shift, largest first.
    """
    _check_same_samples(result_a, result_b)
    pa, pb = result_a.predictions, result_b.predictions
    table = pd.DataFrame({"id": np.asarray(result_a.ids).astype(str), "row": np.arange(len(result_a))})
    labels = result_a.labels
    table["label"] = labels if labels is not None else np.nan
    table["prediction_A"], table["prediction_B"] = pa, pb
    if result_a.task == "classification":
        table["changed"] = pa != pb
        table["shift"] = 0.5 * np.abs(result_a.probabilities - result_b.probabilities).sum(1)
        if labels is not None:
            table["correct_A"], table["correct_B"] = pa == labels, pb == labels
    else:
        table["changed"] = np.sign(pa) != np.sign(pb)
        table["shift"] = np.abs(pb - pa)
        if labels is not None and card_a is not None and card_b is not None:
            table["error_A"] = result_errors(result_a, card_a)["error"].to_numpy()
            table["error_B"] = result_errors(result_b, card_b)["error"].to_numpy()
    return table.sort_values(["changed", "shift"], ascending=False, kind="stable").reset_index(drop=True)


def slice_differences(result_a: InferenceResult, result_b: InferenceResult, card_a: ModelCard, card_b: ModelCard,
                      *, by: str = "label_bin", metric: str | None = None) -> pd.DataFrame:
    """Per slice (``decalign.explain.slices``: "label_bin", "class", "dominant_modality"...): n, A, B, change.

    ``metric``: default F1 for classes (one-vs-rest), accuracy for other classification slices, MAE for
    regression. Slices are those of model A for kinds that depend on the model (dominant modality);
    label-based kinds are the same for both.
    """
    _check_same_samples(result_a, result_b)
    sa = slice_metrics(result_a, None, card_a, by=by, min_samples=1)
    sb = slice_metrics(result_b, None, card_b, by=by, min_samples=1)
    metric = metric or ("MAE" if result_a.task == "regression" else "F1" if "F1" in sa.columns else "Acc")
    if metric not in sa.columns:
        raise ValueError(f"metric {metric!r} is not computed per slice; available: "
                         f"{[c for c in sa.columns if c not in ('slice', 'n')]}")
    merged = sa[["slice", "n", metric]].merge(sb[["slice", metric]], on="slice", how="outer",
                                              suffixes=("_A", "_B"))
    merged = merged.rename(columns={f"{metric}_A": "A", f"{metric}_B": "B"})
    merged["change"] = merged["B"] - merged["A"]
    merged.insert(1, "metric", metric)
    return merged


def levels_side_by_side(levels_a: pd.DataFrame, levels_b: pd.DataFrame) -> pd.DataFrame:
    """Join two ``decalign.explain.levels.alignment_levels`` tables on (level, scope): A, B, change."""
    keys = ["level", "scope", "kind"]
    merged = levels_a[keys + ["value"]].merge(levels_b[keys + ["value"]], on=keys, how="outer",
                                              suffixes=("_A", "_B"))
    merged = merged.rename(columns={"value_A": "A", "value_B": "B"})
    merged["change"] = merged["B"] - merged["A"]
    return merged


# ------------------------------------------------------------------------------------ prototype matching


@dataclass
class PrototypeMatch:
    """Exact OT between model A's and model B's prototypes of one modality."""

    modality: str
    cost: np.ndarray  # (K_A, K_B) Bures cost W2^2 between the Gaussians
    plan: np.ndarray  # (K_A, K_B) optimal plan; rows sum to weights_a, columns to weights_b
    weights_a: np.ndarray  # (K_A,) normalised mixture weights
    weights_b: np.ndarray  # (K_B,)
    total_cost: float  # <plan, cost>

    def matches(self, min_mass: float = 1e-9) -> pd.DataFrame:
        """Cells of the plan carrying mass: prototype_A, prototype_B, mass, share of A's mass, cost."""
        ia, ib = np.nonzero(self.plan > min_mass)
        table = pd.DataFrame({"modality": self.modality, "prototype_A": ia, "prototype_B": ib,
                              "mass": self.plan[ia, ib], "share_of_A": self.plan[ia, ib] / self.weights_a[ia],
                              "cost": self.cost[ia, ib]})
        return table.sort_values("mass", ascending=False, kind="stable").reset_index(drop=True)


def match_prototypes(prototypes_a: dict[str, Prototypes], prototypes_b: dict[str, Prototypes], *,
                     features_a: dict[str, np.ndarray] | None = None,
                     features_b: dict[str, np.ndarray] | None = None) -> dict[str, PrototypeMatch]:
    """Which prototype of model A became which of model B, per modality, by exact optimal transport.

    Solves ``min_P <P, C>`` s.t. ``P 1 = w_A``, ``P^T 1 = w_B``, ``P >= 0`` with POT's network simplex
    (``ot.emd``), where ``C_ij = ||mu_i - mu_j||^2 + ||sqrt(s_i) - sqrt(s_j)||^2`` is the Bures cost between
    diagonal Gaussians (``decalign.model.gaussian_cost``) and the marginals are the mixture weights.

    The cost only means something when both models' unique features live in one space (a run and its
    resumption or fine-tuning). For independently trained models pass ``features_a``/``features_b``, each
    model's pooled unique features of the same samples (``InferenceResult.unique_pooled``): B's
    prototypes are then first mapped into A's space by the orthogonal Procrustes map of the centred
    features, ``R = U V^T`` with ``U S V^T = (F_B - c_B)^T (F_A - c_A)``: means ``(mu - c_B) R + c_A``,
    variances the diagonal of ``R^T diag(s) R``, i.e. ``(R * R)^T s`` (diagonal kept, as in the model).
    """
    import ot

    if prototypes_a is None or prototypes_b is None:
        raise ValueError("both models need training prototypes (a card with prototypes) to be matched")
    missing = sorted(set(prototypes_a) ^ set(prototypes_b))
    if missing:
        raise ValueError(f"the models have different modalities; only in one of them: {missing}")
    out = {}
    for m, pa in prototypes_a.items():
        pb = prototypes_b[m]
        mb, vb = pb.means.double(), pb.variances.double()
        if mb.shape[1] != pa.means.shape[1]:
            raise ValueError(f"modality {m!r}: prototype widths differ ({pa.means.shape[1]} in A, "
                             f"{mb.shape[1]} in B); the Bures cost needs one width")
        if features_a is not None and features_b is not None:
            mb, vb = _map_into(mb, vb, features_b[m], features_a[m])
        cost = gaussian_cost(pa.means.double(), pa.variances.double(), mb, vb).numpy()
        wa, wb = _weights(pa.weights), _weights(pb.weights)
        plan = ot.emd(wa, wb, cost)
        out[m] = PrototypeMatch(m, cost, plan, wa, wb, float((plan * cost).sum()))
    return out


def _weights(w: torch.Tensor) -> np.ndarray:
    w = w.detach().double().clamp_min(0).numpy()
    if w.sum() <= 0:
        raise ValueError("prototype weights sum to zero")
    return w / w.sum()


def _map_into(means: torch.Tensor, variances: torch.Tensor, source: np.ndarray, target: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
    src, tgt = np.asarray(source, np.float64), np.asarray(target, np.float64)
    if src.shape != tgt.shape:
        raise ValueError(f"features of the two models must have the same shape, found {src.shape} and {tgt.shape}")
    cs, ct = src.mean(0), tgt.mean(0)
    rot = torch.from_numpy(procrustes_rotation(src - cs, tgt - ct))
    mapped = (means - torch.from_numpy(cs)) @ rot + torch.from_numpy(ct)
    return mapped, variances @ (rot * rot)
