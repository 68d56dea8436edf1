"""Gaussian costs and multi-marginal log-domain Sinkhorn, checked against POT and against the
optimality conditions of the entropic problem."""

from __future__ import annotations

import numpy as np
import ot
import ot.gmm
import pytest
import torch

from decalign.config import ModelConfig
from decalign.model import (
    Prototypes,
    fit_gmm,
    gaussian_cost,
    joint_cost,
    multimarginal_sinkhorn,
    plan_entropy,
    transport_plan,
)

# The studio objective's transport (scale-free lambda, sweeps to a tolerance, envelope gradient); the
# official one is tested against the official re-implementation in test_model_objective.py.
DEFAULTS = ModelConfig(objective="studio")  # lambda_ot 0.1 (relative), up to 50 sweeps, tolerance 1e-6


def simplex(k: int, g: torch.Generator) -> torch.Tensor:
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    return w / w.sum()


def marginal(plan: torch.Tensor, axis: int) -> torch.Tensor:
    return plan.sum(dim=[i for i in range(plan.dim()) if i != axis])


# ----------------------------------------------------------------------------- Sinkhorn


@pytest.mark.parametrize("reg", [0.5, 0.05])
def test_two_modality_plan_equals_pot_sinkhorn(reg):
    g = torch.Generator().manual_seed(0)
    a, b = simplex(5, g), simplex(6, g)
    cost = torch.rand(5, 6, generator=g, dtype=torch.float64)
    ours = multimarginal_sinkhorn(cost, [a, b], reg, max_iter=20000, tol=1e-13)
    pot = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg, numItermax=200000, stopThr=1e-15)
    assert ours.converged and ours.iterations < 20000
    assert ours.plan.dtype == torch.float64
    np.testing.assert_allclose(ours.plan.numpy(), pot, atol=1e-9, rtol=0)


def test_huge_cost_to_reg_ratio_stays_finite_and_matches_pot():
    # exp(-C / reg) underflows to 0 once C / reg > ~745: a plain-domain solver would divide 0 by 0.
    # A constant added to the cost does not change the optimal plan, so POT on the unshifted cost is
    # the reference.
    g = torch.Generator().manual_seed(1)
    a, b = simplex(4, g), simplex(5, g)
    cost = torch.rand(4, 5, generator=g, dtype=torch.float64)
    reg = 0.5
    ours = multimarginal_sinkhorn(cost + 1000.0, [a, b], reg, max_iter=20000, tol=1e-13)
    pot = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), reg, numItermax=200000, stopThr=1e-15)
    assert torch.isfinite(ours.plan).all() and ours.converged
    np.testing.assert_allclose(ours.plan.numpy(), pot, atol=1e-9, rtol=0)


def test_three_modality_plan_has_requested_marginals_and_gibbs_form():
    g = torch.Generator().manual_seed(2)
    sizes = (3, 4, 5)
    margins = [simplex(k, g) for k in sizes]
    pairs = {(0, 1): torch.rand(3, 4, generator=g, dtype=torch.float64),
             (0, 2): torch.rand(3, 5, generator=g, dtype=torch.float64),
             (1, 2): torch.rand(4, 5, generator=g, dtype=torch.float64)}
    cost = joint_cost(pairs, 3)
    reg = 0.1
    result = multimarginal_sinkhorn(cost, margins, reg, max_iter=5000, tol=1e-10)
    assert result.converged and 1 <= result.iterations < 5000
    for axis, target in enumerate(margins):
        torch.testing.assert_close(marginal(result.plan, axis), target, atol=1e-5, rtol=0)
    # The reported error is the largest L1 gap between a plan marginal and its target.
    gaps = [float((marginal(result.plan, i) - m).abs().sum()) for i, m in enumerate(margins)]
    assert result.marginal_error == pytest.approx(max(gaps), abs=1e-12)
    assert result.marginal_error <= 1e-10
    # Entropic optimum <=> P = exp((f1 + f2 + f3 - C) / reg): log P + C / reg is additively separable.
    h = torch.log(result.plan) + cost / reg
    separable = h[:, :1, :1] + h[:1, :, :1] + h[:1, :1, :] - 2 * h[:1, :1, :1]
    torch.testing.assert_close(h, separable, atol=1e-8, rtol=0)
    # And the potentials returned are the ones that build the plan.
    f = result.potentials
    rebuilt = torch.exp((f[0][:, None, None] + f[1][None, :, None] + f[2][None, None, :] - cost) / reg)
    torch.testing.assert_close(rebuilt, result.plan, atol=1e-12, rtol=1e-9)


def test_joint_cost_is_the_sum_of_pairwise_costs():
    g = torch.Generator().manual_seed(3)
    ab, ac, bc = torch.rand(2, 3, generator=g), torch.rand(2, 4, generator=g), torch.rand(3, 4, generator=g)
    cost = joint_cost({(0, 1): ab, (0, 2): ac, (1, 2): bc}, 3)
    assert cost.shape == (2, 3, 4)
    assert cost[1, 2, 3] == pytest.approx(float(ab[1, 2] + ac[1, 3] + bc[2, 3]), rel=1e-6)
    assert cost[0, 1, 0] == pytest.approx(float(ab[0, 1] + ac[0, 0] + bc[1, 0]), rel=1e-6)


