"""The native kernels (decalign.model.native): attention against a float64 textbook attention and against
torch's path with the same dropout draws; dropout masks against numpy's path, bit for bit; the build and
the fallbacks."""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import numpy as np
import pytest
import torch

from decalign.model import DecAlign, fusion, native
from decalign.model.attention import attention
from decalign.model.dropout import _cut as dropout_cut
from decalign.model.dropout import dropout, keep_flags, keep_flags_in_spans, keep_mask, relu_dropout
from tests.model.helpers import WIDTHS, random_inputs, small_config

needs_kernel = pytest.mark.skipif(not native.cpu_supported() or native.c_compiler() is None,
                                  reason="the kernel needs x86-64 with AVX2 and FMA, and a C compiler")
WIDE_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # what the kernel's 16 lanes need
HAS_WIDE = WIDE_FLAGS <= native.cpu_flags()  # read, not built: the kernel's own answer is tested below
ON = ["1", "avx2"]  # the kernels on: attention at the CPU's widest vectors, and at AVX2's 8 lanes


@pytest.fixture(params=[8, 16], ids=["avx2", "avx512"])
def lanes(request, monkeypatch):
    """The attention kernel at each vector width this CPU has (16 lanes only with AVX-512)."""
    if request.param == 16 and not HAS_WIDE:
        pytest.skip("no AVX-512 here")
    monkeypatch.setenv(native.SWITCH, "avx2" if request.param == 8 else "1")
    assert native.attention_lanes() == request.param
    return request.param


def test_the_kernel_is_built_where_the_cpu_takes_it():
    """Where the CPU has AVX2 and FMA and there is a C compiler, a failed build would silently cost the
    speed: it must load."""
    if not native.cpu_supported() or native.c_compiler() is None:
        pytest.skip("no AVX2 and FMA here, or no C compiler")
    assert native.library() is not None
    assert native.applies(*[torch.zeros(2, 4, 3)] * 3)


def textbook(qt, kt, vt, mask, keep, scale):
    """softmax(Q K^T + mask) V in float64, dropout decisions ``keep`` applied to heads with scale != 0."""
    qt, kt, vt = (t.double() for t in (qt, kt, vt))
    scores = qt.transpose(1, 2) @ kt
    if mask is not None:
        scores = scores.view(mask.shape[0], -1, *scores.shape[1:]).masked_fill(~mask.unsqueeze(1), -math.inf)
        scores = scores.flatten(0, 1)
    weights = torch.softmax(scores, -1)
    applied = weights
    if keep is not None:
        dropped = (scale != 0).view(-1, 1, 1)
        applied = torch.where(dropped, weights * keep * scale.double().view(-1, 1, 1), weights)
    return vt @ applied.transpose(1, 2), weights


