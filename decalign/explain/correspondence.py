"""Which prototype of one modality corresponds to which of another, and what they have in common.

For every modality pair of a solved plan (:class:`~.transport_view.PlanView`, built by the one plan builder
``decalign.model.transport_plan`` at the chosen entropy setting) this module adds the **exact optimal
matching**: ``min_P <P, C_ab>`` subject to ``P 1 = a``, ``P^T 1 = b``, ``P >= 0``, solved by POT's network
simplex (``ot.emd``) with the pair's own cost ``C_ab`` (the plan's ``pair_costs``) and the plan's marginals.
Its few non-zero cells (at most ``K_a + K_b - 1``) are the correspondences; each is described by the
prototypes' majority label and purity on the training set (:func:`.transport_view.prototype_table` over
the training reference's features) and put in one sentence.

:func:`diagonal_order` orders the rows and columns of a pair so that the matching lies on the diagonal,
which turns a noisy-looking heatmap into a readable one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .transport_view import PlanView

MIN_MASS = 1e-9  # cells of the exact matching below this are numerical zeros


@dataclass
class PairCorrespondence:
    """One modality pair: the plan at the chosen entropy, the exact matching and their reading order."""

    a: str
    b: str
    plan: np.ndarray  # (K_a, K_b) two-modality marginal of the entropic plan
    matching: np.ndarray  # (K_a, K_b) exact optimal plan (ot.emd), same marginals
    cost: np.ndarray  # (K_a, K_b) the pair's cost
    row_order: np.ndarray  # (K_a,) prototypes of a in reading order
    col_order: np.ndarray  # (K_b,) prototypes of b: the matching on the diagonal
    table: pd.DataFrame  # one row per matched cell, largest mass first, with a sentence

    def ordered(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` (K_a, K_b) with rows and columns in reading order."""
        return np.asarray(matrix)[np.ix_(self.row_order, self.col_order)]

    @property
    def diagonal_share(self) -> float:
        """Share of the entropic plan's mass on the matching's cells: 1 = the plan is the matching."""
        return float(self.plan[self.matching > MIN_MASS].sum() / max(self.plan.sum(), 1e-300))


def exact_matching(cost: np.ndarray, row_marginal: np.ndarray, col_marginal: np.ndarray) -> np.ndarray:
    """The exact optimal transport plan (``ot.emd``) between two marginals (each normalised to sum 1)."""
    import ot

    a = np.asarray(row_marginal, dtype=np.float64)
    b = np.asarray(col_marginal, dtype=np.float64)
    return ot.emd(a / a.sum(), b / b.sum(), np.ascontiguousarray(cost, dtype=np.float64))


