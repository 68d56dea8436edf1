"""The residual LayerNorm (decalign.model.layer_norm, its kernel residual_layer_norm.c): values and gradients
against a float64 textbook LayerNorm and against torch's path, in place and not, on any thread count."""

from __future__ import annotations

import pytest
import torch

from decalign.model import native
from decalign.model.layer_norm import residual_layer_norm
from tests.model.test_native_kernels import needs_kernel

# (encoders, batch, steps, width): DecAlign's (3, ., ., 40); one encoder; rows per encoder not a multiple of the
# kernel's 64-row chunks; an odd width; a width of one vector exactly
SHAPES = [(3, 32, 50, 40), (1, 4, 50, 40), (2, 7, 10, 40), (3, 5, 13, 7), (2, 3, 65, 8)]
EPS = 1e-5


def textbook(x, residual, weight, bias, eps=EPS):
    """(s - mean) / sqrt(var + eps) * weight[m] + bias[m] for s = x + residual, var the biased variance, in
    float64."""
    s = x.double() if residual is None else x.double() + residual.double()
    mean = s.mean(-1, keepdim=True)
    var = ((s - mean) ** 2).mean(-1, keepdim=True)
    stretch = (slice(None),) + (None,) * (x.dim() - 2)
    return (s - mean) / torch.sqrt(var + eps) * weight.double()[stretch] + bias.double()[stretch]


def inputs(shape, seed=0, residual=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 3 + 1
    r = torch.randn(shape, generator=gen) if residual else None
    weight = torch.randn(shape[0], shape[-1], generator=gen)
    bias = torch.randn(shape[0], shape[-1], generator=gen)
    return x, r, weight, bias


def gradients(out, tensors, grad):
    wanted = [t for t in tensors if t is not None]
    return torch.autograd.grad(out, wanted, grad)


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_residual", [True, False])
def test_kernel_matches_float64_textbook_values_and_gradients(shape, with_residual):
    x, r, weight, bias = inputs(shape, residual=with_residual)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, weight, bias)]
    out = residual_layer_norm(*leaves, EPS)
    assert out.grad_fn is not None and "ResidualLayerNorm" in type(out.grad_fn).__name__  # the kernel ran
    ref_leaves = [t.double().requires_grad_() if t is not None else None for t in (x, r, weight, bias)]
    expected = textbook(*ref_leaves)
    torch.testing.assert_close(out.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    got = gradients(out, leaves, grad)
    want = gradients(expected, ref_leaves, grad.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_the_kernel_agrees_with_torchs_path(monkeypatch):
    """The same function with the kernel switched off (torch's LayerNorm and addcmul) gives the same values and
    gradients to rounding."""
    x, r, weight, bias = inputs((3, 8, 50, 40), seed=2)
    grad = torch.randn(x.shape)
    results = []
    for applies in (native.layer_norm_applies, lambda *t: False):
        monkeypatch.setattr(native, "layer_norm_applies", applies)
        leaves = [t.clone().requires_grad_() for t in (x, r, weight, bias)]
        out = residual_layer_norm(*leaves, EPS)
        results.append((out.detach(), *gradients(out, leaves, grad)))
    for native_result, torch_result in zip(*results):
        torch.testing.assert_close(native_result, torch_result, rtol=1e-5, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("use_kernel", [True, False])
def test_in_place_writes_over_the_residual_and_gives_the_same_numbers(monkeypatch, use_kernel):
    if not use_kernel:
        monkeypatch.setattr(native, "layer_norm_applies", lambda *t: False)
    x, r, weight, bias = inputs((3, 4, 20, 40), seed=3)
    with torch.no_grad():
        fresh = residual_layer_norm(x, r, weight, bias, EPS)
        target = r.clone()
        in_place = residual_layer_norm(x, target, weight, bias, EPS, in_place=True)
    torch.testing.assert_close(in_place, fresh, rtol=0, atol=0)
    if use_kernel:  # torch's path sums into the residual and normalises into a tensor of its own
        assert in_place.data_ptr() == target.data_ptr()
    torch.testing.assert_close(fresh.double(), textbook(x, r, weight, bias), rtol=1e-5, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 3])
def test_values_and_gradients_do_not_depend_on_the_thread_count(threads):
    x, r, weight, bias = inputs((3, 9, 50, 40), seed=4)
    grad = torch.randn(x.shape)

    def run():
        leaves = [t.clone().requires_grad_() for t in (x, r, weight, bias)]
        out = residual_layer_norm(*leaves, EPS)
        return (out.detach(), *gradients(out, leaves, grad))

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = run()
        torch.set_num_threads(threads)
        other = run()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(two, other):
        assert torch.equal(a, b)


@needs_kernel
def test_a_row_of_equal_values_normalises_to_the_shift():
    """Zero variance: (s - mean) is 0 and 1 / sqrt(eps) finite, so the row is the shift, as in torch."""
    x = torch.full((2, 1, 3, 8), 5.0)
    weight, bias = torch.randn(2, 8), torch.randn(2, 8)
    out = residual_layer_norm(x, None, weight, bias, EPS)
    torch.testing.assert_close(out, bias[:, None, None].expand_as(out))


@needs_kernel
def test_mismatched_shapes_are_refused_with_the_shapes_named():
    x, r, weight, bias = inputs((3, 2, 5, 40))
    with pytest.raises(ValueError, match=r"weight \(2, 40\)"):
        native.residual_layer_norm(x, r, weight[:2], bias[:2], EPS, keep=False)
    with pytest.raises(ValueError, match=r"residual \(3, 2, 5, 39\)"):
        native.residual_layer_norm(x, r[..., :39], weight, bias, EPS, keep=False)


@needs_kernel
def test_a_layers_slice_of_stacked_parameters_is_read_where_it_lies():
    """The model hands over (M, d) slices of stacked parameters, rows apart by more than d: the same values and gradients
    as from contiguous copies."""
    x, r, _, _ = inputs((3, 4, 10, 40), seed=5)
    stacked = torch.randn(3, 4, 2, 40)  # (M, L, scale and shift, d)
    grad = torch.randn(x.shape)
    results = []
    for contiguous in (False, True):
        params = stacked.clone().requires_grad_()
        weight, bias = params[:, 2, 0], params[:, 2, 1]
        if contiguous:
            weight, bias = weight.contiguous(), bias.contiguous()
        else:
            assert weight.stride(0) == 4 * 2 * 40
        out = residual_layer_norm(x, r, weight, bias, EPS)
        results.append((out.detach(), *torch.autograd.grad(out, params, grad)))
    for strided, copied in zip(*results):
        assert torch.equal(strided, copied)