def case(n, hd, tq, tk, masked, dropped, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(n, hd, t, generator=g) for t in (tq, tk, tk))
    mask = None
    if masked == "per-group":  # n / 2 groups of two heads
        mask = torch.rand(n // 2, tq, tk, generator=g) > 0.3
        mask[..., 0] = True
    elif masked == "broadcast":
        mask = torch.ones(1, tq, tk, dtype=torch.bool).tril(tk - tq)
    keep = scale = None
    if dropped:
        keep = torch.rand(n, tq, tk, generator=g) > 0.25
        scale = torch.where(torch.arange(n) < n // 2, 1 / 0.75, 0.0).float()  # the second half undropped
    return q, k, v, mask, keep, scale


SHAPES = [(8, 4, 50, 100), (6, 4, 7, 13), (4, 5, 3, 8), (4, 16, 9, 21), (2, 1, 1, 1), (2, 3, 4, 17),
          (4, 4, 41, 45), (2, 4, 100, 104)]  # the eval path's blocks: 50 = 32 + 16 + 2, 41 = 32 + 9, 100 = 3 x 32 + 4


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("masked", [None, "per-group", "broadcast"])
@pytest.mark.parametrize("dropped", [False, True])
def test_kernel_matches_float64_textbook_attention(shape, masked, dropped, lanes):
    q, k, v, mask, keep, scale = case(*shape, masked, dropped)
    out, weights = native.forward(q, k, v, mask, keep, scale, keep_weights=True)
    expected, expected_weights = textbook(q, k, v, mask, keep, scale)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(weights.double(), expected_weights, atol=1e-6, rtol=1e-5)
    without_weights = native.forward(q, k, v, mask, keep, scale, keep_weights=False)[0]
    if keep is None:  # the eval path, queries in lanes: its own sums, as close to the textbook
        torch.testing.assert_close(without_weights.double(), expected, atol=2e-6, rtol=1e-5)
    else:  # dropout takes the path that keeps the weights, weights or not
        assert torch.equal(without_weights, out)

    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    reference = torch.autograd.grad(textbook(*leaves, mask, keep, scale)[0], leaves, upstream.double())
    for ours, theirs in zip(native.backward(q, k, v, weights, keep, scale, upstream), reference):
        torch.testing.assert_close(ours.double(), theirs, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("keep_weights", [True, False], ids=["weights kept", "eval path"])
def test_a_row_with_nowhere_to_attend_or_a_nan_score_is_nan_as_in_torch(lanes, keep_weights):
    q, k, v, _, _, _ = case(4, 4, 3, 10, None, False)
    mask = torch.ones(2, 3, 10, dtype=torch.bool)
    mask[1, 2] = False  # heads 2 and 3, query 2: every key masked
    q[0, 1, 1] = math.nan  # head 0, query 1: NaN scores
    out, weights = native.forward(q, k, v, mask, None, None, keep_weights=keep_weights)
    expected, expected_weights = textbook(q, k, v, mask, None, None)
    assert torch.equal(out.isnan(), expected.isnan())
    assert not keep_weights or torch.equal(weights.isnan(), expected_weights.isnan())
    assert out.isnan().any(dim=1).sum() == 3  # (head 0, query 1), (head 2, query 2), (head 3, query 2)
    torch.testing.assert_close(out.nan_to_num(), expected.float().nan_to_num(), atol=2e-6, rtol=1e-5)


class _RecordingLibrary:
    """The loaded kernels, noting the calls whose names start with ``prefix`` (by default, which attention
    forward each call takes)."""

    def __init__(self, lib, prefix: str | tuple[str, ...] = ("sha_forward", "sp_encoder_eval")):
        self.lib, self.prefix, self.forwards = lib, prefix, []

    def __getattr__(self, name):
        if name.startswith(self.prefix):
            self.forwards.append(name)
        return getattr(self.lib, name)


@needs_kernel
def test_eval_and_inference_take_the_eval_path_and_weights_autograd_or_dropout_do_not(monkeypatch):
    """The eval path is the speed of every eval forward and inference (there, with a memory, every layer runs in one
    call, ``sp_encoder_eval``, which takes it); the weights (attention maps, the backward) and dropout's decisions
    need the key-lane path."""
    recording = _RecordingLibrary(native.library())
    monkeypatch.setattr(native, "library", lambda: recording)
    model = DecAlign(small_config(attn_dropout=0.5), WIDTHS, 1).eval()  # every modality's attention drops
    x = random_inputs(WIDTHS)

    def forwards(run):
        recording.forwards.clear()
        run()
        return set(recording.forwards)

    eval_path, weights_path = {"sp_encoder_eval"}, {"sha_forward"}
    with torch.inference_mode():
        assert forwards(lambda: model(x)) == eval_path
        assert forwards(lambda: model(x, need_attention=True)) == weights_path
    with torch.no_grad():
        assert forwards(lambda: model(x)) == eval_path
        assert forwards(lambda: model.train()(x, align=False)) == weights_path  # dropout's decisions
    assert forwards(lambda: model.eval()(x)) == weights_path  # autograd keeps the weights for the backward


@needs_kernel
def test_eval_and_inference_layers_take_the_fused_layer_and_autograd_or_dropout_do_not(monkeypatch):
    """The fused layer after attention (``native.encoder_layer_eval``) is for forwards that keep nothing and drop
    nothing: one call a layer where the attention weights are asked for, and inside the one call of every layer
    (``sp_encoder_eval``) where they are not."""
    recording = _RecordingLibrary(native.library(), prefix="sp_encoder")
    monkeypatch.setattr(native, "library", lambda: recording)
    model = DecAlign(small_config(num_layers=3), WIDTHS, 1).eval()
    x = random_inputs(WIDTHS)

    def calls(run):
        recording.forwards.clear()
        run()
        return len(recording.forwards)

    with torch.inference_mode():
        assert calls(lambda: model(x)) == 1 and calls(lambda: model(x, need_attention=True)) == 3  # one group
    with torch.no_grad():
        assert calls(lambda: model(x)) == 1
        assert calls(lambda: model.train()(x, align=False)) == 0  # dropout
    assert calls(lambda: model.eval()(x)) == 0  # autograd keeps the intermediates for the backward


@needs_kernel
@pytest.mark.parametrize("cross_modal", [True, False])
def test_an_eval_forward_transposes_its_mask_once_a_call_and_masks_as_the_autograd_forward(monkeypatch, cross_modal):
    """fusion.encode hands every layer the same mask: the eval path's layout of it is made once per call (the
    layers' attention all get the same tensor), with the numbers of a layer transposing it itself."""
    model = DecAlign(small_config(use_sequence_mask=True, cross_modal_attention=cross_modal, num_layers=3), WIDTHS,
                     1).eval()
    lengths = {"text": torch.tensor([6, 2, 4]), "audio": torch.tensor([3, 7, 5]), "vision": torch.tensor([1, 5, 3])}
    x = random_inputs(WIDTHS, {"text": 6, "audio": 7, "vision": 5}, batch=3, seed=1)  # three groups of one
    kept_for_backward = model(x, lengths).prediction
    handed, real = [], native.forward

    def recording(qt, kt, vt, mask, *rest, mask_by_key=None):
        handed.append((mask, mask_by_key))
        return real(qt, kt, vt, mask, *rest, mask_by_key=mask_by_key)

    monkeypatch.setattr(native, "forward", recording)
    monkeypatch.setattr(fusion, "_in_one_call", lambda *args: False)  # layer by layer (the one call: below)
    with torch.inference_mode():
        evaluated = model(x, lengths).prediction
        monkeypatch.setattr(fusion, "_eval_mask_layout", lambda *args: None)
        transposed_by_each_layer = model(x, lengths).prediction
    assert len(handed) == 18 and all(by_key is None for _, by_key in handed[9:])
    assert [len({id(by_key) for _, by_key in handed[i:i + 3]}) for i in (0, 3, 6)] == [1, 1, 1]  # one per call
    assert all(torch.equal(by_key, mask.transpose(1, 2)) for mask, by_key in handed[:9])
    assert torch.equal(evaluated, transposed_by_each_layer)
    torch.testing.assert_close(evaluated, kept_for_backward, atol=1e-6, rtol=1e-5)


@needs_kernel
def test_scores_far_below_the_top_weigh_nothing_and_an_infinite_score_makes_a_nan_row_as_in_torch(lanes):
    """The kernel's exponential takes shifted scores only (at most 0), clamped at -88 where 2^n is 0 (the eval
    path's, in base 2, at -127)."""
    q, k, v, _, _, _ = case(2, 4, 5, 19, None, False)
    q[0] = 0.0
    q[0, 0] = torch.linspace(1, 10, 5)
    k[0, 0] = torch.linspace(-30, 30, 19)  # head 0: scores 30 to 300 apart from their row's top
    q[1, 2, 3] = math.inf  # head 1, query 3: scores of both infinities, as torch gives NaN
    out, weights = native.forward(q, k, v, None, None, None, keep_weights=True)
    expected, expected_weights = textbook(q, k, v, None, None, None)
    assert torch.equal(out.isnan(), expected.isnan()) and torch.equal(weights.isnan(), expected_weights.isnan())
    assert out[1, :, 3].isnan().all() and out.isnan().sum() == 4
    evaluated = native.forward(q, k, v, None, None, None, keep_weights=False)[0]
    assert torch.equal(evaluated.isnan(), expected.isnan())
    torch.testing.assert_close(evaluated.nan_to_num(), expected.float().nan_to_num(), atol=2e-6, rtol=1e-5)
    assert (weights[0] == 0).sum() > 0 and (weights[0] >= 0).all()  # far below the top: exactly 0
    torch.testing.assert_close(out.nan_to_num(), expected.float().nan_to_num(), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(weights.nan_to_num(), expected_weights.float().nan_to_num(), atol=1e-6, rtol=1e-5)


@needs_kernel
@pytest.mark.skipif(not HAS_WIDE, reason="no AVX-512 here")
@pytest.mark.parametrize("keys", [1, 7, 8, 9, 15, 16, 17, 33, 100])
def test_both_vector_widths_give_the_same_attention_to_rounding(monkeypatch, keys):
    """8 and 16 lanes take the same steps (the tails of a row differ: 1 to 15 keys past whole vectors)."""
    results = {}
    for switch in ("avx2", "1"):
        monkeypatch.setenv(native.SWITCH, switch)
        q, k, v, mask, keep, scale = case(6, 4, 5, keys, "per-group", True, seed=keys)
        out, weights = native.forward(q, k, v, mask, keep, scale, keep_weights=True)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        results[switch] = (out, weights, *native.backward(q, k, v, weights, keep, scale, upstream))
    assert results["avx2"][0].abs().sum() > 0  # (with one key, the queries' and keys' gradients are 0)
    for narrow, wide in zip(results["avx2"], results["1"]):
        torch.testing.assert_close(wide, narrow, atol=1e-6, rtol=1e-5)


def test_the_attention_width_follows_the_cpu_and_the_switch(monkeypatch):
    monkeypatch.delenv(native.SWITCH, raising=False)
    for widest in (16, 8):
        monkeypatch.setattr(native, "widest_lanes", lambda widest=widest: widest)
        assert native.attention_lanes() == widest
    monkeypatch.setattr(native, "widest_lanes", lambda: 16)
    monkeypatch.setenv(native.SWITCH, "avx2")
    assert native.attention_lanes() == 8


@needs_kernel
def test_the_kernel_reports_the_width_the_cpu_flags_promise():
    """The kernel asks the CPU itself (and the operating system's support); on Linux /proc/cpuinfo agrees."""
    assert native.widest_lanes() == (16 if HAS_WIDE else 8)


@needs_kernel
def test_a_vector_width_the_kernel_does_not_have_is_refused():
    q, k, v = case(2, 4, 3, 5, None, False)[:3]
    out = torch.empty(2, 4, 3)
    shape, strides = native._layout(native._five(q), 5, [native._five(t) for t in (q, k, v, out)])
    status = native.library().sha_forward(shape, strides, q.data_ptr(), k.data_ptr(), v.data_ptr(), None, 0, None,
                                          None, out.data_ptr(), None, 1, 12)
    assert status == 3
    with pytest.raises(RuntimeError, match="cannot run the attention kernel"):
        native._check(status)


@contextlib.contextmanager
def torch_threads(count: int):
    """torch (and the kernels, which take its count) on ``count`` threads, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_result_does_not_depend_on_the_thread_count(lanes):
    q, k, v, mask, keep, scale = case(10, 4, 9, 30, "per-group", True)
    upstream = torch.randn(q.shape)
    results = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            out, weights = native.forward(q, k, v, mask, keep, scale, keep_weights=True)
            results.append((out, weights, *native.backward(q, k, v, weights, keep, scale, upstream)))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.75, 1 / 300, 0.999])
@pytest.mark.parametrize("count", [1, 13, 8 * 1000, 260_001])
@pytest.mark.parametrize("switch", ["1", "0"])
def test_keep_flags_are_the_decisions_of_keep_mask(monkeypatch, p, count, switch):
    """The kernel's flags against keep_mask made by the kernel ("1") and by numpy ("0")."""
    monkeypatch.setenv(native.SWITCH, switch)
    torch.manual_seed(11)
    mask = keep_mask((count,), p, torch.device("cpu"))
    after_mask = torch.randint(1 << 30, ())  # both leave the generator in the same state
    monkeypatch.setenv(native.SWITCH, "1")
    torch.manual_seed(11)
    flags = keep_flags(count, p)
    assert torch.equal(torch.from_numpy(flags).float(), mask)
    assert torch.equal(torch.randint(1 << 30, ()), after_mask)


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.75, 1 / 300, 0.999])
@pytest.mark.parametrize("shape", [(1,), (7,), (32, 50, 40), (3, 32, 50, 160), (513,), (521,), (531,)])
def test_native_masks_are_numpys_masks_bit_for_bit(monkeypatch, p, shape):
    """Same seed, same mask on both paths: the kernel follows numpy's PCG64 stream, bytes and ties. After the
    first block of 64 words (512 elements) the shapes end 1, 2 and 3 words past a multiple of the kernel's 4
    interleaved cursors."""
    def draw(switch, maker):
        monkeypatch.setenv(native.SWITCH, switch)
        torch.manual_seed(3)
        return maker()
    scale = 1.0 / (1.0 - p)
    masks = [draw(s, lambda: keep_mask(shape, p, torch.device("cpu"), scale=scale)) for s in ("1", "0")]
    assert masks[0].dtype == torch.float32 and torch.equal(masks[0], masks[1])
    assert set(masks[0].unique().tolist()) <= {0.0, float(torch.tensor(scale, dtype=torch.float32))}
    count = math.prod(shape)
    flags = draw("1", lambda: keep_flags(count, p))
    assert np.array_equal(flags, masks[1].numpy().reshape(-1) != 0)  # numpy's decisions
    if count > 10_000:  # the drop rate is p (4 standard deviations)
        assert abs((~flags).mean() - p) < 4 * math.sqrt(p * (1 - p) / count)


@needs_kernel
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("on", ON)
def test_fused_path_equals_torch_path_with_the_same_dropout(monkeypatch, masked, on):
    """attention() draws the same dropout decisions on either path, so a training step agrees to rounding."""
    def run(switch):
        monkeypatch.setenv(native.SWITCH, switch)
        g = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(240, 4, t, generator=g).requires_grad_() for t in (20, 30, 30))
        mask = torch.rand(60, 20, 30, generator=g) > 0.2 if masked else None
        if mask is not None:
            mask[..., 0] = True
        torch.manual_seed(0)
        out, weights = attention(q, k, v, mask, (0.1, 0.0, 0.3), training=True, need_weights=True)
        out.backward(torch.randn(out.shape, generator=g))
        return out, weights, q.grad, k.grad, v.grad

    fused, plain = run(on), run("0")
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    monkeypatch.setenv(native.SWITCH, on)
    torch.manual_seed(0)
    undropped = attention(*[t.detach() for t in fused[2:]], None, (0.0,), training=False)[0]
    assert not torch.allclose(undropped, fused[0])  # the dropout did act


@needs_kernel
@pytest.mark.parametrize("on", ON)
def test_strided_inputs_give_the_same_values_and_gradients(monkeypatch, on):
    """Views that are not contiguous (a transposed query, a sliced key) are read as their values."""
    def run(switch):
        monkeypatch.setenv(native.SWITCH, switch)
        q_base = torch.randn(6, 9, 4, generator=torch.Generator().manual_seed(5)).requires_grad_()
        k_base = torch.randn(6, 4, 22, generator=torch.Generator().manual_seed(6)).requires_grad_()
        v = torch.randn(6, 4, 11, generator=torch.Generator().manual_seed(7)).requires_grad_()
        q, k = q_base.transpose(1, 2), k_base[..., ::2]
        assert not q.is_contiguous() and not k.is_contiguous()
        out, _ = attention(q, k, v)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(8)))
        return out, q_base.grad, k_base.grad, v.grad
    for a, b in zip(run(on), run("0")):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("on", ON)
