"""Evaluation during training and what is computed once training ends (prototypes, alignment, metrics).

Everything here runs the model in eval mode without autograd, over a split in chunks, so memory is
bounded by one chunk's activations plus what is kept per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelCard
from ..config import DecAlignConfig
from ..data.dataset import MultimodalDataset, Split
from ..data.torch_batches import iterate_batches
from ..model import AlignmentLevels, DecAlign, Prototypes, fit_prototypes
from .baseline import fit_baseline
from .losses import main_loss
from .metrics import compute_metrics
from .reference import build_reference, save_reference

FINAL_EM_ITERS = 50  # EM steps for the prototypes stored with the model (at least)


@dataclass
class EvalArgs:
    task: str
    task_loss: str
    num_classes: int | None
    convention: str
    batch_size: int
    class_weight: torch.Tensor | None = None
    binary_task_weight: float = 0.0  # the main loss's binary term (TrainConfig.binary_task_weight)
    smooth_l1_beta: float = 1.0


def predict_outputs(model: DecAlign, split: Split, batch_size: int) -> np.ndarray:
    """(N, out) raw head outputs of every sample, in order."""
    device = next(model.parameters()).device
    model.eval()
    parts = [np.zeros((0, model.output_dim), dtype=np.float32)]
    with torch.inference_mode():
        for batch in iterate_batches(split, batch_size, shuffle=False, device=device):
            parts.append(model(batch.inputs, batch.lengths, align=False).prediction.float().cpu().numpy())
    return np.concatenate(parts)


def evaluate_split(model: DecAlign, split: Split, args: EvalArgs, shard=None) -> dict[str, float]:
    """Every metric of ``compute_metrics`` plus ``loss`` (the main loss, ``losses.main_loss``, over the whole split).

    ``shard``: in distributed training, a ``(rows, gather)`` pair: this rank predicts only ``rows`` and
    ``gather`` joins every rank's outputs in order, so all ranks compute the same metrics.
    """
    if shard is None:
        outputs = predict_outputs(model, split, args.batch_size)
    else:
        rows, gather = shard
        outputs = gather(predict_outputs(model, split.subset(rows), args.batch_size))
    weight = None if args.class_weight is None else args.class_weight.cpu()
    loss = float(main_loss(torch.from_numpy(outputs), torch.from_numpy(split.labels), args.task_loss, weight,
                           beta=args.smooth_l1_beta, binary_weight=args.binary_task_weight))
    preds = outputs[:, 0] if args.task == "regression" else outputs
    metrics = compute_metrics(args.task, preds, split.labels, num_classes=args.num_classes,
                              convention=args.convention)
    return {**metrics, "loss": loss}


def fit_training_prototypes(model: DecAlign, split: Split, config: DecAlignConfig, batch_size: int
                            ) -> dict[str, Prototypes]:
    """Gaussian-mixture prototypes per modality over the pooled unique features of the whole split.

    The EM of the model's objective (``decalign.model.fit_prototypes``) with ``max(gmm_em_iters,
    FINAL_EM_ITERS)`` steps: one fit over all samples, not per batch.
    """
    device = next(model.parameters()).device
    model.eval()
    pooled: dict[str, list[torch.Tensor]] = {m: [] for m in model.modalities}
    with torch.inference_mode():
        for batch in iterate_batches(split, batch_size, shuffle=False, device=device):
            out = model(batch.inputs, batch.lengths, align=False)
            for m in model.modalities:
                pooled[m].append(out.unique_pooled[m].float())
    c = config.model
    iters = max(c.gmm_em_iters, FINAL_EM_ITERS)
    with torch.inference_mode():
        return {m: fit_prototypes(torch.cat(parts), c, iterations=iters) for m, parts in pooled.items()}


def training_alignment(model: DecAlign, split: Split, prototypes: dict[str, Prototypes], batch_size: int
                       ) -> dict[str, float]:
    """Sample-weighted mean over chunks of each alignment level, against the fixed training prototypes."""
    device = next(model.parameters()).device
    model.eval()
    fixed = {m: Prototypes(p.means.to(device), p.variances.to(device), p.weights.to(device))
             for m, p in prototypes.items()}
    summed = torch.zeros(len(AlignmentLevels.LEVELS), device=device)
    with torch.inference_mode():
        for batch in iterate_batches(split, batch_size, shuffle=False, device=device):
            levels = model(batch.inputs, batch.lengths, align=True, prototypes=fixed).alignment
            summed += torch.stack([getattr(levels, n).float() for n in AlignmentLevels.LEVELS]) * len(batch)
    return dict(zip(AlignmentLevels.LEVELS, (summed / len(split)).tolist()))


def finish_card(model: DecAlign, card: ModelCard, dataset: MultimodalDataset, config: DecAlignConfig,
                args: EvalArgs) -> None:
    """Fill the card with the training prototypes, the training alignment, metrics per split and the linear
    baseline's (``decalign.train.baseline``)."""
    train = dataset.splits["train"]
    prototypes = fit_training_prototypes(model, train, config, args.batch_size)
    card.set_prototypes(prototypes)
    card.extra["training_alignment"] = training_alignment(model, train, prototypes, args.batch_size)
    card.metrics = {name: evaluate_split(model, split, args) for name, split in dataset.splits.items()
                    if split.labels is not None and len(split)}
    card.baseline = fit_baseline(dataset, args.convention)


def write_reference(run_dir: Path, model: DecAlign, card: ModelCard, train: Split, valid: Split | None) -> Path:
    """Save the training reference (``decalign.train.reference``) that explanations and audits compare with,
    with the validation split as its held-out part (the drift reference and the flags' calibration)."""
    return save_reference(run_dir, build_reference(model, card, train, valid))


def finish_import(run_dir: Path, convention: str, dataset: MultimodalDataset | None = None, *,
                  data_source: str | None = None, batch_size: int = 256) -> ModelCard:
    """Complete the card of imported weights (``decalign.official.import_official``): record the metric
    convention and its per-sample error, decided once here; with the data the weights were trained on, also
    its fingerprint and label range, metrics per split, the linear baseline and the explanation reference
    (training prototypes and held-out validation features), as training writes them."""
    from ..checkpoint import load_model, save_card
    from .metrics import ERRORS

    model, card = load_model(run_dir)
    card.metric_convention, card.error = convention, ERRORS[convention]
    if dataset is not None:
        card.data_fingerprint, card.data_source = dataset.fingerprint(), data_source or dataset.report.source
        dataset = card.prepare(dataset)  # a BERT model reads the text_bert tokens
        train = dataset.splits["train"]
        if card.task == "regression" and train.labels is not None and len(train.labels):
            card.label_range = [float(train.labels.min()), float(train.labels.max())]
        args = EvalArgs(card.task, card.config.train.task_loss, card.num_classes, convention, batch_size)
        card.set_prototypes(fit_training_prototypes(model, train, card.config, batch_size))
        card.metrics = {name: evaluate_split(model, split, args) for name, split in dataset.splits.items()
                        if split.labels is not None and len(split)}
        card.baseline = fit_baseline(dataset, convention)
        write_reference(run_dir, model, card, train, dataset.splits.get("valid"))
    save_card(run_dir, card)
    return card