def test_one_iteration_on_a_hard_problem_reports_not_converged():
    g = torch.Generator().manual_seed(4)
    a, b, c = simplex(6, g), simplex(6, g), simplex(6, g)
    cost = joint_cost({(0, 1): torch.rand(6, 6, generator=g, dtype=torch.float64),
                       (0, 2): torch.rand(6, 6, generator=g, dtype=torch.float64),
                       (1, 2): torch.rand(6, 6, generator=g, dtype=torch.float64)}, 3)
    result = multimarginal_sinkhorn(cost, [a, b, c], 0.01, max_iter=1, tol=1e-9)
    assert result.iterations == 1
    assert not result.converged
    assert result.marginal_error > 1e-9
    # The error reported is the true one (the last marginal updated is exact, the others are not).
    gaps = [float((marginal(result.plan, i) - m).abs().sum()) for i, m in enumerate([a, b, c])]
    assert result.marginal_error == pytest.approx(max(gaps), rel=1e-9)


def test_check_every_only_tests_convergence_on_multiples():
    g = torch.Generator().manual_seed(5)
    a, b = simplex(4, g), simplex(4, g)
    cost = torch.rand(4, 4, generator=g, dtype=torch.float64)
    result = multimarginal_sinkhorn(cost, [a, b], 0.05, max_iter=1000, tol=1e-10, check_every=7)
    assert result.converged and result.iterations % 7 == 0


def test_wrong_number_of_marginals_is_an_error():
    with pytest.raises(ValueError, match="3 dimensions but 2 marginals"):
        multimarginal_sinkhorn(torch.zeros(2, 2, 2), [torch.ones(2) / 2] * 2, 0.1)


# ----------------------------------------------------------------------------- Gaussian cost


def test_gaussian_cost_is_never_negative_and_zero_on_identical_gaussians():
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        means = torch.randn(6, 4, generator=g) * 100
        variances = torch.rand(6, 4, generator=g) * 10 + 1e-8
        other_v = variances + 1e-7 * torch.rand(6, 4, generator=g)  # near-identical: round-off territory
        assert (gaussian_cost(means, variances, means, other_v) >= 0).all()
        assert (gaussian_cost(means, variances, torch.randn(3, 4, generator=g), variances[:3]) >= 0).all()
        same = gaussian_cost(means, variances, means, variances)
        assert torch.equal(torch.diagonal(same), torch.zeros(6))


def test_gaussian_cost_equals_pot_bures_for_diagonal_covariances():
    rng = np.random.default_rng(7)
    m_s, m_t = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    v_s, v_t = rng.uniform(0.1, 3.0, size=(4, 3)), rng.uniform(0.1, 3.0, size=(5, 3))
    expected = ot.gmm.dist_bures_squared(m_s, m_t, np.stack([np.diag(v) for v in v_s]),
                                         np.stack([np.diag(v) for v in v_t]))
    ours = gaussian_cost(*(torch.from_numpy(x) for x in (m_s, v_s, m_t, v_t)))
    assert ours.shape == (4, 5)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- transport_plan


def random_prototypes(names, k=4, d=3, seed=0, scale=1.0) -> dict[str, Prototypes]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in names:
        post = torch.softmax(torch.randn(10, k, generator=g), dim=1)
        out[m] = Prototypes(scale * torch.randn(k, d, generator=g),
                            scale**2 * (torch.rand(k, d, generator=g) + 0.1),
                            post.mean(0), post)
    return out


def test_transport_cost_is_plan_times_cost_and_marginals_are_mean_posteriors():
    protos = random_prototypes(["a", "b", "c"])
    result = transport_plan(protos, DEFAULTS)
    assert result.plan.shape == (4, 4, 4)
    assert float(result.transport_cost) == pytest.approx(float((result.plan * result.cost).sum()), rel=1e-6)
    assert float(result.transport_cost) >= 0
    for i, m in enumerate(["a", "b", "c"]):
        torch.testing.assert_close(result.marginals[m], protos[m].posteriors.mean(0))
        torch.testing.assert_close(marginal(result.plan, i), result.marginals[m], atol=1e-5, rtol=0)
    assert result.converged and result.marginal_error <= 1e-6
    # pair costs are the Bures costs, the joint cost their broadcast sum
    pc = result.pair_costs
    assert set(pc) == {("a", "b"), ("a", "c"), ("b", "c")}
    torch.testing.assert_close(pc[("a", "c")], gaussian_cost(protos["a"].means, protos["a"].variances,
                                                            protos["c"].means, protos["c"].variances))
    torch.testing.assert_close(result.cost[2, 1, 3], pc[("a", "b")][2, 1] + pc[("a", "c")][2, 3]
                               + pc[("b", "c")][1, 3])
    # pair plans are two-way marginals of the joint plan, transposed for the reversed order
    order = ["a", "b", "c"]
    torch.testing.assert_close(result.pair_plan("a", "c", order), result.plan.sum(1))
    torch.testing.assert_close(result.pair_plan("c", "a", order), result.plan.sum(1).T)