def test_heads_read_in_the_projections_layout_and_written_token_major(monkeypatch, on):
    """Heads indexed by (M, B, h) and laid out as the model's projections lay them out, (M, h, hd, B, T)
    underneath: the same values and gradients as torch's path (which copies them); the kernel's output is
    token-major underneath, (M, B, Tq, h, hd), and its gradients come back in the inputs' layouts."""
    count, batch, heads, width, queries, keys = 2, 3, 5, 4, 7, 9

    def run(switch):
        monkeypatch.setenv(native.SWITCH, switch)
        g = torch.Generator().manual_seed(3)
        bases = [torch.randn(count, heads, width, batch, t, generator=g).requires_grad_()
                 for t in (queries, keys, keys)]
        q, k, v = (b.permute(0, 3, 1, 2, 4) for b in bases)  # (M, B, h, hd, T), not contiguous
        mask = torch.rand(count * batch, queries, keys, generator=g) > 0.3
        mask[..., 0] = True
        torch.manual_seed(0)
        out, weights = attention(q, k, v, mask, (0.2, 0.0), training=True, need_weights=True)
        out.backward(torch.randn(out.shape, generator=g))
        return (out, weights, *(b.grad for b in bases)), (q, k, v)

    fused, inputs = run(on)
    plain, _ = run("0")
    assert fused[0].shape == (count, batch, heads, width, queries)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert fused[0].permute(0, 1, 4, 2, 3).is_contiguous()  # (M, B, Tq, h, hd): the output projection's input
    monkeypatch.setenv(native.SWITCH, on)
    q, k, v = (t.detach() for t in inputs)
    out, weights = native.forward(q, k, v, None, None, None, keep_weights=True)
    grads = native.backward(q, k, v, weights, None, None, torch.ones_like(out))
    assert [d.stride() for d in grads] == [t.stride() for t in (q, k, v)]


