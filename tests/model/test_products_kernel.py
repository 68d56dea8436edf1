"""The batched products (decalign.model.products, their kernel small_products.c): values against float64
products at shapes that leave partial tiles and panels, with B in place and copied, every bias; gradients against
torch's path; the same bits on any thread count; the fallbacks."""

from __future__ import annotations

import pytest
import torch

from decalign.model import native, products
from tests.model.test_native_kernels import needs_kernel, torch_threads

# (groups, M, K, N): DecAlign's token-major layers and projections at MOSI shapes; then rows not a multiple of the
# 6-row tiles, columns ending on a half panel (8), a partial vector (1, 7, 9, 17) and a whole one, K of 0 and 1
SHAPES = [(3, 1600, 40, 160), (3, 1600, 160, 40), (3, 40, 40, 1600), (3, 200, 40, 3200), (1, 7, 5, 1),
          (2, 13, 3, 7), (2, 11, 1, 9), (3, 6, 17, 17), (1, 5, 8, 24), (2, 9, 0, 40), (1, 1, 40, 8)]
ids = ["x".join(map(str, s)) for s in SHAPES]


def operands(groups, m, k, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(groups, m, k, generator=gen), torch.randn(groups, k, n, generator=gen),
            torch.randn(groups, m, generator=gen), torch.randn(groups, n, generator=gen))


def layouts(b):
    """B as it comes: contiguous (read in place), transposed (copied into panels), a slice with a row gap."""
    padded = torch.zeros(b.shape[0], b.shape[1], b.shape[2] + 3)
    padded[..., : b.shape[2]] = b
    return {"contiguous": b, "transposed": b.transpose(1, 2).contiguous().transpose(1, 2),
            "row gap": padded[..., : b.shape[2]]}


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=ids)
@pytest.mark.parametrize("bias_along", [None, "rows", "columns"])
def test_product_matches_float64(shape, bias_along):
    a, b, row_bias, column_bias = operands(*shape)
    bias = {"rows": row_bias, "columns": column_bias, None: None}[bias_along]
    expected = torch.bmm(a.double(), b.double())
    if bias_along == "rows":
        expected += row_bias.double().unsqueeze(2)
    elif bias_along == "columns":
        expected += column_bias.double().unsqueeze(1)
    for name, laid_out in layouts(b).items():
        got = native.product(a, laid_out, bias, bias_along or "columns")
        assert got.shape == expected.shape and got.is_contiguous(), name
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * max(1.0, shape[2] ** 0.5),
                                   msg=lambda m, name=name: f"{name}: {m}")


@needs_kernel
def test_product_reads_a_with_a_row_gap_or_transposed_in_place():
    a, b, _, bias = operands(2, 14, 9, 20)
    padded = torch.zeros(2, 14, 12)
    padded[..., :9] = a
    expected = torch.baddbmm(bias.unsqueeze(1), a, b)
    for laid_out in (padded[..., :9], a.transpose(1, 2).contiguous().transpose(1, 2)):
        torch.testing.assert_close(native.product(laid_out, b, bias), expected, rtol=1e-5, atol=1e-5)


@needs_kernel
def test_product_does_not_depend_on_the_thread_count():
    a, b, _, bias = operands(3, 301, 40, 168)
    results = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            results.append((native.product(a, b, bias), native.product(a, b.transpose(1, 2).contiguous()
                                                                       .transpose(1, 2), bias)))
    assert all(torch.equal(x, y) for other in results[1:] for x, y in zip(results[0], other))
    assert torch.equal(*results[0])  # in place and copied panels sum alike


@needs_kernel
def test_product_refuses_mismatched_shapes_and_names_them():
    a, b, row_bias, column_bias = operands(2, 5, 4, 3)
    with pytest.raises(ValueError, match=r"a \(2, 5, 4\), b \(2, 3, 4\)"):
        native.product(a, b.transpose(1, 2))
    with pytest.raises(ValueError, match="bias"):
        native.product(a, b, row_bias, "columns")
    with pytest.raises(ValueError, match="bias"):
        native.product(a, b, column_bias, "rows")
    with pytest.raises(ValueError, match=r"got a \(5, 4\)"):
        native.product(a[0], b)
    with pytest.raises(ValueError, match="along sideways"):
        native.product(a, b, column_bias, "sideways")


def run_both(function, x, weight, bias, grad, monkeypatch):
    """function's result and gradients with the kernel, then on torch's path."""
    results = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(native, "products_apply", lambda *tensors: False)
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
        out = function(*leaves)
        results.append((out, *torch.autograd.grad(out, leaves, grad)))
    return results


# (function, tokens, width, features): token-major F.linear (out = features) and feature-major projections
# (rows = features) at MOSI shapes and at odd ones
LAYERS = [("linear", 1600, 40, 160), ("linear", 1600, 160, 40), ("linear", 37, 9, 13),
          ("feature_major", 1600, 40, 40), ("feature_major", 3200, 40, 200), ("feature_major", 23, 7, 11)]


@needs_kernel
@pytest.mark.parametrize("name, tokens, width, features", LAYERS, ids=["-".join(map(str, c)) for c in LAYERS])
def test_layers_and_their_gradients_match_torchs_path(monkeypatch, name, tokens, width, features):
    gen = torch.Generator().manual_seed(3)
    x, weight, bias = (torch.randn(3, tokens, width, generator=gen), torch.randn(3, features, width, generator=gen),
                       torch.randn(3, features, generator=gen))
    grad = torch.randn((3, tokens, features) if name == "linear" else (3, features, tokens), generator=gen)
    kernel, torch_path = run_both(getattr(products, name), x, weight, bias, grad, monkeypatch)
    function_name = {"linear": "_Linear", "feature_major": "_FeatureMajor"}[name]
    assert type(kernel[0].grad_fn).__name__.startswith(function_name)  # the kernel ran, then torch's path did
    assert not type(torch_path[0].grad_fn).__name__.startswith(function_name)
    for got, want in zip(kernel, torch_path):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@needs_kernel
def test_autocast_and_other_dtypes_stay_on_torchs_products():
    x, weight, bias = torch.randn(2, 5, 4), torch.randn(2, 3, 4), torch.randn(2, 3)
    assert native.products_apply(x, weight, bias)
    assert not native.products_apply(x.double(), weight.double(), bias.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not native.products_apply(x, weight, bias)
        assert products.linear(x, weight, bias).dtype == torch.bfloat16
