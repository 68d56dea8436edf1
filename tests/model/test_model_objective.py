"""The official objective, term by term and with gradients, against the independent re-implementation of
the official code (tests/reference/official_model.py), at the official configs and at input scales 1 and 3;
and the official building blocks (EM, Gaussian cost, log-domain Sinkhorn) on their own."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import ot
import pytest
import torch

from decalign.checkpoint import load_model
from decalign.config import DecAlignConfig, ModelConfig
from decalign.model import (
    DecAlign,
    Prototypes,
    fit_gmm_official,
    native,
    official_em,
    official_gaussian_cost,
    official_local_loss,
    official_local_loss_matrix,
    official_mmd_matrix,
    official_moment_distance_matrix,
    official_sinkhorn,
    transport_plan,
)
from decalign.official import import_official
from decalign.train.losses import total_loss
from tests.model.helpers import random_inputs, small_config
from tests.reference import official_model as oracle

CONFIGS = Path(__file__).resolve().parents[1] / "reference" / "official_configs"
ORDER = ("text", "audio", "vision")
DIMS = (20, 5, 7)  # text, audio, vision widths: small, and all below every official d (no skipped projection)
# official config -> (its file, the head's outputs)
OFFICIAL = {"mosi": ("dec_mosi_config.json", 1), "mosei": ("dec_mosei_config.json", 1),
            "sims": ("dec_sims_config.json", 1), "iemocap": ("iemocap_decalign_config.json", 6),
            "default": ("dec_config.json", 1)}
REL = 1e-4


def official_raw(name: str) -> dict:
    return json.loads((CONFIGS / OFFICIAL[name][0]).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (oracle model, our imported model, raw config): the same random official weights in both."""
    cache = {}

    def build(name: str):
        if name not in cache:
            raw, outputs = official_raw(name), OFFICIAL[name][1]
            torch.manual_seed(0)
            reference = oracle.OfficialDecAlign(raw, feature_dims=DIMS, output_dim=outputs).eval()
            with torch.no_grad():
                for p in reference.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            folder = tmp_path_factory.mktemp(name)
            torch.save(reference.state_dict(), folder / "model.pth")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # BERT keys of the official files
                import_official(folder / "model.pth", CONFIGS / OFFICIAL[name][0], list(DIMS), folder / "run")
            model, card = load_model(folder / "run")
            assert card.config.model.objective == "official"
            cache[name] = (reference, model, raw)
        return cache[name]

    return build


def batch(scale: float, n: int = 40, steps: int = 12, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, steps, w, generator=g) for w in DIMS]


def both(reference, model, x):
    expected = reference(*x)
    out = model(dict(zip(ORDER, x)), align=True)
    return expected, out


def in_float64(reference, x: list[torch.Tensor]) -> dict:
    with torch.no_grad():
        return copy.deepcopy(reference).double()(*[a.double() for a in x])