@needs_kernel
@pytest.mark.parametrize("p", [0.1, 0.5, 1 / 300])
@pytest.mark.parametrize("shape", [(7,), (3, 32, 50, 160), (2, 5, 513)])
def test_relu_dropout_in_one_pass_is_relu_then_dropout_to_the_bit(monkeypatch, p, shape):
    """The fused ReLU and dropout against the two steps on numpy's masks: the same decisions, outputs and
    input gradients, for a strided input too; eval mode and p = 0 leave the plain ReLU."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(*shape, 2, generator=g)
    grad = torch.randn(*shape, generator=g)

    def run(switch, fn):
        monkeypatch.setenv(native.SWITCH, switch)
        leaf = base.clone().requires_grad_(True)
        strided = leaf[..., 0]  # every other float: the kernel takes a copy
        assert not strided.is_contiguous()
        torch.manual_seed(5)
        out = fn(strided)
        (d_leaf,) = torch.autograd.grad(out, leaf, grad)
        assert not d_leaf[..., 1].any()
        return out.detach(), d_leaf[..., 0], torch.empty((), dtype=torch.int64).random_()  # generator moved alike
    fused = run("1", lambda x: relu_dropout(x, p, True))
    steps = run("0", lambda x: dropout(torch.relu(x), p, True))
    for a, b in zip(fused, steps):
        assert torch.equal(a, b)
    if math.prod(shape) > 1000:  # some positive inputs dropped, some kept
        positive = base[..., 0] > 0
        assert (fused[0][positive] == 0).any() and (fused[0][positive] != 0).any()
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert torch.equal(fused[1], torch.where(fused[0] > 0, grad * scale, torch.zeros(())))
    x = base[..., 0]
    assert torch.equal(relu_dropout(x, p, False), torch.relu(x)) and torch.equal(relu_dropout(x, 0.0, True), torch.relu(x))


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_relu_dropout_backward_splits_among_threads_to_the_bit(threads):
    """The backward's vectors split among torch's threads, the tail of fewer than 8 after them: every element
    as the formula gives it, at any thread count."""
    g = torch.Generator().manual_seed(6)
    output = torch.relu(torch.randn(8 * 1001 + 5, generator=g))
    grad = torch.randn(output.shape, generator=g)
    with torch_threads(threads):
        got = native.relu_dropout_backward(output, grad, 1.25)
    assert torch.equal(got, torch.where(output > 0, grad * 1.25, torch.zeros(())))


def test_dropout_decisions_apply_only_into_a_mask_of_their_own():
    x = torch.randn(8)
    with pytest.raises(ValueError, match="of its own"):
        native.dropout_decisions(1, 8, -100, 0.5, 2.0, mask=x, applied_to=x)
    with pytest.raises(ValueError, match="contiguous float32 input"):
        native.dropout_decisions(1, 4, -100, 0.5, 2.0, mask=torch.empty(4), applied_to=x[::2])


@needs_kernel
@pytest.mark.parametrize("on", ON)
def test_model_forward_and_gradients_agree_on_both_paths(monkeypatch, on):
    x = random_inputs(WIDTHS, batch=6)
    results = {}
    for switch in (on, "0"):
        monkeypatch.setenv(native.SWITCH, switch)
        torch.manual_seed(0)
        model = DecAlign(small_config(num_layers=2, num_heads=2, d_model=8), WIDTHS, 1).train()
        torch.manual_seed(1)
        prediction = model(x, align=False).prediction
        grads = torch.autograd.grad(prediction.sum(), list(model.parameters()), allow_unused=True)
        model.eval()
        with torch.inference_mode():
            evaluated = model(x).prediction
        results[switch] = (prediction, evaluated, grads)
    (p1, e1, g1), (p0, e0, g0) = results[on], results["0"]
    torch.testing.assert_close(p1, p0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e1, e0, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g0):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_torch_path_where_the_kernel_does_not_apply(monkeypatch):
    q = torch.zeros(2, 4, 3)
    assert not native.applies(q.double(), q.double(), q.double())
    assert not native.applies(torch.zeros(2, 17, 3), torch.zeros(2, 17, 3), torch.zeros(2, 17, 3))
    assert not native.applies(*[torch.zeros(1, 1, 1, 2, 4, 3)] * 3)  # four head dimensions: torch's path
    monkeypatch.setenv(native.SWITCH, "0")
    assert native.library() is None and not native.applies(q, q, q)


@pytest.mark.parametrize("failure", ["compiler error", "no compiler"])
def test_a_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path, failure):
    source = tmp_path / "small_head_attention.c"
    source.write_text("this is not C\n" if failure == "compiler error" else native.SOURCES[0].read_text() + "\n")
    monkeypatch.setattr(native, "SOURCES", (source, native.SOURCES[1]))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "cpu_supported", lambda: True)
    monkeypatch.setattr(native, "default_folders", lambda: [tmp_path / "out"])
    if failure == "no compiler":
        monkeypatch.setattr(native, "c_compiler", lambda: None)
    reason = "error" if failure == "compiler error" else "no C compiler found"
    with pytest.warns(RuntimeWarning, match=f"could not be built.*{reason}"):
        assert native.library() is None
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        assert not native.applies(*[torch.zeros(2, 4, 3)] * 3)
    assert not later  # no second warning, no second build: the result is remembered
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    q, k, v = case(4, 4, 3, 6, None, False)[:3]
    torch.testing.assert_close(attention(q, k, v)[0].double(), textbook(q, k, v, None, None, None)[0])


@needs_kernel
def test_build_writes_once_and_reuses(tmp_path):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left beside it
    assert first.name.startswith("decalign_kernels-") and os.access(first, os.R_OK)


@needs_kernel
def test_dropout_decisions_refuse_a_target_they_would_write_past_or_around():
    with pytest.raises(ValueError, match="contiguous float32"):
        native.dropout_decisions(1, 6, -100, 0.5, 1.0, mask=torch.zeros(6, 2)[:, 0])
    with pytest.raises(ValueError, match="room for 7"):
        native.dropout_decisions(1, 7, -100, 0.5, 1.0, flags=np.zeros(6, dtype=bool))
    with pytest.raises(ValueError, match="contiguous bool"):
        native.dropout_decisions(1, 3, -100, 0.5, 1.0, flags=np.zeros(6, dtype=np.uint8))
    flags, again = np.zeros(8, dtype=bool), np.zeros(8, dtype=bool)
    native.dropout_decisions(1, 8, -100, 0.5, 1.0, flags=flags)
    native.dropout_decisions(1, 8, -100, 0.5, 1.0, flags=again)
    assert flags.sum() > 0 and np.array_equal(flags, again)  # a seed, not a stream: the same decisions


@needs_kernel
def test_the_kernel_seeds_pcg64_as_numpy_does():
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1] + [int(s) for s in rng.integers(0, 2**63 - 1, 300)]
    seeds += [int(s) for s in rng.integers(0, 2**32, 100)]
    for seed in seeds:
        assert native.pcg64_state(seed) == np.random.PCG64(seed).state["state"], seed

@needs_kernel
@pytest.mark.parametrize("p", [0.3, 1 / 300])
def test_dropout_decisions_do_not_depend_on_the_thread_count(p):
    """Past 32,768 elements the threads split a mask and settle its ties in the stream's order: the same
    masks, flags and applied ReLU on 1, 2 and 3 threads (p = 0.3 ties at a fraction of 0.8, 1/300 at 0.85)."""
    count = 100_003
    x = torch.randn(count)
    results = []
    for threads in (1, 2, 3):
        with torch_threads(threads):
            mask, applied, flags = torch.empty(count), torch.empty(count), np.empty(count, dtype=bool)
            for target in ({"mask": mask}, {"mask": applied, "applied_to": x, "relu": True}, {"flags": flags}):
                native.dropout_decisions(5, count, *dropout_cut(p), 2.0, **target)
            results.append((mask, applied, torch.from_numpy(flags)))
    assert all(torch.equal(a, b) for other in results[1:] for a, b in zip(results[0], other))
    mask, applied, flags = results[0]
    assert torch.equal(mask != 0, flags) and torch.equal(applied, torch.relu(x) * mask)
    cut = int(p * 256) - 128  # numpy's bytes: below the cut dropped, above kept, on it settled by a double
    as_bytes = np.random.PCG64(5).random_raw(-(-count // 8)).view(np.int8)[:count]
    assert not flags.numpy()[as_bytes < cut].any() and flags.numpy()[as_bytes > cut].all()
    assert 0 < (as_bytes == cut).sum() < flags.numpy()[as_bytes == cut].sum() * 10  # ties, mostly kept


@needs_kernel
def test_keep_flags_in_spans_are_successive_keep_flags(monkeypatch):
    """One call for many spans (split among threads) gives what one keep_flags call per span gives, in turn,
    and leaves torch's generator where those calls leave it."""
    spans = [(0, 260_000, 0.1), (260_000, 300_007, 0.1), (300_007, 600_007, 0.3), (600_007, 600_008, 0.5)]
    expected = np.empty(600_008, dtype=bool)
    torch.manual_seed(2)
    for start, stop, p in spans:
        keep_flags(stop - start, p, out=expected[start:stop])
    after = torch.randint(1 << 30, ())
    for threads in (1, 2, 3):
        with torch_threads(threads):
            flags = np.zeros(600_008, dtype=bool)
            torch.manual_seed(2)
            keep_flags_in_spans(spans, flags)
            assert np.array_equal(flags, expected) and torch.equal(torch.randint(1 << 30, ()), after)


