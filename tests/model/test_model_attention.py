"""The head-major attention (hand-written backward) and the batched encoders against plain autograd."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from decalign.model import attention as attention_module
from decalign.model.attention import attention
from decalign.model.dropout import keep_mask
from decalign.model.fusion import CrossModalEncoder, encode


def naive(qt, kt, vt, mask, keeps, rates):
    """softmax(Q K^T) V written the textbook way, per group, with the given keep masks."""
    scores = qt.transpose(1, 2) @ kt
    if mask is not None:
        scores = scores.view(mask.shape[0], -1, *scores.shape[1:]).masked_fill(~mask.unsqueeze(1), -math.inf)
        scores = scores.flatten(0, 1)
    weights = torch.softmax(scores, -1)
    outs = []
    for w, v, keep, p in zip(weights.chunk(len(rates)), vt.chunk(len(rates)), keeps, rates):
        dropped = w if keep is None else w * keep / (1 - p)
        outs.append(v @ dropped.transpose(1, 2))
    return torch.cat(outs), weights


def heads(n=24, hd=3, tq=5, tk=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, hd, t, generator=g, dtype=torch.float64, requires_grad=True) for t in (tq, tk, tk)]


@pytest.mark.parametrize("block_bytes", [8 << 20, 2 * 5 * 7 * 8])  # one block; blocks of two heads
@pytest.mark.parametrize("masked", ["none", "per-sample", "broadcast"])
def test_forward_and_gradients_match_autograd(monkeypatch, block_bytes, masked):
    monkeypatch.setattr(attention_module, "BLOCK_BYTES", block_bytes)
    qt, kt, vt = heads()
    g = torch.Generator().manual_seed(1)
    mask = {"none": None, "per-sample": torch.rand(12, 5, 7, generator=g) > 0.3,  # 12 samples x 2 heads
            "broadcast": torch.ones(1, 5, 7, dtype=torch.bool).tril()}[masked]
    if mask is not None:
        mask[..., 0] = True  # every query attends somewhere
    out, weights = attention(qt, kt, vt, mask, (0.0, 0.0), training=False, need_weights=True)
    expected, expected_weights = naive(qt, kt, vt, mask, [None, None], (0.0, 0.0))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    upstream = torch.randn_like(out)
    ours = torch.autograd.grad(out, (qt, kt, vt), upstream)
    reference = torch.autograd.grad(expected, (qt, kt, vt), upstream)
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck(causal):
    qt, kt, vt = heads(n=4, hd=2, tq=3, tk=3)
    mask = torch.ones(1, 3, 3, dtype=torch.bool).tril() if causal else None
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, mask)[0], (qt, kt, vt))


def test_dropout_per_group_matches_the_same_masks_applied_by_hand(monkeypatch):
    monkeypatch.setattr(attention_module, "BLOCK_BYTES", 4 * 5 * 7 * 8)  # blocks of four heads
    qt, kt, vt = heads(n=24)
    rates = (0.3, 0.0, 0.5)  # three groups of eight heads; the middle one is not dropped
    torch.manual_seed(5)
    out, _ = attention(qt, kt, vt, None, rates, training=True)
    torch.manual_seed(5)  # the blocks draw in order: group 0 blocks, then group 2 blocks
    draws = {g: torch.cat([keep_mask((4, 5, 7), rates[g], qt.device, qt.dtype) for _ in range(2)]) for g in (0, 2)}
    keeps = [draws[0], None, draws[2]]
    expected, _ = naive(qt, kt, vt, None, keeps, rates)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (qt, kt, vt), upstream),
                    torch.autograd.grad(expected, (qt, kt, vt), upstream)):
        torch.testing.assert_close(a, b)
    assert not torch.equal(out[:8], attention(qt, kt, vt, None, rates, training=False)[0][:8])


def test_no_dropout_outside_training():
    qt, kt, vt = heads()
    eval_out, _ = attention(qt, kt, vt, None, (0.9,), training=False)
    torch.testing.assert_close(eval_out, naive(qt, kt, vt, None, [None], (0.0,))[0])


def encoders(count=3, seed=0, **overrides):
    torch.manual_seed(seed)
    settings = {"attn_dropout": 0.0, "relu_dropout": 0.0, "res_dropout": 0.0, "embed_dropout": 0.0} | overrides
    made = [CrossModalEncoder(8, 2, 3, **settings).double() for _ in range(count)]
    with torch.no_grad():  # non-trivial norms and biases, different per encoder
        for p in (p for e in made for p in e.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    return made


@pytest.mark.parametrize("cross", [True, False])
def test_batched_encoders_equal_each_encoder_alone(cross):
    stack = encoders()
    g = torch.Generator().manual_seed(2)
    queries = torch.randn(3, 4, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    memories = torch.randn(3, 4, 9, 8, generator=g, dtype=torch.float64) if cross else None
    steps = 9 if cross else 5
    masks = torch.rand(3, 4, 5, steps, generator=g) > 0.2
    masks[..., 0] = True
    hidden, weights = encode(stack, queries, memories, masks, need_weights=True)
    upstream = torch.randn_like(hidden)
    grads = torch.autograd.grad(hidden, [queries, *stack[1].parameters()], upstream)
    for i, encoder in enumerate(stack):
        alone, alone_weights = encoder(queries[i], None if memories is None else memories[i], masks[i], True)
        torch.testing.assert_close(hidden[i], alone)
        for w, a in zip(weights, alone_weights):
            torch.testing.assert_close(w[i], a)
        if i == 1:
            expected = torch.autograd.grad(alone, [queries, *encoder.parameters()], upstream[i])
            torch.testing.assert_close(grads[0][i], expected[0][i])  # queries of encoder i
            for a, b in zip(grads[1:], expected[1:]):
                torch.testing.assert_close(a, b)


def test_encoder_is_the_textbook_post_norm_transformer():
    """Cross-modal: keys/values are the sqrt(d)-scaled memory in every layer; the layer is post-norm."""
    (encoder,) = encoders(count=1)
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    memory = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    x, kv = math.sqrt(8) * query, math.sqrt(8) * memory
    for layer in encoder.layers:
        attn = layer.self_attn
        mha = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
        mha.load_state_dict({"in_proj_weight": attn.in_proj_weight, "in_proj_bias": attn.in_proj_bias,
                             "out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias})
        x = layer.attn_layer_norm(x + mha(x, kv, kv, need_weights=False)[0])
        x = layer.final_layer_norm(x + layer.fc2(F.relu(layer.fc1(x))))
    torch.testing.assert_close(encoder(query, memory)[0], x)


def test_keys_and_values_get_separate_embedding_dropout(monkeypatch):
    from decalign.model import fusion

    calls = []

    def recording(x, p, training):
        calls.append((tuple(x.shape), p))
        return x

    monkeypatch.setattr(fusion, "dropout", recording)
    stack = encoders(count=2, embed_dropout=0.25)
    queries, memories = torch.zeros(2, 3, 4, 8, dtype=torch.float64), torch.zeros(2, 3, 6, 8, dtype=torch.float64)
    encode(stack, queries, memories)
    assert [c for c in calls if c[1] == 0.25] == [((2, 3, 4, 8), 0.25), ((2, 3, 6, 8), 0.25), ((2, 3, 6, 8), 0.25)]
    calls.clear()
    for e in stack:
        e.eval()
    encode(stack, queries, memories)  # eval: keys and values share one embedding
    assert [c for c in calls if c[1] == 0.25] == [((2, 3, 4, 8), 0.25), ((2, 3, 6, 8), 0.25)]


def test_bfloat16_autocast_trains_with_float32_gradients():
    """Mixed precision (bfloat16 autocast, as ``train.mixed_precision`` runs on a GPU) through the
    hand-written backward: dtypes line up, with dropout too, and the result stays close to float32."""
    from decalign.model import DecAlign
    from tests.model.helpers import WIDTHS, random_inputs, small_config

    x = random_inputs(WIDTHS, batch=8)
    weight = "transformers.audio.layers.0.fc1.weight"
    for dropout_on in (True, False):
        rates = {} if dropout_on else {k: 0.0 for k in ("attn_dropout", "relu_dropout", "res_dropout",
                                                          "embed_dropout")}
        torch.manual_seed(0)
        model = DecAlign(small_config(num_layers=2, **rates), WIDTHS, 1).train()
        param = model.get_parameter(weight)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, align=False).prediction
        (low_grad,) = torch.autograd.grad(low.float().sum(), param)
        assert low.dtype == torch.bfloat16 and low_grad.dtype == torch.float32
        assert torch.isfinite(low_grad).all() and low_grad.abs().sum() > 0
    full = model(x, align=False).prediction
    (full_grad,) = torch.autograd.grad(full.sum(), param)
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)
    torch.testing.assert_close(low_grad, full_grad, atol=0.05 * full_grad.abs().max().item(), rtol=0.1)
