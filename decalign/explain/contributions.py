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
    return 0 if result.task == "regression" else int(result.outputs[row].argmax())


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


def contribution_matrix(result: InferenceResult, class_index: int | np.ndarray | None = None) -> pd.DataFrame:
    """(N, B + 1) contributions of every sample to its predicted class (or the given class per sample).

    Columns are the branch names plus "bias"; the index is the sample ids.
    """
    terms = result.contributions()  # (N, out, B + 1)
    if class_index is None:
        pick = np.zeros(len(result), int) if result.task == "regression" else result.outputs.argmax(1)
    else:
        pick = np.broadcast_to(np.asarray(class_index, dtype=int), (len(result),))
    values = terms[np.arange(len(result)), pick]  # (N, B + 1)
    return pd.DataFrame(values, columns=[*result.branch_names, "bias"], index=pd.Index(result.ids, name="id"))