@needs_kernel
def test_flag_blocks_refuse_spans_past_their_flags():
    with pytest.raises(ValueError, match="within the 10 flags"):
        native.dropout_flag_blocks([1], [(5, 6, -100, 0.5)], np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="a seed per span"):
        native.dropout_flag_blocks([1, 2], [(0, 6, -100, 0.5)], np.zeros(10, dtype=bool))
    with pytest.raises(ValueError, match="contiguous bool"):
        native.dropout_flag_blocks([1], [(0, 6, -100, 0.5)], np.zeros(10, dtype=np.uint8))


@needs_kernel
@pytest.mark.parametrize("keep_weights", [False, True], ids=["eval path", "key-lane path"])
def test_two_keys_give_the_sigmoid_of_their_score_gap_to_the_exponentials_precision(lanes, keep_weights):
    """One query against scores (q, 0) and values (1, 0) attends sigmoid(q): the exponentials' error, seen
    directly. The key-lane path's base-e polynomial is within 2e-7 everywhere; the eval path's degree-5 base-2
    one within 3e-7 for gaps up to 5, and up to 20 within the 1.5e-6 that rounding q log2(e) to float costs."""
    q = torch.linspace(-20, 20, 97).view(1, 1, 97)  # 97 queries: two vectors and a tail, at either width
    out = native.forward(q, torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.0]]]), None, None, None,
                         keep_weights=keep_weights)[0]
    expected = torch.sigmoid(q.double())
    error = ((out.double() - expected) / expected).abs()[0, 0]
    near = q[0, 0].abs() <= 5
    assert error[near].max() < (2e-7 if keep_weights else 3e-7)
    assert error.max() < (2e-7 if keep_weights else 1.5e-6)