def relative(a, b) -> float:
    a, b = torch.as_tensor(a).detach().double(), torch.as_tensor(b).detach().double()
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_every_term_equals_the_official_one(imported, name, scale):
    reference, model, _ = imported(name)
    x = batch(scale)
    with torch.no_grad():
        expected, out = both(reference, model, x)
    lv = out.alignment
    pairs = {"dec_loss": lv.decoupling, "ot_loss": lv.prototype_transport, "local_loss": lv.sample_to_prototype,
             "sem_loss": lv.moment_matching, "mmd_loss": lv.mmd, "hete_loss": lv.heterogeneity,
             "homo_loss": lv.homogeneity}
    for key, ours in pairs.items():
        assert float(ours) == pytest.approx(float(expected[key]), rel=REL, abs=1e-7), key
    truth = in_float64(reference, x)["output_logit"]
    # at scale 3 the official float32 forward is itself up to ~1.5e-5 off its float64 forward (measured on an
    # AVX-512 EPYC): ours must be as close to the float64 truth as float32 allows, and within 1e-5 where it can be
    official_rounding = float((expected["output_logit"].double() - truth).abs().max())
    assert float((out.prediction.double() - truth).abs().max()) <= max(1e-5, 2 * official_rounding)
    torch.testing.assert_close(out.transport.plan, expected["transport_plan"], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("name", ["mosi", "mosei", "sims", "iemocap"])
def test_gradients_with_respect_to_unique_and_common_features(imported, name, scale):
    reference, model, _ = imported(name)
    expected, out = both(reference, model, batch(scale))
    theirs = [expected[f"s_{m}"] for m in "lav"] + [expected[f"c_{m}"] for m in "lav"]
    ours = [out.unique[m] for m in ORDER] + [out.common[m] for m in ORDER]
    lv = out.alignment
    for key, mine in (("dec_loss", lv.decoupling), ("hete_loss", lv.heterogeneity), ("homo_loss", lv.homogeneity)):
        want = torch.autograd.grad(expected[key], theirs, retain_graph=True, allow_unused=True)
        got = torch.autograd.grad(mine, ours, retain_graph=True, allow_unused=True)
        for i, (w, g) in enumerate(zip(want, got)):
            assert (w is None) == (g is None), (key, i)
            if w is not None:  # official features are (B, d, T), ours (B, T, d); float32 through 50 sweeps
                assert relative(w.transpose(1, 2), g) < 3e-4, (key, i)


@pytest.mark.parametrize("name", ["mosi", "sims", "iemocap"])
def test_training_objective_equals_the_official_one(imported, name):
    """Eval mode (no dropout): main loss (SIMS: with the binary term; IEMOCAP: cross-entropy) + weighted
    decoupling, heterogeneous and homogeneous terms + the contrastive term over the official bins."""
    reference, model, raw = imported(name)
    x = batch(1.0, n=24)
    classification = name == "iemocap"
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 6, (24,), generator=g) if classification else torch.randn(24, generator=g) * 2
    if not classification:
        labels[::5] = 0.0  # zero labels: left out of the binary term
    with torch.no_grad():
        expected, out = both(reference, model, x)
    card_config = model_config(raw)
    task = "classification" if classification else "regression"
    ours, terms = total_loss(out, labels, card_config.train, task)
    want = oracle.official_total_loss(expected, labels.float(), {**raw, "ct_weight": raw.get("ct_weight", 0.0)})
    assert float(ours) == pytest.approx(float(want), rel=REL)
    if name == "sims":
        assert card_config.train.binary_task_weight == 0.01 and terms["contrastive"] > 0


def model_config(raw: dict) -> DecAlignConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DecAlignConfig.from_dict(raw, "official")


def test_options_hetero_cost_sum_and_mahalanobis_local_cost(tmp_path):
    raw = oracle.official_config_dict(dst_feature_dim_nheads=[16, 4], nlevels=1, num_prototypes=4, use_bert=False)
    for key, value in (("hetero_cost_reduction", "sum"), ("local_proto_mahalanobis", True)):
        torch.manual_seed(2)
        reference = oracle.OfficialDecAlign({**raw, key: value}, feature_dims=DIMS).eval()
        config = model_config({**raw, key: value})
        assert getattr(config.model, key) == value
        ours = DecAlign(config.model, dict(zip(ORDER, DIMS))).eval()
        _load_renamed(ours, reference)
        with torch.no_grad():
            expected, out = both(reference, ours, batch(1.0))
        assert float(out.alignment.heterogeneity) == pytest.approx(float(expected["hete_loss"]), rel=REL), key


def _load_renamed(ours: DecAlign, reference) -> None:
    from decalign.official import convert_state_dict

    converted, _ = convert_state_dict(reference.state_dict(), ours.widths, ours.config.d_model)
    ours.load_state_dict(converted)


# ----------------------------------------------------------------------------- building blocks


