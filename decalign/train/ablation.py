"""The no-alignment twin of a run: the same data, seed and settings with every alignment weight at 0.

Trained side by side with a model (``decalign demo`` does it for the bundled demo), it shows what
DecAlign's alignment terms change in the representation: the twin still computes every alignment level
(they are recorded in its history), but none of them moves its weights.
"""

from __future__ import annotations

from ..config import DecAlignConfig

# The weights of the loss terms that align the modalities (decoupling, heterogeneity, homogeneity and the
# supervised contrastive term); only the task loss is left when they are 0.
ALIGNMENT_WEIGHTS = ("dec_loss_weight", "alpha", "beta", "ct_weight")


def without_alignment(config: DecAlignConfig) -> DecAlignConfig:
    """``config`` with every alignment weight set to 0 and nothing else changed."""
    return config.override([f"train.{name}=0" for name in ALIGNMENT_WEIGHTS])


def alignment_off(config: DecAlignConfig) -> bool:
    """Whether no alignment term can move the weights of a model trained with ``config``."""
    return all(getattr(config.train, name) == 0 for name in ALIGNMENT_WEIGHTS)