@needs_kernel
def test_the_eval_paths_exponential_is_exactly_zero_below_two_to_the_minus_126_and_a_power_of_two_above(lanes):
    """One query, scores (0, -g) over values (0, 1), attends 2^y / (1 + 2^y) with y = -g log2(e): the eval path's
    2^y is exactly 0 at or below y = -126.5 and the normal (or just subnormal) power of two above it, at both widths
    (AVX-512 rounds and scales with roundscale and a masked scalef, 8 lanes by adding 1.5 * 2^23 and a shift)."""
    y = torch.tensor([-0.5, -1.5, -20.0, -100.0, -120.0, -125.9, -126.4, -126.6, -127.5, -130.0, -200.0, -1000.0])
    gaps = (-y / math.log2(math.e)).view(1, 1, -1)
    out = native.forward(gaps, torch.tensor([[[0.0, -1.0]]]), torch.tensor([[[0.0, 1.0]]]), None, None, None,
                         keep_weights=False)[0][0, 0]
    expected = torch.exp(-gaps[0, 0].double()) / (1 + torch.exp(-gaps[0, 0].double()))
    assert torch.equal(out[7:], torch.zeros(5)), out[7:]
    assert (out[:7] > 0).all()
    torch.testing.assert_close(out[:5].double(), expected[:5], rtol=3e-6, atol=0.0)
    torch.testing.assert_close(out[5:7].double(), expected[5:7], rtol=1e-2, atol=0.0)  # subnormal: fewer bits


