"""Explanations: pure functions from a model, a split and its inference result to DataFrames.

Start with :func:`branch_contributions` (exact, the head is linear) and :class:`TrainingReference`
(what the training set looked like, saved beside a checkpoint).
"""

from .contributions import branch_contributions, contribution_matrix
from .reference import (
    TrainingReference,
    build_reference,
    load_reference,
    prototype_distance,
    save_reference,
    training_plan,
)

__all__ = [
    "TrainingReference", "branch_contributions", "build_reference", "contribution_matrix", "load_reference",
    "prototype_distance", "save_reference", "training_plan",
]
