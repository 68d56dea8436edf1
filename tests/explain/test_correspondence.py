"""Prototype correspondences: the exact matching against scipy's assignment and POT, the diagonal order,
and the sentences from hand-made purities."""

from __future__ import annotations

import numpy as np
import ot
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from decalign.config import ModelConfig
from decalign.explain.correspondence import (
    agreement,
    correspondence_sentence,
    correspondences,
    diagonal_order,
    exact_matching,
    main_flows,
)
from decalign.explain.transport_view import label_groups, prototype_table, solve_plan
from decalign.model import Prototypes


def _prototypes(perm: np.ndarray, k: int = 5, d: int = 3, seed: int = 0) -> dict[str, Prototypes]:
    """Modality b's prototypes are modality a's, numbered by ``perm`` (b's k-th is a's perm[k]-th)."""
    rng = np.random.default_rng(seed)
    means = torch.from_numpy(rng.normal(scale=5.0, size=(k, d)))
    var = torch.from_numpy(rng.uniform(0.5, 1.5, size=(k, d)))
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    return {"a": Prototypes(means, var, w), "b": Prototypes(means[perm], var[perm], w)}


def test_uniform_matching_is_the_assignment_of_least_cost():
    rng = np.random.default_rng(1)
    cost = rng.uniform(size=(6, 6))
    matching = exact_matching(cost, np.ones(6), np.ones(6))
    rows, cols = linear_sum_assignment(cost)
    expected = np.zeros((6, 6))
    expected[rows, cols] = 1 / 6
    np.testing.assert_allclose(matching, expected, atol=1e-12)
    a, b = rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(3))
    uneven = exact_matching(cost[:4, :3], 2 * a, 5 * b)  # marginals are normalised first
    np.testing.assert_allclose(uneven, ot.emd(a, b, cost[:4, :3]), atol=1e-12)
    assert np.count_nonzero(uneven > 1e-12) <= 4 + 3 - 1  # a vertex of the transport polytope


def test_diagonal_order_puts_a_permutation_on_the_diagonal():
    perm = np.array([3, 0, 4, 1, 2])
    matching = np.zeros((5, 5))
    matching[np.arange(5), perm] = [0.3, 0.1, 0.2, 0.25, 0.15]
    rows, cols = diagonal_order(matching)
    ordered = matching[np.ix_(rows, cols)]
    np.testing.assert_allclose(np.diag(ordered), np.sort(matching.max(1))[::-1])  # heaviest first
    assert np.count_nonzero(ordered - np.diag(np.diag(ordered))) == 0
    rows, cols = diagonal_order(matching, row_keys=[2, 0, 1, 4, 3])  # by the rows' labels instead
    assert rows.tolist() == [1, 2, 0, 4, 3] and cols.tolist() == perm[[1, 2, 0, 4, 3]].tolist()


def test_unequal_sizes_keep_every_row_and_column():
    m = np.array([[0.2, 0.0, 0.1], [0.0, 0.3, 0.0], [0.0, 0.0, 0.1], [0.3, 0.0, 0.0]])
    rows, cols = diagonal_order(m)
    assert sorted(rows.tolist()) == [0, 1, 2, 3] and sorted(cols.tolist()) == [0, 1, 2]