@needs_kernel
@pytest.mark.parametrize("masked", [False, True])
def test_every_layer_in_one_call_gives_the_bits_of_the_calls_layer_by_layer(monkeypatch, masked):
    """In eval, with a memory, fusion.encode runs every layer in one native call (``native.encoder_eval``): the
    queries' projection, the attention and the rest of each layer, as the calls layer by layer run them, so the same
    bits, masked or not, at aligned and unaligned lengths; the mask handed over is the eval path's layout."""
    config = small_config(use_sequence_mask=masked, num_layers=3)
    model = DecAlign(config, WIDTHS, 1).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # no zero biases or unit scales, which would hide a parameter read wrong
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=gen))
    steps = {"text": 6, "audio": 7, "vision": 5} if masked else None
    x = random_inputs(WIDTHS, steps, batch=3, seed=2) if masked else random_inputs(WIDTHS)
    lengths = {"text": torch.tensor([6, 2, 4]), "audio": torch.tensor([3, 7, 5]),
               "vision": torch.tensor([1, 5, 3])} if masked else None
    handed, real = [], native.encoder_eval

    def recording(x, parameters, kv, heads, eps, mask_by_key=None):
        handed.append(mask_by_key)
        return real(x, parameters, kv, heads, eps, mask_by_key)

    monkeypatch.setattr(native, "encoder_eval", recording)
    with torch.inference_mode():
        in_one_call = model(x, lengths).prediction
        monkeypatch.setattr(fusion, "_in_one_call", lambda *args: False)
        layer_by_layer = model(x, lengths).prediction
    assert len(handed) == (3 if masked else 1) and all((mask is not None) == masked for mask in handed)
    assert torch.equal(in_one_call, layer_by_layer)


