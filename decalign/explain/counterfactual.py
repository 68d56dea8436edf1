"""What-if analysis for one sample: drop a modality (replace it with the training mean) or swap it in
from another sample, re-run the model, and compare prediction, prototype assignment and transport cell.

The "transport cell" of a sample is the tuple of its most likely prototype in every modality: the cell
of the joint multi-marginal plan it falls in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data.dataset import Split
from ..model import DecAlign, Prototypes, posteriors
from ..train.reference import TrainingReference


def sample_inputs(split: Split, row: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(1, T, D) inputs and (1,) lengths of one sample of ``split`` (BERT tokens stay integers)."""
    if not isinstance(row, (int, np.integer)) or isinstance(row, bool) or not 0 <= row < len(split):
        raise IndexError(f"row must be an integer in [0, {len(split)}), found {row!r}")
    inputs = {m: torch.as_tensor(x[row:row + 1], device=device, dtype=None if x.dtype.kind in "iu" else dtype)
              for m, x in split.features.items()}
    lengths = {m: torch.as_tensor(split.lengths[m][row:row + 1], device=device) for m in split.lengths}
    return inputs, lengths


def fit_to_length(mean: np.ndarray, steps: int) -> np.ndarray:
    """Crop a (T_ref, D) mean input to ``steps``; if shorter, pad with its average over time."""
    if len(mean) >= steps:
        return mean[:steps]
    pad = np.repeat(mean.mean(0, keepdims=True), steps - len(mean), axis=0)
    return np.concatenate([mean, pad])


def evaluate(model: DecAlign, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None,
             prototypes: dict[str, Prototypes]) -> tuple[np.ndarray, dict[str, int]]:
    """Model output (out,) and the most likely prototype per modality for a single sample."""
    output, assigned, _ = _run(model, inputs, lengths, prototypes)
    return output, assigned


def _run(model, inputs, lengths, prototypes) -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    """(output (out,), prototype per modality, head input (2*M*d,)) of a single sample."""
    model.eval()
    with torch.inference_mode():
        out = model(inputs, lengths or None)
        assigned = {}
        for m, pooled in out.unique_pooled.items():
            p = prototypes[m]
            proto = Prototypes(p.means.to(pooled), p.variances.to(pooled), p.weights.to(pooled))
            assigned[m] = int(posteriors(pooled, proto)[0].argmax())
    return (out.prediction[0].double().cpu().numpy(), assigned,
            out.branch_inputs[0].double().cpu().numpy())


def modality_parts(model: DecAlign, head_input: np.ndarray, output: int) -> dict[str, float]:
    """modality -> its net part of head output ``output``: the unique plus the common branch term
    (the head input is ``[unique_1..M, common_1..M]``, each d wide)."""
    weight = model.head.weight.detach().double().cpu().numpy()[output]
    mods = model.modalities
    d = len(head_input) // (2 * len(mods))
    term = lambda i: float(head_input[i * d:(i + 1) * d] @ weight[i * d:(i + 1) * d])
    return {m: term(i) + term(len(mods) + i) for i, m in enumerate(mods)}


def modality_counterfactuals(model: DecAlign, split: Split, row: int, reference: TrainingReference, *,
                             swap_row: int | None = None,
                             prototypes: dict[str, Prototypes] | None = None) -> pd.DataFrame:
    """Drop (and optionally swap) each modality of sample ``row`` and re-run the model.

    Columns: modality, change ("drop" | "swap"), prediction_before, prediction_after, delta, then
    ``prototype_before:<m>`` / ``prototype_after:<m>`` for every modality, cell_before, cell_after.
    For regression ``delta`` is the change of the predicted value; for classification it is the change
    in the probability of the class predicted before the change (predictions are class indices).

    Then what explains a change, all of the output explained before the change (the predicted class's
    logit, or the value): ``score_before``/``score_after``; ``part_before``/``part_after``, the changed
    modality's own net part of it (unique plus common branch term, ``modality_parts``); and for
    classification ``margin_after``, that class's logit minus the best other logit after the change, and
    ``probability_before``, its probability before (``probability_before + delta`` after).
    """
    prototypes = reference.prototypes if prototypes is None else prototypes
    device = next(model.parameters()).device
    inputs, lengths = sample_inputs(split, row, device)
    swap = None if swap_row is None else sample_inputs(split, swap_row, device)
    base = _run(model, inputs, lengths, prototypes)
    records = []
    for m in model.modalities:
        changes = {"drop": _dropped(inputs, lengths, m, reference, device)}
        if swap is not None:
            changes["swap"] = ({**inputs, m: swap[0][m]}, {**lengths, **({m: swap[1][m]} if m in swap[1] else {})})
        for change, (new_inputs, new_lengths) in changes.items():
            after = _run(model, new_inputs, new_lengths, prototypes)
            records.append(_record(model, m, change, base, after))
    return pd.DataFrame.from_records(records)


def _dropped(inputs, lengths, modality, reference, device):
    steps = inputs[modality].shape[1]
    mean = fit_to_length(reference.input_means[modality], steps)
    # BERT tokens are replaced by the training mean of the BERT's output, which the model takes as is
    dtype = inputs[modality].dtype if inputs[modality].is_floating_point() else torch.float32
    replaced = torch.as_tensor(mean[None], device=device, dtype=dtype)
    new_lengths = dict(lengths)
    if modality in new_lengths:  # the mean input is valid at every step
        new_lengths[modality] = torch.full_like(new_lengths[modality], steps)
    return {**inputs, modality: replaced}, new_lengths


def _record(model, modality, change, base_run, after_run) -> dict:
    (base, base_cell, base_h), (after, cell, after_h) = base_run, after_run
    regression = base.shape[0] == 1
    if regression:
        before_pred, after_pred, delta = float(base[0]), float(after[0]), float(after[0] - base[0])
    else:
        cls = int(base.argmax())
        before_pred, after_pred = cls, int(after.argmax())
        delta = float(_softmax(after)[cls] - _softmax(base)[cls])
    record = {"modality": modality, "change": change, "prediction_before": before_pred,
              "prediction_after": after_pred, "delta": delta}
    for m in base_cell:
        record[f"prototype_before:{m}"] = base_cell[m]
        record[f"prototype_after:{m}"] = cell[m]
    record["cell_before"] = tuple(base_cell.values())
    record["cell_after"] = tuple(cell.values())
    out = 0 if regression else int(base.argmax())
    record["score_before"], record["score_after"] = float(base[out]), float(after[out])
    record["part_before"] = modality_parts(model, base_h, out)[modality]
    record["part_after"] = modality_parts(model, after_h, out)[modality]
    record["margin_after"] = np.nan if regression else float(after[out] - np.delete(after, out).max())
    record["probability_before"] = np.nan if regression else float(_softmax(base)[out])
    return record


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()
