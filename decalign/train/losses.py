"""Training losses as plain functions: the main (task) loss, supervised contrastive loss and the weighted total.

The objective of one batch is

    L = L_main + w_dec * L_dec + alpha * (L_transport + L_local) + beta * (L_moment + L_mmd) + w_ct * L_supcon

with the five alignment levels taken from ``DecAlignOutput.alignment`` (computed under the model's
objective, official or studio) and the weights from ``TrainConfig`` (``dec_loss_weight``, ``alpha``,
``beta``, ``ct_weight``). ``L_main`` is the task loss plus, for regression, ``binary_task_weight`` times
the official binary auxiliary term.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, DecAlignConfig, TrainConfig
from ..model import DecAlignOutput

LOSS_TERMS = ("total", "task", "decoupling", "heterogeneity", "homogeneity", "contrastive")


def task_loss(prediction: torch.Tensor, labels: torch.Tensor, kind: str,
              class_weight: torch.Tensor | None = None, *, beta: float = 1.0) -> torch.Tensor:
    """Supervised loss of the head's output.

    Parameters
    ----------
    prediction : (N, 1) regression values or (N, C) class logits.
    labels : (N,) float targets or int64 class ids.
    kind : ``mse`` (mean (p - y)^2), ``l1`` (mean |p - y|), ``smooth_l1`` (Huber with threshold ``beta``) or
        ``cross_entropy`` (mean -log softmax(p)_y, weighted by ``class_weight[y]`` when given, normalised by
        the sum of the weights as ``torch.nn.functional.cross_entropy`` does).
    """
    if kind == "cross_entropy":
        return F.cross_entropy(prediction, labels.long(), weight=class_weight)
    value = prediction.reshape(-1)
    target = labels.to(value.dtype).reshape(-1)
    if kind == "mse":
        return F.mse_loss(value, target)
    if kind == "l1":
        return F.l1_loss(value, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(value, target, beta=beta)
    raise ValueError(f"task_loss must be mse, l1, smooth_l1 or cross_entropy, found {kind!r}")


def match_task_loss(config: DecAlignConfig, task: str, *, explicit: bool = False
                    ) -> tuple[DecAlignConfig, str | None]:
    """Make ``train.task_loss`` fit the data's task (cross-entropy for classes, MSE for values).

    The library default is a regression loss; training on classification data from the defaults would
    otherwise end in a shape error. Returns the config and a note when changed. With ``explicit`` (the
    user set ``task_loss`` themselves), a loss that does not fit is a ConfigError instead of a change.
    The dashboard's Train page and ``decalign train`` both decide here.
    """
    loss = config.train.task_loss
    if task == "classification" and loss != "cross_entropy":
        new = "cross_entropy"
    elif task == "regression" and loss == "cross_entropy":
        new = "mse"
    else:
        return config, None
    if explicit:
        raise ConfigError(f"task_loss {loss} does not fit {task} data; use {new}"
                          + (" (or mse, l1, smooth_l1)" if new == "mse" else ""))
    return config.override([f"train.task_loss={new}"]), f"task_loss {loss} -> {new} for {task} data"


def main_loss(prediction: torch.Tensor, labels: torch.Tensor, kind: str, class_weight: torch.Tensor | None = None,
              *, beta: float = 1.0, binary_weight: float = 0.0) -> torch.Tensor:
    """The official main loss: :func:`task_loss`, plus for regression with ``binary_weight > 0``

    ``binary_weight * mean_{i: y_i != 0} BCE-with-logits(p_i, [y_i > 0])``

    (the official ``binary_task_weight`` term of CH-SIMS: the prediction read as the logit of "positive";
    samples labelled exactly 0 do not take part, and a batch with none left adds nothing).
    """
    loss = task_loss(prediction, labels, kind, class_weight, beta=beta)
    if kind == "cross_entropy" or binary_weight <= 0:
        return loss
    value, target = prediction.reshape(-1), labels.to(prediction.dtype).reshape(-1)
    nonzero = target != 0
    if not bool(nonzero.any()):
        return loss
    return loss + binary_weight * F.binary_cross_entropy_with_logits(value[nonzero], (target[nonzero] > 0).to(value.dtype))


def contrastive_groups(labels: torch.Tensor, task: str, objective: str = "official") -> torch.Tensor:
    """Group ids that decide positive pairs: the class for classification; for regression the official
    seven bins ``round(clip(y, -3, 3)) + 3`` (objective ``official``) or ``sign(y)`` (``studio``)."""
    if task == "classification":
        return labels.long()
    if objective == "official":
        return torch.round(labels.clamp(-3.0, 3.0)).long() + 3
    return torch.sign(labels).long()


def supervised_contrastive_loss(features: torch.Tensor, groups: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    r"""Objective ``studio``: supervised contrastive loss (Khosla et al., 2020, the "L_out" form).

    With ``z_i = f_i / ||f_i||`` and ``s_ij = z_i . z_j / tau``, for each anchor i with positives
    ``P(i) = {p != i : g_p = g_i}``:

    .. math:: L_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log \frac{\exp s_{ip}}{\sum_{a \ne i} \exp s_{ia}}

    and the loss is the mean of ``L_i`` over the anchors that have at least one positive. When no anchor
    has a positive (e.g. a batch of one sample, or every label different) it is 0, still attached to
    ``features`` so that ``backward`` works.

    Parameters
    ----------
    features : (N, D) embeddings (here the head input ``branch_inputs``).
    groups : (N,) integer group of each sample.
    temperature : tau > 0.
    """
    n = features.shape[0]
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature  # (N, N)
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)
    positive = (groups.unsqueeze(0) == groups.unsqueeze(1)) & ~self_mask  # (N, N)
    counts = positive.sum(1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    mean_pos = (log_prob * positive).sum(1)[anchors] / counts[anchors]
    return -mean_pos.mean()


def official_contrastive_loss(features: torch.Tensor, groups: torch.Tensor,
                              temperature: float = 0.1) -> torch.Tensor:
    """Objective ``official``: the official SupCon form; the same loss as :func:`supervised_contrastive_loss`
    except that the denominator is floored at 1e-8.

    ``s_ij = z_i . z_j / tau`` minus each row's (detached) maximum; ``log_prob_ij = s_ij - log max(sum_{a != i}
    exp s_ia, 1e-8)``; the loss is minus the mean over anchors with a positive of the mean of
    ``log_prob`` over their positives, and 0 when no anchor has one.
    """
    n = features.shape[0]
    z = F.normalize(features, dim=1)
    logits = z @ z.T / temperature
    others = ~torch.eye(n, dtype=torch.bool, device=features.device)
    positive = (groups.unsqueeze(0) == groups.unsqueeze(1)) & others
    anchors = positive.sum(1) > 0
    if not bool(anchors.any()):
        return features.sum() * 0.0
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    denominator = (torch.exp(logits) * others).sum(1, keepdim=True).clamp_min(1e-8)
    mean_pos = ((logits - torch.log(denominator)) * positive).sum(1) / positive.sum(1).clamp_min(1)
    return -mean_pos[anchors].mean()


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights ``w_c = N / (C * n_c)``; a class absent from ``labels`` gets 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def total_loss(output: DecAlignOutput, labels: torch.Tensor, config: TrainConfig, task: str,
               class_weight: torch.Tensor | None = None, *, local_scale: float = 1.0, gather=None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted training objective (module docstring) and its unweighted terms.

    ``output`` must carry ``alignment`` (run the model with ``align=True``); its objective also picks the
    contrastive form and groups (official: seven rounded label bins; studio: the sign). Returns the
    total and a dict with the keys of ``LOSS_TERMS`` (``task`` = the main loss, ``heterogeneity`` =
    transport + local, ``homogeneity`` = moments + MMD); the contrastive term is computed only when
    ``ct_weight`` is non-zero.

    Distributed training (``decalign.train.distributed``): the per-sample terms (task, decoupling) are
    multiplied by ``local_scale = W * n_local / n_global`` in the total, and ``gather`` joins every rank's
    rows so the contrastive term sees the global batch, as the alignment levels already do.
    """
    gather = gather or (lambda x: x)
    if output.alignment is None:
        raise ValueError("total_loss needs the alignment levels: run the model with align=True")
    levels = output.alignment
    terms = {
        "task": main_loss(output.prediction, labels, config.task_loss, class_weight, beta=config.smooth_l1_beta,
                          binary_weight=config.binary_task_weight),
        "decoupling": levels.decoupling,
        "heterogeneity": levels.heterogeneity,
        "homogeneity": levels.homogeneity,
    }
    contrastive = official_contrastive_loss if levels.objective == "official" else supervised_contrastive_loss
    terms["contrastive"] = (
        contrastive(gather(output.branch_inputs), contrastive_groups(gather(labels), task, levels.objective),
                    config.ct_temperature)
        if config.ct_weight else output.prediction.new_zeros(())
    )
    per_sample = terms["task"] + config.dec_loss_weight * terms["decoupling"]
    total = (local_scale * per_sample + config.alpha * terms["heterogeneity"]
             + config.beta * terms["homogeneity"] + config.ct_weight * terms["contrastive"])
    return total, {"total": total, **terms}
