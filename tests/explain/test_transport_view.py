import itertools

import numpy as np
import ot
import pytest
import torch

from decalign.config import ModelConfig
from decalign.explain import transport_view as tv
from decalign.model import Prototypes, gaussian_cost, official_gaussian_cost, plan_entropy

# solved to convergence, for comparisons with POT: the studio plan (reg relative to the mean cost) and the
# official one (absolute reg, the official cost)
PRECISE = ModelConfig(ot_num_iters=5000, ot_tol=1e-12, objective="studio")
OFFICIAL = ModelConfig(ot_num_iters=5000, ot_tol=1e-12)


def _prototypes(sizes, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, k in enumerate(sizes):
        w = torch.rand(k, generator=gen, dtype=torch.float64) + 0.2
        out[f"m{i}"] = Prototypes(torch.randn(k, d, generator=gen, dtype=torch.float64) * 2,
                                  torch.rand(k, d, generator=gen, dtype=torch.float64) + 0.1, w / w.sum())
    return out


def test_two_modality_plan_equals_pot_sinkhorn():
    protos = _prototypes([4, 5])
    view = tv.solve_plan(protos, PRECISE, lambda_ot=0.1)
    a, b = protos["m0"], protos["m1"]
    cost = gaussian_cost(a.means, a.variances, b.means, b.variances).numpy()
    expected = ot.sinkhorn(a.weights.numpy(), b.weights.numpy(), cost, reg=0.1 * cost.mean(),
                           method="sinkhorn_log", numItermax=5000, stopThr=1e-12)
    np.testing.assert_allclose(view.plan, expected, atol=1e-9)
    np.testing.assert_allclose(view.pair_plans[("m0", "m1")], expected, atol=1e-9)
    assert view.converged and view.transport_cost == pytest.approx(float((expected * cost).sum()), abs=1e-8)


def test_official_two_modality_plan_equals_pot_sinkhorn_with_the_absolute_lambda():
    protos = _prototypes([4, 5])
    view = tv.solve_plan(protos, OFFICIAL, lambda_ot=0.1)
    a, b = protos["m0"], protos["m1"]
    cost = official_gaussian_cost(a.means, a.variances, b.means, b.variances).numpy()
    expected = ot.sinkhorn(a.weights.numpy(), b.weights.numpy(), cost, reg=0.1, method="sinkhorn_log",
                           numItermax=5000, stopThr=1e-13)
    np.testing.assert_allclose(view.plan, expected, atol=1e-7)  # the official 1e-8 guard stays in
    assert view.reg == 0.1 and view.iterations == 5000
    assert (view.cost_name, view.lambda_unit) == (tv.COST_NAMES["official"], tv.LAMBDA_UNITS["official"])
    assert tv.solve_plan(protos, PRECISE, lambda_ot=0.1).cost_name == "Bures W2²"


def test_pair_plans_have_the_target_marginals():
    protos = _prototypes([3, 4, 5])
    target = {"m0": np.array([0.5, 0.3, 0.2]), "m1": np.full(4, 0.25), "m2": np.arange(1, 6) / 15}
    view = tv.solve_plan(protos, PRECISE, target, lambda_ot=0.2)
    assert view.converged and view.marginal_error < 1e-8
    assert view.plan.shape == (3, 4, 5) and view.plan.sum() == pytest.approx(1.0)
    for a, b in itertools.combinations(view.order, 2):
        pair = view.pair_plans[(a, b)]
        np.testing.assert_allclose(pair.sum(1), target[a], atol=1e-8)
        np.testing.assert_allclose(pair.sum(0), target[b], atol=1e-8)
    # the joint cost is the sum of pair costs, so <P, C> = sum over pairs of <P_ab, C_ab>
    by_pair = sum((view.pair_plans[p] * view.pair_costs[p]).sum() for p in view.pair_costs)
    assert view.transport_cost == pytest.approx(by_pair, rel=1e-10)


def test_default_marginals_are_the_normalised_weights():
    protos = _prototypes([3, 3])
    view = tv.solve_plan(protos, PRECISE, lambda_ot=0.5)
    np.testing.assert_allclose(view.marginals["m1"], protos["m1"].weights.numpy())
    with pytest.raises(ValueError, match="marginal of 'm0'"):
        tv.solve_plan(protos, PRECISE, {"m0": np.array([1.0, -1.0, 1.0])}, lambda_ot=0.5)


def test_entropy_and_cost_decrease_with_lambda():
    protos = _prototypes([4, 4, 3])
    sweep = tv.entropy_sweep(protos, PRECISE, None, [2.0, 0.5, 0.1, 0.02])
    assert (np.diff(sweep["entropy"]) < 0).all()
    assert (np.diff(sweep["transport_cost"]) <= 1e-12).all()
    # independent coupling (lambda -> inf) has entropy sum H(a_m)
    loose = tv.solve_plan(protos, PRECISE, lambda_ot=1e4)
    independent = sum(plan_entropy(p.weights.numpy()) for p in protos.values())
    assert loose.entropy == pytest.approx(independent, rel=1e-5)


def test_sankey_links_sum_to_one_per_pair_and_conserve_flow():
    protos = _prototypes([3, 4, 2])
    view = tv.solve_plan(protos, PRECISE, lambda_ot=0.3)
    links = tv.sankey_links(view, ["m2", "m0", "m1"])
    assert len(links) == 2 * 3 + 3 * 4
    for _, group in links.groupby("pair"):
        assert group["value"].sum() == pytest.approx(1.0)
    inflow = links[links.target.str.startswith("m0:")].groupby("target")["value"].sum()
    outflow = links[links.source.str.startswith("m0:")].groupby("source")["value"].sum()
    np.testing.assert_allclose(inflow.values, outflow.values, atol=1e-10)
    np.testing.assert_allclose(outflow.values, view.marginals["m0"], atol=1e-8)


def test_prototype_table_on_the_digits(test_result, digits_data):
    protos = tv.fit_prototypes(test_result, ModelConfig(num_prototypes=3))  # the official EM
    labels = tv.label_groups(test_result.labels, "classification")
    table = tv.prototype_table(test_result, protos, labels)
    assert len(table) == 3 * len(protos)
    n = len(test_result)
    for m, group in table.groupby("modality"):
        assert group["size"].sum() == n and group["share"].sum() == pytest.approx(1.0)
        assert group["mean_posterior"].sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(group["weight"], protos[m].weights.numpy(), rtol=1e-6)
    full = table.dropna(subset=["purity"])
    assert ((full.purity > 0) & (full.purity <= 1)).all()
    # purity by hand for one row
    row = table.iloc[0]
    hard = tv.assignments(test_result, protos)[row.modality].argmax(1)
    members = labels[hard == row.prototype]
    assert row.purity == pytest.approx(np.unique(members, return_counts=True)[1].max() / len(members))


def test_label_groups_for_regression_use_the_sign():
    assert list(tv.label_groups(np.array([-1.2, 0.0, 0.4]), "regression")) == ["negative", "zero", "positive"]
    assert tv.label_groups(None, "regression") is None


def test_the_view_is_the_models_plan_with_the_models_settings():
    protos = _prototypes([3, 4])
    config = ModelConfig(lambda_ot=0.3, ot_num_iters=3, ot_tol=1e-12, objective="studio")
    view = tv.solve_plan(protos, config)
    assert view.lambda_ot == 0.3 and view.iterations == 3 and not view.converged  # the cap, as in training
    assert view.reg == pytest.approx(0.3 * view.cost.mean())
    assert tv.solve_plan(protos, config, lambda_ot=0.05).reg == pytest.approx(0.05 * view.cost.mean())
    official = tv.solve_plan(protos, ModelConfig(lambda_ot=0.3, ot_num_iters=3, ot_tol=1e-12), lambda_ot=0.05)
    assert official.reg == 0.05 and official.iterations == 3  # absolute lambda, the official sweep count
