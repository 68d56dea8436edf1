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


@dataclass
class PrototypeStory:
    assignments: pd.DataFrame  # modality, prototype, posterior (top 3 per modality, most likely first)
    nearest: pd.DataFrame  # modality, prototype, train_id, label, raw_text, distance
    plan_cells: pd.DataFrame  # modality_a, prototype_a, modality_b, prototype_b, mass, share_of_row


def prototype_story(model: DecAlign, card: ModelCard, split: Split, row: int, reference: TrainingReference,
                    k_nearest: int = 5, *, plan: TransportResult | None = None) -> PrototypeStory:
    """Explain sample ``row`` through the training prototypes.

    ``nearest`` lists, per modality, the ``k_nearest`` training samples closest (Euclidean, pooled
    unique features) to this one among those assigned to the same prototype (all training samples if
    fewer share it). ``plan_cells`` reads the training plan (``training_plan``; pass ``plan`` to reuse a
    cached one) at the pair of prototypes the sample is assigned to, for every modality pair: ``mass`` is
    the plan entry and ``share_of_row`` the fraction of prototype_a's mass sent to prototype_b.
    """
    device = next(model.parameters()).device
    inputs, lengths = sample_inputs(split, row, device)
    model.eval()
    with torch.inference_mode():
        pooled = {m: v.double().cpu() for m, v in model(inputs, lengths or None).unique_pooled.items()}
    post = {m: _posteriors(pooled[m], reference.prototypes[m])[0] for m in pooled}
    if plan is None:
        plan = training_plan(reference, card.config.model)
    top = {m: int(p.argmax()) for m, p in post.items()}
    return PrototypeStory(_assignments(post), _nearest(pooled, top, reference, k_nearest),
                          plan_cells(plan.pair_plans(), top))


def _posteriors(x: torch.Tensor, p: Prototypes) -> np.ndarray:
    return posteriors(x, Prototypes(p.means.double(), p.variances.double(), p.weights.double())).numpy()


def _assignments(post: dict[str, np.ndarray], top: int = 3) -> pd.DataFrame:
    records = [(m, int(k), float(p[k])) for m, p in post.items() for k in np.argsort(-p)[:top]]
    return pd.DataFrame.from_records(records, columns=["modality", "prototype", "posterior"])


def _nearest(pooled, top, reference: TrainingReference, k: int) -> pd.DataFrame:
    records = []
    for m, x in pooled.items():
        train = reference.train_unique[m].astype(np.float64)
        assigned = _posteriors(torch.from_numpy(train), reference.prototypes[m]).argmax(1)
        pool = np.flatnonzero(assigned == top[m])
        if len(pool) < k:
            pool = np.arange(len(train))
        dist = np.linalg.norm(train[pool] - x[0].numpy(), axis=1)
        for i in pool[np.argsort(dist)[:k]]:
            records.append((m, top[m], str(reference.train_ids[i]),
                            None if reference.train_labels is None else reference.train_labels[i].item(),
                            None if reference.train_raw_text is None else str(reference.train_raw_text[i]),
                            float(np.linalg.norm(train[i] - x[0].numpy()))))
    return pd.DataFrame.from_records(records, columns=["modality", "prototype", "train_id", "label", "raw_text",
                                                        "distance"])


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