@pytest.mark.parametrize("scale", [0.01, 1.0, 1000.0])
def test_plan_is_scale_free_and_marginals_hold_at_any_cost_scale(scale):
    base = transport_plan(random_prototypes(["a", "b", "c"]), DEFAULTS)
    protos = random_prototypes(["a", "b", "c"], scale=scale)
    for p in protos.values():
        p.means.requires_grad_(True)
    result = transport_plan(protos, DEFAULTS)
    # cost scales by scale^2 and reg = lambda * mean(C) follows it, so the plan is the same
    torch.testing.assert_close(result.plan, base.plan, atol=1e-5, rtol=1e-4)
    for i, m in enumerate(protos):
        torch.testing.assert_close(marginal(result.plan, i), result.marginals[m].detach(), atol=1e-5, rtol=0)
    result.transport_cost.backward()
    for p in protos.values():
        assert torch.isfinite(p.means.grad).all() and p.means.grad.abs().sum() > 0


@pytest.mark.parametrize("scale", [0.01, 1.0, 1000.0])
def test_transport_plan_on_fitted_mixtures_at_any_feature_scale(scale):
    g = torch.Generator().manual_seed(8)
    feats = {m: (scale * torch.randn(24, 6, generator=g)).requires_grad_(True) for m in ("x", "y", "z")}
    protos = {m: fit_gmm(f, 4) for m, f in feats.items()}
    result = transport_plan(protos, DEFAULTS)
    for i, m in enumerate(protos):
        torch.testing.assert_close(marginal(result.plan, i), result.marginals[m].detach(), atol=1e-5, rtol=0)
    assert torch.isfinite(result.transport_cost)
    result.transport_cost.backward()
    for f in feats.values():
        assert torch.isfinite(f.grad).all()


def test_transport_gradient_is_the_plan_with_respect_to_the_cost():
    protos = random_prototypes(["a", "b"], k=3, d=2, seed=9)
    means = protos["a"].means.requires_grad_(True)
    result = transport_plan(protos, ModelConfig(lambda_ot=0.1, ot_num_iters=200, ot_tol=1e-9, objective="studio"))
    result.transport_cost.backward()
    # envelope rule: d<P,C>/d mu_a = sum_j P_ij * dC_ij/d mu_a = sum_j P_ij * 2 (mu_a_i - mu_b_j)
    diff = means.detach()[:, None, :] - protos["b"].means[None, :, :]
    expected = (2 * result.plan[:, :, None] * diff).sum(1)
    torch.testing.assert_close(means.grad, expected, atol=1e-6, rtol=1e-5)


def test_settings_come_from_the_config_and_lambda_can_be_overridden():
    protos = random_prototypes(["a", "b", "c"], seed=3)
    capped = transport_plan(protos, ModelConfig(ot_num_iters=2, ot_tol=1e-12, objective="studio"))
    assert capped.iterations == 2 and not capped.converged
    loose = transport_plan(protos, ModelConfig(lambda_ot=0.1, ot_num_iters=500, ot_tol=1e-10, objective="studio"), lambda_ot=5.0)
    sharp = transport_plan(protos, ModelConfig(lambda_ot=5.0, ot_num_iters=500, ot_tol=1e-10, objective="studio"), lambda_ot=0.05)
    assert float(loose.reg) == pytest.approx(5.0 * float(loose.cost.mean()))
    assert plan_entropy(sharp.plan) < plan_entropy(loose.plan)
    with pytest.raises(ValueError, match="lambda_ot must be positive"):
        transport_plan(protos, DEFAULTS, lambda_ot=0.0)
    with pytest.raises(ValueError, match="at least two modalities"):
        transport_plan({"a": protos["a"]}, DEFAULTS)


def test_default_and_given_marginals():
    protos = random_prototypes(["a", "b"], k=3, seed=4)
    weights_only = {m: Prototypes(p.means, p.variances, 2 * p.weights) for m, p in protos.items()}
    result = transport_plan(weights_only, DEFAULTS)
    torch.testing.assert_close(result.marginals["a"], protos["a"].weights / protos["a"].weights.sum())
    given = {"a": torch.tensor([2.0, 1.0, 1.0]), "b": torch.tensor([1.0, 1.0, 2.0])}
    result = transport_plan(weights_only, DEFAULTS, marginals=given)
    torch.testing.assert_close(result.marginals["b"], torch.tensor([0.25, 0.25, 0.5]))
    with pytest.raises(ValueError, match="marginal of 'a'"):
        transport_plan(weights_only, DEFAULTS, marginals={"a": torch.tensor([1.0, -1.0, 1.0])})


def test_plan_entropy_by_hand():
    assert plan_entropy(np.full((2, 3), 1 / 6)) == pytest.approx(np.log(6))
    assert plan_entropy(torch.tensor([[0.5, 0.0], [0.0, 0.5]])) == pytest.approx(np.log(2))  # 0 log 0 = 0
    assert plan_entropy(np.array([2.0, 2.0])) == pytest.approx(np.log(2))  # normalised first
    with pytest.raises(ValueError, match="no mass"):
        plan_entropy(np.zeros(3))
