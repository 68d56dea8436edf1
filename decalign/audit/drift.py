"""Has a batch drifted from the training data? Two statistics per modality, each beside a null band.

* Unique space: fit a diagonal Gaussian mixture (``fit_gmm``) to the batch's pooled unique features and
  compute the GMM optimal-transport distance of Delon & Desolneux (2020) to the training prototypes,
  ``MW2^2 = min_P sum_kl P_kl W2^2(N_k, N_l)`` over couplings P of the mixture weights (POT's
  ``ot.gmm.gmm_ot_loss``).
* Common space: the Gaussian-kernel MMD^2 between the batch's and the training set's pooled common
  features, bandwidth fixed from training by the median heuristic.

The band is the 5th-95th percentile of the same statistic for ``n_resamples`` random training subsets of
the batch's size (drawn without replacement; for MMD each subset is compared with the rest of the
training set). A statistic above the band's top is reported as drifted. MMD uses at most 2,000 points of
each side (seeded subsamples), which keeps the kernel matrices small for batches of any size.
"""

from __future__ import annotations

import numpy as np
import ot
import pandas as pd
import torch

from ..config import ModelConfig
from ..inference import InferenceResult
from ..model import Prototypes, fit_gmm
from ..train.reference import TrainingReference, median_bandwidth, mmd2, mmd_null_band

COLUMNS = ["modality", "space", "statistic", "value", "band_low", "band_high", "drifted"]
GMM_ITERATIONS = 30
MAX_TRAIN_MMD = 2000  # training points used for MMD (kernel matrices grow with the square)
MAX_BATCH_MMD = 2000  # batch points used for MMD: a seeded subsample estimates the same MMD^2


def gmm_ot_distance(batch: np.ndarray, target: Prototypes, n_components: int,
                    var_floor: float = ModelConfig.gmm_var_floor) -> float:
    """GMM-OT loss between a diagonal GMM fitted to ``batch`` and ``target`` (diagonal covariances)."""
    fitted = fit_gmm(torch.from_numpy(np.asarray(batch, dtype=np.float64)), n_components, iterations=GMM_ITERATIONS,
                     var_floor=var_floor)
    arrays = lambda p: (p.means.detach().double().numpy(), p.variances.detach().double().numpy(),
                        p.weights.detach().double().numpy())
    ms, vs, ws = arrays(fitted)
    mt, vt, wt = arrays(target)
    covs = lambda v: np.stack([np.diag(row) for row in v])
    return float(ot.gmm.gmm_ot_loss(ms, mt, covs(vs), covs(vt), ws / ws.sum(), wt / wt.sum()))


def batch_drift(result_or_pooled: InferenceResult | dict, reference: TrainingReference, *,
                n_components: int | None = None, n_resamples: int = 20, seed: int = 0,
                var_floor: float = ModelConfig.gmm_var_floor) -> pd.DataFrame:
    """Drift of a batch against the training reference, per modality and space (see module docstring).

    Parameters
    ----------
    result_or_pooled : an ``InferenceResult``, or ``{"unique": {m: (n, d)}, "common": {m: (n, d)}}``.
    n_components : mixture size for the batch; default the number of training prototypes.
    var_floor : the mixture's variance floor; pass the model's ``config.model.gmm_var_floor``.

    Returns
    -------
    DataFrame with columns modality, space ("unique" | "common"), statistic ("gmm_ot" | "mmd2"), value,
    band_low, band_high, drifted.
    """
    unique, common = _pooled(result_or_pooled)
    rows = []
    for m in reference.modalities:
        n = len(unique[m])
        if n < 2:
            raise ValueError(f"drift needs at least 2 samples in the batch, found {n}")
        k = n_components or len(reference.prototypes[m].weights)
        rows.append(_gmm_row(m, unique[m], reference, k, n_resamples, seed, var_floor))
        rows.append(_mmd_row(m, common[m], reference, n_resamples, seed))
    return pd.DataFrame(rows, columns=COLUMNS)


def _pooled(value) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    if isinstance(value, InferenceResult):
        return value.unique_pooled, value.common_pooled
    if isinstance(value, dict) and {"unique", "common"} <= set(value):
        return value["unique"], value["common"]
    raise ValueError("batch_drift expects an InferenceResult or a dict with 'unique' and 'common' feature dicts, "
                     f"found {type(value).__name__}")


def _gmm_row(m, batch, reference, k, n_resamples, seed, var_floor):
    train = reference.train_unique[m]
    value = gmm_ot_distance(batch, reference.prototypes[m], k, var_floor)
    rng = np.random.default_rng(seed)
    size = min(len(batch), len(train))
    null = [gmm_ot_distance(train[rng.choice(len(train), size, replace=False)], reference.prototypes[m], k,
                            var_floor) for _ in range(n_resamples)]
    return _row(m, "unique", "gmm_ot", value, null)


def _mmd_row(m, batch, reference, n_resamples, seed):
    train = reference.train_common[m]
    if len(train) > MAX_TRAIN_MMD:
        train = train[np.random.default_rng(seed).choice(len(train), MAX_TRAIN_MMD, replace=False)]
    if len(batch) > MAX_BATCH_MMD:  # 20,000 points would mean a 20,000^2 kernel for one number
        batch = batch[np.random.default_rng(seed + 1).choice(len(batch), MAX_BATCH_MMD, replace=False)]
    band = reference.common_mmd_band.get(m, {})
    bandwidth = band.get("bandwidth") or median_bandwidth(train)
    value = mmd2(batch, train, bandwidth)
    null = mmd_null_band(train, len(batch), bandwidth, n_resamples=n_resamples, seed=seed)
    return _row(m, "common", "mmd2", value, null)


def _row(m, space, statistic, value, null):
    low, high = np.quantile(null, [0.05, 0.95])
    return [m, space, statistic, float(value), float(low), float(high), bool(value > high)]
