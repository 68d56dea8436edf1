"""One small model trained on the demo digits, with its training reference, shared by the audit tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "explain"))

from explain_fixtures import digits, train_small

from decalign.inference import run_inference
from decalign.train.reference import build_reference


@pytest.fixture(scope="session")
def trained_digits():
    """(model, card, reference, test-split inference) — one thread, as a busy 2-core box trains fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = digits()
    model, card = train_small(ds, steps=60)
    ref = build_reference(model, card, ds.splits["train"], ds.splits["valid"])
    result = run_inference(model, ds.splits["test"], task=card.task, prototypes=ref.prototypes)
    yield model, card, ref, result
    torch.set_num_threads(threads)
