"""Settings chosen from the data, for training without a configuration file.

The library's defaults (``decalign.config``) are the official MOSI settings: five layers, a learning rate
of 2e-4, 50 epochs of batches of 32. On a few thousand samples of other data they under-train. When no
configuration file is given (``decalign train`` without ``--config``, the Train page's "chosen from the
data"), :func:`data_defaults` picks these from the number of training samples n, the task and the
number of classes C; everything else keeps the library default. The rule, in full:

==================  ===========================================================================
setting             rule
==================  ===========================================================================
d_model, heads      32 and 4 when n < 2,000; 48 and 4 when n < 20,000; else 64 and 8
num_layers          2 when n < 5,000, else 3
num_prototypes      classification: C, kept within [3, 16]; regression: round(sqrt(n) / 5) within [3, 10]
batch_size          the power of two nearest n / 40, within [16, 128]
num_epochs          enough for about 3,000 optimiser steps, within [20, 100]
early_stop          patience: a fifth of the epochs, at least 10
learning_rate       1e-3 when d_model <= 48, else 5e-4
selection           the validation loss (smooth where accuracy on a small validation split ties)
task_loss           cross_entropy for classification, mse for regression
pde_dim             = d_model
==================  ===========================================================================

An official or own configuration file keeps every one of its values; ``--set`` overrides either.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .config import DecAlignConfig
from .data.dataset import MultimodalDataset

TARGET_STEPS = 3000


def data_defaults(dataset: MultimodalDataset, base: DecAlignConfig | None = None) -> DecAlignConfig:
    """The configuration the rule in the module docstring gives for ``dataset`` (from ``base``, default the
    library defaults, for every setting the rule does not choose)."""
    base = base or DecAlignConfig()
    chosen = choose_settings(len(dataset.splits["train"]), dataset.task, dataset.num_classes)
    model = replace(base.model, **chosen["model"])
    train = replace(base.train, **chosen["train"])
    return DecAlignConfig(model, train).validate()


def choose_settings(n: int, task: str, num_classes: int | None = None) -> dict[str, dict]:
    """{"model": {...}, "train": {...}}: the settings the rule chooses for ``n`` training samples."""
    if n < 1:
        raise ValueError(f"data-driven defaults need training samples, found {n}")
    d, heads = (32, 4) if n < 2000 else (48, 4) if n < 20000 else (64, 8)
    if task == "classification":
        prototypes = min(max(int(num_classes or 2), 3), 16)
    else:
        prototypes = min(max(round(math.sqrt(n) / 5), 3), 10)
    batch = min(max(2 ** round(math.log2(max(n / 40, 1))), 16), 128)
    steps_per_epoch = math.ceil(n / batch)
    epochs = min(max(math.ceil(TARGET_STEPS / steps_per_epoch), 20), 100)
    model = {"d_model": d, "num_heads": heads, "num_layers": 2 if n < 5000 else 3, "num_prototypes": prototypes,
             "pde_dim": d}
    train = {"batch_size": batch, "num_epochs": epochs, "early_stop_patience": max(10, epochs // 5),
             "learning_rate": 1e-3 if d <= 48 else 5e-4, "selection_metric": "loss",
             "task_loss": "cross_entropy" if task == "classification" else "mse"}
    return {"model": model, "train": train}


def describe(config: DecAlignConfig) -> str:
    """One line naming the settings the rule chooses, as the CLI prints them."""
    m, t = config.model, config.train
    return (f"d_model {m.d_model}, {m.num_heads} heads, {m.num_layers} layers, {m.num_prototypes} prototypes, "
            f"batch {t.batch_size}, {t.num_epochs} epochs (patience {t.early_stop_patience}), "
            f"learning rate {t.learning_rate:g}")
