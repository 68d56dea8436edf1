"""The stacked encoders' linear layers as batched products, on the native products kernel where it applies.

Two layouts, as ``decalign.model.fusion`` takes them: token-major (:func:`linear`, ``F.linear`` per encoder)
and feature-major (:func:`feature_major`, the attention's projections, rows = output features). Where the native
kernels load (float32 on the CPU, outside autocast), ``small_products.c`` runs the forward products and the
token-major layers' input gradients, whose inner dimension is short (40 to 160 at MOSI shapes): in a training
step at those shapes, timed call by call against MKL's on the same operands, they took 6.4 ms less (faster in
89-98% of calls by shape). The products over all the tokens (the weights' gradients) and the feature-major
inputs' gradients stay on ``torch.bmm``: there the kernel took 0.09-0.14 ms more a call (weights) and 0.49 ms
more at the memory projections' shape (inputs). Elsewhere ``torch.baddbmm`` does it all. Both agree to rounding (sums in a different order).
"""

from __future__ import annotations

import torch

from . import native


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-encoder ``F.linear``: x (M, R, in), weight (M, out, in), bias (M, out) -> (M, R, out)."""
    if native.products_apply(x, weight, bias):
        if not native.records_autograd(x, weight, bias):  # eval: the kernel itself, no autograd node
            return _token_major_product(x, weight, bias)
        return _Linear.apply(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def feature_major(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-encoder projection with the output features as rows: x (M, R, d), weight (M, rows, d), bias
    (M, rows) -> (M, rows, R), that is ``bias + weight @ x^T``."""
    if native.products_apply(x, weight, bias):
        if not native.records_autograd(x, weight, bias):
            return _feature_major_product(x, weight, bias)
        return _FeatureMajor.apply(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(2), weight, x.transpose(1, 2))


def _token_major_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return native.product(x, weight.transpose(1, 2), bias, bias_along="columns")


def _feature_major_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return native.product(weight, x.transpose(1, 2), bias, bias_along="rows")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _token_major_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        d_x = native.product(grad, weight) if needs_x else None  # inner dimension: out (40 or 160)
        d_weight = torch.bmm(grad.transpose(1, 2), x) if needs_weight else None  # over all R tokens: MKL
        return d_x, d_weight, grad.sum(1) if needs_bias else None


class _FeatureMajor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _feature_major_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad
        # both over long inner dimensions (rows, then R tokens) into few rows or columns: MKL was as fast or faster
        d_x = torch.bmm(weight.transpose(1, 2), grad).transpose(1, 2) if needs_x else None
        d_weight = torch.bmm(grad, x) if needs_weight else None
        return d_x, d_weight, grad.sum(2) if needs_bias else None
