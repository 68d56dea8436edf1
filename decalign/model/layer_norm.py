"""A post-norm layer's ``LayerNorm(x + residual)`` with each stacked encoder's own scale and shift.

Where the native kernels load (float32 on the CPU), ``residual_layer_norm.c`` does the sum, the
normalisation, the scale and the shift in one pass a row, and the backward likewise: at MOSI shapes
((3, 32, 50, 40), 2 threads) forward and backward took 0.26 ms against torch's 1.49 ms, and an eval forward's
0.16 ms against 0.42 ms (stop 37, 200 calls each). Elsewhere torch's operators do the same work; both agree to
rounding (the kernel takes the variance of the centred values, torch its own way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import native


def residual_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float, in_place: bool = False) -> torch.Tensor:
    """LayerNorm over the last dimension of ``x + residual`` (of x alone when residual is None), then encoder
    m's ``weight[m]`` and ``bias[m]``. x, residual (M, ..., d); weight, bias (M, d). ``in_place``: the result
    may be written over ``residual`` (else x), as nothing needs them for a backward."""
    tensors = (x, weight, bias) if residual is None else (x, residual, weight, bias)
    if native.layer_norm_applies(*tensors):
        keep = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if keep:
            return _ResidualLayerNorm.apply(x, residual, weight, bias, eps)
        target = x if residual is None else residual
        out = target if in_place and target.is_contiguous() else None
        x, residual = x.contiguous(), None if residual is None else residual.contiguous()
        return native.residual_layer_norm(x, residual, weight, bias, eps, keep=False, out=out)[0]
    summed = x if residual is None else (residual.add_(x) if in_place else x + residual)
    return _torch_layer_norm(summed, weight, bias, eps, in_place)


def _torch_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                      in_place: bool) -> torch.Tensor:
    if x.shape[0] == 1:
        return F.layer_norm(x, x.shape[-1:], weight[0], bias[0], eps)
    normed = F.layer_norm(x, x.shape[-1:], eps=eps)
    stretch = (slice(None),) + (None,) * (x.dim() - 2)  # weight[m] over every row of encoder m
    return torch.addcmul(bias[stretch], normed, weight[stretch], out=normed if in_place else None)


class _ResidualLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps):
        x, residual = x.contiguous(), None if residual is None else residual.contiguous()
        out, normed, inverse_std = native.residual_layer_norm(x, residual, weight, bias, eps, keep=True)
        ctx.save_for_backward(normed, inverse_std, weight)
        ctx.has_residual = residual is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        d_sum, d_weight, d_bias = native.residual_layer_norm_backward(grad, *ctx.saved_tensors)
        return d_sum, d_sum if ctx.has_residual else None, d_weight, d_bias, None
