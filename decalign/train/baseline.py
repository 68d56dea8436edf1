"""An honest baseline beside every model: a linear model on the same input features.

Features: each modality's input averaged over its valid time steps (``Split.lengths``; all steps when the
data has none), the modalities concatenated, then standardised with the training split's mean and
standard deviation (scikit-learn's ``StandardScaler``). Classification: multinomial ``LogisticRegression``;
regression: ``Ridge``. The regularisation is chosen on the validation split from ``GRID`` (the inverse
strength C, or alpha) by the convention's headline metric (``HEADLINE``: accuracy, or MAE), the model
fitted on the training split with that value is scored on every labelled split with the metrics the
model gets (``compute_metrics`` with the same convention), and the result is stored on the model card
(``ModelCard.baseline``).

The sentence that compares DecAlign with it (:func:`baseline_comparison`) uses the same split and metric
for both, so a gap such as 0.83 against 0.98 test accuracy shows at once.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..data.dataset import MultimodalDataset, Split
from ..data.tokens import is_token_input
from .metrics import compute_metrics, display_name, metric_direction

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)
HEADLINE = {"classification": "Acc", "mosi": "MAE", "sims": "MAE"}
NAMES = {"classification": "a logistic regression", "mosi": "a ridge regression", "sims": "a ridge regression"}
MAX_ITER = 2000


def pooled_inputs(split: Split, modalities: list[str], chunk: int = 32) -> np.ndarray:
    """(N, sum of widths) each modality's input averaged over its valid steps, modalities concatenated."""
    parts = []
    for m in modalities:
        x = split.features[m]
        n, steps = x.shape[:2]
        lengths = np.clip(split.lengths.get(m, np.full(n, steps)), 1, steps)
        valid = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.float64)  # (N, T)
        summed = np.empty((n, x.shape[2]))
        # float64 a chunk at a time, never a float64 copy of the split. At MOSI shapes a chunk of 256 (79 MB)
        # made the baseline the peak of `decalign train` (1,192 MiB; 1,096 with 32, training's 1,181 the peak
        # then), and 32 were faster: 0.05 s a split against 0.3-0.6 s.
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            summed[rows] = np.einsum("nt,ntd->nd", valid[rows], np.asarray(x[rows], dtype=np.float64))
        parts.append(summed / valid.sum(1, keepdims=True))
    return np.concatenate(parts, axis=1)


