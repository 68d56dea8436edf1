"""Small model configurations and random batches shared by the model-library tests."""

from __future__ import annotations

import torch

from decalign.config import ModelConfig

WIDTHS = {"text": 12, "audio": 5, "vision": 7}


def small_config(**overrides) -> ModelConfig:
    """A tiny model (d=8, 2 heads, 1 layer, 3 prototypes) so a forward pass costs milliseconds."""
    base = {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3, "pde_dim": 6}
    base.update(overrides)
    return ModelConfig(**base)


def random_inputs(widths: dict[str, int], lengths: dict[str, int] | int = 5, batch: int = 6,
                  seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """modality -> (batch, T_m, D_m) standard-normal features from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    steps = lengths if isinstance(lengths, dict) else {m: lengths for m in widths}
    return {m: torch.randn(batch, steps[m], w, generator=g, dtype=dtype) for m, w in widths.items()}
