"""Dropout masks: the exact probability (as ``F.dropout``), independent elements, torch's seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decalign.model.dropout import dropout, keep_mask

CPU = torch.device("cpu")


def dropped_fraction_z(p: float, n: int) -> float:
    """How many standard deviations the dropped count of ``n`` draws is from n * p."""
    dropped = int((keep_mask((n,), p, CPU) == 0).sum())
    return (dropped - n * p) / (n * p * (1 - p)) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_drop_rate_is_p(p):
    # Rounding p to 1/256 (0.1 -> 0.1016) would be 10 standard deviations off at this size.
    torch.manual_seed(0)
    assert abs(dropped_fraction_z(p, 4_000_000)) < 5


@pytest.mark.parametrize("p, n", [(2.5 / 256, 1_000_000), (2.5 / 65536, 40_000_000)])
def test_probability_between_grid_levels_is_exact(p, n):
    # Rounding p to a 1/256 grid would be 20 standard deviations off for the first, to a 1/65536 grid 7.8
    # for the second: a random byte that ties the threshold is settled by a double-precision uniform.
    torch.manual_seed(1)
    assert abs(dropped_fraction_z(p, n)) < 4


def test_elements_are_independent():
    torch.manual_seed(2)
    keep = keep_mask((2_000_000,), 0.5, CPU).double()
    for lag in (1, 2, 3, 7, 8, 9):  # eight neighbours share a 64-bit draw
        both = (keep[:-lag] * keep[lag:]).mean()
        assert abs(float(both) - 0.25) < 5 * (0.25 * 0.75 / keep.numel()) ** 0.5


def test_masks_follow_the_torch_seed_and_keep_the_shape():
    torch.manual_seed(3)
    first = keep_mask((3, 50, 7), 0.1, CPU)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((3, 50, 7), 0.1, CPU))
    assert first.shape == (3, 50, 7) and first.dtype == torch.float32
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, keep_mask((3, 50, 7), 0.1, CPU))
    scaled = keep_mask((1000,), 0.25, CPU, torch.float64, scale=4 / 3)
    assert scaled.dtype == torch.float64 and set(scaled.unique().tolist()) == {0.0, 4 / 3}


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_the_mask_follows_the_byte_rule_element_by_element(p):
    # The module's rule, one element at a time, with the draws taken in the same order (the seed from
    # torch's generator, then PCG64's words, then its doubles for the ties): byte b drops
    # below the cut, keeps above it, and on the cut keeps when its double-precision uniform is >= the
    # fraction of p * 256 above the cut (0.5 * 256 is whole: no draws). 100,001 elements: padding bytes.
    n = 100_001
    torch.manual_seed(7)
    got = keep_mask((n,), p, CPU).tolist()
    torch.manual_seed(7)
    stream = np.random.Generator(np.random.PCG64(int(torch.empty((), dtype=torch.int64).random_())))
    as_bytes = stream.bit_generator.random_raw(-(-n // 8)).view(np.int8).tolist()
    level = p * 256
    cut, fraction = int(level) - 128, level - int(level)
    tied = [i for i, b in enumerate(as_bytes) if b == cut]
    draws = dict(zip(tied, stream.random(len(tied)).tolist())) if fraction else {}
    want = [float(b > cut or (b == cut and draws.get(i, 1.0) >= fraction)) for i, b in enumerate(as_bytes)]
    assert got == want[:n]
    assert (len(tied) > 300) and (0 < sum(draws[i] >= fraction for i in tied) < len(tied) if fraction else True)


def test_dropout_scales_what_it_keeps_and_its_gradient_is_the_mask():
    x = torch.rand(1000, 64, dtype=torch.float64) + 1.0
    x.requires_grad_(True)
    torch.manual_seed(4)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.double() / 0.8)
    assert abs(float(y.detach().mean() / x.detach().mean()) - 1) < 0.01  # the expectation is kept
    assert dropout(x, 0.2, training=False) is x and dropout(x, 0.0, training=True) is x
    assert torch.equal(dropout(x, 1.0, training=True), torch.zeros_like(x))
