"""The whole audit of a model on one split, as one typed result: ``decalign audit --json``, the Audit page and
the HTML report all build it with :func:`run_audit`.

What it holds: the metrics (the card's convention) and per-slice metrics, the flags and their counts, the
drift verdict per modality and overall against held-out data (``decalign.audit.drift``), the reviews of
this split's samples from the audit trail, and the linear baseline beside the model. What the reader needs
to read it rightly goes in ``notes`` (where the reference came from, why drift could not be tested).

The held-out reference is :func:`prepare_reference`'s job: the one stored with the run; for older runs the
validation split of the run's own data file (recognised by the card's data fingerprint); never the
training features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..data.dataset import MultimodalDataset
from ..explain.slices import result_metrics, slice_metrics
from ..inference import InferenceResult, run_inference
from ..model import DecAlign
from ..train.baseline import baseline_beside
from ..train.metrics import ERROR_TEXT, card_convention, card_error
from ..train.reference import TrainingReference, build_reference, with_held_out
from .drift import MIN_SAMPLES, DriftReport, drift_test
from .flags import compute_flags, flag_columns
from .store import AuditTrail
from .table import prediction_table

NO_HELD_OUT = (
    "Drift cannot be tested: this run stores no held-out (validation) features (it was trained before they "
    "were kept) and {data} is not the data it was trained on. Retrain the model (the run then stores its "
    "validation split), or audit it with the data file it was trained on: its validation split is then used."
)


@dataclass
class PreparedReference:
    """The reference an audit compares with, and what a reader must know about where it came from."""

    reference: TrainingReference | None
    notes: list[str] = field(default_factory=list)


def prepare_reference(model: DecAlign, card: ModelCard, dataset: MultimodalDataset, data_name: str,
                      stored: TrainingReference | None) -> PreparedReference:
    """The training reference with a held-out part, or the reason there is none (see the module docstring).

    * stored with held-out features: used as it is;
    * stored without (older runs): the validation split of ``dataset`` becomes the held-out part when the
      dataset is the run's own (same fingerprint as the card), or when the card records no training data
      (imported weights: assumed, and said so); else drift is left out with :data:`NO_HELD_OUT`;
    * none stored: built from the dataset's train split (and its validation split, as above), said so.
    """
    notes = []
    valid = dataset.splits.get("valid")
    usable_valid = valid is not None and len(valid) >= 2
    own = card.data_fingerprint is not None and card.data_fingerprint == dataset.file_fingerprint()
    unknown = card.data_fingerprint is None
    reference = stored
    if reference is None:
        train = dataset.splits.get("train")
        if train is None or len(train) < 2:
            missing = ("No training reference is stored with this model and the data has no train split: flags "
                       "and drift are left out.")
            return PreparedReference(None, [missing])
        reference = build_reference(model, card, train)
        notes.append(f"No training reference is stored with this model: the train split of {data_name} stands in "
                     "for the training data.")
    if reference.held_out is None and usable_valid and (own or unknown):
        source = f"the validation split of {data_name}"
        reference = with_held_out(reference, model, card, valid, source)
        notes.append(f"The held-out reference is {source}" + (
            " (the run's own data; older runs did not store it)." if own else
            ": the model card does not record its training data, so it is assumed that these samples were "
            "held out from training."))
    return PreparedReference(reference, notes)


@dataclass
class AuditResult:
    """Everything an audit says about one split; ``to_json`` is what ``decalign audit --json`` prints."""

    split: str
    data: str
    n: int
    task: str
    convention: str
    error: str
    metrics: dict[str, float] | None
    slice_by: str | None
    slices: pd.DataFrame | None
    table: pd.DataFrame
    flags: pd.DataFrame | None
    flag_counts: dict[str, int]
    thresholds_from: str | None
    drift: DriftReport | None
    drift_missing: str | None
    reviews: pd.DataFrame | None
    baseline: dict | None
    comparison: dict | None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        drift = self.drift.to_json() if self.drift is not None else {"drifted": None, "reason": self.drift_missing}
        return {
            "split": self.split, "data": self.data, "samples": self.n, "task": self.task,
            "metric_convention": self.convention, "error": self.error, "error_definition": ERROR_TEXT[self.error],
            "metrics": self.metrics,
            "slices": None if self.slices is None else {"by": self.slice_by, "rows": _records(self.slices)},
            "flags": {"counts": self.flag_counts, "flagged": int(self.flags["any_flag"].sum()) if self.flags is not None
                      else None, "thresholds_calibrated_on": self.thresholds_from},
            "drift": drift,
            "reviews": None if self.reviews is None else _records(self.reviews),
            "baseline": self.baseline, "baseline_comparison": self.comparison, "notes": list(self.notes),
        }


def run_audit(model: DecAlign, card: ModelCard, dataset: MultimodalDataset, split_name: str, *, data_name: str,
              reference: PreparedReference, result: InferenceResult | None = None,
              trail: AuditTrail | None = None, checkpoint_fingerprint: str | None = None,
              input_ids: tuple[str, ...] = (), seed: int = 0) -> AuditResult:
    """Audit ``model`` on ``dataset.splits[split_name]`` (see the module docstring).

    ``reference``: from :func:`prepare_reference`. ``result``: the split's inference when already run
    (with posteriors over the reference's prototypes, for prototype slices). ``trail``,
    ``checkpoint_fingerprint`` and ``input_ids`` (the ids the data was recorded under: its file's sha256,
    the dashboard's data id) select the reviews; without a trail there are none.
    """
    split = dataset.splits[split_name]
    ref = reference.reference
    if result is None:
        result = run_inference(model, split, task=card.task, prototypes=ref.prototypes if ref else None)
    flags = compute_flags(result, ref, card) if ref is not None else None
    slice_by = "class" if card.task == "classification" else "label_bin"
    labelled = result.labels is not None and len(result) > 0
    drift, missing = _drift(result, ref, data_name, split_name, seed)
    reviews = split_reviews(trail, checkpoint_fingerprint, input_ids, result) if trail is not None else None
    metrics = result_metrics(result, card) if labelled else None
    baseline, comparison, baseline_note = baseline_beside(card, dataset, data_name, split_name, metrics)
    notes = list(reference.notes) + ([baseline_note] if baseline_note else [])
    return AuditResult(
        split=split_name, data=data_name, n=len(result), task=card.task, convention=card_convention(card),
        error=card_error(card), metrics=metrics,
        slice_by=slice_by if labelled else None,
        slices=slice_metrics(result, flags, card, by=slice_by) if labelled else None,
        table=prediction_table(result, flags, split_name, split.raw_text, card), flags=flags,
        flag_counts={c: int(flags[c].sum()) for c in flag_columns(flags)} if flags is not None else {},
        thresholds_from=ref.thresholds_from if ref is not None else None, drift=drift, drift_missing=missing,
        reviews=reviews, baseline=baseline, comparison=comparison,
        notes=notes)


def _drift(result, ref, data_name, split_name, seed) -> tuple[DriftReport | None, str | None]:
    if ref is None:
        return None, "Drift cannot be tested without a training reference."
    if ref.held_out is None:
        return None, NO_HELD_OUT.format(data=data_name)
    if len(result) < MIN_SAMPLES:
        return None, f"Drift needs at least {MIN_SAMPLES} samples; this split has {len(result)}."
    return drift_test(result, ref.held_out, seed=seed, notes=_drift_notes(result, ref, split_name)), None


def _drift_notes(result: InferenceResult, ref: TrainingReference, split_name: str) -> list[str]:
    notes = []
    if split_name == "train":
        notes.append("These are the samples the model was trained on: their features can sit closer to what the "
                     "model learned than new data does, so a difference here says the model fitted them, not "
                     "that the data drifted.")
    held = ref.held_out
    index = {str(i): k for k, i in enumerate(result.ids)}
    rows = [index.get(str(i)) for i in held.ids]
    if rows and None not in rows:
        first = next(iter(held.unique))
        if np.allclose(result.unique_pooled[first][rows], held.unique[first], atol=1e-5):
            notes.append("This data contains the held-out reference itself, so the test compares it largely "
                         "with itself.")
    return notes


def split_reviews(trail: AuditTrail, fingerprint: str | None, input_ids, result: InferenceResult) -> pd.DataFrame:
    """The current (newest) review of every sample of ``result`` reviewed for this checkpoint under one of
    ``input_ids``, oldest first (columns of ``AuditTrail.reviews``)."""
    if fingerprint is None:
        return trail.latest_reviews().iloc[0:0]
    frames = [trail.latest_reviews(checkpoint_fingerprint=fingerprint, input_sha256=i) for i in dict.fromkeys(input_ids)]
    frames = [f for f in frames if len(f)]
    if not frames:
        return trail.latest_reviews(checkpoint_fingerprint=fingerprint).iloc[0:0]
    reviews = pd.concat(frames, ignore_index=True)
    ids = set(map(str, result.ids))
    return reviews[reviews["sample_id"].astype(str).isin(ids)].sort_values("id").reset_index(drop=True)


def _records(frame: pd.DataFrame) -> list[dict]:
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({str(k): _plain(v) for k, v in row.items()})
    return out


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