def test_correspondences_recover_a_renumbering_and_describe_it():
    perm = np.array([2, 4, 0, 1, 3])
    protos = _prototypes(perm)
    view = solve_plan(protos, ModelConfig(), lambda_ot=0.01)
    inverse = np.argsort(perm)  # a's prototype i is b's prototype inverse[i]
    members = pd.DataFrame(
        [{"modality": "a", "prototype": i, "size": 10, "majority_label": f"c{i}", "purity": 0.9} for i in range(5)]
        + [{"modality": "b", "prototype": j, "size": 8, "majority_label": f"c{perm[j]}", "purity": 0.8}
           for j in range(5)])
    pair = correspondences(view, members, label_order=[f"c{i}" for i in range(5)])[("a", "b")]
    np.testing.assert_allclose(pair.matching, ot.emd(view.marginals["a"], view.marginals["b"],
                                                     view.pair_costs[("a", "b")]), atol=1e-12)
    assert {(int(r["a prototype"]), int(r["b prototype"])) for _, r in pair.table.iterrows()} == \
        {(i, int(inverse[i])) for i in range(5)}
    assert pair.table["same majority"].all() and agreement({("a", "b"): pair}) == 1.0
    assert pair.row_order.tolist() == [0, 1, 2, 3, 4] and pair.col_order.tolist() == inverse.tolist()
    assert np.count_nonzero(pair.ordered(pair.matching) - np.diag(np.diag(pair.ordered(pair.matching)))) == 0
    assert pair.diagonal_share > 0.99  # at a small entropy setting the plan is the matching
    row = pair.table[pair.table["a prototype"] == 3].iloc[0]
    assert row["sentence"] == f"a prototype 3 ↔ b prototype {inverse[3]}: both mostly c3 (purity 0.90 / 0.80), mass 0.200"


def test_sentences_for_disagreeing_empty_and_unlabelled_prototypes():
    assert correspondence_sentence("fourier", 3, ("4", 0.9, 12), "karhunen", 7, ("9", 0.6, 5), 0.05) == (
        "fourier prototype 3 ↔ karhunen prototype 7: different majorities, 4 (purity 0.90) and 9 (purity 0.60), "
        "mass 0.050")
    assert correspondence_sentence("a", 0, (None, float("nan"), 0), "b", 1, ("x", 1.0, 3), 0.01) == (
        "a prototype 0 ↔ b prototype 1: a prototype 0 has no training sample, mass 0.010")
    assert correspondence_sentence("a", 0, (None, float("nan"), 4), "b", 1, (None, float("nan"), 4), 0.01) == (
        "a prototype 0 ↔ b prototype 1: labels unknown, mass 0.010")


def test_purities_come_from_the_given_features_with_class_names():
    protos = _prototypes(np.arange(5))
    means = protos["a"].means.numpy()
    features = {m: np.repeat(means, 4, axis=0) for m in ("a", "b")}  # 4 samples on each prototype's mean
    labels = np.repeat(np.arange(5), 4)
    labels[0] = 4  # one of prototype 0's four samples is labelled otherwise
    names = ["zero", "one", "two", "three", "four"]
    table = prototype_table(features, protos, label_groups(labels, "classification", names))
    first = table[(table.modality == "a") & (table.prototype == 0)].iloc[0]
    assert first["majority_label"] == "zero" and first["purity"] == pytest.approx(0.75) and first["size"] == 4


def test_main_flows_keep_the_largest_flows_of_each_prototype_and_say_how_much_is_shown():
    plan = np.array([[0.30, 0.05, 0.00], [0.01, 0.20, 0.09], [0.10, 0.004, 0.246]])
    matching = np.array([[0.35, 0.0, 0.0], [0.0, 0.25, 0.05], [0.06, 0.0, 0.29]])
    pair = correspondences_stub("a", "b", plan, matching)
    links, share = main_flows({("a", "b"): pair}, ["a", "b"], exact=False, per_node=1)
    assert links[["source", "target"]].values.tolist() == [["a:0", "b:0"], ["a:1", "b:1"], ["a:2", "b:2"]]
    assert share == pytest.approx((0.30 + 0.20 + 0.246) / plan.sum())
    links, share = main_flows({("a", "b"): pair}, ["b", "a"], exact=True, per_node=2)  # the pair read backwards
    assert set(map(tuple, links[["source", "target"]].values.tolist())) == {
        ("b:0", "a:0"), ("b:0", "a:2"), ("b:1", "a:1"), ("b:2", "a:2"), ("b:2", "a:1")}
    assert share == pytest.approx(1.0)  # the exact matching has at most 2 flows per prototype here


def correspondences_stub(a, b, plan, matching):
    from decalign.explain.correspondence import PairCorrespondence

    k = np.arange(plan.shape[0])
    return PairCorrespondence(a, b, plan, matching, np.zeros_like(plan), k, k, pd.DataFrame())
