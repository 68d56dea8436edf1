"""Evaluation during training and what is computed once training ends (prototypes, alignment, metrics).

Everything here runs the model in eval mode without autograd, over a split in chunks, so memory is
bounded by one chunk's activations plus what is kept per sample. After training, each split is run through
the model once (:func:`final_pass`; the validation split's pass is the best epoch's own, see
:func:`evaluate_inference`): the final metrics, the training prototypes, the training alignment and the
explanation reference all read that one pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelCard
from ..config import DecAlignConfig
from ..data.dataset import MultimodalDataset, Split
from ..data.torch_batches import iterate_batches
from ..inference import InferenceResult, run_inference
from ..model import AlignmentLevels, DecAlign, Prototypes, decoupling_per_sample, fit_prototypes
from .baseline import card_baseline
from .losses import main_loss
from .metrics import compute_metrics
from .reference import build_reference, save_reference

FINAL_EM_ITERS = 50  # EM steps for the prototypes stored with the model (at least)
INFERENCE_CHUNK = 64  # samples per forward in the final pass: bounds the attention weights held at once


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
    chunk = eval_chunk(args)
    if shard is None:
        outputs = predict_outputs(model, split, chunk)
    else:
        rows, gather = shard
        outputs = gather(predict_outputs(model, split.subset(rows), chunk))
    return output_metrics(outputs, split.labels, args)


def evaluate_inference(model: DecAlign, split: Split, args: EvalArgs) -> tuple[dict[str, float], InferenceResult]:
    """:func:`evaluate_split`'s metrics together with the split's whole inference result, in the same
    chunks: the trainer keeps the best epoch's, which the final pass then reuses (:func:`final_pass`)."""
    result = run_inference(model, split, task=args.task, batch_size=eval_chunk(args))
    return output_metrics(result.outputs, split.labels, args), result


def eval_chunk(args: EvalArgs) -> int:
    """Samples per forward when evaluating: outputs do not depend on the chunking; memory does."""
    return min(args.batch_size, INFERENCE_CHUNK)


def output_metrics(outputs: np.ndarray, labels: np.ndarray, args: EvalArgs) -> dict[str, float]:
    """The metrics of :func:`evaluate_split` from the (N, out) head outputs already computed."""
    weight = None if args.class_weight is None else args.class_weight.cpu()
    loss = float(main_loss(torch.from_numpy(outputs), torch.from_numpy(labels), args.task_loss, weight,
                           beta=args.smooth_l1_beta, binary_weight=args.binary_task_weight))
    preds = outputs[:, 0] if args.task == "regression" else outputs
    metrics = compute_metrics(args.task, preds, labels, num_classes=args.num_classes, convention=args.convention)
    return {**metrics, "loss": loss}


@dataclass
class FinalPass:
    """One inference pass per split after training, shared by everything computed once training ends.

    ``results``: split name -> :class:`~decalign.inference.InferenceResult`. ``decoupling``: modality ->
    (N_train,) each training sample's decoupling value (``decoupling_per_sample``): the one
    alignment level that needs the step-wise features, kept while its chunk is in memory. ``batch_size``:
    the chunks the training alignment is averaged over (as :func:`training_alignment`).
    """

    results: dict[str, InferenceResult]
    batch_size: int
    decoupling: dict[str, np.ndarray] = field(default_factory=dict)


def final_pass(model: DecAlign, dataset: MultimodalDataset, task: str, batch_size: int,
               chunk: int = INFERENCE_CHUNK, known: dict[str, InferenceResult] | None = None) -> FinalPass:
    """Run every non-empty split through ``model`` once (eval mode, no autograd), ``chunk`` samples at a
    time: at MOSI shapes the attention weights of 256 samples alone take 150 MB.

    ``known``: results of these weights already computed in the same chunks (the best epoch's validation
    pass, see :func:`evaluate_inference`), taken as they are; not the training split, whose pass also keeps the
    decoupling values."""
    final = FinalPass({name: result for name, result in (known or {}).items() if name != "train"}, batch_size)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in model.modalities}

    def keep_decoupling(_batch, out) -> None:
        for m in model.modalities:
            parts[m].append(decoupling_per_sample(out.unique[m].float(), out.common[m].float()).double().numpy())

    for name, split in dataset.splits.items():
        if len(split) and name not in final.results:
            hook = keep_decoupling if name == "train" else None
            final.results[name] = run_inference(model, split, task=task, batch_size=chunk, on_chunk=hook)
    final.decoupling = {m: np.concatenate(v) if v else np.zeros(0) for m, v in parts.items()}
    return final


