"""Training losses against hand-computed values and independent implementations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from decalign.config import ModelConfig, TrainConfig
from decalign.model import DecAlign
from decalign.train.losses import (
    balanced_class_weight,
    contrastive_groups,
    main_loss,
    official_contrastive_loss,
    supervised_contrastive_loss,
    task_loss,
    total_loss,
)
from tests.reference import official_model as oracle


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


def test_regression_groups_are_the_official_seven_bins_or_the_studio_sign():
    y = torch.tensor([-3.7, -1.2, -0.5, 0.4, 0.5, 2.0, 2.5, 0.0, 9.0])
    # round(clip(y, -3, 3)) + 3, rounding half to even as torch.round
    assert contrastive_groups(y, "regression").tolist() == [0, 2, 3, 3, 3, 5, 5, 3, 6]
    assert contrastive_groups(y, "regression", "studio").tolist() == [-1, -1, -1, 1, 1, 1, 1, 0, 1]
    assert contrastive_groups(torch.tensor([2, 0]), "classification").tolist() == [2, 0]


@pytest.mark.parametrize("objective", ["official", "studio"])
def test_total_loss_is_the_weighted_sum(objective):
    torch.manual_seed(0)
    model = DecAlign(ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=2, pde_dim=4,
                                 objective=objective), {"a": 3, "b": 5}).train()
    out = model({"a": torch.randn(6, 2, 3), "b": torch.randn(6, 2, 5)}, align=True)
    y = torch.tensor([-1.0, 1.0, 2.0, -2.0, 0.0, 1.5])
    cfg = TrainConfig(dec_loss_weight=0.7, alpha=0.3, beta=0.2, ct_weight=0.5, ct_temperature=0.2,
                      binary_task_weight=0.1)
    total, terms = total_loss(out, y, cfg, "regression")
    lv = out.alignment
    if objective == "official":  # the official re-implementation's main and contrastive losses
        main = oracle.main_loss(out.prediction, y, {"task_loss": "mse", "binary_task_weight": 0.1})
        contrastive = oracle.contrastive_loss(out.branch_inputs, y, 0.2, classification=False)
    else:
        nonzero = y != 0
        main = torch.mean((out.prediction[:, 0] - y) ** 2) + 0.1 * F.binary_cross_entropy_with_logits(
            out.prediction[nonzero, 0], (y[nonzero] > 0).float())
        contrastive = supervised_contrastive_loss(out.branch_inputs, torch.sign(y).long(), 0.2)
    expected = (main + 0.7 * lv.decoupling + 0.3 * (lv.prototype_transport + lv.sample_to_prototype)
                + 0.2 * (lv.moment_matching + lv.mmd) + 0.5 * contrastive)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["task"].item() == pytest.approx(main.item(), rel=1e-6)
    assert terms["contrastive"].item() > 0
    total.backward()  # the whole objective is differentiable


def test_main_loss_adds_the_official_binary_term_on_nonzero_labels_by_hand():
    pred = torch.tensor([[0.0], [2.0], [-1.0], [0.5]])
    y = torch.tensor([1.0, 0.0, -2.0, 0.0])
    l1 = (1.0 + 2.0 + 1.0 + 0.5) / 4
    # BCE over the nonzero labels only: targets 1 (y=1) and 0 (y=-2) for logits 0 and -1
    bce = (math.log(2.0) + math.log1p(math.exp(-1.0))) / 2
    assert main_loss(pred, y, "l1", binary_weight=0.25).item() == pytest.approx(l1 + 0.25 * bce, rel=1e-6)
    assert main_loss(pred, y, "l1").item() == pytest.approx(l1, rel=1e-6)
    zeros = torch.zeros(4)  # no nonzero label: nothing to add
    assert main_loss(pred, zeros, "l1", binary_weight=1.0).item() == pytest.approx(task_loss(pred, zeros, "l1").item())
    assert main_loss(pred, y, "smooth_l1", beta=0.5).item() == pytest.approx(
        F.smooth_l1_loss(pred[:, 0], y, beta=0.5).item())


@pytest.mark.parametrize("classification", [False, True])
def test_official_contrastive_loss_equals_the_official_reimplementation(classification):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(16, 12, generator=g)
    y = torch.randint(0, 4, (16,), generator=g) if classification else 3 * torch.randn(16, generator=g)
    groups = contrastive_groups(y, "classification" if classification else "regression")
    for tau in (0.07, 0.5):
        ours = official_contrastive_loss(f, groups, tau)
        assert ours.item() == pytest.approx(oracle.contrastive_loss(f, y.float(), tau, classification).item(),
                                            rel=1e-6)
        # the official form differs from the logsumexp form only by its 1e-8 floor
        assert ours.item() == pytest.approx(supervised_contrastive_loss(f, groups, tau).item(), rel=1e-5)
    assert official_contrastive_loss(f[:3], torch.tensor([0, 1, 2]), 0.1).item() == 0.0
