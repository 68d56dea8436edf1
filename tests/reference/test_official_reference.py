"""Sanity tests of the official-DecAlign reference itself (it is the oracle other tests trust)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from torch import nn

from .official_model import (
    OfficialDecAlign,
    OfficialMultiheadAttention,
    bures_diag_cost,
    gaussian_mmd,
    gmm_em,
    multi_marginal_sinkhorn,
    official_config_dict,
    official_total_loss,
)

WIDTHS = (12, 5, 7)
LAYER_KEYS = (
    "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
    "self_attn.out_proj.bias", "attn_layer_norm.weight", "attn_layer_norm.bias", "fc1.weight",
    "fc1.bias", "fc2.weight", "fc2.bias", "final_layer_norm.weight", "final_layer_norm.bias",
)


def small_config(**overrides):
    base = {"dst_feature_dim_nheads": [8, 2], "nlevels": 2, "num_prototypes": 3}
    base.update(overrides)
    return official_config_dict(**base)


def make_model(widths=WIDTHS, output_dim=1, seed=0, **overrides):
    torch.manual_seed(seed)
    return OfficialDecAlign(small_config(**overrides), feature_dims=widths, output_dim=output_dim)


def make_inputs(widths=WIDTHS, lengths=(6, 6, 6), batch=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, t, w, generator=g) for t, w in zip(lengths, widths)]


def capture_output(module):
    store = {}
    handle = module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    return store, handle


def expected_keys(nlevels):
    keys = {f"proj_{m}.weight" for m in "lav"} | {f"encoder_uni_{m}.weight" for m in "lav"}
    keys |= {"encoder_com.weight", "out_layer.weight", "out_layer.bias"}
    for m in "lav":
        keys |= {f"trans_{m}.layers.{i}.{k}" for i in range(nlevels) for k in LAYER_KEYS}
        keys |= {f"pde_{m}.net.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    return keys


# ----------------------------------------------------------------------------- structure


def test_official_config_matches_mosi_json_and_rejects_unknown_keys():
    cfg = official_config_dict()
    assert cfg["dst_feature_dim_nheads"] == [40, 10] and cfg["nlevels"] == 5
    assert cfg["ot_num_iters"] == 50 and cfg["alpha"] == 0.05 and cfg["clip"] == 0.6
    assert len(cfg) == 48  # the official dec_mosi_config.json has 48 keys
    with pytest.raises(KeyError, match="nlevel"):
        official_config_dict(nlevel=3)
    broken = official_config_dict()
    del broken["pde_dim"]
    with pytest.raises(KeyError, match="pde_dim"):
        OfficialDecAlign(broken, feature_dims=WIDTHS)


@pytest.mark.parametrize("nlevels", [1, 5])
def test_state_dict_keys_are_exactly_the_official_ones(nlevels):
    model = make_model(nlevels=nlevels)
    assert set(model.state_dict()) == expected_keys(nlevels)
    assert len(model.state_dict()) == 21 + 3 * 12 * nlevels


def test_parameter_shapes_follow_the_config():
    model = make_model(conv1d_kernel_size_a=3, output_dim=4, pde_dim=6)
    sd = model.state_dict()
    assert sd["proj_l.weight"].shape == (8, 12, 1)
    assert sd["proj_a.weight"].shape == (8, 5, 3)
    assert sd["encoder_com.weight"].shape == (8, 8, 1)
    assert sd["trans_v.layers.1.self_attn.in_proj_weight"].shape == (24, 8)
    assert sd["trans_v.layers.1.fc1.weight"].shape == (32, 8)
    assert sd["trans_v.layers.1.fc2.weight"].shape == (8, 32)
    assert sd["out_layer.weight"].shape == (4, 48)
    assert sd["pde_a.net.3.weight"].shape == (6, 8)


def test_forward_shapes_and_kernel_shortening():
    model = make_model(conv1d_kernel_size_a=3, output_dim=3).eval()
    out = model(*make_inputs(lengths=(6, 9, 4)))
    assert out["output_logit"].shape == (5, 3)
    assert out["s_a"].shape == (5, 8, 7)  # 9 - 3 + 1
    assert out["c_v"].shape == (5, 8, 4)
    assert out["final_rep"].shape == (5, 48)
    assert out["transport_plan"].shape == (3, 3, 3)
    for key in ("dec_loss", "hete_loss", "homo_loss"):
        assert out[key].ndim == 0 and torch.isfinite(out[key])


def test_head_reads_pooled_encoder_outputs_then_pooled_common_features():
    model = make_model().eval()
    hooks = {m: capture_output(getattr(model, f"trans_{m}")) for m in "lav"}
    out = model(*make_inputs())
    pooled = [hooks[m][0]["out"].mean(dim=0) for m in "lav"]
    pooled += [out[f"c_{m}"].mean(dim=2) for m in "lav"]
    expected = model.out_layer(torch.cat(pooled, dim=1))
    torch.testing.assert_close(out["output_logit"], expected)


# ----------------------------------------------------------------------------- behaviour


def test_eval_is_deterministic_and_training_uses_dropout():
    model = make_model()
    x = make_inputs()
    model.eval()
    with torch.no_grad():
        first, second = model(*x)["output_logit"], model(*x)["output_logit"]
    assert torch.equal(first, second)
    model.train()
    torch.manual_seed(3)
    noisy = model(*x)["output_logit"]
    assert not torch.allclose(noisy, first)


def test_cross_modal_keys_are_the_other_modalities_in_lav_order():
    model = make_model().eval()
    lengths = (6, 7, 9)
    captured = {}

    def grab(name):
        def hook(_m, _args, kwargs, out):
            captured[name] = (kwargs["key"], kwargs["attn_mask"], out[1])
        return hook

    for m in "lav":
        getattr(model, f"trans_{m}").layers[0].self_attn.register_forward_hook(
            grab(m), with_kwargs=True)
    out = model(*make_inputs(lengths=lengths))
    seq = {m: out[f"s_{m}"].permute(2, 0, 1) for m in "lav"}
    others = {"l": ("a", "v"), "a": ("l", "v"), "v": ("l", "a")}
    for i, m in enumerate("lav"):
        key, mask, weights = captured[m]
        assert mask is None
        assert weights.shape == (5 * 2, lengths[i], sum(lengths) - lengths[i])
        expected = math.sqrt(8) * torch.cat([seq[o] for o in others[m]], dim=0)
        torch.testing.assert_close(key, expected)


def test_projection_is_skipped_when_width_already_equals_d():
    widths = (8, 5, 8)  # text and vision already have width d = 8
    model = make_model(widths=widths).eval()
    x = make_inputs(widths=widths)
    with torch.no_grad():
        before = model(*x)["output_logit"].clone()
        model.proj_l.weight.mul_(3.0)
        model.proj_v.weight.normal_()
        assert torch.equal(model(*x)["output_logit"], before)
        model.proj_a.weight.mul_(3.0)
        assert not torch.allclose(model(*x)["output_logit"], before)


@pytest.mark.parametrize("attn_mask", [True, False])
def test_causal_mask_when_cross_modal_attention_is_off(attn_mask):
    model = make_model(use_cross_modal_attention=False, attn_mask=attn_mask).eval()
    store, _ = capture_output(model.trans_l)
    x = make_inputs()
    with torch.no_grad():
        model(*x)
        first = store["out"].clone()
        changed = x[0].clone()
        changed[:, 1:] += torch.randn_like(changed[:, 1:])
        model(changed, x[1], x[2])
        second = store["out"]
    assert first.shape == (6, 5, 8)
    same_at_zero = torch.allclose(first[0], second[0], atol=1e-6)
    assert same_at_zero is attn_mask
    assert not torch.allclose(first[-1], second[-1])


@pytest.mark.parametrize("heads", [1, 4])
def test_attention_matches_torch_multihead_attention(heads):
    torch.manual_seed(5)
    d, tgt, src, batch = 8, 4, 6, 3
    ours = OfficialMultiheadAttention(d, heads)
    ref = nn.MultiheadAttention(d, heads)
    with torch.no_grad():
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
        ref.in_proj_weight.copy_(ours.in_proj_weight)
        ref.in_proj_bias.copy_(ours.in_proj_bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, k, v = torch.randn(tgt, batch, d), torch.randn(src, batch, d), torch.randn(src, batch, d)
    mask = torch.triu(torch.ones(tgt, src), diagonal=1).bool()
    for m in (None, mask):
        got, w = ours(q, k, v, attn_mask=m)
        want, want_w = ref(q, k, v, attn_mask=m, average_attn_weights=False)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w.view(batch, heads, tgt, src), want_w, rtol=1e-5, atol=1e-6)


def test_training_step_gives_finite_gradients_everywhere():
    model = make_model(beta=0.5).train()
    x = make_inputs(batch=8)
    out = model(*x)
    loss = official_total_loss(out, torch.randn(8), model.args)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.pde_a.net[0].weight.grad.abs().sum() > 0  # beta > 0 reaches the PDEs


def test_total_loss_weights_the_parts():
    out = {"output_logit": torch.tensor([[1.0], [3.0]]), "dec_loss": torch.tensor(2.0),
           "hete_loss": torch.tensor(10.0), "homo_loss": torch.tensor(100.0)}
    cfg = official_config_dict(dec_loss_weight=0.5, alpha=0.1, beta=0.01)
    got = official_total_loss(out, torch.tensor([0.0, 1.0]), cfg)
    assert got.item() == pytest.approx((1 + 4) / 2 + 1.0 + 1.0 + 1.0)


# ----------------------------------------------------------------------------- loss maths


def test_gmm_em_matches_scikit_learn_with_same_initialisation():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.5, size=(30, 3)) for c in (-2.0, 0.0, 2.5)])
    rng.shuffle(x)
    xt = torch.tensor(x)
    mu, var, pi, post = gmm_em(xt, 3, iters=4, var_floor=1e-12)
    idx = np.round(np.linspace(0, len(x) - 1, 3)).astype(int)
    var0 = np.tile(x.var(axis=0), (3, 1))
    gm = GaussianMixture(3, covariance_type="diag", max_iter=4, tol=0.0, reg_covar=0.0,
                         weights_init=np.full(3, 1 / 3), means_init=x[idx], precisions_init=1 / var0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(x)
    np.testing.assert_allclose(mu.numpy(), gm.means_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(var.numpy(), gm.covariances_, rtol=1e-6)
    np.testing.assert_allclose(pi.numpy(), gm.weights_, rtol=1e-6)
    np.testing.assert_allclose(post.numpy(), gm.predict_proba(x), atol=1e-7)


def test_gmm_variance_floor_applies():
    x = torch.zeros(10, 2, dtype=torch.float64)
    _, var, _, post = gmm_em(x, 2, iters=3, var_floor=1e-3)
    assert torch.allclose(var, torch.full_like(var, 1e-3))
    torch.testing.assert_close(post.sum(dim=1), torch.ones(10, dtype=torch.float64))


def test_bures_cost_matches_pot():
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(2, 4, generator=g,
                                                                                   dtype=torch.float64)
    v1 = torch.rand(3, 4, generator=g, dtype=torch.float64) + 0.1
    v2 = torch.rand(2, 4, generator=g, dtype=torch.float64) + 0.1
    ours = bures_diag_cost(mu1, v1, mu2, v2).numpy()
    cov1 = np.stack([np.diag(r) for r in v1.numpy()])
    cov2 = np.stack([np.diag(r) for r in v2.numpy()])
    pot = ot.gaussian.bures_wasserstein_distance(mu1.numpy(), mu2.numpy(), cov1, cov2) ** 2
    np.testing.assert_allclose(ours, pot, rtol=1e-6, atol=1e-8)


def test_sinkhorn_reduces_to_pot_when_the_third_cost_is_constant():
    rng = np.random.default_rng(3)
    cost_la = rng.random((4, 4))
    nu = [rng.random(4) + 0.2 for _ in range(3)]
    nu = [torch.tensor(n / n.sum()) for n in nu]
    cost = torch.tensor(cost_la)[:, :, None].expand(4, 4, 4)
    plan = multi_marginal_sinkhorn(cost, *nu, reg=0.5, num_iters=300)
    pot_plan = ot.sinkhorn(nu[0].numpy(), nu[1].numpy(), cost_la, reg=0.5, stopThr=1e-14, numItermax=10000)
    np.testing.assert_allclose(plan.sum(dim=2).numpy(), pot_plan, atol=1e-8)  # the official + 1e-8 guards
    np.testing.assert_allclose(plan.sum(dim=(0, 1)).numpy(), nu[2].numpy(), atol=1e-8)


def test_sinkhorn_marginals_and_zero_cost_product_plan():
    g = torch.Generator().manual_seed(4)
    nu = [torch.softmax(torch.randn(3, generator=g, dtype=torch.float64), 0) for _ in range(3)]
    plan = multi_marginal_sinkhorn(torch.zeros(3, 3, 3, dtype=torch.float64), *nu, reg=0.1, num_iters=5)
    torch.testing.assert_close(plan, nu[0][:, None, None] * nu[1][None, :, None] * nu[2][None, None, :])
    cost = torch.rand(3, 3, 3, generator=g, dtype=torch.float64)
    plan = multi_marginal_sinkhorn(cost, *nu, reg=0.3, num_iters=200)
    # the official "+ 1e-8" in each denominator leaves the marginals about 1e-8 short
    torch.testing.assert_close(plan.sum(dim=(1, 2)), nu[0], atol=1e-7, rtol=0)
    torch.testing.assert_close(plan.sum(dim=(0, 2)), nu[1], atol=1e-7, rtol=0)


def test_gaussian_mmd_matches_a_hand_loop():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 3)), rng.normal(1.0, size=(5, 3))

    def k(a, b):
        return math.exp(-np.sum((a - b) ** 2) / (2 * 0.7))  # the official kernel: bandwidth, not squared

    want = (np.mean([[k(a, b) for b in x] for a in x]) + np.mean([[k(a, b) for b in y] for a in y])
            - 2 * np.mean([[k(a, b) for b in y] for a in x]))
    got = gaussian_mmd(torch.tensor(x), torch.tensor(y), 0.7).item()
    assert got == pytest.approx(want, rel=1e-10)


def test_gmm_start_repeats_the_batch_when_it_is_smaller_than_k():
    from .official_model import gmm_init

    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    pi, mu, var = gmm_init(x, 5, var_floor=2.0)
    torch.testing.assert_close(mu, x[[0, 1, 0, 1, 0]])
    torch.testing.assert_close(var, torch.full((5, 2), 2.0, dtype=torch.float64))  # batch variance 1, floor 2
    torch.testing.assert_close(pi, torch.full((5,), 0.2, dtype=torch.float64))
    _, mu, _ = gmm_init(torch.arange(40.0)[:, None], 7, 1e-4)  # round(linspace(0, 39, 7)), half to even
    assert mu[:, 0].tolist() == [0.0, 6.0, 13.0, 20.0, 26.0, 32.0, 39.0]


def test_contrastive_loss_and_binary_term_by_hand():
    from .official_model import contrastive_loss, main_loss

    f = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0.2, -0.3, 2.0])  # bins 3, 3, 5: the third sample has no positive
    assert contrastive_loss(f, y, 1.0, classification=False).item() == pytest.approx(math.log(1 + math.exp(-1)))
    pred = torch.tensor([[0.0], [1.0], [3.0]])
    labels = torch.tensor([1.0, 0.0, -1.0])
    bce = (math.log(2) + math.log(1 + math.exp(3))) / 2  # logits 0 (target 1) and 3 (target 0)
    want = (1.0 + 1.0 + 16.0) / 3 + 0.5 * bce
    assert main_loss(pred, labels, {"task_loss": "mse", "binary_task_weight": 0.5}).item() == pytest.approx(want)
    assert main_loss(pred, labels, {}).item() == pytest.approx((1.0 + 1.0 + 4.0) / 3)  # the default: L1
