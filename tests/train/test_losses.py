"""Training losses against hand-computed values and independent implementations."""

import math

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from decalign.config import ModelConfig, TrainConfig
from decalign.model import DecAlign
from decalign.train.losses import (
    balanced_class_weight,
    contrastive_groups,
    supervised_contrastive_loss,
    task_loss,
    total_loss,
)


def test_regression_task_losses_by_hand():
    pred = torch.tensor([[0.5], [2.0], [-1.0]])
    y = torch.tensor([0.0, 0.0, 1.0])
    # errors 0.5, 2.0, -2.0
    assert task_loss(pred, y, "mse").item() == pytest.approx((0.25 + 4 + 4) / 3)
    assert task_loss(pred, y, "l1").item() == pytest.approx((0.5 + 2 + 2) / 3)
    # Huber with delta 1: 0.5 e^2 if |e| < 1 else |e| - 0.5
    assert task_loss(pred, y, "smooth_l1").item() == pytest.approx((0.125 + 1.5 + 1.5) / 3)
    with pytest.raises(ValueError, match="task_loss"):
        task_loss(pred, y, "hinge")


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 0])
    w = torch.tensor([1.0, 3.0])
    nll = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.e / (1 + math.e)), math.log(2)]
    expected = (1 * nll[0] + 3 * nll[1] + 1 * nll[2]) / (1 + 3 + 1)
    assert task_loss(logits, y, "cross_entropy", w).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_class_weight_matches_sklearn():
    labels = np.array([0, 0, 0, 1, 2, 2])
    ours = balanced_class_weight(labels, 3).numpy()
    np.testing.assert_allclose(ours, compute_class_weight("balanced", classes=np.arange(3), y=labels), rtol=1e-6)
    assert balanced_class_weight(np.array([0, 0, 1]), 3)[2].item() == 1.0  # absent class


def test_supcon_tiny_hand_example():
    # Three unit vectors: a and b at 90 degrees (same class), c opposite a (other class); tau = 0.5.
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # normalisation must not matter
    g = torch.tensor([0, 0, 1])
    tau = 0.5
    # similarities / tau: s_ab = 0, s_ac = -2, s_bc = 0
    l_a = -(0 - math.log(math.exp(0) + math.exp(-2)))  # anchor a, positive b, others {b, c}
    l_b = -(0 - math.log(math.exp(0) + math.exp(0)))  # anchor b, positive a, others {a, c}
    expected = (l_a + l_b) / 2  # c has no positive: not an anchor
    assert supervised_contrastive_loss(f, g, tau).item() == pytest.approx(expected, rel=1e-6)


def test_supcon_without_positive_pairs_is_zero_and_differentiable():
    f = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(f, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(f.grad == 0)


def test_regression_groups_by_sign():
    assert contrastive_groups(torch.tensor([-1.2, 0.4, 2.0, 0.0]), "regression").tolist() == [-1, 1, 1, 0]
    assert contrastive_groups(torch.tensor([2, 0]), "classification").tolist() == [2, 0]


def test_total_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    model = DecAlign(ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=2, pde_dim=4),
                     {"a": 3, "b": 5}).train()
    out = model({"a": torch.randn(6, 2, 3), "b": torch.randn(6, 2, 5)}, align=True)
    y = torch.tensor([-1.0, 1.0, 2.0, -2.0, 0.5, 1.5])
    cfg = TrainConfig(dec_loss_weight=0.7, alpha=0.3, beta=0.2, ct_weight=0.5, ct_temperature=0.2)
    total, terms = total_loss(out, y, cfg, "regression")
    lv = out.alignment
    expected = (torch.mean((out.prediction[:, 0] - y) ** 2) + 0.7 * lv.decoupling
                + 0.3 * (lv.prototype_transport + lv.sample_to_prototype) + 0.2 * (lv.moment_matching + lv.mmd)
                + 0.5 * supervised_contrastive_loss(out.branch_inputs, torch.sign(y).long(), 0.2))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["contrastive"].item() > 0
    total.backward()  # the whole objective is differentiable
