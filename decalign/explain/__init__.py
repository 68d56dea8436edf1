"""Explanations: pure functions from a model, a split and its inference result to DataFrames.

Start with :func:`branch_contributions` (exact, the head is linear). Then: :func:`modality_counterfactuals`
(drop / swap a modality), :func:`integrated_gradients` (time steps x features), :func:`cross_modal_attention`,
:func:`prototype_story` and :func:`plain_summary`. What the training set looked like (the
``TrainingReference`` these compare with) is kept by ``decalign.train.reference``.

The names below are imported on first use, not with the package: the projection worker's child process
runs ``decalign.explain.projection`` and needs numpy and umap-learn only, not torch (2-3 s of its start,
spent while a fresh server draws its first page).
"""

from importlib import import_module

_EXPORTS = {
    "IGResult": "attributions", "integrated_gradients": "attributions", "branch_contributions": "contributions",
    "cross_modal_attention": "attention", "modality_counterfactuals": "counterfactual",
    "PrototypeStory": "story", "prototype_story": "story", "plain_summary": "summary",
}
__all__ = [
    "IGResult", "PrototypeStory", "branch_contributions", "cross_modal_attention", "integrated_gradients",
    "modality_counterfactuals", "plain_summary", "prototype_story",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
