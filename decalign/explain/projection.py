"""2-D projections of pooled features (UMAP or PCA) for the embedding and prototype views.

Large inputs are handled the way a user would by hand: fit the projection on a seeded random sample of
``fit_limit`` rows, then map every other row through the fitted projection (``transform``). The
``Projection.note`` says when that happened, so the page can tell the user.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA

METHODS = ("umap", "pca")
# Below this many rows UMAP's neighbour graph is meaningless; PCA is used instead (and the note says so).
MIN_UMAP_ROWS = 8
UMAP_EPOCHS = 200


@dataclass
class Projection:
    """Coordinates of N rows in 2-D and how they were obtained."""

    coords: np.ndarray  # (N, 2) float64
    method: str  # "umap" | "pca" (the method actually used)
    fitted_on: int  # rows the projection was fitted on; the rest were transformed
    note: str  # plain sentence for the user; "" when nothing worth saying happened


def project(features: np.ndarray, method: str = "umap", *, seed: int = 0, fit_limit: int = 5000,
            n_neighbors: int = 15) -> Projection:
    """Project ``features`` (N, d) to 2-D.

    PCA: the two leading principal axes, ``coords = (X - mean) V[:, :2]`` with ``V`` from the SVD of the
    centred fitted rows (scikit-learn's ``PCA``). UMAP: umap-learn's ``UMAP(n_components=2)`` with
    ``random_state=seed`` (deterministic, single-threaded).

    Parameters
    ----------
    features : (N, d) finite values.
    method : "umap" or "pca".
    seed : seeds UMAP and the choice of the fitted sample.
    fit_limit : above this many rows, fit on ``fit_limit`` rows drawn without replacement by
        ``np.random.default_rng(seed)`` and transform all the others.
    n_neighbors : UMAP's neighbourhood size (capped at N - 1).

    Returns
    -------
    Projection with (N, 2) coordinates.
    """
    x = _check(features, method, fit_limit)
    n = x.shape[0]
    fit_rows = np.sort(np.random.default_rng(seed).choice(n, fit_limit, replace=False)) if n > fit_limit else None
    note = "" if fit_rows is None else (
        f"{method.upper()} was fitted on a random sample of {fit_limit:,} of the {n:,} points (seed {seed}); "
        "the other points were placed with the fitted projection.")
    if method == "umap" and (n if fit_rows is None else fit_limit) < MIN_UMAP_ROWS:
        method, note = "pca", f"Too few points for UMAP ({n}); PCA is shown instead."
    coords = _pca(x, fit_rows) if method == "pca" else _umap(x, fit_rows, seed, n_neighbors)
    return Projection(coords, method, n if fit_rows is None else fit_limit, note)


def project_joint(features_by_modality: dict[str, np.ndarray], method: str = "umap", *, seed: int = 0,
                  fit_limit: int = 5000, n_neighbors: int = 15) -> tuple[Projection, np.ndarray]:
    """One projection shared by several modalities: stack their rows, project once.

    Parameters
    ----------
    features_by_modality : modality -> (N_m, d), the same d for all (e.g. the common features).

    Returns
    -------
    The Projection of the stacked (sum N_m, d) rows, in the order of the dict, and the (sum N_m,) array of
    modality names telling which modality each row came from.
    """
    if not features_by_modality:
        raise ValueError("project_joint needs at least one modality")
    widths = {m: np.asarray(x).shape[1:] for m, x in features_by_modality.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"project_joint: modalities have different feature shapes {widths}")
    stacked = np.concatenate([np.asarray(x) for x in features_by_modality.values()])
    labels = np.concatenate([np.full(len(x), m, dtype=object) for m, x in features_by_modality.items()])
    proj = project(stacked, method, seed=seed, fit_limit=fit_limit, n_neighbors=n_neighbors)
    return proj, labels


def project_with_points(features: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on ``features`` (N, d); returns its (N, 2) coordinates and those of ``points`` (P, d).

    Used to draw prototype means in the same plane as the samples: the means are placed with the
    projection fitted on the samples, not fitted together with them.
    """
    x = _check(features, "pca", 1)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != x.shape[1]:
        raise ValueError(f"points must be (P, {x.shape[1]}), found {pts.shape}")
    pca = _fit_pca(x)
    return _pad(pca.transform(x)), _pad(pca.transform(pts))


def _check(features: np.ndarray, method: str, fit_limit: int) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, d) array, found shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"features contain {int((~np.isfinite(x)).sum())} non-finite values")
    if fit_limit < 1:
        raise ValueError(f"fit_limit must be at least 1, found {fit_limit}")
    return x


def _fit_pca(x: np.ndarray) -> PCA:
    return PCA(n_components=min(2, x.shape[0], x.shape[1]), svd_solver="full").fit(x)


def _pca(x: np.ndarray, fit_rows: np.ndarray | None) -> np.ndarray:
    pca = _fit_pca(x if fit_rows is None else x[fit_rows])
    return _pad(pca.transform(x))


def _umap(x: np.ndarray, fit_rows: np.ndarray | None, seed: int, n_neighbors: int) -> np.ndarray:
    import umap  # imported here: numba start-up costs seconds, and PCA users should not pay it

    fitted = x if fit_rows is None else x[fit_rows]
    # 200 optimisation epochs, as umap-learn itself uses above 10,000 rows; its 500 for smaller data
    # cost 25% more time here for maps that look the same at dashboard size.
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(fitted) - 1)),
                        random_state=seed, transform_seed=seed, n_epochs=UMAP_EPOCHS)
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": determinism is what we want
        warnings.simplefilter("ignore", UserWarning)
        reducer.fit(fitted)
        coords = np.empty((x.shape[0], 2))
        if fit_rows is None:
            return reducer.embedding_.astype(np.float64)
        rest = np.setdiff1d(np.arange(x.shape[0]), fit_rows)
        coords[fit_rows] = reducer.embedding_
        coords[rest] = reducer.transform(x[rest])
    return coords


def warm_up_umap() -> None:
    """Run UMAP once on a few random points so numba compiles it (about 10 s) before a user waits."""
    _umap(np.random.default_rng(0).normal(size=(64, 4)), None, 0, 5)


def _pad(coords: np.ndarray) -> np.ndarray:
    """Always two columns: a single sample or a 1-wide feature gives fewer principal axes."""
    out = np.zeros((coords.shape[0], 2))
    out[:, : coords.shape[1]] = coords
    return out
