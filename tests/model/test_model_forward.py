"""DecAlign.forward: shapes for any modalities, attention, gradients, invariances, masks, scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decalign.config import ModelConfig
from decalign.model import DecAlign, DecAlignOutput, Prototypes, fit_gmm, fusion, posteriors
from tests.model.helpers import random_inputs, small_config

SHAPE_CASES = [
    ({"left": 3, "right": 9}, {"left": 1, "right": 4}),
    ({"text": 12, "audio": 5, "vision": 7}, {"text": 6, "audio": 1, "vision": 3}),
    ({"a": 4, "bb": 8, "c_3": 2, "delta": 11}, {"a": 2, "bb": 5, "c_3": 1, "delta": 7}),
]


def total_loss(out: DecAlignOutput, target: torch.Tensor) -> torch.Tensor:
    task = F.mse_loss(out.prediction.squeeze(1), target)
    return task + sum(getattr(out.alignment, name) for name in out.alignment.LEVELS)


@pytest.mark.parametrize("widths,lengths", SHAPE_CASES)
@pytest.mark.parametrize("output_dim", [1, 5])
def test_output_shapes_for_any_modalities(widths, lengths, output_dim):
    torch.manual_seed(0)
    d, n, m = 8, 4, len(widths)
    model = DecAlign(small_config(), widths, output_dim).train()
    out = model(random_inputs(widths, lengths, batch=n))
    assert out.prediction.shape == (n, output_dim)
    assert out.modalities == list(widths)
    for name in widths:
        assert out.unique[name].shape == (n, lengths[name], d)
        assert out.common[name].shape == (n, lengths[name], d)
        for pooled in (out.unique_pooled, out.common_pooled, out.fused):
            assert pooled[name].shape == (n, d)
        assert out.distribution[name].shape == (n, 6)
        proto = out.prototypes[name]
        assert proto.means.shape == (3, d) and proto.posteriors.shape == (n, 3)
    assert out.branch_inputs.shape == (n, 2 * m * d)
    assert out.branch_names == [f"unique:{k}" for k in widths] + [f"common:{k}" for k in widths]
    assert out.transport.plan.shape == (3,) * m
    assert len(out.transport.pair_costs) == m * (m - 1) // 2
    # the head is linear in the branch inputs, laid out as named
    expected = torch.cat([out.fused[k] for k in widths] + [out.common_pooled[k] for k in widths], 1)
    torch.testing.assert_close(out.branch_inputs, expected)
    torch.testing.assert_close(out.prediction, model.head(out.branch_inputs))


def test_kernel_shortens_time_axis(widths):
    model = DecAlign(small_config(conv_kernel_sizes=(("audio", 3),)), widths, 1).eval()
    out = model(random_inputs(widths, {"text": 4, "audio": 7, "vision": 2}))
    assert out.unique["audio"].shape[1] == 5 and out.unique["text"].shape[1] == 4
    with pytest.raises(ValueError, match="'audio'"):
        model(random_inputs(widths, {"text": 4, "audio": 2, "vision": 2}))


def test_eval_skips_alignment_unless_asked(widths):
    model = DecAlign(small_config(), widths, 1).eval()
    x = random_inputs(widths)
    out = model(x)
    assert out.prototypes is None and out.transport is None and out.alignment is None
    assert out.distribution is None
    aligned = model(x, align=True)
    assert aligned.alignment is not None and aligned.transport is not None and aligned.prototypes is not None
    torch.testing.assert_close(aligned.prediction, out.prediction)
    assert model.train()(x, align=False).alignment is None


def test_eval_is_deterministic_and_training_applies_dropout(widths):
    model = DecAlign(small_config(), widths, 1).eval()
    x = random_inputs(widths)
    assert torch.equal(model(x).prediction, model(x).prediction)
    torch.manual_seed(1)
    assert not torch.allclose(model.train()(x, align=False).prediction, model.eval()(x).prediction)


@pytest.mark.parametrize("lengths", [5, {"text": 5, "audio": 5, "vision": 3}])  # one batched group; groups of 2 and 1
def test_forward_without_autograd_gives_the_autograd_forward_to_the_bit(widths, lengths):
    # Without autograd, eval layers write sums, ReLU and LayerNorm scales into their fresh results. Asked for the
    # attention weights, attention takes the path autograd takes (weights kept), so the numbers agree to the bit;
    # without them, the native kernel's eval path sums in its own order: they agree to rounding.
    model = DecAlign(small_config(num_layers=2), widths, 3).eval()
    x = random_inputs(widths, lengths)
    kept_for_backward = model(x)
    with torch.no_grad():
        no_grad = model(x, need_attention=True)
        no_grad_eval_path = model(x)
    with torch.inference_mode():
        inference = model(x, need_attention=True)
        inference_eval_path = model(x)
    for out in (no_grad, inference):
        assert torch.equal(out.prediction, kept_for_backward.prediction)
        assert torch.equal(out.branch_inputs, kept_for_backward.branch_inputs)
    for out in (no_grad_eval_path, inference_eval_path):
        torch.testing.assert_close(out.prediction, kept_for_backward.prediction, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.branch_inputs, kept_for_backward.branch_inputs, atol=1e-6, rtol=1e-5)
    torch.manual_seed(3)
    dropped = model.train()(x, align=False).prediction
    torch.manual_seed(3)
    with torch.no_grad():  # training mode without autograd still applies dropout, with the same decisions
        assert torch.equal(model(x, align=False).prediction, dropped)
    assert not torch.allclose(dropped, kept_for_backward.prediction)


def test_layer_without_autograd_keeps_the_promoting_sum_of_mixed_dtypes(widths):
    # Under CUDA autocast a layer's input is float32 (after a LayerNorm) and its attention output a bfloat16
    # product: x + attended is float32 there, which a sum into the bfloat16 tensor would not be
    encoder = DecAlign(small_config(), widths, 1).eval().transformers["text"]
    params = {name: p[:, 0] for name, p in fusion._stacked_parameters([encoder]).items()}
    g = torch.Generator().manual_seed(2)
    x, attended = torch.randn(1, 3, 4, 8, generator=g), torch.randn(1, 3, 4, 8, generator=g).bfloat16()
    layer = encoder.layers[0]
    with torch.inference_mode():
        promoted = fusion._after_projection(layer, params, x, attended.clone(), False)
        assert promoted.dtype == torch.float32
        assert torch.equal(promoted, fusion._residual_blocks(layer, params, x, attended, False))
        same = fusion._after_projection(layer, params, x, attended.float(), False)  # in place: the same numbers
        assert torch.equal(same, fusion._residual_blocks(layer, params, x, attended.float(), False))


@pytest.mark.parametrize("num_layers", [1, 3])
def test_cross_modal_attention_weights(widths, num_layers):
    model = DecAlign(small_config(num_layers=num_layers), widths, 1).eval()
    lengths = {"text": 4, "audio": 6, "vision": 1}
    out = model(random_inputs(widths, lengths, batch=3), need_attention=True)
    for m in widths:
        others = [n for n in widths if n != m]
        assert out.attention_keys[m] == [(n, lengths[n]) for n in others]
        assert len(out.attention[m]) == num_layers
        for weights in out.attention[m]:
            assert weights.shape == (3, lengths[m], sum(lengths[n] for n in others))
            torch.testing.assert_close(weights.sum(-1), torch.ones(3, lengths[m]))
            assert (weights >= 0).all()
    assert model(random_inputs(widths, lengths, batch=3)).attention == {m: [] for m in widths}


def test_attention_with_and_without_need_attention_gives_the_same_prediction(widths):
    model = DecAlign(small_config(), widths, 2).eval()
    x = random_inputs(widths)
    torch.testing.assert_close(model(x, need_attention=True).prediction, model(x).prediction,
                               atol=1e-5, rtol=1e-5)


def test_self_attention_is_causal_when_cross_modal_attention_is_off(widths):
    model = DecAlign(small_config(cross_modal_attention=False, num_layers=2), widths, 1).eval()
    out = model(random_inputs(widths, 5, batch=2), need_attention=True)
    for m in widths:
        assert out.attention_keys[m] == [(m, 5)]
        for weights in out.attention[m]:
            assert weights.shape == (2, 5, 5)
            assert torch.equal(torch.triu(weights, diagonal=1), torch.zeros_like(weights))
            torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))


@pytest.mark.parametrize("config", [small_config(num_layers=2), ModelConfig()], ids=["small", "default"])
def test_gradients_reach_every_parameter(widths, config):
    torch.manual_seed(0)
    model = DecAlign(config, widths, 1).train()
    out = model(random_inputs(widths, {"text": 4, "audio": 6, "vision": 3}, batch=8))
    total_loss(out, torch.randn(8)).backward()
    params = dict(model.named_parameters())
    assert any(k.startswith("projections.") for k in params)  # every width differs from d
    dead = [k for k, p in params.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []
    assert all(torch.isfinite(p.grad).all() for p in params.values())


def permute_time(inputs: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: x[:, torch.randperm(x.shape[1], generator=g)] for m, x in inputs.items()}


def test_without_positions_prediction_ignores_time_order_of_each_modality(widths):
    # Queries are equivariant and keys/values invariant under a time permutation, and pooling is a mean.
    model = DecAlign(small_config(num_layers=2), widths, 1).eval()
    assert model.config.positional_encoding is False  # the default
    x = random_inputs(widths, {"text": 5, "audio": 7, "vision": 4})
    shuffled = permute_time(x, seed=3)
    assert not torch.equal(shuffled["audio"], x["audio"])
    torch.testing.assert_close(model(shuffled).prediction, model(x).prediction, atol=1e-5, rtol=1e-5)
    only_one = dict(x, text=shuffled["text"])  # separately, one modality at a time
    torch.testing.assert_close(model(only_one).prediction, model(x).prediction, atol=1e-5, rtol=1e-5)


def test_positional_encoding_makes_the_prediction_order_dependent(widths):
    torch.manual_seed(0)
    model = DecAlign(small_config(num_layers=2, positional_encoding=True), widths, 1).eval()
    x = random_inputs(widths, {"text": 5, "audio": 7, "vision": 4})
    diff = (model(permute_time(x, seed=3)).prediction - model(x).prediction).abs().max()
    assert diff > 1e-3


@pytest.mark.parametrize("cross_modal", [True, False])
def test_padded_steps_do_not_change_the_prediction_with_sequence_mask(widths, cross_modal):
    torch.manual_seed(0)
    config = small_config(use_sequence_mask=True, cross_modal_attention=cross_modal, num_layers=2,
                          conv_kernel_sizes=(("audio", 2),))
    model = DecAlign(config, widths, 1).eval()
    steps = {"text": 6, "audio": 7, "vision": 5}
    lengths = {"text": torch.tensor([6, 2, 4]), "audio": torch.tensor([3, 7, 5]),
               "vision": torch.tensor([1, 5, 3])}
    clean = random_inputs(widths, steps, batch=3, seed=1)
    garbage = random_inputs(widths, steps, batch=3, seed=2)
    padded = {}
    for m, x in clean.items():
        keep = torch.arange(steps[m]) < lengths[m].unsqueeze(1)  # (N, T)
        padded[m] = torch.where(keep.unsqueeze(-1), x, 1e3 * garbage[m])
    with_clean = model(clean, lengths).prediction
    with_garbage = model(padded, lengths).prediction
    torch.testing.assert_close(with_garbage, with_clean, atol=1e-5, rtol=1e-5)
    # the explicit-softmax path (need_attention) masks exactly like the fused one
    torch.testing.assert_close(model(padded, lengths, need_attention=True).prediction, with_clean,
                               atol=1e-5, rtol=1e-5)
    # and each sample equals a run on just its valid steps, alone
    for i in range(3):
        alone = {m: x[i:i + 1, : int(lengths[m][i])] for m, x in clean.items()}
        torch.testing.assert_close(with_garbage[i:i + 1], model(alone).prediction, atol=1e-5, rtol=1e-5)
    # without the mask the garbage does change it (so the test above has teeth)
    unmasked = DecAlign(small_config(cross_modal_attention=cross_modal, num_layers=2,
                                     conv_kernel_sizes=(("audio", 2),)), widths, 1).eval()
    unmasked.load_state_dict(model.state_dict())
    assert not torch.allclose(unmasked(padded, lengths).prediction, with_clean, atol=1e-3)


@pytest.mark.parametrize("scale", [0.01, 1.0, 1000.0])
@pytest.mark.parametrize("objective", ["official", "studio"])
def test_training_forward_at_any_feature_scale(widths, scale, objective):
    torch.manual_seed(0)
    model = DecAlign(small_config(num_prototypes=4, objective=objective), widths, 1).train()
    x = {m: scale * v for m, v in random_inputs(widths, batch=12, seed=4).items()}
    out = model(x)
    plan = out.transport.plan
    # studio: reg follows the cost scale, so every marginal holds. Official: lambda is absolute, so at
    # scale 1000 (cost / lambda ~ 1e7, beyond float32's resolution of the logs) only finiteness is asked;
    # the official plain-domain kernel would underflow to its 1e-30 floor there.
    axes = range(plan.dim()) if objective == "studio" or scale <= 1 else []
    assert torch.isfinite(plan).all() and float(plan.detach().sum()) == pytest.approx(1.0, abs=1e-2)
    for i in axes:
        m = model.modalities[i]
        others = [j for j in range(plan.dim()) if j != i]
        torch.testing.assert_close(plan.sum(others), out.transport.marginals[m].detach(), atol=1e-5, rtol=0)
    loss = total_loss(out, torch.randn(12))
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fixed_prototypes_are_used_as_given(widths):
    torch.manual_seed(0)
    model = DecAlign(small_config(), widths, 1).eval()
    x = random_inputs(widths, batch=10)
    pooled = model(x).unique_pooled
    fixed = {m: fit_gmm(p.detach().double(), 3) for m, p in pooled.items()}
    fixed = {m: Prototypes(p.means, p.variances, p.weights) for m, p in fixed.items()}
    out = model(x, align=True, prototypes=fixed)
    for m in widths:
        assert out.prototypes[m].means.dtype == torch.float32
        torch.testing.assert_close(out.prototypes[m].means, fixed[m].means.float())
        torch.testing.assert_close(out.prototypes[m].posteriors, posteriors(pooled[m], out.prototypes[m]))


def test_bad_inputs_name_the_modality(widths):
    model = DecAlign(small_config(), widths, 1)
    x = random_inputs(widths)
    with pytest.raises(ValueError, match="'vision'.*7"):
        model(dict(x, vision=torch.randn(6, 5, 8)))
    with pytest.raises(ValueError, match="expected modalities"):
        model({"text": x["text"], "audio": x["audio"]})
    with pytest.raises(ValueError, match="different numbers of samples"):
        model(dict(x, audio=torch.randn(4, 5, 5)))
    with pytest.raises(ValueError, match="at least two modalities"):
        DecAlign(small_config(), {"text": 3}, 1)


def test_stacked_parameters_are_every_encoders_layers_parameters_by_name(widths):
    """fusion walks the layers itself (not named_parameters): the same names in the same order, each slice the
    parameter's values, and a parameter replaced or changed in place is seen by the next forward."""
    model = DecAlign(small_config(num_layers=3), widths, 1)
    encoders = [model.transformers[m] for m in widths]
    stacked = fusion._stacked_parameters(encoders)
    layer_names = [name for name, _ in encoders[0].layers[0].named_parameters()]
    assert list(stacked) == layer_names and len(layer_names) == 12
    for i, encoder in enumerate(encoders):
        for name, p in encoder.layers.named_parameters():
            layer, name = name.split(".", 1)
            assert torch.equal(stacked[name][i, int(layer)], p)
    with torch.no_grad():
        encoders[1].layers[2].fc2.bias.add_(1.0)
    encoders[2].layers[0].attn_layer_norm.weight = torch.nn.Parameter(torch.full((8,), 3.0))
    again = fusion._stacked_parameters(encoders)
    assert torch.equal(again["fc2.bias"][1, 2], stacked["fc2.bias"][1, 2] + 1.0)
    assert torch.equal(again["attn_layer_norm.weight"][2, 0], torch.full((8,), 3.0))
