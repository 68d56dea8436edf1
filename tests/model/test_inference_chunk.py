"""``run_inference``'s default chunk: sized to the data's shapes, and the outputs do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decalign import inference
from decalign.data import make_synthetic
from decalign.inference import inference_chunk, run_inference
from decalign.model import DecAlign
from tests.model.helpers import WIDTHS, small_config


@pytest.mark.parametrize(("d_model", "steps", "expected"), [
    (40, {"text": 50, "audio": 50, "vision": 50}, 43),  # MOSI: 2**20 // (150 * 40 * 4)
    (32, {"text": 1, "audio": 1, "vision": 16}, 256),  # the demo's shapes: the cap
    (64, {"text": 1000, "audio": 1000, "vision": 1000}, 16),  # long sequences: the floor
])
def test_the_chunk_keeps_one_activation_within_a_mebibyte(d_model, steps, expected):
    model = DecAlign(small_config(d_model=d_model), WIDTHS, 1)
    split = make_synthetic(0, 0, 3, widths=WIDTHS, seq_len=1, seed=0).splits["test"]
    split.features = {m: np.zeros((3, steps[m], WIDTHS[m]), np.float32) for m in WIDTHS}
    assert inference_chunk(model, split) == expected
    assert inference_chunk(model, split, torch.device("meta")) == 256  # not the CPU: the largest chunk


def test_the_default_chunk_is_used_and_outputs_match_one_sample_at_a_time(monkeypatch):
    torch.manual_seed(0)
    model = DecAlign(small_config(), WIDTHS, 1)
    split = make_synthetic(0, 0, 40, widths=WIDTHS, seq_len=30, seed=1).splits["test"]
    monkeypatch.setattr(inference, "CHUNK_BYTES", 30 * 3 * 8 * 4 * 16)  # 16 samples a forward: three chunks
    sizes = []
    original = inference.iterate_batches

    def spy(split_, batch_size, **kwargs):
        sizes.append(batch_size)
        return original(split_, batch_size, **kwargs)

    monkeypatch.setattr(inference, "iterate_batches", spy)
    chunked = run_inference(model, split, task="regression")
    alone = run_inference(model, split, task="regression", batch_size=1)
    assert sizes == [16, 1]
    np.testing.assert_allclose(chunked.outputs, alone.outputs, rtol=0, atol=1e-5)
    for m in WIDTHS:
        np.testing.assert_allclose(chunked.unique_pooled[m], alone.unique_pooled[m], rtol=0, atol=1e-5)
