"""Cross-modal transformer encoders, laid out parameter for parameter like the official DecAlign's.

The modules only hold the parameters (same names and shapes as the official ``state_dict``); ``encode``
runs several encoders of equal shapes as one batched computation, stacking their weights at forward time:
three modalities cost one set of kernels instead of three. In cross-modal attention the keys and values
are the embedded input of every layer (as in the official encoder), so all layers' key and value
projections are one matrix product. Attention itself is ``attention.attention`` (head-major layout). In eval
(no autograd, no attention weights) with a memory, every layer runs in one native call
(``native.encoder_eval``): the same kernels as the layer-by-layer calls, in the same order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import native, products
from .attention import attention
from .dropout import dropout, relu_dropout
from .layer_norm import residual_layer_norm


class MultiheadAttention(nn.Module):
    """Multi-head attention parameters with a packed input projection (``in_proj_weight``: q, k, v rows)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)


class EncoderLayer(nn.Module):
    """Post-norm layer: attention, dropout, residual, LayerNorm; then ReLU MLP (d -> 4d -> d), same again."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float, res_dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, attn_dropout)
        self.attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout


class CrossModalEncoder(nn.Module):
    """A stack of ``EncoderLayer`` in which one modality's sequence queries a key/value sequence.

    Query and key/value inputs are scaled by sqrt(d), then embedding dropout (keys and values drawn
    separately, as in the official model); sinusoidal positions are added after scaling only when
    ``positional_encoding`` is on. Without a memory the layer input attends to itself.
    """

    def __init__(self, dim: int, heads: int, layers: int, *, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, embed_dropout: float, positional_encoding: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, attn_dropout, relu_dropout, res_dropout) for _ in range(layers)
        )
        self.dim, self.heads = dim, heads
        self.embed_dropout, self.positional = embed_dropout, positional_encoding

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None, mask=None,
                need_weights: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """query (B, Tq, d); memory (B, Tk, d) or None; mask (B or 1, Tq, Tk) bool, True = may attend.

        Returns (B, Tq, d) and, if asked, the head-averaged weights (B, Tq, Tk) of every layer."""
        hidden, weights = encode([self], query.unsqueeze(0), None if memory is None else memory.unsqueeze(0),
                                 None if mask is None else mask.unsqueeze(0), need_weights)
        return hidden[0], [w[0] for w in weights]


def encode(encoders: list[CrossModalEncoder], queries: torch.Tensor, memories: torch.Tensor | None = None,
           masks: torch.Tensor | None = None, need_weights: bool = False):
    """Run M encoders of one configuration side by side, as the official code runs them one by one.

    Parameters
    ----------
    encoders : M ``CrossModalEncoder`` with the same width, heads, layers and dropout rates (the
        attention dropout may differ).
    queries : (M, B, Tq, d), one query sequence per encoder.
    memories : (M, B, Tk, d) key/value sequences, or None for self-attention.
    masks : (M, B or 1, Tq, Tk) bool, True where a query may attend, or None.
    need_weights : also return each layer's head-averaged attention weights.

    Returns
    -------
    (M, B, Tq, d) outputs and a list, one per layer, of (M, B, Tq, Tk) weights (empty unless asked).
    """
    first = encoders[0]
    batch = queries.shape[1]
    flat_mask = None if masks is None else masks.expand(-1, batch, -1, -1).flatten(0, 1)  # (M*B, Tq, Tk)
    mask_by_key = _eval_mask_layout(first, flat_mask, need_weights)
    params = _stacked_parameters(encoders)  # name -> (M, L, ...)
    params.update(_scaled_queries(params, first.heads))
    x = _embed(first, queries)  # (M, B, Tq, d)
    keys = values = None
    if memories is not None:
        key_in = _embed(first, memories)
        value_in = _embed(first, memories) if first.training and first.embed_dropout > 0 else key_in
        if _in_one_call(first, params, x, key_in, value_in, need_weights):
            return _encode_in_one_call(first, params, x, key_in, mask_by_key), []
        keys, values = _memory_projections(params, key_in, value_in, first.heads)  # L x (M, B, h, hd, Tk)
    rates = tuple(e.layers[0].self_attn.dropout for e in encoders)
    # unbind, not indexing: the backward of L slices would build L full-size gradients and add them up
    per_layer = {name: p.unbind(1) for name, p in params.items()}  # name -> L tensors (M, ...)
    weights = []
    for index, settings in enumerate(first.layers):
        layer = {name: p[index] for name, p in per_layer.items()}
        kt, vt = (keys[index], values[index]) if keys is not None else _self_projections(layer, x, first.heads)
        x, w = _layer(settings, first.heads, layer, x, kt, vt, (flat_mask, mask_by_key), rates, need_weights)
        if need_weights:
            weights.append(w)
    return x, weights


def _in_one_call(first: CrossModalEncoder, params, x: torch.Tensor, key_in: torch.Tensor, value_in: torch.Tensor,
                 need_weights: bool) -> bool:
    """Whether every layer runs in one native call (``native.encoder_eval``): in eval without autograd or weights,
    with a memory whose keys and values are one product, where the kernels take these tensors."""
    return (_keeps_nothing(first, need_weights) and value_in is key_in
            and len(first.layers) > 0 and x.shape[-1] // first.heads <= native.MAX_HEAD_WIDTH
            and native.products_apply(x, key_in, *(params[name] for name in _IN_ONE_CALL)))


def _encode_in_one_call(first: CrossModalEncoder, params, x: torch.Tensor, key_in: torch.Tensor,
                        mask_by_key: torch.Tensor | None) -> torch.Tensor:
    """Every layer as the loop of :func:`encode` runs it in eval, in one call: the same kernels in the same order, so
    the same bits, without the Python between them (README "What changed at stop 47"). mask_by_key: the eval path's
    layout of the mask (:func:`_eval_mask_layout`), or None."""
    kv = _memory_product(params, key_in, first.heads)  # (M, L, 2, h, hd, B, Tk)
    layer = first.layers[0]
    return native.encoder_eval(x, [params[name] for name in _IN_ONE_CALL], kv, first.heads,
                               (layer.attn_layer_norm.eps, layer.final_layer_norm.eps), mask_by_key)


def _eval_mask_layout(first: CrossModalEncoder, flat_mask: torch.Tensor | None, need_weights: bool):
    """The mask transposed, (M*B, Tk, Tq), for the attention kernel's eval path (an eval forward without autograd
    or weights), once for all layers: transposed in every layer, a masked eval forward at unaligned MOSI lengths
    (50, 375 and 500 steps, batch 32) took 264 ms instead of 232 ms. None where that path does not run."""
    if flat_mask is None or not _keeps_nothing(first, need_weights):
        return None
    return flat_mask.transpose(1, 2).contiguous()


def _keeps_nothing(first: CrossModalEncoder, need_weights: bool) -> bool:
    """An eval forward without autograd or attention weights: where the attention's eval path runs."""
    return not (first.training or torch.is_grad_enabled() or need_weights)