def fit_baseline(dataset: MultimodalDataset, convention: str) -> dict:
    """Fit the baseline (module docstring) on ``dataset``; returns what the card stores.

    Keys: ``model`` ("logistic_regression" | "ridge"), ``name`` (in words), ``parameter`` and ``value``
    (the chosen C or alpha), ``selected_on`` ("valid"), ``headline`` (metric key), ``features`` (their
    count), ``metrics`` (split -> metric -> value, for every labelled split).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small problems: BLAS threads fighting over busy cores cost 100x
        return _fit_baseline(dataset, convention)


def card_baseline(dataset: MultimodalDataset, convention: str) -> dict | None:
    """The linear baseline for the card, or None when these data cannot give one (a validation split of one
    sample, a training split of one class): a finished run does not fail for it, and the pages and
    commands that show the baseline say why (``baseline_beside`` fits it again and reports the reason)."""
    try:
        return fit_baseline(dataset, convention)
    except ValueError:
        return None


def _fit_baseline(dataset: MultimodalDataset, convention: str) -> dict:
    from sklearn.preprocessing import StandardScaler

    # BERT tokens (a BERT model's view of the text) are ids, not features: the baseline leaves them out
    first = next(iter(dataset.splits.values()))
    mods = [m for m in dataset.widths if not is_token_input(first.features[m])]
    for name in ("train", "valid"):
        split = dataset.splits.get(name)
        if split is None or split.labels is None or len(split) < 2:
            raise ValueError(f"{dataset.report.source}: the baseline needs a labelled {name!r} split")
    scaler = StandardScaler().fit(pooled_inputs(dataset.splits["train"], mods))
    features = {name: scaler.transform(pooled_inputs(split, mods)) for name, split in dataset.splits.items()
                if split.labels is not None and len(split)}
    labels = {name: dataset.splits[name].labels for name in features}
    headline = HEADLINE[convention]
    sign = -1.0 if metric_direction(headline) == "min" else 1.0
    scores = {}
    for value in GRID:
        fitted = _fit(convention, value, features["train"], labels["train"])
        scores[value] = sign * _metrics(fitted, convention, features["valid"], labels["valid"], dataset)[headline]
    best = max(GRID, key=lambda v: (scores[v], -abs(np.log10(v))))  # ties: the value closest to 1
    fitted = _fit(convention, best, features["train"], labels["train"])
    return {"model": "logistic_regression" if convention == "classification" else "ridge",
            "name": NAMES[convention], "parameter": "C" if convention == "classification" else "alpha",
            "value": best, "selected_on": "valid", "headline": headline, "features": int(features["train"].shape[1]),
            "metrics": {name: _metrics(fitted, convention, features[name], labels[name], dataset)
                        for name in features}}


def _fit(convention: str, value: float, x: np.ndarray, y: np.ndarray):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # strong-C fits of separable data stop at max_iter
        if convention == "classification":
            return LogisticRegression(C=value, max_iter=MAX_ITER).fit(x, y.astype(np.int64))
        return Ridge(alpha=value).fit(x, y.astype(np.float64))


def _metrics(fitted, convention: str, x: np.ndarray, y: np.ndarray, dataset: MultimodalDataset) -> dict:
    if convention == "classification":
        scores = np.zeros((len(x), dataset.num_classes))
        scores[:, fitted.classes_] = fitted.predict_proba(x)  # classes absent from train keep probability 0
        return compute_metrics("classification", scores, y, num_classes=dataset.num_classes)
    return compute_metrics("regression", fitted.predict(x), y, convention=convention)


def baseline_comparison(model_metrics: dict[str, dict[str, float]], baseline: dict | None,
                        split: str = "test") -> dict | None:
    """DecAlign against the baseline on ``split`` by the baseline's headline metric: a dict with split,
    metric, model, baseline, verdict ("beats" | "ties with" | "does not beat") and one sentence; None
    when either side has no score on that split."""
    if not baseline:
        return None
    key = baseline["headline"]
    ours, theirs = (model_metrics or {}).get(split, {}).get(key), baseline.get("metrics", {}).get(split, {}).get(key)
    if ours is None or theirs is None:
        return None
    better = (ours < theirs) if metric_direction(key) == "min" else (ours > theirs)
    verdict = "ties with" if np.isclose(ours, theirs, rtol=0, atol=1e-9) else "beats" if better else "does not beat"
    name = display_name(key)
    sentence = (f"On the {split} split DecAlign reaches {name} {ours:.3f}; {baseline['name']} on the same input "
                f"features (averaged over time, standardised) reaches {theirs:.3f}: DecAlign {verdict} this "
                f"linear baseline" + ("." if verdict == "ties with" else f" (by {abs(ours - theirs):.3f})."))
    return {"split": split, "metric": key, "model": float(ours), "baseline": float(theirs), "verdict": verdict,
            "sentence": sentence}


def baseline_beside(card, dataset: MultimodalDataset, data_name: str, split: str,
                    metrics: dict[str, float] | None) -> tuple[dict | None, dict | None, str | None]:
    """(baseline, comparison, note) for a model (``card``) evaluated on ``dataset.splits[split]`` with
    ``metrics``: what ``decalign eval``, ``decalign audit`` and the report show beside the model.

    * the card's baseline on the run's own data (same fingerprint): both compared on ``split``;
    * the card's baseline on other data: both compared on the training data's test split (card metrics);
    * no baseline on the card (imported models, older runs): one fitted now on ``dataset``, said so.
    """
    from .metrics import card_convention

    if card.baseline:
        own = card.data_fingerprint is not None and card.data_fingerprint == dataset.file_fingerprint()
        if own and metrics and split in card.baseline.get("metrics", {}):
            return card.baseline, baseline_comparison({split: metrics}, card.baseline, split), None
        return card.baseline, baseline_comparison(card.metrics, card.baseline), None
    try:
        baseline = fit_baseline(dataset, card_convention(card))
    except ValueError as exc:
        return None, None, f"No linear baseline: {exc}"
    comparison = baseline_comparison({split: metrics}, baseline, split) if metrics else None
    return baseline, comparison, (f"The linear baseline is not on the model card: it was fitted now on "
                                  f"{data_name}'s train split (its validation split chose the regularisation).")


def card_comparison(card) -> dict | None:
    """The comparison recorded at training: the card's test metrics against its baseline's (None when the
    card has no baseline or no test metrics)."""
    return baseline_comparison(card.metrics, card.baseline)
