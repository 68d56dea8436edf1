"""The names of the values a training batch records: the columns of a run's history, the Train page's and the
Overview's curves. Kept apart from the model and the trainer so that pages which only read histories do not
import torch."""

from __future__ import annotations

LOSS_KEYS = ("total", "task", "contrastive")  # the loss values recorded per batch and epoch
# The five alignment levels, in the order of the paper (``decalign.model.AlignmentLevels`` holds their values).
ALIGNMENT_LEVELS = ("decoupling", "prototype_transport", "sample_to_prototype", "moment_matching", "mmd")
