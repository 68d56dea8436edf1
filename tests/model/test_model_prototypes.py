"""Diagonal Gaussian-mixture prototypes (EM), against numpy, scipy and scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from decalign.model import DecAlign, Prototypes, fit_gmm, gaussian_log_likelihood, posteriors
from tests.model.helpers import random_inputs, small_config


def test_log_likelihood_equals_scipy_diagonal_normal():
    rng = np.random.default_rng(0)
    x, means, variances = rng.normal(size=(7, 3)), rng.normal(size=(4, 3)), rng.uniform(0.2, 2, (4, 3))
    ours = gaussian_log_likelihood(*(torch.from_numpy(a) for a in (x, means, variances))).numpy()
    expected = np.stack([multivariate_normal(means[k], np.diag(variances[k])).logpdf(x) for k in range(4)], 1)
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def test_posteriors_are_bayes_rule_with_mixture_weights():
    rng = np.random.default_rng(1)
    x, means, variances = rng.normal(size=(5, 2)), rng.normal(size=(3, 2)), rng.uniform(0.5, 2, (3, 2))
    weights = np.array([0.2, 0.5, 0.3])
    proto = Prototypes(*(torch.from_numpy(a) for a in (means, variances, weights)))
    dens = np.stack([weights[k] * multivariate_normal(means[k], np.diag(variances[k])).pdf(x)
                     for k in range(3)], 1)
    np.testing.assert_allclose(posteriors(torch.from_numpy(x), proto).numpy(),
                               dens / dens.sum(1, keepdims=True), rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_variances_of_large_offset_features_match_numpy(dtype):
    # 1e4 + noise of std 1e-2: E[x^2] - mu^2 would cancel catastrophically (to garbage or < 0).
    g = torch.Generator().manual_seed(2)
    x = (1e4 + 1e-2 * torch.randn(500, 5, generator=g, dtype=torch.float64)).to(dtype)
    fitted = fit_gmm(x, 1, iterations=3, var_floor=1e-12)
    expected = np.var(x.double().numpy(), axis=0)
    np.testing.assert_allclose(fitted.variances[0].double().numpy(), expected, rtol=1e-3)
    np.testing.assert_allclose(fitted.means[0].double().numpy(), x.double().numpy().mean(0), rtol=0, atol=1e-3)
    several = fit_gmm(x, 4, iterations=5, var_floor=1e-12)
    assert (several.variances > 0).all()
    assert torch.isfinite(several.posteriors).all()


def test_fewer_samples_than_prototypes():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    fitted = fit_gmm(x, 7, iterations=5, var_floor=1e-4)
    assert fitted.means.shape == (7, 4) and fitted.variances.shape == (7, 4) and fitted.weights.shape == (7,)
    assert fitted.posteriors.shape == (3, 7)
    for t in (fitted.means, fitted.variances, fitted.weights, fitted.posteriors):
        assert torch.isfinite(t).all()
    assert (fitted.variances >= 1e-4).all()
    torch.testing.assert_close(fitted.weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(fitted.posteriors.sum(1), torch.ones(3))


def test_model_with_batch_smaller_than_number_of_prototypes(widths):
    torch.manual_seed(0)
    model = DecAlign(small_config(num_prototypes=7), widths, 1).train()
    out = model(random_inputs(widths, batch=3))
    assert out.transport.plan.shape == (7, 7, 7)
    assert torch.isfinite(out.prediction).all()
    for name, value in out.alignment.as_floats().items():
        assert np.isfinite(value), name
    loss = out.prediction.sum() + sum(getattr(out.alignment, n) for n in out.alignment.LEVELS)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_em_finds_the_same_means_as_scikit_learn_on_separated_clusters():
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 10, size=(3, 5))
    scales = (0.5, 0.8, 1.1)
    data = np.concatenate([c + s * rng.normal(size=(80 + 20 * i, 5))
                           for i, (c, s) in enumerate(zip(centres, scales))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = GaussianMixture(3, covariance_type="diag", reg_covar=1e-6, tol=1e-10, max_iter=500,
                             random_state=0).fit(data)
    ours = fit_gmm(torch.from_numpy(data), 3, iterations=50, var_floor=1e-6)
    cost = ((ours.means.numpy()[:, None] - sk.means_[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    spread = float(np.ptp(data, axis=0).max())
    np.testing.assert_allclose(ours.means.numpy()[rows], sk.means_[cols], atol=1e-3 * spread)
    np.testing.assert_allclose(ours.weights.numpy()[rows], sk.weights_[cols], atol=1e-3)
    np.testing.assert_allclose(ours.variances.numpy()[rows], sk.covariances_[cols], rtol=1e-2)
    # and the clusters themselves are recovered: each fitted mean sits on a true centre
    dist = np.sqrt(((ours.means.numpy()[:, None] - centres[None]) ** 2).sum(-1)).min(1)
    assert (dist < 0.5).all()


def test_em_gradients_reach_the_features():
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(5), requires_grad=True)
    fitted = fit_gmm(x, 3)
    (fitted.means.sum() + fitted.variances.sum() + (fitted.posteriors[:, 0] ** 2).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        fit_gmm(torch.zeros(0, 3), 2)
