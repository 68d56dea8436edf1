"""Has the current data drifted? A calibrated two-sample test per modality against held-out data.

The reference is the validation split's pooled features stored with the run (``TrainingReference.held_out``),
never the training features: the model fitted those, so any new data looks further from them than they
look from themselves, and a test against them raises false alarms.

For every modality m and feature space s (the pooled unique and the pooled common features), with X the
current data's features (n x d) and Y the reference's (r x d):

* statistic: the Gaussian-kernel MMD^2 (biased V-statistic) ``mean k(X, X) + mean k(Y, Y) - 2 mean k(X, Y)``,
  ``k(a, b) = exp(-||a - b||^2 / (2 s^2))`` with the bandwidth s fixed from Y by the median heuristic;
* p-value: by permutation: X and Y are pooled and which rows count as "current" is redrawn B times,
  ``p = (1 + #{b: T_b >= T}) / (1 + B)`` (exact level under exchangeability; each side is first cut to a
  seeded subsample of at most ``MAX_SIDE`` rows, which keeps the cost bounded and the test exact);
* correction: Holm's step-down over every test (modalities x spaces), so the chance of any false alarm
  on data like the reference is at most ``alpha`` (5%);
* effect size (:func:`mean_shift_effect`): how far the mean moved, in standard deviations of the
  reference (root mean square over features, corrected for chance).

A modality has drifted when the Holm-corrected p-value of one of its spaces is below ``alpha``; the data
has drifted when any modality has. ``bench/bench_drift.py`` measures the false-alarm rate and the power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..inference import InferenceResult
from ..train.reference import HeldOut

ALPHA = 0.05
MAX_SIDE = 500  # rows per side in the permutation test (seeded subsample beyond)
MIN_PERMUTATIONS = 500
MIN_SAMPLES = 10  # fewer current samples than this: no test
SPACES = {"unique": "modality-specific part", "common": "shared part"}
COLUMNS = ["modality", "space", "n_current", "n_reference", "mmd2", "p_value", "p_corrected", "effect", "drifted"]


# ------------------------------------------------------------------------------------------- the maths


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) ``||a_i - b_j||^2`` as ``|a|^2 + |b|^2 - 2 a.b`` (no (N, M, d) temporary), clipped at 0."""
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(sq, 0.0)


def median_bandwidth(x: np.ndarray, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic: ``s = sqrt(median ||x_i - x_j||^2 / 2)`` over pairs i < j (subsampled)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) > max_points:
        x = x[np.random.default_rng(seed).choice(len(x), max_points, replace=False)]
    pairs = squared_distances(x, x)[np.triu_indices(len(x), k=1)]
    med = float(np.median(pairs)) if pairs.size else 1.0
    return float(np.sqrt(med / 2)) if med > 0 else 1.0


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Biased MMD^2 with ``k(x, y) = exp(-||x - y||^2 / (2 s^2))`` (same estimate as ``gaussian_mmd``)."""
    def kernel_mean(a, b):
        return float(np.exp(-squared_distances(a, b) / (2 * bandwidth**2)).mean())

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return max(kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y), 0.0)


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, *, bandwidth: float | None = None,
                         permutations: int = MIN_PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """(MMD^2 of ``x`` against ``y``, its permutation p-value); see the module docstring.

    The bandwidth defaults to the median heuristic on ``y`` (the reference). All permutations share one
    kernel matrix: with s the 0/1 indicator of the rows counted as "current", ``sum k(X, X) = s'Ks``,
    ``sum k(X, Y) = s'K1 - s'Ks`` and ``sum k(Y, Y) = 1'K1 - 2 s'K1 + s'Ks``.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, r = len(x), len(y)
    if n < 2 or r < 2:
        raise ValueError(f"the two-sample test needs at least 2 rows on each side, found {n} and {r}")
    bandwidth = bandwidth or median_bandwidth(y)
    z = np.concatenate([x, y])
    kernel = np.exp(-squared_distances(z, z) / (2 * bandwidth**2))
    observed = np.zeros(n + r)
    observed[:n] = 1.0
    shuffled = np.random.default_rng(seed).permuted(np.tile(observed, (permutations, 1)), axis=1)
    stats = _mmd2_of_splits(kernel, np.vstack([observed, shuffled]), n, r)
    ties = 1e-12 * max(abs(stats[0]), 1e-300)  # equal up to rounding counts as "at least as large"
    p = (1 + int(np.sum(stats[1:] >= stats[0] - ties))) / (1 + permutations)
    return float(max(stats[0], 0.0)), float(p)


