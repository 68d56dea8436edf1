"""Fit the model's size to the data it is trained on: the number of prototypes the data can fill.

EM fits K prototypes per modality on every training batch, and the training reference fits them once on
the whole training set. With too few samples most prototypes stay empty (40 samples and K = 10 leave
about six without a member), their means are noise, and the transport plan between them says nothing.
:func:`cap_prototypes` is the one place that decides K for a training run, and says why.
"""

from __future__ import annotations

from ..config import DecAlignConfig
from ..data.dataset import MultimodalDataset

SAMPLES_PER_PROTOTYPE = 10  # over the whole training set
BATCH_ROWS_PER_PROTOTYPE = 4  # in one batch, where EM runs during training
MIN_PROTOTYPES = 2  # transport between one prototype per modality is trivial


def prototype_cap(n_train: int, batch_size: int) -> int:
    """The most prototypes ``n_train`` training samples in batches of ``batch_size`` can fill:
    ``min(n_train // 10, min(batch_size, n_train) // 4)``, at least 2."""
    rows = min(batch_size, n_train)
    return max(MIN_PROTOTYPES, min(n_train // SAMPLES_PER_PROTOTYPE, rows // BATCH_ROWS_PER_PROTOTYPE))


def cap_prototypes(config: DecAlignConfig, dataset: MultimodalDataset) -> tuple[DecAlignConfig, str | None]:
    """``config`` with ``model.num_prototypes`` capped by :func:`prototype_cap`, and a sentence saying so
    (None when the configured number fits the data)."""
    asked = config.model.num_prototypes
    n = len(dataset.splits["train"])
    cap = prototype_cap(n, config.train.batch_size)
    if asked <= cap:
        return config, None
    note = (f"{asked} prototypes per modality were asked for, but {n} training samples in batches of "
            f"{min(config.train.batch_size, n)} fill at most {cap} (at least {SAMPLES_PER_PROTOTYPE} samples per "
            f"prototype over the training set and {BATCH_ROWS_PER_PROTOTYPE} per prototype in a batch, where EM "
            f"fits them): K = {cap} is used")
    return config.override([f"model.num_prototypes={cap}"]), note
