"""Training: losses, the loop with checkpoints and resume, callbacks, and evaluation metrics.

Start with :func:`train`; progress and cancellation go through :class:`Callback`.

The names below are imported on first use: the dashboard's first page reads run histories, metrics and
background runs (``decalign.train.runs``, ``.metrics``, ``.background``) and must not pay for importing
torch, which the trainer and losses need.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "callbacks": ("Callback", "CallbackList", "TqdmCallback"),
    "finalize": ("evaluate_split", "fit_training_prototypes", "predict_outputs", "training_alignment"),
    "losses": ("balanced_class_weight", "contrastive_groups", "main_loss", "official_contrastive_loss",
               "supervised_contrastive_loss", "task_loss", "total_loss"),
    "runs": ("RunError", "read_history", "read_status"),
    "selection": ("scheduler_rule", "selection_rule"),
    "trainer": ("BATCH_KEYS", "Trainer", "TrainResult", "epoch_seed", "seed_everything", "train"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}

__all__ = [name for names in _HOME.values() for name in names]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
