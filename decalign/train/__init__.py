"""Training: losses, the loop with checkpoints and resume, callbacks, and evaluation metrics.

Start with :func:`train`; progress and cancellation go through :class:`Callback`.
"""

from .callbacks import Callback, CallbackList, TqdmCallback
from .finalize import evaluate_split, fit_training_prototypes, predict_outputs, training_alignment
from .losses import (
    balanced_class_weight,
    contrastive_groups,
    main_loss,
    official_contrastive_loss,
    supervised_contrastive_loss,
    task_loss,
    total_loss,
)
from .runs import RunError, read_history, read_status
from .selection import scheduler_rule, selection_rule
from .trainer import BATCH_KEYS, Trainer, TrainResult, epoch_seed, seed_everything, train

__all__ = [
    "BATCH_KEYS", "Callback", "CallbackList", "RunError", "TqdmCallback", "TrainResult", "Trainer",
    "balanced_class_weight", "contrastive_groups", "epoch_seed", "evaluate_split", "fit_training_prototypes",
    "main_loss", "official_contrastive_loss", "predict_outputs", "read_history", "read_status", "scheduler_rule", "seed_everything", "selection_rule",
    "supervised_contrastive_loss", "task_loss", "total_loss", "train", "training_alignment",
]
