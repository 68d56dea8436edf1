"""Explanations: pure functions from a model, a split and its inference result to DataFrames.

Start with :func:`branch_contributions` (exact, the head is linear) and :class:`TrainingReference`
(what the training set looked like, saved beside a checkpoint). Then: :func:`modality_counterfactuals`
(drop / swap a modality), :func:`integrated_gradients` (time steps x features), :func:`cross_modal_attention`,
:func:`prototype_story` and :func:`plain_summary`.
"""

from .attention import attention_to_modalities, cross_modal_attention
from .attributions import (
    IGResult,
    attribution_by_modality,
    attribution_over_time,
    attribution_per_feature,
    integrated_gradients,
)
from .contributions import branch_contributions
from .counterfactual import modality_counterfactuals
from .reference import (
    TrainingReference,
    build_reference,
    load_reference,
    prototype_distance,
    save_reference,
    training_plan,
)
from .story import PrototypeStory, prototype_story
from .summary import plain_summary

__all__ = [
    "IGResult", "PrototypeStory", "TrainingReference", "attention_to_modalities", "attribution_by_modality",
    "attribution_over_time", "attribution_per_feature", "branch_contributions", "build_reference",
    "cross_modal_attention", "integrated_gradients", "load_reference",
    "modality_counterfactuals", "plain_summary", "prototype_distance", "prototype_story", "save_reference",
    "training_plan",
]