@pytest.mark.parametrize("backend", ["native", "numpy", "torch"])
@pytest.mark.parametrize("n, floor", [(40, 1e-4), (5, 1e-4), (40, 3.0)])  # N < K: the samples repeated
def test_official_em_equals_the_reference_with_gradients(n, floor, backend, monkeypatch):
    # a hand-written backward (decalign.model.official_em) against autograd through the official loop, for
    # two mixtures fitted at once; floor 3.0 clamps some variances, so the clamps' gradients are tested too
    _use_em_backend(monkeypatch, backend)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, n, 6, generator=g, dtype=torch.float64) * torch.tensor([2.0, 0.5]).view(2, 1, 1) + 5)
    x.requires_grad_(True)
    fitted = fit_gmm_official(x, 7, iterations=5, var_floor=floor)
    upstream = [torch.randn(*t.shape, generator=g, dtype=torch.float64)
                for t in (fitted.means, fitted.variances, fitted.weights, fitted.posteriors)]
    got = torch.autograd.grad(_weighted_sum((fitted.means, fitted.variances, fitted.weights, fitted.posteriors),
                                            upstream), x)[0]
    for i in range(2):
        theirs = oracle.gmm_em(x[i], 7, 5, floor)
        ours = (fitted.means[i], fitted.variances[i], fitted.weights[i], fitted.posteriors[i])
        for mine, reference in zip(ours, theirs):
            torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-12)
        want = torch.autograd.grad(_weighted_sum(theirs, [u[i] for u in upstream]), x)[0]
        torch.testing.assert_close(got[i], want[i], rtol=1e-8, atol=1e-10)
    if floor == 3.0:
        assert bool((fitted.variances == 3.0).any()) and bool((fitted.variances > 3.0).any())


def test_official_em_step_reverse_where_a_prototype_has_no_mass():
    # a prototype with almost no responsibility: its count is clamped at 1e-6 and s_k < 1, a branch the
    # fits above do not reach; the M-step's reverse against autograd through the same step in torch
    g = torch.Generator().manual_seed(6)
    xc, centre = (torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
                  for shape in ((1, 6, 3), (1, 1, 3)))
    resp = torch.softmax(torch.randn(1, 6, 4, generator=g, dtype=torch.float64), -1)
    resp[..., 3] = 1e-8
    resp.requires_grad_(True)
    tape = official_em._Tape(xc, centre, [0], None, 0.05)
    outputs = official_em._m_step(torch, xc, centre, resp, 0.05, tape)
    assert float(tape.m_steps[0]["mass"][0, 3].detach()) < 1e-6
    upstream = [torch.randn(*t.shape, generator=g, dtype=torch.float64) for t in outputs]
    want = torch.autograd.grad(_weighted_sum(outputs, upstream), (resp, xc, centre))
    with torch.no_grad():
        got = official_em._m_reverse(torch, xc, centre, tape.m_steps[0], *upstream, 0.05)
    for mine, theirs in zip(got, want):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)


def test_official_em_on_torch_keeps_float32_under_autocast(monkeypatch):
    _use_em_backend(monkeypatch, "torch")  # the GPU's path, here on the CPU
    x = torch.randn(2, 16, 3, generator=torch.Generator().manual_seed(7))
    plain = fit_gmm_official(x, 3, iterations=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = fit_gmm_official(x, 3, iterations=3)
    for a, b in ((plain.means, cast.means), (plain.variances, cast.variances), (plain.posteriors, cast.posteriors)):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def _use_em_backend(monkeypatch, backend: str) -> None:
    if backend == "native" and native.library() is None:
        pytest.skip("the native kernels do not load here")
    monkeypatch.setattr(official_em, "_backend", lambda x, k: backend)


def _weighted_sum(tensors, weights) -> torch.Tensor:
    return sum((t * w).sum() for t, w in zip(tensors, weights))


@pytest.mark.parametrize("backend", ["native", "numpy", "torch"])
def test_official_em_keeps_float32_and_a_retained_graph(backend, monkeypatch):
    _use_em_backend(monkeypatch, backend)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 20, 4, generator=g).requires_grad_(True)
    fitted = fit_gmm_official(x, 4, iterations=3)
    assert all(t.dtype == torch.float32 for t in (fitted.means, fitted.variances, fitted.weights, fitted.posteriors))
    loss = fitted.means.pow(2).sum() + fitted.posteriors[..., 0].sum()
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(loss, x)[0]  # the tape is still there for a second backward
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    x64 = x.detach().double().requires_grad_(True)
    reference = fit_gmm_official(x64, 4, iterations=3)
    want = torch.autograd.grad(reference.means.pow(2).sum() + reference.posteriors[..., 0].sum(), x64)[0]
    torch.testing.assert_close(first.double(), want, rtol=1e-3, atol=1e-4)  # float32 against float64


