"""Data placed on projection maps fitted on a model's training samples (``transform`` only).

The spaces and their PCA maps are ``decalign.maps``'s (fitted when the training reference is built and
stored in it; placing rows is one product). Placing data on the training map instead of fitting a
projection to the data itself means a new upload costs a transform only, and a sample lands in the same
place whatever else was uploaded with it.

UMAP maps are fitted on first use by the dashboard's projection worker on the same training rows (a
seeded sample of at most ``UMAP_MAX_FIT``), and their coordinates are kept on disk beside the other
projections; placing rows is umap-learn's ``transform`` onto the map (:func:`umap_onto`).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..maps import PcaMap
from .projection import (
    UMAP_EPOCHS,
    UMAP_MAX_FIT,
    Projection,
    _umap,
    load_cached,
    projection_key,
    save_cached,
    umap_reducer,
    umap_transform,
)

MAP_NOTE = ("Every projection is a map fitted on the model's training samples (kept with the model in its "
            "training reference); the samples shown are placed on it, so a sample lands in the same place "
            "whatever data it comes with.")
_REBUILT: OrderedDict[str, object] = OrderedDict()  # map key -> umap-learn reducer, in the worker child
_REBUILT_KEPT = 16


def place_on(pca_map: PcaMap, features: np.ndarray) -> Projection:
    """``features`` placed on a training PCA map (``decalign.maps``), as a view."""
    return Projection(pca_map.place(features), "pca", pca_map.fitted_on, MAP_NOTE)


# ------------------------------------------------------------------------------ UMAP, in the worker child


def umap_onto(reference: np.ndarray, features: np.ndarray, folder: Path, *, seed: int = 0,
              n_neighbors: int = 15) -> Projection:
    """``features`` placed by umap-learn's ``transform`` on the UMAP map of ``reference`` (training rows).

    The map is fitted once (on a seeded sample of at most ``UMAP_MAX_FIT`` rows) and its coordinates kept
    under ``folder / "maps"``; a process that did not fit it rebuilds umap-learn's state from those
    coordinates (the neighbour graph of the same rows, no optimisation), and so does the process that fitted
    it: every process places rows on the same map.
    """
    ref = np.asarray(reference, dtype=np.float64)
    rows = ref if len(ref) <= UMAP_MAX_FIT else ref[np.sort(np.random.default_rng(seed).choice(
        len(ref), UMAP_MAX_FIT, replace=False))]
    key = projection_key(rows, "umap-map", seed=seed, fit_limit=UMAP_MAX_FIT, n_neighbors=n_neighbors)
    reducer = _REBUILT.get(key)
    if reducer is None:
        reducer = _REBUILT[key] = _rebuild(rows, _map_coords(rows, key, folder / "maps", seed, n_neighbors), seed,
                                           n_neighbors)
    _REBUILT.move_to_end(key)
    while len(_REBUILT) > _REBUILT_KEPT:
        _REBUILT.popitem(last=False)
    coords = umap_transform(reducer, np.asarray(features, dtype=np.float64), rows)
    return Projection(coords, "umap", len(rows), MAP_NOTE)


def _map_coords(rows: np.ndarray, key: str, folder: Path, seed: int, n_neighbors: int) -> np.ndarray:
    """The map's coordinates of ``rows``, fitted here unless already on disk; scaled into [0, 10] per axis
    as umap-learn scales a given initial layout, so the rebuilt map is the stored one."""
    found = load_cached(folder, key, len(rows))
    if found is not None:
        return found.coords
    coords = _umap(rows, None, seed, n_neighbors)
    span = np.ptp(coords, axis=0)
    coords = 10.0 * (coords - coords.min(0)) / np.where(span > 0, span, 1.0)
    save_cached(folder, key, Projection(coords, "umap", len(rows), ""))
    return coords


def _rebuild(rows: np.ndarray, coords: np.ndarray, seed: int, n_neighbors: int):
    """A umap-learn reducer holding the map ``coords`` of ``rows``: its neighbour graph, no epochs run."""
    reducer = umap_reducer(rows, seed, n_neighbors, n_epochs=0, init=coords.astype(np.float32))
    reducer.n_epochs = UMAP_EPOCHS  # transform then runs umap-learn's third of the fitting epochs
    return reducer
