"""Mini-batches of one split as torch tensors: index the numpy arrays, then ``torch.from_numpy``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import Split


@dataclass
class Batch:
    """One mini-batch; ``index`` holds the rows of the split it was taken from."""

    inputs: dict[str, torch.Tensor]  # name -> (B, T, D) float32
    labels: torch.Tensor | None  # (B,) float32 (regression) or int64 (classification)
    lengths: dict[str, torch.Tensor]  # name -> (B,) int64 valid steps; T where the split records none
    index: np.ndarray  # (B,) int64

    def __len__(self) -> int:
        return len(self.index)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[Batch]:
    """Yield batches covering every sample of ``split`` once (the last one may be smaller).

    Parameters
    ----------
    shuffle
        Visit the samples in a random order drawn from ``np.random.default_rng(seed)``; otherwise in order.
    seed
        Seed of that order (``None``: a fresh one each call).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, found {batch_size}")
    n = len(split)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    lengths = {
        m: split.lengths.get(m, np.full(n, x.shape[1], dtype=np.int64)) for m, x in split.features.items()
    }
    for start in range(0, n, batch_size):
        # Fancy indexing copies, so a consumer changing a batch in place cannot change the dataset.
        index = order[start : start + batch_size].astype(np.int64)
        yield Batch(
            inputs={m: _tensor(x[index], device) for m, x in split.features.items()},
            labels=None if split.labels is None else _tensor(split.labels[index], device),
            lengths={m: _tensor(v[index], device) for m, v in lengths.items()},
            index=index,
        )


def _tensor(array: np.ndarray, device: str | torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device)