def test_official_em_in_its_stable_form_keeps_the_variances_the_literal_form_loses():
    # features far from the origin: in float32 the official E[x^2] - mu^2 cancels to round-off (then the
    # floor), the centred form keeps the float64 answer
    g = torch.Generator().manual_seed(5)
    x64 = 1e4 + torch.cat([torch.randn(20, 3, generator=g, dtype=torch.float64) * 0.1,
                           torch.randn(20, 3, generator=g, dtype=torch.float64) * 0.1 + 1.0])
    _, truth, _, _ = oracle.gmm_em(x64, 2, 5, 1e-4)
    ours = fit_gmm_official(x64.float(), 2, iterations=5, var_floor=1e-4).variances
    _, literal, _, _ = oracle.gmm_em(x64.float(), 2, 5, 1e-4)
    torch.testing.assert_close(ours.double(), truth, rtol=1e-2, atol=0)
    assert float((literal.double() - truth).abs().max() / truth.max()) > 0.5


def test_official_gaussian_cost_equals_the_official_form_without_its_cancellation():
    g = torch.Generator().manual_seed(4)
    mu1, mu2 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    v1 = torch.rand(3, 5, generator=g, dtype=torch.float64) + 1e-4
    v2 = torch.rand(4, 5, generator=g, dtype=torch.float64) + 1e-4
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(official_gaussian_cost(mu1, v1, mu2, v2, reduction),
                                   oracle.gaussian_cost(mu1, v1, mu2, v2, reduction), rtol=1e-10, atol=1e-14)
    # identical Gaussians: the official value -2e-8 / (2 v + ...) per dimension, slightly negative
    same = official_gaussian_cost(mu1, v1, mu1, v1)
    want = (-2e-8 / (torch.sqrt(v1 * v1 + 1e-8) + v1)).mean(1)
    torch.testing.assert_close(torch.diagonal(same), want, rtol=1e-6, atol=0)
    # large variances in float32: the official form cancels to noise, ours keeps the float64 value
    big1, big2 = (torch.full((1, 4), 1e4) + torch.arange(4.0)), torch.full((1, 4), 1e4 + 0.5)
    exact = oracle.gaussian_cost(torch.zeros(1, 4, dtype=torch.float64), big1.double(),
                                 torch.zeros(1, 4, dtype=torch.float64), big2.double())
    ours = official_gaussian_cost(torch.zeros(1, 4), big1, torch.zeros(1, 4), big2)
    literal = oracle.gaussian_cost(torch.zeros(1, 4), big1, torch.zeros(1, 4), big2)
    assert float(ours) == pytest.approx(float(exact), rel=5e-3)  # float32 square roots of 1e4
    assert abs(float(literal) - float(exact)) > 0.5 * float(exact)  # the literal form: round-off only