def diagonal_order(matching: np.ndarray, row_keys: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(row order, column order) putting the heaviest one-to-one pairs of ``matching`` on the diagonal.

    The pairs are the assignment of largest total mass (``scipy.optimize.linear_sum_assignment``); rows
    come sorted by ``row_keys`` (e.g. the prototype's majority class, so the diagonal reads class by class),
    then by mass; each row's partner column follows it. Rows or columns left over (K_a != K_b) come last,
    columns placed after the row they send most mass to.
    """
    m = np.asarray(matching, dtype=np.float64)
    from scipy.optimize import linear_sum_assignment  # here: scipy's import slows the dashboard's cold start

    rows, cols = linear_sum_assignment(-m)
    keys = row_keys if row_keys is not None else [0] * m.shape[0]
    pairs = sorted(zip(rows, cols), key=lambda rc: (_sortable(keys[rc[0]]), -m[rc], rc[0]))
    row_order = [r for r, _ in pairs] + [r for r in range(m.shape[0]) if r not in set(rows)]
    col_order = [c for _, c in pairs]
    position = {r: i for i, r in enumerate(row_order)}
    rest = [c for c in range(m.shape[1]) if c not in set(cols)]
    col_order += sorted(rest, key=lambda c: position[int(m[:, c].argmax())])
    return np.array(row_order, dtype=np.int64), np.array(col_order, dtype=np.int64)


def _sortable(key) -> tuple:
    """Sort numbers numerically, text alphabetically, missing values last."""
    if key is None or (isinstance(key, float) and np.isnan(key)):
        return (2, 0, "")
    try:
        return (0, float(key), "")
    except (TypeError, ValueError):
        return (1, 0, str(key))


def correspondences(view: PlanView, members: pd.DataFrame | None = None, label_order: list[str] | None = None
                    ) -> dict[tuple[str, str], PairCorrespondence]:
    """Every modality pair of ``view`` (in the plan's order): its exact matching, reading order and table.

    ``members`` is :func:`.transport_view.prototype_table` on the training set (columns modality,
    prototype, size, majority_label, purity); without it the sentences leave the labels out.
    ``label_order`` (e.g. the class names) orders the rows by their prototype's majority label.
    """
    rank = {name: i for i, name in enumerate(label_order or [])}
    out = {}
    for a, b in itertools.combinations(view.order, 2):
        plan, cost = view.pair_plans[(a, b)], view.pair_costs[(a, b)]
        matching = exact_matching(cost, view.marginals[a], view.marginals[b])
        label_a = _labels(members, a, plan.shape[0])
        rows, cols = diagonal_order(matching, [rank.get(lab, lab) for lab, _, _ in label_a])
        table = _table(a, b, plan, matching, cost, label_a, _labels(members, b, plan.shape[1]))
        out[(a, b)] = PairCorrespondence(a, b, plan, matching, cost, rows, cols, table)
    return out


def _labels(members: pd.DataFrame | None, modality: str, k: int) -> list[tuple[str | None, float, int]]:
    """(majority label, purity, size) of each prototype of ``modality`` (None, NaN, 0 when unknown)."""
    found = [(None, float("nan"), 0)] * k
    if members is None or members.empty:
        return found
    for row in members[members["modality"] == modality].itertuples():
        if 0 <= int(row.prototype) < k:
            found[int(row.prototype)] = (row.majority_label, float(row.purity), int(row.size))
    return found


def _table(a, b, plan, matching, cost, label_a, label_b) -> pd.DataFrame:
    ia, ib = np.nonzero(matching > MIN_MASS)
    rows = []
    for i, j in zip(ia.tolist(), ib.tolist()):
        (lab_a, pur_a, _), (lab_b, pur_b, _) = label_a[i], label_b[j]
        rows.append({"pair": f"{a} ↔ {b}", f"{a} prototype": i, f"{b} prototype": j,
                     "exact mass": float(matching[i, j]), "plan mass": float(plan[i, j]),
                     "cost": float(cost[i, j]), f"{a} majority": lab_a, f"{a} purity": pur_a,
                     f"{b} majority": lab_b, f"{b} purity": pur_b,
                     "same majority": lab_a is not None and lab_a == lab_b,
                     "sentence": correspondence_sentence(a, i, label_a[i], b, j, label_b[j], float(matching[i, j]))})
    table = pd.DataFrame(rows)
    return table.sort_values("exact mass", ascending=False, kind="stable").reset_index(drop=True)


def correspondence_sentence(a: str, i: int, label_a: tuple, b: str, j: int, label_b: tuple, mass: float) -> str:
    """``"fourier prototype 3 ↔ karhunen prototype 7: both mostly 4 (purity 0.90 / 0.80), mass 0.090"``."""
    (lab_a, pur_a, n_a), (lab_b, pur_b, n_b) = label_a, label_b
    head = f"{a} prototype {i} ↔ {b} prototype {j}"
    if lab_a is None or lab_b is None:
        empty = [f"{m} prototype {k}" for m, k, n, lab in ((a, i, n_a, lab_a), (b, j, n_b, lab_b))
                 if lab is None and n == 0]
        what = (f"{' and '.join(empty)} {'has' if len(empty) == 1 else 'have'} no training sample"
                if empty else "labels unknown")
        return f"{head}: {what}, mass {mass:.3f}"
    if lab_a == lab_b:
        return f"{head}: both mostly {lab_a} (purity {pur_a:.2f} / {pur_b:.2f}), mass {mass:.3f}"
    return (f"{head}: different majorities, {lab_a} (purity {pur_a:.2f}) and {lab_b} (purity {pur_b:.2f}), "
            f"mass {mass:.3f}")


def agreement(pairs: dict[tuple[str, str], PairCorrespondence]) -> float:
    """Share of the exact matching's mass linking prototypes with the same majority label, over all pairs:
    how often the transport pairs up clusters that mean the same thing. NaN without labels."""
    total = same = 0.0
    for pair in pairs.values():
        if pair.table.empty or pair.table[f"{pair.a} majority"].isna().all():
            continue
        total += float(pair.table["exact mass"].sum())
        same += float(pair.table.loc[pair.table["same majority"], "exact mass"].sum())
    return same / total if total > 0 else float("nan")


def main_flows(pairs: dict[tuple[str, str], PairCorrespondence], order: list[str], *, exact: bool = True,
               per_node: int = 2, min_mass: float = 0.005) -> tuple[pd.DataFrame, float]:
    """Sankey links between consecutive modalities of ``order``: only the main flows, and the share of the
    mass they carry.

    From each prototype, its ``per_node`` largest flows of at least ``min_mass``, taken from the exact
    matching (``exact``; already sparse) or from the entropic plan. Rows: source ``"<a>:<k>"``, target
    ``"<b>:<l>"``, pair, value. The share is the mass shown over the mass of all flows (1 = nothing left out).
    """
    rows, shown, total = [], 0.0, 0.0
    for a, b in itertools.pairwise(order):
        pair = pairs.get((a, b))
        flip = pair is None
        pair = pairs[(b, a)] if flip else pair
        matrix = pair.matching if exact else pair.plan
        matrix = matrix.T if flip else matrix
        total += float(matrix.sum())
        for k, row in enumerate(matrix):
            for j in np.argsort(row)[::-1][:per_node]:
                if row[j] >= min_mass:
                    rows.append({"source": f"{a}:{k}", "target": f"{b}:{int(j)}", "pair": f"{a} → {b}",
                                 "value": float(row[j])})
                    shown += float(row[j])
    links = pd.DataFrame(rows, columns=["source", "target", "pair", "value"])
    return links, shown / total if total > 0 else float("nan")
