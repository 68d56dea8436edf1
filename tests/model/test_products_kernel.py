"""The batched products (decalign.model.products, their kernel small_products.c): values against float64
products at shapes that leave partial tiles and panels, with B in place and copied, every bias; gradients against
torch's path; the same bits on any thread count; the fallbacks."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from decalign.model import native, products
from tests.model.test_native_kernels import needs_kernel, torch_threads

# (groups, M, K, N): DecAlign's token-major layers and projections at MOSI shapes; then rows not a multiple of the
# 6-row tiles, columns ending on a half panel (8), a partial vector (1, 7, 9, 17) and a whole one, K of 0 and 1
SHAPES = [(3, 1600, 40, 160), (3, 1600, 160, 40), (3, 40, 40, 1600), (3, 200, 40, 3200), (1, 7, 5, 1),
          (2, 13, 3, 7), (2, 11, 1, 9), (3, 6, 17, 17), (1, 5, 8, 24), (2, 9, 0, 40), (1, 1, 40, 8)]
ids = ["x".join(map(str, s)) for s in SHAPES]
ROOT = Path(__file__).resolve().parents[2]


def operands(groups, m, k, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(groups, m, k, generator=gen), torch.randn(groups, k, n, generator=gen),
            torch.randn(groups, m, generator=gen), torch.randn(groups, n, generator=gen))


def layouts(b):
    """B as it comes: contiguous (read in place), transposed (copied into panels, whole ones 8 x 8 at a time), a
    slice with a row gap, and transposed with a gap between its columns (a slice of X in B = X^T)."""
    padded = torch.zeros(b.shape[0], b.shape[1], b.shape[2] + 3)
    padded[..., : b.shape[2]] = b
    columns_padded = torch.zeros(b.shape[0], b.shape[2], b.shape[1] + 3)
    columns_padded[..., : b.shape[1]] = b.transpose(1, 2)
    return {"contiguous": b, "transposed": b.transpose(1, 2).contiguous().transpose(1, 2),
            "row gap": padded[..., : b.shape[2]], "column gap": columns_padded[..., : b.shape[1]].transpose(1, 2)}


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


# The fused eval layer (native.encoder_layer_eval): (groups, rows, d, hidden) at MOSI shapes; rows not a multiple
# of the 6-row tiles or the 12-row blocks; widths ending on a partial vector (12, 30) or panel (8, 20); one row
LAYER_SHAPES = [(3, 1600, 40, 160), (1, 7, 12, 48), (2, 25, 30, 120), (3, 13, 8, 32), (1, 1, 20, 80), (2, 12, 40, 160)]
layer_ids = ["x".join(map(str, s)) for s in LAYER_SHAPES]


def layer_operands(groups, rows, d, hidden, seed=0):
    """x and the attention's output (groups, rows, d), and a middle layer's slices of stacked parameters (each
    group's slice apart from the next, as fusion.encode hands them over), in fusion._AFTER_ATTENTION's order."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(d, d), (d,), (hidden, d), (hidden,), (d, hidden), (d,), (d,), (d,), (d,), (d,)]
    stacked = [torch.randn(groups, 3, *shape, generator=gen) * (0.3 if len(shape) == 2 else 1.0) for shape in shapes]
    return (torch.randn(groups, rows, d, generator=gen), torch.randn(groups, rows, d, generator=gen),
            [p.unbind(1)[1] for p in stacked])


def float64_layer(x, out, p, eps=(1e-5, 1e-5)):
    x, out, p = x.double(), out.double(), [t.double() for t in p]
    def norm(s, scale, shift, e):
        return torch.nn.functional.layer_norm(s, s.shape[-1:], eps=e) * scale[:, None] + shift[:, None]
    x1 = norm(x + torch.bmm(out, p[0].transpose(1, 2)) + p[1][:, None], p[6], p[7], eps[0])
    hidden = torch.relu(torch.bmm(x1, p[2].transpose(1, 2)) + p[3][:, None])
    return norm(x1 + torch.bmm(hidden, p[4].transpose(1, 2)) + p[5][:, None], p[8], p[9], eps[1])


@needs_kernel
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=layer_ids)
def test_fused_eval_layer_matches_a_float64_layer_and_writes_over_the_attention_output(shape):
    x, out, p = layer_operands(*shape)
    expected = float64_layer(x, out, p, (1e-5, 1e-6))
    given = out.clone()
    result = native.encoder_layer_eval(x, given, p, (1e-5, 1e-6))
    assert result.data_ptr() == given.data_ptr()
    torch.testing.assert_close(result, expected.float(), atol=2e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("shape", LAYER_SHAPES, ids=layer_ids)
def test_fused_eval_layer_gives_the_bits_of_the_unfused_calls(shape):
    """The same tiles and LayerNorm rows in the same order as the products, ReLU and LayerNorm calls it replaces."""
    x, out, p = layer_operands(*shape)
    attended = products.linear(out, p[0], p[1])
    x1 = native.residual_layer_norm(x, attended, p[6], p[7], 1e-5, keep=False)[0]
    hidden = torch.relu(products.linear(x1, p[2], p[3]))
    unfused = native.residual_layer_norm(x1, products.linear(hidden, p[4], p[5]), p[8], p[9], 1e-5, keep=False)[0]
    assert torch.equal(native.encoder_layer_eval(x, out.clone(), p, (1e-5, 1e-5)), unfused)
    column_major = [t.transpose(1, 2).contiguous().transpose(1, 2) if t.dim() == 3 else t for t in p]  # copied
    assert torch.equal(native.encoder_layer_eval(x, out.clone(), column_major, (1e-5, 1e-5)), unfused)


@needs_kernel
def test_fused_eval_layer_does_not_depend_on_the_thread_count_and_keeps_nans():
    x, out, p = layer_operands(3, 50, 40, 160)
    out[1, 7, 3] = float("nan")  # one row's products, then its LayerNorms, turn NaN; the ReLU must not hide it
    results = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            results.append(native.encoder_layer_eval(x, out.clone(), p, (1e-5, 1e-5)))
    for r in results[1:]:  # the same bits, the NaNs where they are
        torch.testing.assert_close(r, results[0], atol=0, rtol=0, equal_nan=True)
    assert results[0].isnan().any(-1).nonzero().tolist() == [[1, 7]]
    assert results[0][1, 7].isnan().all()


@needs_kernel
def test_fused_eval_layer_refuses_mismatched_shapes_and_names_them():
    x, out, p = layer_operands(2, 5, 8, 32)
    with pytest.raises(ValueError, match=r"parameters .*\(2, 32, 8\).*got x \(2, 5, 8\), attended \(2, 5, 9\)"):
        native.encoder_layer_eval(x, torch.zeros(2, 5, 9), p, (1e-5, 1e-5))
    with pytest.raises(ValueError, match=r"\(2, 8, 32\)"):
        native.encoder_layer_eval(x, out, p[:4] + [p[4].transpose(1, 2)] + p[5:], (1e-5, 1e-5))


@contextlib.contextmanager
def floats_before_a_guard_page(values: torch.Tensor):
    """``values`` copied to the end of a page whose next page may not be read: reading past them faults."""
    page = mmap.PAGESIZE
    memory = mmap.mmap(-1, 2 * page)
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mprotect(ctypes.c_void_p(start + page), page, 0) == 0  # PROT_NONE
    try:
        placed = np.frombuffer(memory, np.float32, values.numel(), page - 4 * values.numel())
        tensor = torch.from_numpy(placed).view(values.shape)
        tensor.copy_(values)
        yield tensor
        del tensor, placed
    finally:
        libc.mprotect(ctypes.c_void_p(start + page), page, mmap.PROT_READ | mmap.PROT_WRITE)


def column_biases_read_within_the_bias():
    for columns in (1, 7, 12, 44):
        a, b, _, bias = operands(1, 9, 5, columns)
        with floats_before_a_guard_page(bias) as guarded:
            result = native.product(a, b, guarded, bias_along="columns")
        torch.testing.assert_close(result, torch.baddbmm(bias.unsqueeze(1), a, b), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_column_biases_of_a_partial_panel_are_read_within_the_bias():
    """The tiles load whole vectors of column biases; a partial panel's are copied first, so a bias that ends
    where readable memory ends is not read past (stop 45's kernel loaded up to 7 floats past it and discarded
    them: here a fault). In a child process, so a fault fails this test alone."""
    code = "from tests.model.test_products_kernel import column_biases_read_within_the_bias as check; check()"
    child = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert child.returncode == 0, f"the product read past the bias (exit {child.returncode}): {child.stderr[-2000:]}"


@needs_kernel
def test_eval_runs_the_kernels_without_autograd_functions_and_training_through_them(monkeypatch):
    """Without autograd (eval, inference) the products and the attention call their kernels directly: an autograd
    Function's ``apply`` took 0.18 ms of a forward (README "What changed at stop 47"). With it, the Functions run,
    so that the backward exists: the products give the same bits, the attention's kernel with the weights kept (for
    its backward) the eval path's values to rounding."""
    from decalign.model import attention as attention_module

    gen = torch.Generator().manual_seed(3)
    x, weight, bias = torch.randn(2, 30, 8, generator=gen), torch.randn(2, 12, 8, generator=gen), torch.randn(2, 12)
    qt, kt, vt = (torch.randn(2, 3, 4, steps, generator=gen) for steps in (6, 9, 9))
    calls = []
    for name, function in (("linear", products._Linear), ("feature_major", products._FeatureMajor),
                           ("attention", attention_module._FusedAttention)):
        original = function.apply
        monkeypatch.setattr(function, "apply", lambda *a, _o=original, _n=name: calls.append(_n) or _o(*a))

    def run():
        return (products.linear(x, weight, bias), products.feature_major(x, weight, bias),
                attention_module.attention(qt, kt, vt)[0])

    weight.requires_grad_(True)
    qt.requires_grad_(True)
    with torch.no_grad():
        evaluated = run()
    assert calls == []
    trained = run()
    assert calls == ["linear", "feature_major", "attention"] and all(t.requires_grad for t in trained)
    assert torch.equal(evaluated[0], trained[0].detach()) and torch.equal(evaluated[1], trained[1].detach())
    torch.testing.assert_close(evaluated[2], trained[2].detach(), rtol=1e-6, atol=1e-6)
