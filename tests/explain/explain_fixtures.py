"""A small DecAlign trained briefly on the bundled UCI digits, shared by the explain and audit tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from decalign.checkpoint import ModelCard
from decalign.config import DecAlignConfig, ModelConfig
from decalign.data import iterate_batches, load_dataset
from decalign.model import DecAlign

DIGITS = Path(__file__).resolve().parents[2] / "assets" / "uci_digits.npz"


def small_config() -> DecAlignConfig:
    model = ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=3, pde_dim=8,
                        attn_dropout=0.0, relu_dropout=0.0, embed_dropout=0.0, res_dropout=0.0)
    return DecAlignConfig(model=model)


def digits(max_per_split: int = 300):
    """The digits dataset with each split cut to ``max_per_split`` samples (fast tests)."""
    ds = load_dataset(DIGITS)
    ds.splits = {name: s.subset(np.arange(min(len(s), max_per_split))) for name, s in ds.splits.items()}
    return ds


def train_small(ds, steps: int = 120, seed: int = 0) -> tuple[DecAlign, ModelCard]:
    """A few Adam steps on the cross-entropy only; enough for clearly better-than-chance accuracy."""
    torch.manual_seed(seed)
    config = small_config()
    model = DecAlign(config.model, ds.widths, ds.num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = ds.splits["train"]
    step = 0
    while step < steps:
        for batch in iterate_batches(train, 64, shuffle=True, seed=step):
            loss = F.cross_entropy(model(batch.inputs, align=False).prediction, batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    model.eval()
    card = ModelCard(config=config, widths=ds.widths, task=ds.task, output_dim=ds.num_classes,
                     seq_lens={m: t for m, (t, _) in ds.modalities.items()}, num_classes=ds.num_classes,
                     class_names=[str(i) for i in range(ds.num_classes)], data_source=str(DIGITS))
    return model, card


def regression_copy(ds):
    """The same features with a regression label in [-3, 3] (digit value mapped linearly)."""
    out = replace(ds, task="regression", num_classes=None)
    out.splits = {n: replace(s, labels=(s.labels.astype(np.float32) / 3.0 - 1.5).astype(np.float32))
                  for n, s in ds.splits.items()}
    return out