@needs_kernel
def test_every_layer_in_one_call_refuses_mismatched_shapes_and_names_them():
    x, kv = torch.zeros(2, 3, 4, 8), torch.zeros(2, 1, 2, 2, 4, 3, 5)
    shapes = [(8, 8), (8,), (8, 8), (8,), (32, 8), (32,), (8, 32)] + [(8,)] * 5
    parameters = [torch.zeros(2, 1, *shape) for shape in shapes]
    assert native.encoder_eval(x, parameters, kv, 2, (1e-5, 1e-5)).shape == x.shape
    with pytest.raises(ValueError, match=r"kv \(2, 1, 2, 2, 4, 3, 5\).*got x .*kv \(2, 1, 2, 2, 4, 2, 5\)"):
        native.encoder_eval(x, parameters, torch.zeros(2, 1, 2, 2, 4, 2, 5), 2, (1e-5, 1e-5))  # batch 2, not 3
    with pytest.raises(ValueError, match=r"mask \(6, 5, 4\)"):
        native.encoder_eval(x, parameters, kv, 2, (1e-5, 1e-5), torch.ones(6, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="parameters"):
        native.encoder_eval(x, parameters[:11] + [torch.zeros(2, 1, 9)], kv, 2, (1e-5, 1e-5))
    with pytest.raises(ValueError, match="kv \\(2, 0, 2"):  # no layer: nothing would be written
        native.encoder_eval(x, [t[:, :0] for t in parameters], kv[:, :0], 2, (1e-5, 1e-5))
