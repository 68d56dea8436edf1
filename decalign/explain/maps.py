"""Projection maps fitted on a model's training samples: new data is only placed on them (``transform``).

A map belongs to one feature space of one model, named as the Embeddings page names them:
``unique:<m>`` (pooled unique features), ``common:<m>`` (the distribution encoder's output) and
``common:*`` (every modality's common rows in one map). Placing data on the training map instead of
fitting a projection to the data itself means a new upload costs a transform only, and a sample lands in
the same place whatever else was uploaded with it.

- PCA maps (:class:`PcaMap`, a mean and two axes) are fitted when the training reference is built and are
  stored in it (``decalign.train.reference``); placing rows is one product.
- UMAP maps are fitted on first use by the dashboard's projection worker on the same training rows (a
  seeded sample of at most ``UMAP_MAX_FIT``), and their coordinates are kept on disk beside the other
  projections; placing rows is umap-learn's ``transform`` onto the map (:func:`umap_onto`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .projection import (
    TRANSFORM_CHUNK,
    UMAP_EPOCHS,
    UMAP_MAX_FIT,
    Projection,
    _euclidean,
    _fit_pca,
    _umap,
    load_cached,
    projection_key,
    save_cached,
    stack_modalities,
)

JOINT = "common:*"
MAP_NOTE = ("Every projection is a map fitted on the model's training samples (kept with the model in its "
            "training reference); the samples shown are placed on it, so a sample lands in the same place "
            "whatever data it comes with.")
_REBUILT: OrderedDict[str, object] = OrderedDict()  # map key -> umap-learn reducer, in the worker child
_REBUILT_KEPT = 16


@dataclass(frozen=True)
class PcaMap:
    """The two leading principal axes of a space's training rows: ``coords = (x - mean) @ axes.T``."""

    mean: np.ndarray  # (d,)
    axes: np.ndarray  # (2, d); a zero row where the rows span fewer than two directions
    fitted_on: int  # training rows the map was fitted on

    @classmethod
    def fit(cls, rows: np.ndarray) -> PcaMap:
        x = np.asarray(rows, dtype=np.float64)
        pca = _fit_pca(x)  # scikit-learn's PCA, as for every other PCA view
        axes = np.zeros((2, x.shape[1]))
        axes[: len(pca.components_)] = pca.components_
        return cls(pca.mean_.copy(), axes, len(x))

    def place(self, features: np.ndarray) -> Projection:
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {x.shape} cannot be placed on a map of width {self.mean.shape[0]}")
        return Projection((x - self.mean) @ self.axes.T, "pca", self.fitted_on, MAP_NOTE)


def space_rows(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of every map's space: unique and common features per modality, and all common rows stacked."""
    rows = {f"unique:{m}": x for m, x in unique.items()}
    rows.update({f"common:{m}": x for m, x in common.items()})
    rows[JOINT] = stack_modalities(common)[0]
    return rows


def fit_pca_maps(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> dict[str, PcaMap]:
    """A :class:`PcaMap` per space (:func:`space_rows`) of the training rows."""
    return {space: PcaMap.fit(x) for space, x in space_rows(unique, common).items() if len(x) >= 1}


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
    x = np.asarray(features, dtype=np.float64)
    coords = np.empty((len(x), 2))
    with warnings.catch_warnings():  # umap-learn warns that transform assumes precomputed distances: it does
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, len(x), TRANSFORM_CHUNK):
            coords[start:start + TRANSFORM_CHUNK] = reducer.transform(_euclidean(x[start:start + TRANSFORM_CHUNK],
                                                                                 rows))
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
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(rows) - 1)), random_state=seed,
                        transform_seed=seed, n_epochs=0, init=coords.astype(np.float32), metric="precomputed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        reducer.fit(_euclidean(rows, rows))
    reducer.n_epochs = UMAP_EPOCHS  # transform then runs umap-learn's third of the fitting epochs
    return reducer
