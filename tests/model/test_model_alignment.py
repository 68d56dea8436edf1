"""Alignment losses against hand-written numpy, and the five levels of a real forward pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.stats import skew

from decalign.model import (
    DecAlign,
    Prototypes,
    decoupling_loss,
    decoupling_per_sample,
    gaussian_mmd,
    moment_matching_loss,
    moments,
    official_moment_distance,
    sample_to_prototype_loss,
)
from tests.model.helpers import random_inputs, small_config


def test_decoupling_loss_is_mean_squared_cosine_of_flattened_sequences():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(4, 3, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, 5, generator=g,
                                                                                dtype=torch.float64)
    uf, cf = u.reshape(4, -1).numpy(), c.reshape(4, -1).numpy()
    cos = (uf * cf).sum(1) / np.linalg.norm(uf, axis=1) / np.linalg.norm(cf, axis=1)
    assert float(decoupling_loss(u, c)) == pytest.approx(float((cos**2).mean()), rel=1e-12)
    np.testing.assert_allclose(decoupling_per_sample(u, c).numpy(), cos**2, rtol=1e-12)
    assert float(decoupling_loss(u, -2.5 * u)) == pytest.approx(1.0, rel=1e-12)  # parallel, either sign
    orth = torch.zeros(2, 2, 2, dtype=torch.float64)
    orth[:, 0, 0] = 1.0
    other = torch.zeros_like(orth)
    other[:, 1, 1] = 3.0
    assert float(decoupling_loss(orth, other)) == 0.0


def test_decoupling_gradient_equals_autograd_through_torchs_cosine_similarity():
    g = torch.Generator().manual_seed(1)
    u, c = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    u[4] = 0.0  # a zero row: its norm is clamped, as torch clamps it
    weights = torch.rand(5, generator=g, dtype=torch.float64)

    def torch_reference(u, c):
        return torch.nn.functional.cosine_similarity(u.reshape(5, -1), c.reshape(5, -1), dim=1, eps=1e-8).pow(2)

    grads = []
    for fn in (decoupling_per_sample, torch_reference):
        leaves = u.clone().requires_grad_(), c.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(*leaves) * weights).sum(), leaves))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    assert float(grads[0][0][0].abs().max()) > 0.01  # a real gradient, not zeros on both sides
    assert torch.autograd.gradcheck(decoupling_per_sample, (u[:4].clone().requires_grad_(), c[:4].clone().requires_grad_()))


def test_gaussian_mmd_equals_the_biased_v_statistic():
    rng = np.random.default_rng(1)
    x, y, s = rng.normal(size=(6, 3)), rng.normal(0.5, 1.2, size=(8, 3)), 1.7

    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * s * s)).mean()

    expected = k(x, x) + k(y, y) - 2 * k(x, y)
    assert float(gaussian_mmd(torch.from_numpy(x), torch.from_numpy(y), s)) == pytest.approx(expected, rel=1e-10)
    assert float(gaussian_mmd(torch.from_numpy(x), torch.from_numpy(x), s)) == 0.0


def test_moments_and_moment_matching_equal_numpy():
    rng = np.random.default_rng(2)
    za, zb = rng.gamma(2.0, size=(40, 3)), rng.normal(size=(30, 3))
    mean, cov, sk = moments(torch.from_numpy(za))
    np.testing.assert_allclose(mean.numpy(), za.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(za.T, bias=True), rtol=1e-10)
    np.testing.assert_allclose(sk.numpy(), skew(za, axis=0, bias=True), rtol=1e-5)  # eps=1e-6 in var

    def parts(z):
        return z.mean(0), np.cov(z.T, bias=True), skew(z, axis=0, bias=True)

    expected = sum(((p - q) ** 2).sum() for p, q in zip(parts(za), parts(zb)))
    ours = float(moment_matching_loss(torch.from_numpy(za), torch.from_numpy(zb)))
    assert ours == pytest.approx(expected, rel=1e-5)
    assert float(moment_matching_loss(torch.from_numpy(za), torch.from_numpy(za))) == 0.0


def test_moments_of_a_single_sample_are_finite():
    _mean, cov, sk = moments(torch.tensor([[1.0, 2.0]]))
    assert torch.equal(cov, torch.zeros(2, 2)) and torch.equal(sk, torch.zeros(2))


def test_sample_to_prototype_loss_carries_posteriors_through_the_plan():
    rng = np.random.default_rng(3)
    feats, post = rng.normal(size=(5, 2)), rng.dirichlet(np.ones(3), size=5)
    other_means = rng.normal(size=(4, 2))
    plan = rng.uniform(size=(3, 4))
    plan /= plan.sum()
    own = Prototypes(torch.zeros(3, 2), torch.ones(3, 2), torch.ones(3) / 3, torch.from_numpy(post))
    other = Prototypes(torch.from_numpy(other_means), torch.ones(4, 2), torch.ones(4) / 4)
    carried = post @ (plan / plan.sum(1, keepdims=True))
    dist = ((feats[:, None] - other_means[None]) ** 2).sum(-1)
    expected = (carried * dist).sum(1).mean()
    ours = sample_to_prototype_loss(torch.from_numpy(feats), own, other, torch.from_numpy(plan))
    assert float(ours) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("objective", ["official", "studio"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_level_of_a_forward_pass_is_combined_from_its_parts(seed, objective, widths):
    torch.manual_seed(seed)
    model = DecAlign(small_config(objective=objective), widths, 1).train()
    with torch.no_grad():
        out = model(random_inputs(widths, batch=8, seed=seed))
    levels = out.alignment
    assert levels.objective == objective
    for name, value in levels.as_floats().items():  # official transport holds the (negative) entropy term
        assert np.isfinite(value) and (value >= 0 or (objective, name) == ("official", "prototype_transport")), name
    for per in (levels.decoupling_per_modality, levels.sample_to_prototype_per_pair,
                levels.moment_matching_per_pair, levels.mmd_per_pair):
        assert all(float(v) >= -1e-7 for v in per.values())
    plan, cost, reg = out.transport.plan, out.transport.cost, float(out.transport.reg)
    assert float(out.transport.transport_cost) == pytest.approx(float((plan * cost).sum()), rel=1e-6)
    entropy = reg * float((plan * (plan.clamp_min(1e-8).log() - 1)).sum()) if objective == "official" else 0.0
    assert float(levels.prototype_transport) == pytest.approx(float((plan * cost).sum()) + entropy, rel=1e-5)
    # the levels combine their per-modality / per-pair parts: means (official) or sums (studio)
    order = model.modalities
    assert set(levels.sample_to_prototype_per_pair) == set(itertools.permutations(order, 2))
    assert set(levels.mmd_per_pair) == set(itertools.combinations(order, 2))
    combine = (lambda v: sum(v) / len(v)) if objective == "official" else sum
    for total, parts in ((levels.decoupling, levels.decoupling_per_modality), (levels.mmd, levels.mmd_per_pair),
                         (levels.sample_to_prototype, levels.sample_to_prototype_per_pair),
                         (levels.moment_matching, levels.moment_matching_per_pair)):
        assert float(total) == pytest.approx(combine([float(v) for v in parts.values()]), rel=1e-6)
    assert float(levels.heterogeneity) == pytest.approx(float(levels.prototype_transport
                                                              + levels.sample_to_prototype))
    # each pairwise term is the function of the distribution-encoder outputs it claims to be
    a, b = order[0], order[2]
    distance = official_moment_distance if objective == "official" else moment_matching_loss
    expected = distance(out.distribution[a], out.distribution[b])
    assert float(levels.moment_matching_per_pair[(a, b)]) == pytest.approx(float(expected), rel=1e-6)
