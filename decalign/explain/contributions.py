"""Exact per-branch contributions of the linear head.

The head is linear, ``y = W h + b`` with ``h = [fused_1, ..., fused_M, common_1, ..., common_M]``, so every
output splits exactly into one term per branch plus the bias: ``y_o = sum_b W[o, S_b] . h[S_b] + b_o``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..inference import InferenceResult

COLUMNS = ["branch", "modality", "part", "contribution"]


def default_class(result: InferenceResult, row: int) -> int:
    """Output column explained by default: the predicted class (classification) or 0 (regression)."""
    return int(result.explained_outputs()[row])


def check_row(result: InferenceResult, row: int) -> int:
    if not isinstance(row, (int, np.integer)) or isinstance(row, bool) or not 0 <= row < len(result):
        raise IndexError(f"row must be an integer in [0, {len(result)}), found {row!r}")
    return int(row)


def branch_contributions(result: InferenceResult, row: int, class_index: int | None = None) -> pd.DataFrame:
    """One row per branch plus the bias; ``contribution`` sums to ``result.outputs[row, class_index]``.

    Parameters
    ----------
    result : inference over a split.
    row : sample index in ``result``.
    class_index : output column; default the predicted class (classification) or 0 (regression).

    Returns
    -------
    DataFrame with columns branch ("unique:<m>", "common:<m>", "bias"), modality (empty for the bias),
    part ("unique" | "common" | "bias") and contribution (float).
    """
    row = check_row(result, row)
    out = default_class(result, row) if class_index is None else int(class_index)
    if not 0 <= out < result.outputs.shape[1]:
        raise IndexError(f"class_index must be in [0, {result.outputs.shape[1]}), found {class_index!r}")
    # float64 for the sum so the split matches the stored float32 output to round-off.
    h = result.branch_inputs[row].astype(np.float64)
    w = result.head_weight[out].astype(np.float64)
    records = []
    for name, cols in result.branch_slices().items():
        part, modality = name.split(":", 1)
        records.append((name, modality, part, float(h[cols] @ w[cols])))
    records.append(("bias", "", "bias", float(result.head_bias[out])))
    return pd.DataFrame.from_records(records, columns=COLUMNS)
