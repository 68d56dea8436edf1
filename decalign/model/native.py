"""The native kernels (``small_head_attention.c``, ``dropout_mask.c``, ``sinkhorn_sweeps.c``, ``official_em.c``,
``residual_layer_norm.c``, ``small_products.c``): built once per machine, called with ctypes.

Torch runs attention as separate operators, each writing and reading every (heads, Tq, Tk) intermediate; with
DecAlign's 4-wide heads that traffic and the softmax's exponentials were most of a forward. The attention
kernel keeps one head's scores in cache from the product to the weighted values, forward and backward (see
its C file). The dropout kernel makes the masks ``decalign.model.dropout`` draws from numpy's PCG64 stream,
the same bits, in one pass instead of five (a seventh of a training step went to those masks). The sweeps
kernel runs the official Sinkhorn sweeps of ``decalign.model.sweeps`` on small plans, one pass over the cells
an update where numpy made a dozen calls; the EM kernel runs ``decalign.model.official_em``'s steps and their
reverses the same way. The LayerNorm kernel runs a post-norm layer's residual sum, normalisation, and
per-encoder scale and shift (and their backward) in one pass a row, where torch ran four operators forward and
six backward over the whole tensor. The products kernel runs the layers' batched matrix products, whose
inner dimension (40 to 160 at MOSI shapes) is too short for MKL's blocking, and in eval a layer's whole work after
its attention in one call (``encoder_layer_eval``).

The library is built with the system's C compiler (``$CC``, else ``cc`` or ``gcc``; about 1 s) the first
time a process needs it, into ``build/`` beside this file (``scripts/install.sh`` builds it there ahead),
or under the cache root where the package folder is read-only. Its name carries a hash of the sources and
the flags; it is written under a temporary name and renamed, so concurrent processes never load half a
file. It loads on Linux on x86-64 with AVX2 and FMA; attention uses it for float32 CPU tensors with heads
at most 16 wide, outside ``torch.compile``, 16 lanes at a time where the CPU runs AVX-512 (F, BW, VL, DQ),
else 8 (``attention_lanes``; ``DECALIGN_NATIVE_KERNELS=avx2`` keeps 8). Anywhere else, or with
``DECALIGN_NATIVE_KERNELS=0``, or when the build fails (a warning says why), torch's operators and numpy do
the same work, with the same results to rounding (the dropout masks to the bit).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..cache import cache_root

SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("small_head_attention.c", "dropout_mask.c", "sinkhorn_sweeps.c", "official_em.c",
                             "residual_layer_norm.c", "small_products.c"))
HEADERS = (Path(__file__).with_name("small_head_attention_body.h"),  # included by the attention kernel
           Path(__file__).with_name("row_layer_norm.h"))  # by the LayerNorm and products kernels
FLAGS = ("-O3", "-mavx2", "-mfma", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared")
MAX_HEAD_WIDTH = 16  # the kernel's MAX_HD
MAX_SWEEP_AXES = 16  # the sweeps kernel's MAX_AXES
SWITCH = "DECALIGN_NATIVE_KERNELS"  # "0": always use torch's operators and numpy; "avx2": attention at 8 lanes

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def applies(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor) -> bool:
    """Whether the kernel takes these queries, keys and values (and is available here): float32 on the CPU,
    one to three head dimensions (``_five``), heads up to ``MAX_HEAD_WIDTH`` wide."""
    return (qt.is_cpu and qt.dtype == kt.dtype == vt.dtype == torch.float32
            and 3 <= qt.dim() <= 5 and 1 <= qt.shape[-2] <= MAX_HEAD_WIDTH and not torch.compiler.is_compiling()
            and library() is not None)


def forward(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, mask: torch.Tensor | None,
            keep: torch.Tensor | None, head_scale: torch.Tensor | None,
            keep_weights: bool, mask_by_key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(*H, hd, Tq) attended values and, with ``keep_weights``, the (N, Tq, Tk) weights before dropout.

    qt (*H, hd, Tq), kt and vt (*H, hd, Tk), any strides: N heads indexed by one to three leading
    dimensions H, in row-major order. The output is token-major underneath ((*H[:-1], Tq, H[-1], hd), the
    layout an output projection reads), returned as a view. mask: (S or 1, Tq, Tk) bool for S groups of
    N / S consecutive heads; keep: (N, Tq, Tk) bool dropout decisions, read for the heads whose
    ``head_scale`` (N,) float32, 1 / (1 - p), is not 0. mask_by_key: optionally the mask transposed, (S or 1, Tk,
    Tq) contiguous, the eval path's layout (else that path transposes ``mask`` itself).
    """
    q5 = _five(qt)
    n0, n1, n2, width, queries = q5.shape
    keys = kt.shape[-1]
    kt, vt = _steps_contiguous(kt), _steps_contiguous(vt)
    out = qt.new_empty((n0, n1, queries, n2, width)).permute(0, 1, 3, 4, 2)
    per_mask = 0 if mask is None else n0 * n1 * n2 // mask.shape[0]
    shape, strides = _layout(q5, keys, (q5, _five(kt), _five(vt), out))
    if keep is None and not keep_weights and q5.stride(-1) == 1:  # eval and inference: queries in lanes
        if mask is not None and not _is_transposed(mask_by_key, mask):
            mask_by_key = mask.transpose(1, 2).contiguous()
        mask_by_key = None if mask is None else mask_by_key.view(torch.uint8)
        _check(library().sha_forward_eval(shape, strides, _ptr(qt), _ptr(kt), _ptr(vt), _ptr(mask_by_key), per_mask,
                                          _ptr(out), torch.get_num_threads(), attention_lanes()))
        return out.reshape(qt.shape), None
    weights = qt.new_empty((n0 * n1 * n2, queries, keys)) if keep_weights else None
    mask_bytes = None if mask is None else mask.contiguous().view(torch.uint8)
    _check(library().sha_forward(shape, strides, _ptr(qt), _ptr(kt), _ptr(vt), _ptr(mask_bytes), per_mask,
                                 _ptr(keep), _ptr(head_scale), _ptr(out), _ptr(weights), torch.get_num_threads(),
                                 attention_lanes()))
    return out.reshape(qt.shape), weights


