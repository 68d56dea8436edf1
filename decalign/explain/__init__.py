"""Explanations: pure functions from a model, a split and its inference result to DataFrames.

Start with :func:`branch_contributions` (exact, the head is linear). Then: :func:`modality_counterfactuals`
(drop / swap a modality), :func:`integrated_gradients` (time steps x features), :func:`cross_modal_attention`,
:func:`prototype_story` and :func:`plain_summary`. What the training set looked like (the
``TrainingReference`` these compare with) is kept by ``decalign.train.reference``.
"""

from .attention import cross_modal_attention
from .attributions import IGResult, integrated_gradients
from .contributions import branch_contributions
from .counterfactual import modality_counterfactuals
from .story import PrototypeStory, prototype_story
from .summary import plain_summary

__all__ = [
    "IGResult", "PrototypeStory", "branch_contributions", "cross_modal_attention", "integrated_gradients",
    "modality_counterfactuals", "plain_summary", "prototype_story",
]