def _scaled_queries(params: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    """Every layer's query projection (M, L, d, d) and bias, times 1 / sqrt(head width) (the scores' scale folded
    into the queries): two operators for all layers, not two a layer."""
    weight, bias = params["self_attn.in_proj_weight"], params["self_attn.in_proj_bias"]
    d = weight.shape[-1]
    scale = 1.0 / math.sqrt(d // heads)
    return {"query.weight": weight[:, :, :d] * scale, "query.bias": bias[:, :, :d] * scale}


def _stacked_parameters(encoders) -> dict[str, torch.Tensor]:
    """Each layer parameter of every encoder, stacked: name -> (M, L, *shape)."""
    per_layer = [_parameters_of(layer) for e in encoders for layer in e.layers]  # encoder-major, as stacked
    shape = (len(encoders), len(encoders[0].layers))
    return {name: torch.stack([p[name] for p in per_layer]).unflatten(0, shape) for name in per_layer[0]}


def _parameters_of(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``dict(module.named_parameters())``, in its order, without its bookkeeping for shared parameters (none in
    a layer): the walk took half of ``_stacked_parameters``' 0.28 ms a forward (it is made every forward, as the
    parameters may change between forwards)."""
    found = {prefix + name: p for name, p in module._parameters.items() if p is not None}
    for name, child in module._modules.items():
        if child is not None:
            found.update(_parameters_of(child, f"{prefix}{name}."))
    return found


def _embed(encoder: CrossModalEncoder, x: torch.Tensor) -> torch.Tensor:
    x = math.sqrt(encoder.dim) * x
    if encoder.positional:
        x = x + sinusoidal_positions(x.shape[-2], x.shape[-1], x.device, x.dtype)
    return dropout(x, encoder.embed_dropout, encoder.training)


def _memory_projections(params, key_in: torch.Tensor, value_in: torch.Tensor, heads: int):
    """Every layer's keys and values of the (unchanging) memory in one product: L tensors (M, B, h, hd, Tk)
    each.

    Each layer's part is unbound straight from the product's own layout (M, L, ..., h, hd, B, Tk) and then
    permuted: the backward stacks the layers' gradients into that layout, which the product's backward reads
    as it is. Unbinding after permuting the layers to the front cost a 7.7 MB copy more per projection and step
    at MOSI shapes, to bring the stacked gradients back into the product's layout."""
    if key_in is value_in:  # no separate dropout: one product for keys and values
        pairs = [layer.unbind(1) for layer in _memory_product(params, key_in, heads).unbind(1)]
        return [_heads_first(k) for k, _ in pairs], [_heads_first(v) for _, v in pairs]  # each (M, h, hd, B, Tk)
    weight, bias = _key_value_parameters(params)
    layers = weight.shape[1]
    keys = _product_layout(key_in, weight[:, :, 0].flatten(1, 2), bias[:, :, 0].flatten(1), heads, (layers,))
    values = _product_layout(value_in, weight[:, :, 1].flatten(1, 2), bias[:, :, 1].flatten(1), heads, (layers,))
    return [_heads_first(k) for k in keys.unbind(1)], [_heads_first(v) for v in values.unbind(1)]


def _memory_product(params, key_in: torch.Tensor, heads: int) -> torch.Tensor:
    """Every layer's keys and values of one memory in one product, in its own layout (M, L, 2, h, hd, B, Tk)."""
    weight, bias = _key_value_parameters(params)
    return _product_layout(key_in, weight.flatten(1, 3), bias.flatten(1), heads, (weight.shape[1], 2))


def _key_value_parameters(params) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys' and values' projections of every layer: (M, L, k|v, d, d) and (M, L, k|v, d), views."""
    weight, bias = params["self_attn.in_proj_weight"], params["self_attn.in_proj_bias"]  # (M, L, 3d, d)
    d = weight.shape[3]
    return weight[:, :, d:].unflatten(2, (2, d)), bias[:, :, d:].unflatten(2, (2, d))


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """(M, h, hd, B, T) -> (M, B, h, hd, T), a view."""
    return x.permute(0, 3, 1, 2, 4)


def _self_projections(layer, x: torch.Tensor, heads: int):
    """Keys and values of the current layer input (self-attention): (M, B, h, hd, T) each."""
    d = x.shape[-1]
    kv = _product_layout(x, layer["self_attn.in_proj_weight"][:, d:], layer["self_attn.in_proj_bias"][:, d:],
                         heads, (2,))
    keys, values = kv.unbind(1)  # as in _memory_projections: the gradients stack in the product's layout
    return _heads_first(keys), _heads_first(values)


def _layer(first: EncoderLayer, heads: int, p: dict[str, torch.Tensor], x: torch.Tensor, kt: torch.Tensor,
           vt: torch.Tensor, masks, rates: tuple[float, ...], need_weights: bool):
    """One post-norm layer of every encoder: ``first`` gives the settings, ``p`` the stacked parameters
    (name -> (M, ...)); x (M, B, Tq, d); kt, vt (M, B, h, hd, Tk); masks: the mask and its eval layout (either
    may be None)."""
    train = first.training
    qt = _head_projection(x, p["query.weight"], p["query.bias"], heads)  # scaled (_scaled_queries)
    out, weights = attention(qt, kt, vt, masks[0], rates, train, need_weights, mask_by_key=masks[1])
    x = _after_attention(first, p, x, _token_major(out, x.shape), train)
    averaged = weights.view(*x.shape[:2], heads, *weights.shape[1:]).mean(2) if need_weights else None
    return x, averaged


def _after_attention(first: EncoderLayer, p: dict[str, torch.Tensor], x: torch.Tensor, out: torch.Tensor,
                     train: bool) -> torch.Tensor:
    """The output projection of the attention's token-major output ``out``, then :func:`_after_projection`; in eval
    without autograd, where the native kernels apply, all of it in one call (``native.encoder_layer_eval``: the
    same bits, an eval attention layer's rest in 0.85 ms instead of 1.0-1.2 ms at MOSI shapes, README "What
    changed at stop 46")."""
    if not (train or torch.is_grad_enabled()):
        parameters = [p[name] for name in _AFTER_ATTENTION]
        if native.products_apply(x, out, *parameters):
            return native.encoder_layer_eval(x, out, parameters, (first.attn_layer_norm.eps,
                                                                  first.final_layer_norm.eps))
    attended = _linear(out, p["self_attn.out_proj.weight"], p["self_attn.out_proj.bias"])
    return _after_projection(first, p, x, attended, train)


_AFTER_ATTENTION = ("self_attn.out_proj.weight", "self_attn.out_proj.bias", "fc1.weight", "fc1.bias", "fc2.weight",
                    "fc2.bias", "attn_layer_norm.weight", "attn_layer_norm.bias", "final_layer_norm.weight",
                    "final_layer_norm.bias")  # in the order native.encoder_layer_eval takes them
_IN_ONE_CALL = ("query.weight", "query.bias", *_AFTER_ATTENTION)  # in the order native.encoder_eval takes them


def _after_projection(first: EncoderLayer, p: dict[str, torch.Tensor], x: torch.Tensor, attended: torch.Tensor,
                      train: bool) -> torch.Tensor:
    """:func:`_residual_blocks`, in place where nothing needs the intermediates and the sum keeps x's dtype (under
    autocast ``x + attended`` can promote a bfloat16 product to float32, which an in-place sum would not)."""
    if train or torch.is_grad_enabled() or attended.dtype != x.dtype:
        return _residual_blocks(first, p, x, attended, train)
    return _residual_blocks_in_place(first, p, x, attended)


def _residual_blocks(first: EncoderLayer, p: dict[str, torch.Tensor], x: torch.Tensor, attended: torch.Tensor,
                     train: bool) -> torch.Tensor:
    """The layer after attention: residual, LayerNorm, ReLU MLP, residual, LayerNorm. x, attended (M, B, Tq, d)."""
    x = _layer_norm(x, dropout(attended, first.res_dropout, train), p, "attn_layer_norm", first)
    hidden = relu_dropout(_linear(x, p["fc1.weight"], p["fc1.bias"]), first.relu_dropout, train)
    residual = dropout(_linear(hidden, p["fc2.weight"], p["fc2.bias"]), first.res_dropout, train)
    return _layer_norm(x, residual, p, "final_layer_norm", first)


def _residual_blocks_in_place(first: EncoderLayer, p: dict[str, torch.Tensor], x: torch.Tensor,
                              attended: torch.Tensor) -> torch.Tensor:
    """:func:`_residual_blocks` in eval mode without autograd (no dropout, nothing kept for a backward): each
    sum, ReLU and LayerNorm scale is written into the fresh result it reads: the same numbers with up to
    five tensors fewer a layer (an eval forward at MOSI shapes a paired median of 2.4 ms less, 22 of 30 rounds)."""
    x = _layer_norm(x, attended, p, "attn_layer_norm", first, in_place=True)
    hidden = torch.relu_(_linear(x, p["fc1.weight"], p["fc1.bias"]))
    return _layer_norm(x, _linear(hidden, p["fc2.weight"], p["fc2.bias"]), p, "final_layer_norm", first,
                       in_place=True)


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-encoder ``F.linear``: x (M, B, T, in), weight (M, out, in), bias (M, out) -> (M, B, T, out)."""
    count, batch, steps, width = x.shape
    return products.linear(x.reshape(count, batch * steps, width), weight, bias).view(count, batch, steps, -1)


def _layer_norm(x: torch.Tensor, residual: torch.Tensor, p: dict[str, torch.Tensor], name: str, first: EncoderLayer,
                in_place: bool = False) -> torch.Tensor:
    """LayerNorm of x + residual over d with each encoder's own scale and shift. x, residual (M, B, T, d).
    ``in_place``: the result may be written over ``residual`` (nothing may need it for a backward)."""
    return residual_layer_norm(x, residual, p[f"{name}.weight"], p[f"{name}.bias"], first.get_submodule(name).eps,
                               in_place)


def _head_projection(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-encoder projection of x (M, B, T, d) by weight (M, h * hd, d), for attention: (M, B, h, hd, T), a
    view of the product (:func:`_product_layout`)."""
    return _heads_first(_product_layout(x, weight, bias, heads))


def _product_layout(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int,
                    lead: tuple[int, ...] = ()) -> torch.Tensor:
    """Per-encoder projection of x (M, B, T, d) by weight (M, *lead * h * hd, d) in the product's own layout,
    (M, *lead, h, hd, B, T), a view.

    The product is taken feature-major (W @ x^T, rows = output features, columns = B*T tokens): the fused
    attention kernel reads it as it is, and torch's path copies whole rows of T steps into head-major
    order instead of gathering one float at a time.
    """
    count, batch, steps, d = x.shape
    out = products.feature_major(x.reshape(count, batch * steps, d), weight, bias)  # (M, rows, B*T)
    width = weight.shape[1] // math.prod(lead) // heads
    return out.view(count, *lead, heads, width, batch, steps)


def _token_major(out: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(M, B, h, hd, T) attention output -> (M, B, T, d); a view of the fused kernel's output."""
    return out.permute(0, 1, 4, 2, 3).reshape(shape)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) table ``PE[t, 2i] = sin(t / 10000^(2i/d))``, ``PE[t, 2i+1] = cos(...)``."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rate = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, : dim // 2]
    return table.to(dtype)