def prototypes_from_pooled(pooled: dict[str, np.ndarray], config: DecAlignConfig) -> dict[str, Prototypes]:
    """The training prototypes (see :func:`fit_training_prototypes`) from pooled unique features."""
    c = config.model
    iters = max(c.gmm_em_iters, FINAL_EM_ITERS)
    with torch.inference_mode():
        return {m: fit_prototypes(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), c, iterations=iters)
                for m, x in pooled.items()}


def pass_alignment(model: DecAlign, final: FinalPass, prototypes: dict[str, Prototypes]) -> dict[str, float]:
    """:func:`training_alignment` from the final pass: the same chunks, the same levels
    (``DecAlign.pooled_alignment``), without running the encoders again."""
    device = next(model.parameters()).device
    result, size = final.results["train"], final.batch_size
    fixed = {m: Prototypes(p.means.to(device), p.variances.to(device), p.weights.to(device))
             for m, p in prototypes.items()}
    summed = torch.zeros(len(AlignmentLevels.LEVELS), device=device)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(result), size):
            rows = slice(start, start + size)
            decoupling = {m: torch.tensor(float(v[rows].mean()), device=device) for m, v in final.decoupling.items()}
            levels = model.pooled_alignment(_rows_on(result.unique_pooled, rows, device),
                                            _rows_on(result.common_pooled, rows, device), decoupling, fixed)
            n = len(result.ids[rows])
            summed += torch.stack([getattr(levels, name).float() for name in AlignmentLevels.LEVELS]) * n
    return dict(zip(AlignmentLevels.LEVELS, (summed / len(result)).tolist()))


def fit_training_prototypes(model: DecAlign, split: Split, config: DecAlignConfig, batch_size: int
                            ) -> dict[str, Prototypes]:
    """Gaussian-mixture prototypes per modality over the pooled unique features of the whole split.

    The EM of the model's objective (``decalign.model.fit_prototypes``) with ``max(gmm_em_iters,
    FINAL_EM_ITERS)`` steps: one fit over all samples, not per batch.
    """
    task = "regression" if model.output_dim == 1 else "classification"
    return prototypes_from_pooled(run_inference(model, split, task=task, batch_size=batch_size).unique_pooled, config)


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


def _rows_on(arrays: dict[str, np.ndarray], rows: slice, device: torch.device) -> dict[str, torch.Tensor]:
    return {m: torch.from_numpy(x[rows]).to(device) for m, x in arrays.items()}


def finish_card(model: DecAlign, card: ModelCard, dataset: MultimodalDataset, config: DecAlignConfig,
                args: EvalArgs, known: dict[str, InferenceResult] | None = None) -> FinalPass:
    """Fill the card with the training prototypes, the training alignment, metrics per split and the linear
    baseline's (``decalign.train.baseline``), all from one :func:`final_pass` (``known``: as there), which is
    returned for :func:`write_reference`."""
    final = final_pass(model, dataset, args.task, args.batch_size, chunk=eval_chunk(args), known=known)
    prototypes = prototypes_from_pooled(final.results["train"].unique_pooled, config)
    card.set_prototypes(prototypes)
    card.extra["training_alignment"] = pass_alignment(model, final, prototypes)
    card.metrics = {name: output_metrics(final.results[name].outputs, split.labels, args)
                    for name, split in dataset.splits.items() if split.labels is not None and len(split)}
    card.baseline = card_baseline(dataset, args.convention)
    return final


def write_reference(run_dir: Path, model: DecAlign, card: ModelCard, train: Split, valid: Split | None,
                    final: FinalPass | None = None) -> Path:
    """Save the training reference (``decalign.train.reference``) that explanations and audits compare with,
    with the validation split as its held-out part (the drift reference and the flags' calibration).
    With ``final`` its inference results are reused instead of running the model again."""
    results = final.results if final is not None else {}
    return save_reference(run_dir, build_reference(model, card, train, valid, train_result=results.get("train"),
                                                   valid_result=results.get("valid")))


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
        card.data_fingerprint, card.data_source = dataset.file_fingerprint(), data_source or dataset.report.source
        dataset = card.prepare(dataset)  # a BERT model reads the text_bert tokens
        train = dataset.splits["train"]
        if card.task == "regression" and train.labels is not None and len(train.labels):
            card.label_range = [float(train.labels.min()), float(train.labels.max())]
        args = EvalArgs(card.task, card.config.train.task_loss, card.num_classes, convention, batch_size)
        final = final_pass(model, dataset, card.task, batch_size)
        card.set_prototypes(prototypes_from_pooled(final.results["train"].unique_pooled, card.config))
        card.metrics = {name: output_metrics(final.results[name].outputs, split.labels, args)
                        for name, split in dataset.splits.items() if split.labels is not None and len(split)}
        card.baseline = card_baseline(dataset, convention)
        write_reference(run_dir, model, card, train, dataset.splits.get("valid"), final)
    save_card(run_dir, card)
    return card
