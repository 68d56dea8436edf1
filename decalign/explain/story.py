"""The prototype story of one sample: which typical patterns it resembles in each modality, which
training samples are most like it, and which cells of the training transport plan it falls in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..checkpoint import ModelCard
from ..data.dataset import Split
from ..model import DecAlign, Prototypes, TransportResult, posteriors
from ..train.reference import TrainingReference, training_plan
from .counterfactual import sample_inputs

NEAREST_COLUMNS = ["modality", "prototype", "train_id", "label", "raw_text", "distance", "same_prototype",
                   "same_answer"]
SIMILAR_SCORE = 1 / 12  # regression: a label within this share of the label range "gives the same answer"


@dataclass
class PrototypeStory:
    assignments: pd.DataFrame  # modality, prototype, posterior (top 3 per modality, most likely first)
    nearest: pd.DataFrame  # NEAREST_COLUMNS, per modality the matching examples first
    plan_cells: pd.DataFrame  # modality_a, prototype_a, modality_b, prototype_b, mass, share_of_row
    prediction: float | int  # the sample's prediction (class index or value), what "same_answer" compares with
    answer_tolerance: float | None = None  # regression: |label - prediction| at most this is the same answer


def prototype_story(model: DecAlign, card: ModelCard, split: Split, row: int, reference: TrainingReference,
                    k_nearest: int = 5, *, plan: TransportResult | None = None) -> PrototypeStory:
    """Explain sample ``row`` through the training prototypes.

    ``nearest`` lists, per modality, up to ``k_nearest`` training samples by Euclidean distance of pooled
    unique features: first those assigned to the same prototype *and* giving the same answer as this
    sample's prediction (the same class; for regression a label within ``SIMILAR_SCORE`` of the label
    range), then the rest of that prototype, then any others; the columns ``same_prototype`` and
    ``same_answer`` say which is which (``same_answer`` is False without training labels).
    ``plan_cells`` reads the training plan (``training_plan``; pass ``plan`` to reuse a cached one) at the
    pair of prototypes the sample is assigned to, for every modality pair: ``mass`` is the plan entry and
    ``share_of_row`` the fraction of prototype_a's mass sent to prototype_b.
    """
    device = next(model.parameters()).device
    inputs, lengths = sample_inputs(split, row, device)
    model.eval()
    with torch.inference_mode():
        out = model(inputs, lengths or None)
    pooled = {m: v.double().cpu() for m, v in out.unique_pooled.items()}
    output = out.prediction[0].double().cpu().numpy()
    prediction = float(output[0]) if card.task == "regression" else int(output.argmax())
    tolerance = _answer_tolerance(card, reference)
    post = {m: _posteriors(pooled[m], reference.prototypes[m])[0] for m in pooled}
    if plan is None:
        plan = training_plan(reference, card.config.model)
    top = {m: int(p.argmax()) for m, p in post.items()}
    agrees = _agrees(reference.train_labels, prediction, tolerance)
    return PrototypeStory(_assignments(post), _nearest(pooled, top, reference, k_nearest, agrees),
                          plan_cells(plan.pair_plans(), top), prediction, tolerance)


def _answer_tolerance(card: ModelCard, reference: TrainingReference) -> float | None:
    if card.task != "regression":
        return None
    if card.label_range:
        lo, hi = card.label_range
    elif reference.train_labels is not None and len(reference.train_labels):
        lo, hi = float(np.min(reference.train_labels)), float(np.max(reference.train_labels))
    else:
        return None
    return SIMILAR_SCORE * (float(hi) - float(lo))


def _agrees(labels: np.ndarray | None, prediction, tolerance: float | None) -> np.ndarray | None:
    """(N_train,) whether each training label is the same answer as ``prediction``; None without labels."""
    if labels is None:
        return None
    if tolerance is None:
        return np.asarray(labels).astype(np.int64) == int(prediction)
    return np.abs(np.asarray(labels, dtype=np.float64) - float(prediction)) <= tolerance


def _posteriors(x: torch.Tensor, p: Prototypes) -> np.ndarray:
    return posteriors(x, Prototypes(p.means.double(), p.variances.double(), p.weights.double())).numpy()


def _assignments(post: dict[str, np.ndarray], top: int = 3) -> pd.DataFrame:
    records = [(m, int(k), float(p[k])) for m, p in post.items() for k in np.argsort(-p)[:top]]
    return pd.DataFrame.from_records(records, columns=["modality", "prototype", "posterior"])


def _nearest(pooled, top, reference: TrainingReference, k: int, agrees: np.ndarray | None) -> pd.DataFrame:
    records = []
    for m, x in pooled.items():
        train = reference.train_unique[m].astype(np.float64)
        same_proto = _posteriors(torch.from_numpy(train), reference.prototypes[m]).argmax(1) == top[m]
        same_answer = agrees if agrees is not None else np.zeros(len(train), bool)
        dist = np.linalg.norm(train - x[0].numpy(), axis=1)
        # matching examples first, then the rest of the prototype, then the others; nearest first in each
        order = np.lexsort((dist, ~(same_proto & same_answer), ~same_proto))[:k]
        for i in order:
            records.append((m, top[m], str(reference.train_ids[i]),
                            None if reference.train_labels is None else reference.train_labels[i].item(),
                            None if reference.train_raw_text is None else str(reference.train_raw_text[i]),
                            float(dist[i]), bool(same_proto[i]), bool(same_answer[i])))
    return pd.DataFrame.from_records(records, columns=NEAREST_COLUMNS)


def plan_cells(pair_plans: dict[tuple[str, str], torch.Tensor | np.ndarray], cells: dict[str, int]) -> pd.DataFrame:
    """The cell of every two-modality plan that joins a sample's prototypes (``cells``: modality -> k).

    ``mass`` is the plan entry ``P_ab[k_a, k_b]``; ``share_of_row`` is ``P_ab[k_a, k_b] / sum_l P_ab[k_a, l]``,
    the fraction of prototype k_a's mass sent to k_b (0 for a row without mass).
    """
    records = []
    for (a, b), pair in pair_plans.items():
        pair = pair.detach().cpu().double().numpy() if isinstance(pair, torch.Tensor) else np.asarray(pair, float)
        ka, kb = cells[a], cells[b]
        row_mass = pair[ka].sum()
        records.append((a, ka, b, kb, float(pair[ka, kb]), float(pair[ka, kb] / row_mass) if row_mass > 0 else 0.0))
    return pd.DataFrame.from_records(records, columns=["modality_a", "prototype_a", "modality_b", "prototype_b",
                                                        "mass", "share_of_row"])