def _is_transposed(mask_by_key: torch.Tensor | None, mask: torch.Tensor) -> bool:
    """Whether ``mask_by_key`` has the layout of ``mask.transpose(1, 2).contiguous()`` (its values are the
    caller's word)."""
    return (mask_by_key is not None and mask_by_key.dtype == mask.dtype and mask_by_key.is_contiguous()
            and mask_by_key.shape == (mask.shape[0], mask.shape[2], mask.shape[1]))


def backward(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, weights: torch.Tensor,
             keep: torch.Tensor | None, head_scale: torch.Tensor | None,
             d_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of queries, keys and values (each in its input's layout where that is dense) from the
    weights ``forward`` kept."""
    kt, vt = _steps_contiguous(kt), _steps_contiguous(vt)
    d_qt, d_kt, d_vt = torch.empty_like(qt), torch.empty_like(kt), torch.empty_like(vt)
    tensors = (qt, kt, vt, None, d_out, d_qt, d_kt, d_vt)
    shape, strides = _layout(_five(qt), kt.shape[-1], [None if t is None else _five(t) for t in tensors])
    _check(library().sha_backward(shape, strides, _ptr(qt), _ptr(kt), _ptr(vt), _ptr(weights), _ptr(keep),
                                  _ptr(head_scale), _ptr(d_out), _ptr(d_qt), _ptr(d_kt), _ptr(d_vt),
                                  torch.get_num_threads(), attention_lanes()))
    return d_qt, d_kt, d_vt


def _five(x: torch.Tensor) -> torch.Tensor:
    """(*H, hd, T) with one to three head dimensions as (N0, N1, N2, hd, T), a view."""
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"the attention kernel takes one to three head dimensions, got shape {tuple(x.shape)}")
    return x.reshape(*(1,) * (5 - x.dim()), *x.shape)


def _steps_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when its steps are adjacent (the kernel reads keys and values 8 steps at a time)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _layout(qt: torch.Tensor, keys: int, tensors) -> tuple:
    """The kernel's shape (N0, N1, N2, hd, Tq, Tk) and each tensor's 5 strides, as int64 arrays."""
    strides = [s for t in tensors for s in (t.stride() if t is not None else (0,) * 5)]
    return (ctypes.c_int64 * 6)(*qt.shape, keys), (ctypes.c_int64 * len(strides))(*strides)


def dropout_decisions(seed: int, count: int, cut: int, fraction: float, kept_value: float,
                      mask: torch.Tensor | None = None, flags: np.ndarray | None = None,
                      applied_to: torch.Tensor | None = None, relu: bool = False) -> None:
    """Dropout decisions for ``count`` elements from the stream of ``np.random.PCG64(seed)`` (seeded here as
    numpy seeds it: :func:`pcg64_state`), made as ``decalign.model.dropout`` makes them: into ``mask``
    (contiguous float32) as ``kept_value`` or 0, or into ``flags`` (contiguous bool) as True or False. With ``applied_to`` (contiguous
    float32, another tensor than ``mask``), ``mask`` receives that tensor times the mask, after ReLU when
    ``relu``: dropout applied in the same pass."""
    for name, target in (("mask", mask), ("input", applied_to)):
        if target is not None and not (target.dtype == torch.float32 and target.is_contiguous()):
            raise ValueError(f"dropout_decisions takes a contiguous float32 {name}, got {target.dtype}, "
                             f"strides {target.stride()}")
    if flags is not None and not (flags.dtype == np.bool_ and flags.flags.c_contiguous):
        raise ValueError(f"dropout_decisions writes contiguous bool flags, got {flags.dtype}")
    for target in (mask, flags, applied_to):
        if target is not None and (target.size if isinstance(target, np.ndarray) else target.numel()) < count:
            raise ValueError(f"dropout_decisions needs room for {count} decisions")
    if applied_to is not None and (mask is None or applied_to.data_ptr() == mask.data_ptr()):
        raise ValueError("dropout_decisions applies the mask into a mask tensor of its own")
    lib = _loaded_library()
    _out_of_memory(lib.sha_dropout_mask(*_pcg64_words(seed), count, cut, fraction, kept_value, _ptr(mask),
                                        None if flags is None else flags.ctypes.data, _ptr(applied_to), int(relu),
                                        torch.get_num_threads()))


def dropout_flag_blocks(seeds: list[int], spans: list[tuple[int, int, int, float]], flags: np.ndarray) -> None:
    """The decisions of several masks into the contiguous bool ``flags``: mask b, ``dropout_decisions(seeds[b],
    count, cut, fraction, ...)`` for ``spans[b] = (start, count, cut, fraction)``, into ``flags[start:start +
    count]``, the masks split among torch's threads (each one whole)."""
    if not (flags.dtype == np.bool_ and flags.flags.c_contiguous):
        raise ValueError(f"dropout_flag_blocks writes contiguous bool flags, got {flags.dtype}")
    if len(seeds) != len(spans) or any(start < 0 or count < 0 or start + count > flags.size
                                       for start, count, _, _ in spans):
        raise ValueError(f"dropout_flag_blocks needs a seed per span and spans within the {flags.size} flags")
    if not spans:
        return
    lib = _loaded_library()
    starts, counts, cuts, fractions = (np.ascontiguousarray(column, dtype=dtype) for column, dtype in
                                       zip(zip(*spans), (np.int64, np.int64, np.int32, np.float64)))
    words = np.array(seeds, dtype=np.uint64)
    _out_of_memory(lib.sha_dropout_flag_blocks(len(spans), *(a.ctypes.data for a in (
        words, starts, counts, cuts, fractions, flags)), torch.get_num_threads()))


def _loaded_library() -> ctypes.CDLL:
    """The kernels, for the dropout paths that have no torch fallback of their own here; raises where not loaded."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native kernels are not loaded here ({SWITCH}, the CPU or the build)")
    return lib


def _out_of_memory(status: int) -> None:
    if status:
        raise MemoryError("the dropout kernel could not list the decisions it settles last")


def pcg64_state(seed: int) -> dict[str, int]:
    """``np.random.PCG64(seed).state["state"]`` (0 <= seed < 2**64) as the kernel computes it: numpy's
    SeedSequence and PCG64 seeding, whose Python side took 37-50 us a mask inside a training step."""
    words = _pcg64_words(seed)
    return {"state": words[0] << 64 | words[1], "inc": words[2] << 64 | words[3]}


def _pcg64_words(seed: int):
    """PCG64's state and increment for ``seed``, in 64-bit halves (high first), from the kernel."""
    words = (ctypes.c_uint64 * 4)()
    library().sha_pcg64_seed(seed, words)
    return words


def relu_dropout_backward(output: torch.Tensor, grad: torch.Tensor, kept_value: float) -> torch.Tensor:
    """The input's gradient of ReLU then dropout (kept elements scaled by ``kept_value``) from the output
    ``dropout_decisions`` wrote (contiguous float32) and the output's gradient."""
    grad = grad.contiguous()
    grad_in = torch.empty_like(output)
    library().sha_relu_dropout_backward(_ptr(output), _ptr(grad), kept_value, output.numel(), _ptr(grad_in),
                                          torch.get_num_threads())
    return grad_in


class SweepTape:
    """What ``sweeps_forward`` keeps for ``sweeps_reverse``: each update's softmax over the plan's cells and
    its weights (the kernel's tape, in float64)."""

    def __init__(self, sizes: tuple[int, ...], updates: int):
        self.sizes, self.updates = sizes, updates
        self.softmax = np.empty(updates * math.prod(sizes))
        self.weight = np.empty((updates // len(sizes)) * sum(sizes))


def sweeps_forward(scaled: np.ndarray, guard: float, sweeps: int, log_nu: list[np.ndarray],
                   keep: bool) -> tuple[list[np.ndarray], SweepTape | None]:
    """``decalign.model.sweeps.forward_updates`` in one call, in float64: (potentials, tape or None)."""
    sizes = tuple(int(k) for k in scaled.shape)
    tape = SweepTape(sizes, sweeps * len(sizes)) if keep else None
    logs = np.empty(sum(sizes))
    cells, marginals = _doubles(scaled), _doubles(np.concatenate(log_nu))  # held for the call
    _check_sweeps(library().mms_forward(len(sizes), _sizes(sizes), cells.ctypes.data, guard, sweeps,
                                        marginals.ctypes.data, logs.ctypes.data,
                                        None if tape is None else tape.softmax.ctypes.data,
                                        None if tape is None else tape.weight.ctypes.data))
    return _per_axis(logs, sizes), tape


def sweeps_reverse(tape: SweepTape, grads: list[np.ndarray | None]) -> tuple[np.ndarray | None, list]:
    """``decalign.model.sweeps.reverse_updates`` from a ``sweeps_forward`` tape, in float64: (d scaled,
    [d log nu_m]); None where no gradient reached, as there."""
    sizes = tape.sizes
    adjoint = _doubles(np.concatenate([np.zeros(k) if g is None else g.reshape(-1) for k, g in zip(sizes, grads)]))
    present = np.array([g is not None for g in grads], dtype=np.uint8)
    d_scaled, d_nu = np.empty(sizes), np.empty(sum(sizes))
    reached = np.empty(len(sizes) + 1, dtype=np.uint8)
    _check_sweeps(library().mms_reverse(len(sizes), _sizes(sizes), tape.updates, tape.softmax.ctypes.data,
                                        tape.weight.ctypes.data, adjoint.ctypes.data, present.ctypes.data,
                                        d_scaled.ctypes.data, d_nu.ctypes.data, reached.ctypes.data))
    parts = _per_axis(d_nu, sizes)
    return (d_scaled if reached[-1] else None), [part if hit else None for part, hit in zip(parts, reached)]


class EMTape:
    """What ``em_forward`` keeps for ``em_reverse``: the features, the start, and per E-step its inputs and
    posteriors (the kernel's tape, in float64)."""

    def __init__(self, x: np.ndarray, start: np.ndarray, k: int, iterations: int, var_floor: float, keep: bool):
        self.x, self.start, self.k, self.iterations, self.var_floor = x, start, k, iterations, var_floor
        batch, n, d = x.shape
        self.slots = np.empty(batch * (iterations + 1) * (2 * k * d + k + n * k)) if keep else None


def em_forward(x: np.ndarray, k: int, iterations: int, var_floor: float, start: list[int],
               keep: bool) -> tuple[tuple[np.ndarray, ...], EMTape | None]:
    """``decalign.model.official_em.forward_steps`` in one call, in float64: ((means, variances, weights,
    posteriors), tape or None) for x (B, N, d)."""
    batch, n, d = x.shape
    # a copy: the reverse must read the features as they were, even if the caller's array changes later
    tape = EMTape(np.array(x, dtype=np.float64), np.asarray(start, dtype=np.int64), k, iterations, var_floor, keep)
    outputs = np.empty((batch, k, d)), np.empty((batch, k, d)), np.empty((batch, k)), np.empty((batch, n, k))
    _check_em(library().em_forward(batch, n, d, k, iterations, var_floor, tape.x.ctypes.data, tape.start.ctypes.data,
                                   *(a.ctypes.data for a in outputs), None if tape.slots is None else tape.slots.ctypes.data,
                                   torch.get_num_threads()))
    return outputs, (tape if keep else None)


def em_reverse(tape: EMTape, grads: list[np.ndarray]) -> np.ndarray:
    """d x from an ``em_forward`` tape and the gradients of its four outputs, in float64."""
    batch, n, d = tape.x.shape
    grads = [_doubles(g) for g in grads]  # held for the call
    d_x = np.empty((batch, n, d))
    _check_em(library().em_reverse(batch, n, d, tape.k, tape.iterations, tape.var_floor, tape.x.ctypes.data,
                                   tape.start.ctypes.data, tape.slots.ctypes.data, *(g.ctypes.data for g in grads),
                                   d_x.ctypes.data, torch.get_num_threads()))
    return d_x


def records_autograd(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on these: where not (eval, inference), the kernels run without an
    autograd Function around them, whose ``apply`` cost more than a small product's own Python."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def layer_norm_applies(*tensors: torch.Tensor) -> bool:
    """Whether the residual LayerNorm kernel takes these tensors (and is available here): float32 on the CPU,
    outside ``torch.compile``."""
    return (all(t.is_cpu and t.dtype is torch.float32 for t in tensors)  # is_cpu: a third of device.type's time
            and not torch.compiler.is_compiling() and library() is not None)


def residual_layer_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float, keep: bool, out: torch.Tensor | None = None):
    """LayerNorm over the last dimension of ``x + residual`` (x alone without one), then group m's scale and
    shift: x (M, ..., d) contiguous, weight and bias (M, d) (each row contiguous: :func:`_rows`). Returns the result (into ``out`` when given, which
    may be x or residual) and, with ``keep``, the normalised rows and their 1 / sqrt(var + eps) for
    :func:`residual_layer_norm_backward` (else None, None)."""
    groups, width = weight.shape
    if x.shape[0] != groups or x.shape[-1] != width or bias.shape != weight.shape or (
            residual is not None and residual.shape != x.shape):
        raise ValueError(f"residual_layer_norm takes x (M, ..., d) with weight and bias (M, d): got x "
                         f"{tuple(x.shape)}, residual {None if residual is None else tuple(residual.shape)}, "
                         f"weight {tuple(weight.shape)}, bias {tuple(bias.shape)}")
    rows = x.numel() // width
    out = torch.empty_like(x) if out is None else out
    normed, inverse_std = (torch.empty_like(x), x.new_empty(rows)) if keep else (None, None)
    weight, bias = _rows(weight), _rows(bias)
    _check_layer_norm(library().rln_forward(groups, rows // groups, width, _ptr(x), _ptr(residual), _ptr(weight),
                                            weight.stride(0), _ptr(bias), bias.stride(0), eps, _ptr(out), _ptr(normed),
                                            _ptr(inverse_std), torch.get_num_threads()))
    return out, normed, inverse_std


def products_apply(*tensors: torch.Tensor) -> bool:
    """Whether the products kernel takes these tensors (and is available here): float32 on the CPU, outside
    ``torch.compile`` and CPU autocast (whose products run in bfloat16)."""
    return not torch.is_autocast_enabled("cpu") and layer_norm_applies(*tensors)


def product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
            bias_along: str = "columns") -> torch.Tensor:
    """``bias + a @ b`` for each group: a (G, M, K) and b (G, K, N) with any strides (read best with unit stride
    along K or M for a, along N for b), bias (G, M) added along each row of the result (``bias_along="rows"``) or
    (G, N) along each column (``"columns"``). Returns (G, M, N), contiguous."""
    groups, m, k = a.shape if a.dim() == 3 else (-1, -1, -1)
    expected_bias = (groups, m if bias_along == "rows" else b.shape[-1])
    if (groups < 0 or b.dim() != 3 or b.shape[:2] != (groups, k) or bias_along not in ("rows", "columns")
            or bias is not None and bias.shape != expected_bias):
        raise ValueError(f"product takes a (G, M, K), b (G, K, N) and a bias (G, M) or (G, N): got a {tuple(a.shape)}, "
                         f"b {tuple(b.shape)}, bias {None if bias is None else tuple(bias.shape)} along {bias_along}")
    bias = None if bias is None else _rows(bias)
    out = a.new_empty(groups, m, b.shape[2])
    shape = (ctypes.c_int64 * 4)(groups, m, b.shape[2], k)
    strides = (ctypes.c_int64 * 9)(*a.stride(), *b.stride(), 0 if bias is None else bias.stride(0),
                                   out.stride(0), out.stride(1))
    if library().sp_product(shape, strides, _ptr(a), _ptr(b), _ptr(bias), 1 if bias_along == "rows" else 2,
                            _ptr(out), torch.get_num_threads()):
        raise MemoryError("the products kernel could not allocate its panels")
    return out


def encoder_layer_eval(x: torch.Tensor, attended: torch.Tensor, parameters: list[torch.Tensor],
                       eps: tuple[float, float]) -> torch.Tensor:
    """A post-norm encoder layer after its attention, in eval (``small_products.c``'s fused layer): for each
    group m, ``LN2(x1 + W2 relu(W1 x1 + b1) + b2)`` with ``x1 = LN1(x + Wo a + bo)``. x and the attention's
    token-major output ``attended``: (M, ..., d); parameters: Wo (M, d, d), bo, W1 (M, hidden, d), b1, W2
    (M, d, hidden), b2, then LN1's and LN2's scale and shift (M, d), as ``fusion._AFTER_ATTENTION`` orders
    them. Returns the result, written over ``attended`` (nothing may need it)."""
    groups, hidden, width = parameters[2].shape
    expected = [(groups, *shape) for shape in _layer_shapes(width, hidden)]
    if [t.shape for t in parameters] != expected or x.shape != attended.shape or x.shape[0] != groups or (
            x.shape[-1] != width):
        raise ValueError(f"encoder_layer_eval takes x and attended (M, ..., d) and the layer's parameters "
                         f"{expected}: got x {tuple(x.shape)}, attended {tuple(attended.shape)}, parameters "
                         f"{[tuple(t.shape) for t in parameters]}")
    x, attended = x.contiguous(), attended.contiguous()
    parameters = [t if _slices_contiguous(t, 1) else t.contiguous() for t in parameters]
    shape = (ctypes.c_int64 * 4)(groups, x.numel() // (groups * width), width, hidden)
    pointers = (ctypes.c_void_p * 12)(_ptr(attended), _ptr(x), *map(_ptr, parameters))
    strides = (ctypes.c_int64 * 10)(*(t.stride(0) for t in parameters))
    if library().sp_encoder_layer_eval(shape, pointers, strides, (ctypes.c_float * 2)(*eps), _ptr(attended),
                                       torch.get_num_threads()):
        raise MemoryError("the fused encoder layer could not allocate its scratch")
    return attended


def encoder_eval(x: torch.Tensor, parameters: list[torch.Tensor], kv: torch.Tensor, heads: int,
                 eps: tuple[float, float], mask_by_key: torch.Tensor | None = None) -> torch.Tensor:
    """Every layer of M stacked cross-modal encoders in eval, in one call (``small_products.c``'s
    ``sp_encoder_eval``): each layer's queries' projection, its attention (the eval path) and the rest of the layer
    (:func:`encoder_layer_eval`), as ``fusion.encode`` runs them call by call, with the same bits. x (M, B, T, d), the
    first layer's input; parameters: the queries' weight (M, L, d, d) and bias (M, L, d), already scaled by
    1 / sqrt(d / heads), then :func:`encoder_layer_eval`'s ten, each (M, L, ...); kv (M, L, 2, heads, d / heads, B,
    Tk): every layer's keys and values of the memory; mask_by_key: (M * B, Tk, T) bool, True where a query may attend,
    or None. Returns the last layer's output (M, B, T, d) (at least one layer)."""
    groups, batch, steps, width = x.shape
    layers, hidden, keys = parameters[0].shape[1], parameters[4].shape[2], kv.shape[-1]
    expected = [(groups, layers, *shape) for shape in [(width, width), (width,), *_layer_shapes(width, hidden)]]
    kv_shape, mask_shape = (groups, layers, 2, heads, width // heads, batch, keys), (groups * batch, keys, steps)
    if ([t.shape for t in parameters] != expected or kv.shape != kv_shape or width % heads or layers < 1 or (
            mask_by_key is not None and mask_by_key.shape != mask_shape)):
        raise ValueError(f"encoder_eval takes x (M, B, T, d), parameters {expected}, kv {kv_shape} and a mask "
                         f"{mask_shape} (M * B, Tk, T): got x {tuple(x.shape)}, parameters "
                         f"{[tuple(t.shape) for t in parameters]}, kv {tuple(kv.shape)}, mask "
                         f"{None if mask_by_key is None else tuple(mask_by_key.shape)}")
    x, kv = x.contiguous(), kv.contiguous()
    parameters = [t if _slices_contiguous(t, 2) else t.contiguous() for t in parameters]
    mask = None if mask_by_key is None else mask_by_key.contiguous().view(torch.uint8)
    buffers = [x.new_empty(groups, width, batch * steps), torch.empty_like(x), torch.empty_like(x)]
    dims = (ctypes.c_int64 * 8)(layers, groups, batch, steps, keys, width, hidden, heads)
    strides = (ctypes.c_int64 * 24)(*(s for t in parameters for s in t.stride()[:2]))
    status = library().sp_encoder_eval(dims, _ptr(x), (ctypes.c_void_p * 12)(*map(_ptr, parameters)), strides,
                                       _ptr(kv), _ptr(mask), 0 if mask is None else heads, (ctypes.c_float * 2)(*eps),
                                       (ctypes.c_void_p * 3)(*map(_ptr, buffers)), torch.get_num_threads(),
                                       attention_lanes())
    if status == 1:
        raise MemoryError("the encoder's kernels could not allocate their scratch")
    _check(status)
    return buffers[1 + (layers - 1) % 2]


def _layer_shapes(width: int, hidden: int) -> list[tuple[int, ...]]:
    """The shapes of one encoder layer's ten parameters after its attention, in :func:`encoder_layer_eval`'s order."""
    return [(width, width), (width,), (hidden, width), (hidden,), (width, hidden)] + [(width,)] * 5


def _slices_contiguous(t: torch.Tensor, leading: int) -> bool:
    """Whether each slice over the ``leading`` dimensions (``t[m]``, or ``t[m, l]``) of a parameter with one or two
    dimensions of its own is contiguous (a layer's slice of the stacked parameters is: read where it lies), without
    making the views (6 us of a fused layer's call)."""
    return t.stride(-1) == 1 and (t.dim() == leading + 1 or t.stride(-2) == t.shape[-1])


def residual_layer_norm_backward(grad: torch.Tensor, normed: torch.Tensor, inverse_std: torch.Tensor,
                                 weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of the sum ``x + residual`` (so of each), of the scales and of the shifts."""
    grad = grad.contiguous()
    weight = _rows(weight)
    groups, width = weight.shape
    d_sum, d_weight, d_bias = torch.empty_like(normed), weight.new_empty(groups, width), weight.new_empty(groups, width)
    _check_layer_norm(library().rln_backward(groups, normed.numel() // width // groups, width, _ptr(grad),
                                             _ptr(normed), _ptr(inverse_std), _ptr(weight), weight.stride(0),
                                             _ptr(d_sum), _ptr(d_weight), _ptr(d_bias), torch.get_num_threads()))
    return d_sum, d_weight, d_bias


def _rows(parameter: torch.Tensor) -> torch.Tensor:
    """(M, d) with each row contiguous, as the kernel reads it: a layer's slice of the stacked parameters as it
    lies (a copy would be one more operator a call), anything else copied."""
    return parameter if parameter.stride(1) == 1 or parameter.shape[1] == 1 else parameter.contiguous()


def _check_layer_norm(status: int) -> None:
    if status:
        raise MemoryError("the residual LayerNorm kernel could not allocate its scratch")


def _check_em(status: int) -> None:
    if status:
        raise MemoryError("the official EM kernel could not allocate its scratch")


def _per_axis(concatenated: np.ndarray, sizes: tuple[int, ...]) -> list[np.ndarray]:
    """The axes' vectors the kernel writes one after another, as views."""
    return np.split(concatenated, np.cumsum(sizes)[:-1])


def _sizes(sizes: tuple[int, ...]):
    return (ctypes.c_int64 * len(sizes))(*sizes)


def _doubles(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float64)


def _check_sweeps(status: int) -> None:
    if status == 1:
        raise MemoryError("the Sinkhorn sweeps kernel could not allocate its scratch")
    if status:
        raise ValueError(f"the Sinkhorn sweeps kernel takes 1 to {MAX_SWEEP_AXES} axes (status {status})")


def library() -> ctypes.CDLL | None:
    """The loaded kernel, built first if need be; None where it does not apply or could not be built."""
    switch = os.environ.get(SWITCH, "1")
    if switch in _loaded:
        return _loaded[switch]
    with _lock:
        if switch not in _loaded:
            _loaded[switch] = _load() if switch != "0" and cpu_supported() else None
    return _loaded[switch]


def cpu_supported() -> bool:
    """Linux on x86-64 with AVX2 and FMA (the instructions the kernel is built for)."""
    return platform.system() == "Linux" and platform.machine() == "x86_64" and {"avx2", "fma"} <= cpu_flags()


def attention_lanes() -> int:
    """The vector width of the attention kernel's per-head work: the widest the loaded kernel runs at on this CPU
    (:func:`widest_lanes`), or 8 with ``DECALIGN_NATIVE_KERNELS=avx2``."""
    return 8 if os.environ.get(SWITCH, "1") == "avx2" else widest_lanes()


def widest_lanes() -> int:
    """16 where the loaded kernel finds AVX-512 (F, BW, VL, DQ) usable on this CPU, by the CPU's own report
    rather than /proc/cpuinfo's, else 8 (also where the kernel is not loaded)."""
    lib = library()
    return 8 if lib is None else lib.sha_widest_lanes()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            return frozenset(next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), []))
    except OSError:
        return frozenset()


def build(folder: Path | None = None) -> Path:
    """Compile the kernel into ``folder`` (default: ``build/`` beside this file, or the cache root where
    that cannot be written) unless it is there; returns its path. Raises OSError or
    ``subprocess.CalledProcessError`` (with the compiler's message) when it cannot be built."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in SOURCES + HEADERS) + " ".join(FLAGS).encode())
    name = f"decalign_kernels-{digest.hexdigest()[:16]}.so"
    folders = [folder] if folder is not None else default_folders()
    for candidate in folders:
        if (candidate / name).is_file():
            return candidate / name
    compiler = c_compiler()
    if compiler is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    errors = []
    for candidate in folders:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
            return atomic_write(candidate / name, lambda tmp: subprocess.run(
                [compiler, *FLAGS, *map(str, SOURCES), "-o", tmp], check=True, capture_output=True, text=True))
        except OSError as exc:  # a read-only folder: try the next
            errors.append(f"{candidate}: {exc.strerror or exc}")
    raise OSError("; ".join(errors))


def c_compiler() -> str | None:
    """``$CC``, else ``cc``, else ``gcc``, as a path; None when there is none."""
    return shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")


def default_folders() -> list[Path]:
    """Where ``build`` looks and writes: ``build/`` beside this file, then the cache root."""
    return [Path(__file__).with_name("build"), cache_root() / "native"]


def main() -> None:
    """Build the kernel ahead (``scripts/install.sh``), so that no process pays for it; say so where not."""
    if not cpu_supported():
        print("the native kernels need x86-64 with AVX2 and FMA: torch's operators and numpy run here instead")
        return
    try:
        print(f"native kernels (attention at {attention_lanes()} lanes, dropout masks, Sinkhorn sweeps, "
              f"official EM, residual LayerNorm, small products): {build()}")
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"the native kernels could not be built ({_reason(exc)}): torch's operators and numpy run instead")


def _reason(exc: Exception) -> str:
    return exc.stderr.strip()[-500:] if isinstance(exc, subprocess.CalledProcessError) else str(exc)


def _load() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn(f"decalign: the native kernels could not be built ({_reason(exc)}); attention, dropout, the "
                      "Sinkhorn sweeps and the official EM run on torch's operators and numpy (same results, slower)",
                      RuntimeWarning, stacklevel=3)
        return None
    size, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.sha_forward.argtypes = [ptr] * 6 + [size] + [ptr] * 4 + [ctypes.c_int] * 2
    lib.sha_backward.argtypes = [ptr] * 12 + [ctypes.c_int] * 2
    lib.sha_forward_eval.argtypes = [ptr] * 6 + [size, ptr] + [ctypes.c_int] * 2
    lib.sha_forward_eval.restype = ctypes.c_int
    lib.sha_forward.restype = lib.sha_backward.restype = lib.sha_widest_lanes.restype = ctypes.c_int
    lib.sha_widest_lanes.argtypes = []
    word = ctypes.c_uint64
    lib.sha_dropout_mask.argtypes = [word] * 4 + [size, ctypes.c_int, ctypes.c_double, ctypes.c_float,
                                                  ptr, ptr, ptr, ctypes.c_int, ctypes.c_int]
    lib.sha_relu_dropout_backward.argtypes = [ptr, ptr, ctypes.c_float, size, ptr, ctypes.c_int]
    lib.sha_pcg64_seed.argtypes = [word, ptr]
    lib.sha_dropout_flag_blocks.argtypes = [size] + [ptr] * 6 + [ctypes.c_int]
    lib.sha_dropout_mask.restype = lib.sha_dropout_flag_blocks.restype = ctypes.c_int
    lib.sha_pcg64_seed.restype = None
    lib.sha_relu_dropout_backward.restype = None
    lib.mms_forward.argtypes = [ctypes.c_int, ptr, ptr, ctypes.c_double, size] + [ptr] * 4
    lib.mms_reverse.argtypes = [ctypes.c_int, ptr, size] + [ptr] * 7
    lib.mms_forward.restype = lib.mms_reverse.restype = ctypes.c_int
    lib.em_forward.argtypes = [size] * 5 + [ctypes.c_double] + [ptr] * 7 + [ctypes.c_int]
    lib.em_reverse.argtypes = [size] * 5 + [ctypes.c_double] + [ptr] * 8 + [ctypes.c_int]
    lib.em_forward.restype = lib.em_reverse.restype = ctypes.c_int
    lib.rln_forward.argtypes = [size] * 3 + [ptr] * 3 + [size, ptr, size, ctypes.c_float] + [ptr] * 3 + [ctypes.c_int]
    lib.rln_backward.argtypes = [size] * 3 + [ptr] * 4 + [size] + [ptr] * 3 + [ctypes.c_int]
    lib.rln_forward.restype = lib.rln_backward.restype = ctypes.c_int
    lib.sp_product.argtypes = [ptr] * 5 + [ctypes.c_int, ptr, ctypes.c_int]
    lib.sp_product.restype = ctypes.c_int
    lib.sp_encoder_layer_eval.argtypes = [ptr] * 5 + [ctypes.c_int]
    lib.sp_encoder_layer_eval.restype = ctypes.c_int
    lib.sp_encoder_eval.argtypes = [ptr] * 6 + [size, ptr, ptr, ctypes.c_int, ctypes.c_int]
    lib.sp_encoder_eval.restype = ctypes.c_int
    return lib


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _check(status: int) -> None:
    if status == 1:
        raise MemoryError("the fused attention kernel could not allocate its scratch rows")
    if status == 3:
        raise RuntimeError(f"this CPU cannot run the attention kernel at {attention_lanes()} lanes")
    if status:
        raise ValueError(f"the fused attention kernel refused its arguments (status {status})")
