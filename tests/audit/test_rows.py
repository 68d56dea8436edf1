"""Audit-trail rows of a batch of predictions (decalign.audit.rows)."""

import numpy as np

from decalign.audit.rows import prediction_rows
from decalign.inference import InferenceResult


def _result(n: int) -> InferenceResult:
    rng = np.random.default_rng(0)
    inputs, weight, bias = rng.normal(size=(n, 4)), rng.normal(size=(3, 4)), rng.normal(size=3)
    return InferenceResult(
        ids=np.array([f"s{i}" for i in range(n)]), labels=rng.integers(0, 3, n), outputs=inputs @ weight.T + bias,
        branch_inputs=inputs, branch_names=["unique:a", "common:a"], unique_pooled={"a": np.zeros((n, 2))},
        common_pooled={"a": np.zeros((n, 2))}, posteriors=None, head_weight=weight, head_bias=bias,
        task="classification")


def test_rows_hold_each_samples_prediction_and_its_exact_terms(monkeypatch):
    result = _result(50)
    calls = []
    real = InferenceResult.predictions
    monkeypatch.setattr(InferenceResult, "predictions", property(lambda self: calls.append(1) or real.fget(self)))
    rows = prediction_rows(result, source="cli", checkpoint_fingerprint="a" * 64, input_sha256="b" * 64,
                           input_name="x.npz", split="test")
    assert len(calls) == 1  # the argmax over all rows once, not once per row (20,000 rows took 12 s)
    np.testing.assert_array_equal([r["prediction"] for r in rows], result.outputs.argmax(1))
    k = result.outputs.argmax(1)
    logits = np.array([sum(r["contributions"].values()) for r in rows])
    np.testing.assert_allclose(logits, result.outputs[np.arange(50), k], atol=1e-9)
    assert [r["label"] for r in rows] == result.labels.tolist() and all(r["flags"] == [] for r in rows)