def test_official_local_loss_by_index_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    post = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    other = Prototypes(torch.tensor([[1.0, 0.0], [0.0, 4.0]]), torch.tensor([[0.5, 0.5], [2.0, 2.0]]),
                       torch.ones(2) / 2)
    # sample 0 -> prototype 0: mean((0-1)^2, 0) = 0.5; sample 1: 0.25 * mean(1, 0) + 0.75 * mean(4, 16)
    want = (0.5 + 0.25 * 0.5 + 0.75 * 10.0) / 2
    assert float(official_local_loss(x, post, other)) == pytest.approx(want)
    maha = (0.5 / 0.5 + 0.25 * 0.5 / 0.5 + 0.75 * 10.0 / 2.0) / 2
    assert float(official_local_loss(x, post, other, mahalanobis=True)) == pytest.approx(maha)
    with pytest.raises(ValueError, match="same number of prototypes"):
        official_local_loss(x, post[:, :1], other)


@pytest.mark.parametrize("modalities", [2, 4])
@pytest.mark.parametrize("reduction, mahalanobis", [("mean", False), ("sum", True)])
def test_pair_matrices_hold_every_pairs_official_term(modalities, reduction, mahalanobis):
    g = torch.Generator().manual_seed(modalities)
    feats = [torch.randn(9, 5, generator=g, dtype=torch.float64) for _ in range(modalities)]
    z = [torch.randn(9, 6, generator=g, dtype=torch.float64) * (1 + m) + m for m in range(modalities)]
    protos = [Prototypes(torch.randn(3, 5, generator=g, dtype=torch.float64),
                         torch.rand(3, 5, generator=g, dtype=torch.float64) + 1e-5, torch.full((3,), 1 / 3),
                         torch.softmax(torch.randn(9, 3, generator=g, dtype=torch.float64), 1))
              for _ in range(modalities)]
    local = official_local_loss_matrix(feats, protos, reduction=reduction, mahalanobis=mahalanobis, var_floor=0.01)
    moment, mmd = official_moment_distance_matrix(z), official_mmd_matrix(z, 0.7)
    for a in range(modalities):
        for b in range(modalities):
            other_var = protos[b].variances if mahalanobis else None
            want = oracle.local_loss(feats[a], protos[a].posteriors, protos[b].means, other_var, reduction, 0.01)
            assert float(local[a, b]) == pytest.approx(float(want), rel=1e-12)
            want = oracle.stats_distance(oracle.distribution_stats(z[a]), oracle.distribution_stats(z[b]))
            assert float(moment[a, b]) == pytest.approx(float(want), rel=1e-12, abs=1e-15)
            assert float(mmd[a, b]) == pytest.approx(float(oracle.gaussian_mmd(z[a], z[b], 0.7)), rel=1e-10, abs=1e-15)
    assert float(moment[0, 1]) > 0.1 and float(mmd[0, 1]) > 0.01  # the sets differ: no zero can pass by chance


def test_local_loss_matrix_refuses_mixtures_of_different_sizes():
    x = torch.zeros(4, 2)
    protos = [Prototypes(torch.zeros(k, 2), torch.ones(k, 2), torch.ones(k) / k, torch.ones(4, k) / k) for k in (2, 3)]
    with pytest.raises(ValueError, match=r"same number of prototypes, found \[2, 3\]"):
        official_local_loss_matrix([x, x], protos)


def _three_marginals(g, k=4):
    return [torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0) for _ in range(3)]


@pytest.mark.parametrize("spread", [0.05, 1.0, 3.0])
def test_log_domain_sinkhorn_equals_the_official_plan_where_its_kernel_does_not_underflow(spread):
    g = torch.Generator().manual_seed(6)
    nu = _three_marginals(g)
    cost = spread * torch.rand(4, 4, 4, generator=g, dtype=torch.float64)  # cost / lambda up to 30
    want = oracle.multi_marginal_sinkhorn(cost, *nu, reg=0.1, num_iters=50)
    plan, loss = official_sinkhorn(cost, nu, 0.1, 50)
    torch.testing.assert_close(plan, want, rtol=1e-6, atol=1e-10)
    assert float(loss) == pytest.approx(float(oracle.transport_loss(want, cost, 0.1)), rel=1e-6)