def _mmd2_of_splits(kernel: np.ndarray, indicators: np.ndarray, n: int, r: int) -> np.ndarray:
    """(B,) biased MMD^2 for each row of ``indicators`` (1 = current, 0 = reference)."""
    row_sums = kernel.sum(1)
    total = row_sums.sum()
    sks = np.einsum("bi,bi->b", indicators @ kernel, indicators)
    sk1 = indicators @ row_sums
    return sks / n**2 + (total - 2 * sk1 + sks) / r**2 - 2 * (sk1 - sks) / (n * r)


def mean_shift_effect(x: np.ndarray, y: np.ndarray) -> float:
    """How far the mean of ``x`` moved from that of ``y``, in standard deviations of ``y``: the root mean
    square over features of the standardised mean shift, corrected for chance.

    With per-feature means, sample variances ``v_x``, ``v_y`` and sizes n, r::

        d_j^2  = (mean_j(x) - mean_j(y))^2 - v_xj / n - v_yj / r      (unbiased for the squared mean shift)
        effect = sqrt( max(0, mean_j d_j^2 / v_yj) )

    So moving every feature by half of its reference standard deviation gives 0.5, and moving one feature
    of four by one standard deviation also gives 0.5. The correction matters: two samples from one
    distribution differ in their means by chance (about ``sqrt(1/n + 1/r)`` standard deviations per
    feature), which would read as drift without it. Features constant in ``y`` are left out (an infinite
    effect when they moved). Returns 0.0 when the means agree within chance.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, r = len(x), len(y)
    if n < 2 or r < 2:
        return 0.0
    delta = x.mean(0) - y.mean(0)
    var_x, var_y = x.var(0, ddof=1), y.var(0, ddof=1)
    live = var_y > 0
    if np.any(delta[~live] != 0):
        return math.inf
    if not live.any():
        return 0.0
    shift_sq = delta[live] ** 2 - var_x[live] / n - var_y[live] / r
    return math.sqrt(max(float(np.mean(shift_sq / var_y[live])), 0.0))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values: sorted ascending, ``p_(i) * (k - i)`` (i from 0), made
    non-decreasing by a running maximum and capped at 1; returned in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    k = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(p[order] * (k - np.arange(k))), 1.0)
    out = np.empty(k)
    out[order] = adjusted
    return out


def permutations_for(tests: int, alpha: float = ALPHA) -> int:
    """Permutations so that the smallest p-value, ``1 / (B + 1)``, survives Holm's correction over ``tests``
    with room to spare (``B + 1 >= 4 * tests / alpha``), and never fewer than ``MIN_PERMUTATIONS``."""
    return max(MIN_PERMUTATIONS, math.ceil(4 * tests / alpha) - 1)


# ----------------------------------------------------------------------------------------- the report


@dataclass
class DriftReport:
    """The drift verdict of one batch against a held-out reference.

    ``tests`` has one row per modality and space (``COLUMNS``); ``modalities`` one row per modality
    (modality, drifted, p_corrected (its smallest), effect and space of that test); ``drifted`` is the
    overall verdict. ``reference`` says in words what the batch was compared with; ``notes`` add what a
    reader must know to read the verdict (e.g. that the batch is the training data).
    """

    tests: pd.DataFrame
    modalities: pd.DataFrame
    drifted: bool
    reference: str
    alpha: float
    permutations: int
    notes: list[str] = field(default_factory=list)

    def sentences(self) -> list[str]:
        """One plain sentence per modality, then the overall verdict."""
        k = len(self.tests)
        lines = [_modality_sentence(r, k, self.alpha) for r in self.modalities.itertuples()]
        verdict = ("has drifted" if self.drifted else "shows no significant drift")
        lines.append(f"Overall the data {verdict} from {self.reference} (a modality counts as drifted when a "
                     f"test's p-value, corrected for {k} tests, is below {self.alpha:g}).")
        return lines + list(self.notes)

    def to_json(self) -> dict:
        per_modality = {r.modality: {"drifted": bool(r.drifted), "p_corrected": float(r.p_corrected),
                                     "effect": float(r.effect) if math.isfinite(r.effect) else None,
                                     "space": r.space}
                        for r in self.modalities.itertuples()}
        return {"drifted": bool(self.drifted), "alpha": self.alpha, "reference": self.reference,
                "permutations": self.permutations, "modalities": per_modality,
                "tests": _records(self.tests), "notes": list(self.notes), "summary": self.sentences()}


def drift_test(current: InferenceResult | dict, held_out: HeldOut, *, alpha: float = ALPHA,
               permutations: int | None = None, max_side: int = MAX_SIDE, seed: int = 0,
               notes: list[str] | None = None) -> DriftReport:
    """Test the current data against the held-out reference, per modality and space (module docstring).

    Parameters
    ----------
    current : an ``InferenceResult``, or ``{"unique": {m: (n, d)}, "common": {m: (n, d)}}``.
    held_out : the reference (``TrainingReference.held_out``): held-out samples the model did not fit.
    permutations : per test; default :func:`permutations_for` the number of tests.
    max_side : rows per side in the permutation test (seeded subsample beyond; the effect uses all rows).
    """
    features = _pooled(current)
    mods = [m for m in held_out.unique if m in features["unique"]]
    n = len(features["unique"][mods[0]]) if mods else 0
    if n < MIN_SAMPLES:
        raise ValueError(f"the drift test needs at least {MIN_SAMPLES} samples, found {n}")
    permutations = permutations or permutations_for(2 * len(mods), alpha)
    rows = []
    for i, (m, space) in enumerate((m, s) for m in mods for s in SPACES):
        reference = getattr(held_out, space)[m]
        x, y = features[space][m], reference
        stat, p = mmd_permutation_test(_cut(x, max_side, seed + 2 * i), _cut(y, max_side, seed + 2 * i + 1),
                                       bandwidth=median_bandwidth(y), permutations=permutations, seed=seed + i)
        rows.append([m, space, len(x), len(y), stat, p, np.nan, mean_shift_effect(x, y), False])
    tests = pd.DataFrame(rows, columns=COLUMNS)
    tests["p_corrected"] = holm(tests["p_value"].to_numpy())
    tests["drifted"] = tests["p_corrected"] < alpha
    per_modality = _per_modality(tests)
    return DriftReport(tests, per_modality, bool(per_modality["drifted"].any()), held_out.source, alpha,
                       permutations, list(notes or []))


def _pooled(value) -> dict[str, dict[str, np.ndarray]]:
    if isinstance(value, InferenceResult):
        return {"unique": value.unique_pooled, "common": value.common_pooled}
    if isinstance(value, dict) and {"unique", "common"} <= set(value):
        return {"unique": value["unique"], "common": value["common"]}
    raise ValueError("drift_test expects an InferenceResult or a dict with 'unique' and 'common' feature dicts, "
                     f"found {type(value).__name__}")


def _cut(x: np.ndarray, size: int, seed: int) -> np.ndarray:
    if len(x) <= size:
        return x
    return x[np.sort(np.random.default_rng(seed).choice(len(x), size, replace=False))]


def _per_modality(tests: pd.DataFrame) -> pd.DataFrame:
    """Each modality's most significant test (smallest corrected p; on ties the larger effect)."""
    ranked = tests.assign(_neg=-tests["effect"]).sort_values(["p_corrected", "_neg"], kind="stable")
    best = ranked.groupby("modality", sort=False).head(1).set_index("modality")
    order = list(dict.fromkeys(tests["modality"]))
    best = best.loc[order].reset_index()
    return best[["modality", "drifted", "p_corrected", "effect", "space"]]


def effect_words(effect: float) -> str:
    """An effect size (standard deviations) in words: "about half a standard deviation (0.52)", ..."""
    if not math.isfinite(effect):
        return "more than any spread the reference shows"
    if effect < 0.05:
        return "less than 0.05 standard deviations"
    if 0.4 <= effect < 0.6:
        return f"about half a standard deviation ({effect:.2f})"
    if 0.9 <= effect < 1.1:
        return f"about one standard deviation ({effect:.2f})"
    return f"about {effect:.1f} standard deviations" if effect >= 1.1 else f"about {effect:.2f} standard deviations"


def _modality_sentence(row, tests: int, alpha: float) -> str:
    part = SPACES[row.space]
    p = f"p = {_p_text(row.p_corrected)} after correcting for {tests} tests"
    if row.drifted:
        return f"The {row.modality} view moved by {effect_words(row.effect)} in its {part} ({p}): drifted."
    return (f"The {row.modality} view shows no significant drift ({p}; estimated shift "
            f"{effect_words(row.effect)}).")


def _p_text(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _records(frame: pd.DataFrame) -> list[dict]:
    def plain(v):
        v = v.item() if isinstance(v, np.generic) else v
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
