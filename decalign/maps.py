"""PCA maps of a model's feature spaces, fitted on its training samples and stored in its training reference.

A map belongs to one feature space, named as the Embeddings page names them: ``unique:<m>`` (pooled unique
features), ``common:<m>`` (the distribution encoder's output) and ``common:*`` (every modality's common rows
in one map). New data is only placed on a map (``transform``): an upload costs one product, and a sample
lands in the same place whatever data it comes with. ``decalign.explain.maps`` places data on these maps
and on the UMAP maps fitted on the same training rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT = "common:*"


def fit_pca(x: np.ndarray):
    """scikit-learn's ``PCA`` with (at most) two components fitted on ``x``: every PCA view's fit."""
    from sklearn.decomposition import PCA  # here: scikit-learn's import costs a second of a cold page

    return PCA(n_components=min(2, x.shape[0], x.shape[1]), svd_solver="full").fit(x)


@dataclass(frozen=True)
class PcaMap:
    """The two leading principal axes of a space's training rows: ``coords = (x - mean) @ axes.T``."""

    mean: np.ndarray  # (d,)
    axes: np.ndarray  # (2, d); a zero row where the rows span fewer than two directions
    fitted_on: int  # training rows the map was fitted on

    @classmethod
    def fit(cls, rows: np.ndarray) -> PcaMap:
        x = np.asarray(rows, dtype=np.float64)
        pca = fit_pca(x)
        axes = np.zeros((2, x.shape[1]))
        axes[: len(pca.components_)] = pca.components_
        return cls(pca.mean_.copy(), axes, len(x))

    def place(self, features: np.ndarray) -> np.ndarray:
        """(N, 2) coordinates of ``features`` (N, d) on the map."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features of shape {x.shape} cannot be placed on a map of width {self.mean.shape[0]}")
        return (x - self.mean) @ self.axes.T


def space_rows(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows of every map's space (:func:`rows_of`)."""
    spaces = [*(f"unique:{m}" for m in unique), *(f"common:{m}" for m in common), JOINT]
    return {space: rows_of(unique, common, space) for space in spaces}


def rows_of(unique: dict[str, np.ndarray], common: dict[str, np.ndarray], space: str) -> np.ndarray:
    """Rows of one space: a modality's unique or common features, or for ``JOINT`` all common rows stacked
    (in modality order, as the joint views stack them)."""
    if space == JOINT:
        return np.concatenate([np.asarray(x) for x in common.values()])
    part, _, modality = space.partition(":")
    return {"unique": unique, "common": common}[part][modality]


def fit_pca_maps(unique: dict[str, np.ndarray], common: dict[str, np.ndarray]) -> dict[str, PcaMap]:
    """A :class:`PcaMap` per space (:func:`space_rows`) of the training rows."""
    return {space: PcaMap.fit(x) for space, x in space_rows(unique, common).items() if len(x) >= 1}
