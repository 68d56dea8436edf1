"""The official Sinkhorn sweeps' hand-written backward (decalign.model.sweeps) against autograd through
the plain loop, written here on its own: values and gradients, in the native kernel (small CPU plans), on
numpy (the same without the native kernels) and on torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import decalign.model.sweeps as sweeps_module
from decalign.model import native, official_sinkhorn
from decalign.model.sweeps import official_sweeps

GUARD = float(np.log(1e-8))


def plain_sweeps(scaled, guard, sweeps, log_nu):
    """The official update in torch operations, for autograd: g_m = log nu_m - logaddexp(lse, guard)."""
    num = scaled.dim()
    logs = [torch.zeros_like(a) for a in log_nu]
    for _ in range(sweeps):
        for m in range(num):
            total = scaled
            for n in range(num):
                if n != m:
                    total = total + logs[n].reshape([-1 if i == n else 1 for i in range(num)])
            lse = torch.logsumexp(total, dim=[i for i in range(num) if i != m])
            logs[m] = log_nu[m] - torch.logaddexp(lse, guard)
    return logs


def problem(shape, seed, dtype=torch.float64, spread=3.0, reg=0.1):
    g = torch.Generator().manual_seed(seed)
    scaled = (-spread * torch.rand(*shape, generator=g, dtype=dtype) / reg).requires_grad_(True)
    log_nu = [torch.log_softmax(torch.randn(k, generator=g, dtype=dtype), 0).requires_grad_(True) for k in shape]
    weights = [torch.randn(k, generator=g, dtype=dtype) for k in shape]  # a loss that weighs every potential
    return scaled, log_nu, weights


def values_and_gradients(fn, scaled, log_nu, weights, guard, sweeps):
    logs = fn(scaled, torch.tensor(guard, dtype=scaled.dtype), sweeps, log_nu)
    loss = sum((w * torch.exp(g)).sum() + (w * g).sum() for w, g in zip(weights, logs))
    grads = torch.autograd.grad(loss, [scaled, *log_nu])
    return [g.detach() for g in logs], grads


@pytest.fixture(params=["native", "numpy", "torch"])
def backend(request, monkeypatch):
    if request.param == "native" and native.library() is None:
        pytest.skip("the native kernels do not load here")
    if request.param == "numpy":
        monkeypatch.setenv(native.SWITCH, "0")
    if request.param == "torch":
        monkeypatch.setattr(sweeps_module, "HOST_MAX_CELLS", 0)
    assert sweeps_module._backend(torch.zeros(8, 8, 8)) == request.param
    return request.param


@pytest.mark.parametrize("shape", [(5, 4), (4, 3, 5), (3, 2, 3, 2), (8, 8, 8)])
@pytest.mark.parametrize("guard", [GUARD, -np.inf])
def test_values_and_gradients_equal_autograd_through_the_plain_loop(shape, guard, backend):
    scaled, log_nu, weights = problem(shape, seed=len(shape))
    got_logs, got_grads = values_and_gradients(official_sweeps, scaled, log_nu, weights, guard, 13)
    want_logs, want_grads = values_and_gradients(plain_sweeps, scaled, log_nu, weights, guard, 13)
    for got, want in zip(got_logs + list(got_grads), want_logs + list(want_grads)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_guard_matters_where_sums_are_tiny_and_both_paths_agree(backend):
    # costs far above reg: the sums meet the 1e-8 guard, so guard and no guard give different potentials
    scaled, log_nu, weights = problem((4, 3, 5), seed=3, spread=5.0, reg=0.1)
    with_guard = values_and_gradients(official_sweeps, scaled, log_nu, weights, GUARD, 20)
    without = values_and_gradients(official_sweeps, scaled, log_nu, weights, -np.inf, 20)
    assert max(float((a - b).abs().max()) for a, b in zip(with_guard[0], without[0])) > 1e-3
    want = values_and_gradients(plain_sweeps, scaled, log_nu, weights, GUARD, 20)
    for got, expected in zip(with_guard[1], want[1]):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_float32_stays_as_close_to_float64_as_autograd_does(backend):
    scaled, log_nu, weights = problem((8, 8, 8), seed=5)
    _, exact = values_and_gradients(plain_sweeps, scaled, log_nu, weights, GUARD, 50)

    def as32(t):
        return t.detach().float().requires_grad_(True)
    args32 = (as32(scaled), [as32(a) for a in log_nu], [w.float() for w in weights])
    _, ours = values_and_gradients(official_sweeps, *args32, GUARD, 50)
    _, autograd = values_and_gradients(plain_sweeps, *args32, GUARD, 50)
    for got, ref, want in zip(ours, autograd, exact):
        scale = float(want.abs().max())
        assert float((got.double() - want).abs().max()) <= max(4 * float((ref.double() - want).abs().max()),
                                                             1e-6 * scale)
        assert got.dtype == torch.float32


def test_one_input_needing_no_gradient_and_grad_mode_off(backend):
    scaled, log_nu, weights = problem((4, 3, 5), seed=6)
    fixed = [a.detach() for a in log_nu]
    logs = official_sweeps(scaled, torch.tensor(GUARD, dtype=scaled.dtype), 9, fixed)
    want = plain_sweeps(scaled, torch.tensor(GUARD, dtype=scaled.dtype), 9, fixed)
    loss, ref = (sum((w * g).sum() for w, g in zip(weights, x)) for x in (logs, want))
    torch.testing.assert_close(torch.autograd.grad(loss, scaled)[0], torch.autograd.grad(ref, scaled)[0],
                               rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        off = official_sweeps(scaled, torch.tensor(GUARD, dtype=scaled.dtype), 9, log_nu)
    assert all(not g.requires_grad for g in off)
    for got, expected in zip(off, want):
        torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-12)


def test_the_backend_follows_the_plan_size_and_device(monkeypatch):
    small = torch.zeros(8, 8, 8)
    assert sweeps_module._backend(small) == ("native" if native.library() is not None else "numpy")
    assert sweeps_module._backend(torch.zeros(16, 16, 32)) == "numpy"  # past NATIVE_MAX_CELLS
    assert sweeps_module._backend(torch.zeros(64, 64, 16)) == "torch"  # past HOST_MAX_CELLS: torch's threads
    assert sweeps_module._backend(small.to(torch.bfloat16)) == "torch"  # numpy and the kernel: no bfloat16
    assert sweeps_module._backend(torch.zeros(8, 8, 8, device="meta")) == "torch"
    assert sweeps_module._backend(torch.zeros((1,) * (native.MAX_SWEEP_AXES + 1))) == "numpy"  # the kernel's limit
    monkeypatch.setenv(native.SWITCH, "0")
    assert sweeps_module._backend(small) == "numpy"


def test_official_sinkhorn_gradient_equals_autograd_through_the_plain_plan(backend):
    # the whole official transport loss, cost and marginals, as the model differentiates it
    g = torch.Generator().manual_seed(9)
    cost = (3 * torch.rand(6, 5, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    nu = [torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0).requires_grad_(True) for k in (6, 5, 4)]
    _, loss = official_sinkhorn(cost, nu, 0.1, 50)
    scaled = -cost / 0.1
    logs = plain_sweeps(scaled, torch.tensor(GUARD, dtype=torch.float64), 50, [torch.log(a) for a in nu])
    log_plan = scaled + logs[0][:, None, None] + logs[1][None, :, None] + logs[2][None, None, :]
    plan = torch.exp(log_plan)
    want = (plan * cost).sum() + 0.1 * (plan * (log_plan.clamp_min(np.log(1e-8)) - 1)).sum()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    for got, expected in zip(torch.autograd.grad(loss, [cost, *nu]), torch.autograd.grad(want, [cost, *nu])):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_the_native_reverse_skips_absent_adjoints_as_the_numpy_reverse_does():
    if native.library() is None:
        pytest.skip("the native kernels do not load here")
    scaled, log_nu, _ = problem((4, 3, 5), seed=8)
    arrays = scaled.detach().numpy(), [a.detach().numpy() for a in log_nu]
    logs, tape = native.sweeps_forward(arrays[0], GUARD, 1, arrays[1], keep=True)
    want_logs, want_tape = sweeps_module.forward_updates(np, arrays[0], np.float64(GUARD), 1, arrays[1], True)
    for got, want in zip(logs, want_logs):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # one sweep, only the first potential's adjoint: the two later updates are skipped (absent adjoints),
    # the first one's gives d scaled and d log nu_0 only (no earlier update takes the adjoints it passes on)
    grads = [np.arange(1.0, 5.0), None, None]
    got_scaled, got_nu = native.sweeps_reverse(tape, grads)
    want_scaled, want_nu = sweeps_module.reverse_updates(np, grads, want_tape, 3)
    np.testing.assert_allclose(got_scaled, want_scaled, rtol=1e-12, atol=1e-15)
    assert [g is None for g in got_nu] == [g is None for g in want_nu] == [False, True, True]
    np.testing.assert_allclose(got_nu[0], want_nu[0], rtol=1e-12)
    assert native.sweeps_reverse(tape, [None, None, None]) == (None, [None, None, None])
