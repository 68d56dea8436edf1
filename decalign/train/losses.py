"""Training losses as plain functions: the task loss, supervised contrastive loss and the weighted total.

The objective of one batch is

    L = L_task + w_dec * L_dec + alpha * (L_transport + L_local) + beta * (L_moment + L_mmd) + w_ct * L_supcon

with the five alignment levels taken from ``DecAlignOutput.alignment`` and the weights from ``TrainConfig``
(``dec_loss_weight``, ``alpha``, ``beta``, ``ct_weight``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, DecAlignConfig, TrainConfig
from ..model import DecAlignOutput

LOSS_TERMS = ("total", "task", "decoupling", "heterogeneity", "homogeneity", "contrastive")


def task_loss(prediction: torch.Tensor, labels: torch.Tensor, kind: str,
              class_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Supervised loss of the head's output.

    Parameters
    ----------
    prediction : (N, 1) regression values or (N, C) class logits.
    labels : (N,) float targets or int64 class ids.
    kind : ``mse`` (mean (p - y)^2), ``l1`` (mean |p - y|), ``smooth_l1`` (Huber with delta 1) or
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
        return F.smooth_l1_loss(value, target)
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


def contrastive_groups(labels: torch.Tensor, task: str) -> torch.Tensor:
    """Group ids that decide positive pairs: the class for classification, ``sign(y)`` for regression."""
    return labels.long() if task == "classification" else torch.sign(labels).long()


def supervised_contrastive_loss(features: torch.Tensor, groups: torch.Tensor,
                                temperature: float = 0.1) -> torch.Tensor:
    r"""Supervised contrastive loss (Khosla et al., 2020, the "L_out" form).

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


def balanced_class_weight(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights ``w_c = N / (C * n_c)``; a class absent from ``labels`` gets 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def total_loss(output: DecAlignOutput, labels: torch.Tensor, config: TrainConfig, task: str,
               class_weight: torch.Tensor | None = None, *, local_scale: float = 1.0, gather=None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted training objective (module docstring) and its unweighted terms.

    ``output`` must carry ``alignment`` (run the model with ``align=True``). Returns the total and a
    dict with the keys of ``LOSS_TERMS`` (``heterogeneity`` = transport + local, ``homogeneity`` =
    moments + MMD); the contrastive term is computed only when ``ct_weight`` is non-zero.

    Distributed training (``decalign.train.distributed``): the per-sample terms (task, decoupling) are
    multiplied by ``local_scale = W * n_local / n_global`` in the total, and ``gather`` joins every rank's
    rows so the contrastive term sees the global batch, as the alignment levels already do.
    """
    gather = gather or (lambda x: x)
    if output.alignment is None:
        raise ValueError("total_loss needs the alignment levels: run the model with align=True")
    levels = output.alignment
    terms = {
        "task": task_loss(output.prediction, labels, config.task_loss, class_weight),
        "decoupling": levels.decoupling,
        "heterogeneity": levels.heterogeneity,
        "homogeneity": levels.homogeneity,
    }
    terms["contrastive"] = (
        supervised_contrastive_loss(gather(output.branch_inputs), contrastive_groups(gather(labels), task),
                                    config.ct_temperature)
        if config.ct_weight else output.prediction.new_zeros(())
    )
    per_sample = terms["task"] + config.dec_loss_weight * terms["decoupling"]
    total = (local_scale * per_sample + config.alpha * terms["heterogeneity"]
             + config.beta * terms["homogeneity"] + config.ct_weight * terms["contrastive"])
    return total, {"total": total, **terms}