@pytest.mark.parametrize("ratio", [1e3, 1e5])
def test_log_domain_sinkhorn_stays_right_where_the_official_kernel_underflows(ratio):
    g = torch.Generator().manual_seed(7)
    a, b = (torch.softmax(torch.randn(5, generator=g, dtype=torch.float64), 0) for _ in range(2))
    cost = ratio * 0.1 * torch.rand(5, 5, generator=g, dtype=torch.float64)  # cost / lambda up to `ratio`
    plan, loss = official_sinkhorn(cost, [a, b], 0.1, 50)
    # POT's log-domain Sinkhorn does the same sweeps (it updates the second axis first: swap the axes)
    pot = ot.bregman.sinkhorn_log(b.numpy(), a.numpy(), cost.T.numpy(), 0.1, numItermax=50, stopThr=0.0,
                                  warn=False)
    np.testing.assert_allclose(plan.numpy(), pot.T, rtol=1e-7, atol=1e-14)
    assert torch.isfinite(loss) and torch.isfinite(plan).all()
    torch.testing.assert_close(plan.sum(0), b, rtol=1e-9, atol=1e-12)  # the axis updated last is exact
    # the official plain-domain kernel is floored at 1e-30 here: its plan loses the marginals
    third = torch.full((5,), 0.2, dtype=torch.float64)
    official = oracle.multi_marginal_sinkhorn(cost[:, :, None].expand(5, 5, 5).contiguous(), a, b, third, 0.1, 50)
    assert float((official.sum((0, 1)) - third).abs().max()) > 1e-3


def test_transport_plan_official_settings_and_gradient_through_the_sweeps():
    g = torch.Generator().manual_seed(8)
    feats = {m: (torch.randn(30, 4, generator=g, dtype=torch.float64)).requires_grad_(True) for m in "xyz"}
    config = ModelConfig(num_prototypes=3, lambda_ot=0.2, ot_num_iters=17)
    protos = {m: fit_gmm_official(f, 3) for m, f in feats.items()}
    result = transport_plan(protos, config)
    assert result.iterations == 17 and float(result.reg) == 0.2
    nu = [p.posteriors.mean(0) for p in protos.values()]
    c = [oracle.gaussian_cost(protos[a].means, protos[a].variances, protos[b].means, protos[b].variances)
         for a, b in (("x", "y"), ("x", "z"), ("y", "z"))]
    cost = c[0][:, :, None] + c[1][:, None, :] + c[2][None, :, :]
    want = oracle.transport_loss(oracle.multi_marginal_sinkhorn(cost, *nu, 0.2, 17), cost, 0.2)
    assert float(result.loss.detach()) == pytest.approx(float(want.detach()), rel=1e-7)
    grads = torch.autograd.grad(result.loss, list(feats.values()), retain_graph=True)
    wants = torch.autograd.grad(want, list(feats.values()))
    for got, expected in zip(grads, wants):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-10)


# ----------------------------------------------------------------------------- the model


def test_distribution_encoders_take_the_output_dropout_officially_and_the_relu_dropout_in_studio(widths):
    for objective, rate in (("official", 0.35), ("studio", 0.15)):
        model = DecAlign(small_config(objective=objective, output_dropout=0.35, relu_dropout=0.15), widths)
        assert all(enc.net[2].p == rate for enc in model.distribution_encoders.values()), objective


def test_two_modalities_take_the_means_over_their_one_pair():
    torch.manual_seed(0)
    widths = {"a": 4, "b": 6}
    model = DecAlign(small_config(), widths).eval()
    with torch.no_grad():
        out = model(random_inputs(widths, batch=10), align=True)
    lv = out.alignment
    assert float(lv.sample_to_prototype) == pytest.approx(
        (float(lv.sample_to_prototype_per_pair[("a", "b")]) + float(lv.sample_to_prototype_per_pair[("b", "a")])) / 2)
    assert float(lv.mmd) == pytest.approx(float(lv.mmd_per_pair[("a", "b")]))
    assert all(np.isfinite(v) for v in lv.as_floats().values())
