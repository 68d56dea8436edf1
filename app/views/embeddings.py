"""Embeddings: unique and common features of every modality in 2-D, the modalities' aligned common parts
in one shared projection with numbers for how well they overlap and how well classes separate, and (for
the bundled demo) the same beside the model trained without alignment. Select points to list them and
open one on the Sample page."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, loaders, views
from app.context import Context, Side, alignment_sides, get_context
from app.figures import embeddings as fig
from app.session import select_sample
from decalign.explain.maps import place_on
from decalign.explain.overlap import (
    Separability,
    alignment_effect_sentence,
    class_separation,
    modality_overlap,
    overlap_sentence,
)
from decalign.explain.projection import (
    MIN_UMAP_ROWS,
    UMAP_MAX_FIT,
    Projection,
    Request,
    project,
    stack_modalities,
)
from decalign.explain.transport_view import label_groups
from decalign.inference import InferenceResult
from decalign.maps import JOINT, PcaMap, rows_of
from decalign.safe_output import markdown_text
from decalign.train.reference import TrainingReference

METHODS = {"UMAP": "umap", "PCA": "pca"}
# UMAP fits on a sample of at most UMAP_MAX_FIT rows (its exact-distance path; quiet 2-core machine:
# 3,000 rows of width 40 in 2.4 s, 4,000 in 3.7 s) and transforms the rest. PCA: 200,000 points in ~1.3 s.
FIT_LIMITS = {"umap": UMAP_MAX_FIT, "pca": 200_000}
# How often each projection was really computed (not served from the cache), by space; read by tests.
PROJECTION_CALLS: Counter = Counter()
COMMON_CAPTION = ("**common** = the output of each modality's distribution encoder: the space where moment "
                  "matching and MMD pull the modalities together (the pooled common features feed the head, "
                  "but no loss aligns them).")


@st.cache_data(show_spinner=False, max_entries=64)
def _pca(model_id: str, data_id: str, split: str, space: str, _features: np.ndarray) -> Projection:
    PROJECTION_CALLS[space] += 1
    return project(_features, "pca", fit_limit=FIT_LIMITS["pca"])


@st.cache_data(show_spinner=False, max_entries=64)
def _placed(model_id: str, data_id: str, split: str, space: str, _map: PcaMap, _features: np.ndarray) -> Projection:
    PROJECTION_CALLS[space] += 1
    return place_on(_map, _features)


def _view(ctx: Context, space: str, method: str, features: np.ndarray, waiting: list[Request],
          reference: TrainingReference | None) -> Projection:
    """The features placed on the training map of ``space`` when the model's ``reference`` has one (PCA at
    once; UMAP from the server's background worker, the PCA map in its place until it is ready, the request
    then going into ``waiting``); without a map, a projection fitted to the features themselves, the same way."""
    pca_map = reference.maps.get(space) if reference is not None else None
    if pca_map is not None and (pca_map.mean.shape[0] != features.shape[1] or reference.train_distribution is None):
        pca_map = None  # a model's spaces and its reference always agree; a mismatch falls back to fitting
    if method == "umap":
        rows = None if pca_map is None else rows_of(reference.train_unique, reference.train_distribution, space)
        request = (Request(features, "umap", reference=rows) if rows is not None and len(rows) >= MIN_UMAP_ROWS
                   else Request(features, "umap", fit_limit=FIT_LIMITS["umap"]))
        worker = loaders.projection_worker()
        found = worker.get(request)
        if found is not None:
            return found
        error = worker.error(request)
        waiting.append(request)
        pca = _pca_view(ctx, space, features, pca_map)
        if error:
            return replace(pca, note=f"UMAP failed ({error}); PCA is shown instead.")
        return pca
    return _pca_view(ctx, space, features, pca_map)


def _pca_view(ctx: Context, space: str, features: np.ndarray, pca_map: PcaMap | None) -> Projection:
    if pca_map is not None:
        return _placed(ctx.model_id, ctx.data_id, ctx.split, space, pca_map, features)
    return _pca(ctx.model_id, ctx.data_id, ctx.split, space, features)


def _joint(ctx: Context, side: Side | None, method: str, features: dict[str, np.ndarray], waiting: list[Request]
           ) -> tuple[Projection, np.ndarray]:
    """The shared projection of every modality's rows (``project_joint``'s stacking), for the current model
    or the ``side`` model."""
    stacked, owners = stack_modalities(features)
    if side is None or side.model_id == ctx.model_id:
        return _view(ctx, JOINT, method, stacked, waiting, ctx.reference), owners
    return _view(replace(ctx, model_id=side.model_id), JOINT, method, stacked, waiting, side.reference), owners


@dataclass(frozen=True)
class Shown:
    """The samples a run's charts draw: their ``rows`` in the result, the result cut to them, their hover texts,
    and the result's ``total`` of samples."""

    rows: np.ndarray
    result: InferenceResult
    hover: np.ndarray
    total: int


def _await_umap(waiting: list[Request]) -> None:
    """Progress of the UMAP views computed in the background; redraws the page once they are all there."""
    worker = loaders.projection_worker()
    ready = sum(worker.ready(r) for r in waiting)
    if ready == len(waiting):
        st.rerun()
    st.progress(ready / len(waiting), text=f"UMAP is being computed in the background: {ready} of {len(waiting)} "
                "views ready. PCA is shown until then; the page swaps UMAP in by itself, and the result is kept "
                "on disk for the next visit.")


@st.cache_data(show_spinner="Measuring how the modalities overlap…", max_entries=64)
def _separability(model_id: str, data_id: str, split: str, space: str, _features: dict[str, np.ndarray],
                  _groups: np.ndarray | None) -> tuple[Separability | None, Separability | None]:
    overlap = modality_overlap(_features) if len(_features) > 1 else None
    separation = class_separation(_features, _groups) if _groups is not None else None
    return overlap, separation


def render() -> None:
    ctx = get_context()
    st.title("Embeddings")
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · split "
               f"**{ctx.split}** · {len(ctx.result):,} samples. " + COMMON_CAPTION)
    left, right = st.columns(2)
    method = METHODS[left.radio("Projection", list(METHODS), key="emb_method", horizontal=True,
                                help="UMAP keeps neighbourhoods; it is computed in the background (PCA is shown "
                                     "until it is ready) and kept on disk. PCA is instant and linear.")]
    colour = right.selectbox("Colour by", fig.COLOUR_BY, index=1, key="emb_colour")
    selected: set[int] = set()
    notes: set[str] = set()
    waiting: list[Request] = []
    progress = st.container()
    st.subheader("Common features of all modalities, one shared projection")
    shown = _shown(ctx, ctx.result)
    selected |= _joint_section(ctx, shown, method, colour, notes, waiting)
    _alignment_changed(ctx, method, colour, notes, waiting)
    st.subheader("Each modality: unique features (left) and aligned common features (right)")
    for m in ctx.model.modalities:
        cols = st.columns(2)
        for col, space in zip(cols, (f"unique:{m}", f"common:{m}")):
            proj = _view(ctx, space, method, fig.space_features(ctx.result, space), waiting, ctx.reference)
            notes.add(proj.note)
            with col:
                selected |= _chart(ctx, shown, proj.coords, m, colour,
                                   f"{space} · {proj.method.upper()}", f"emb_chart_{space}")
    if shown_note := fig.shown_note(len(ctx.result), len(ctx.model.modalities)):
        st.caption(shown_note)
    if waiting:
        with progress:
            st.fragment(_await_umap, run_every=2.0)(waiting)
    for note in sorted(n for n in notes if n):
        st.info(note)
    _selection(ctx, np.array(sorted(selected), dtype=int))


def _groups(ctx: Context, result: InferenceResult) -> np.ndarray | None:
    return label_groups(result.labels, result.task, ctx.class_names)


def _joint_section(ctx: Context, shown: Shown, method: str, colour: str, notes: set[str], waiting: list[Request]
                   ) -> set[int]:
    common = fig.common_features(ctx.result)
    overlap, separation = _separability(ctx.model_id, ctx.data_id, ctx.split, "common", common,
                                        _groups(ctx, ctx.result))
    _numbers(overlap, separation)
    joint, owners = _joint(ctx, None, method, common, waiting)
    notes.add(joint.note)
    chosen = _joint_chart(ctx, shown, joint, owners, colour, "emb_chart_joint",
                          f"common:* · {joint.method.upper()}")
    st.caption(overlap_sentence(overlap, separation, "labels" if ctx.card.task == "classification"
                                else "sign of the label") + " Both are cross-validated k-nearest-neighbour "
               "balanced accuracies on the features themselves (not on the 2-D picture).")
    return chosen


def _numbers(overlap: Separability | None, separation: Separability | None) -> None:
    cols = st.columns(2)
    if overlap is not None:
        cols[0].metric(f"Modalities told apart (chance {overlap.chance:.2f})", f"{overlap.accuracy:.2f}",
                       help="Balanced accuracy of a k-nearest-neighbour classifier guessing each point's modality (5-fold, a sample's "
                            "rows held out together). Near chance: the modalities overlap, as alignment intends; "
                            "near 1: each modality is its own island.")
    if separation is not None:
        cols[1].metric(f"Classes told apart (chance {separation.chance:.2f})", f"{separation.accuracy:.2f}",
                       help="The same classifier guesses each point's label (class, or sign of the label). Far "
                            "above chance: the classes form separate groups in this space.")


def _alignment_changed(ctx: Context, method: str, colour: str, notes: set[str], waiting: list[Request]) -> None:
    sides = alignment_sides(ctx)
    if sides is None:
        return
    numbers = {}
    for col, side in zip(st.columns(2), sides):
        common = fig.common_features(side.result)
        numbers[side.title] = _separability(side.model_id, ctx.data_id, ctx.split, "common", common,
                                            _groups(ctx, side.result))
        joint, owners = _joint(ctx, side, method, common, waiting)
        notes.add(joint.note)
        with col:
            st.markdown(f"**{side.title}** ({markdown_text(side.label)})")
            _numbers(*numbers[side.title])
            _joint_chart(ctx, _shown(ctx, side.result), joint, owners, colour,
                         f"emb_twin_chart_{side.title.split()[0]}", f"common:* · {joint.method.upper()}",
                         select=False)
    with_overlap, without_overlap = numbers[sides[0].title][0], numbers[sides[1].title][0]
    if with_overlap is not None and without_overlap is not None:
        st.info(alignment_effect_sentence(with_overlap, without_overlap))
    st.dataframe(_space_table(ctx, sides), hide_index=True, key="emb_twin_table")


def _space_table(ctx: Context, sides: tuple[Side, Side]) -> pd.DataFrame:
    """Overlap and separation of every space, for both models."""
    rows = []
    for side in sides:
        spaces = {"common": ("aligned common (distribution encoders)", fig.common_features(side.result)),
                  "unique": ("unique", side.result.unique_pooled),
                  "pooled": ("pooled common (the head's input)", side.result.common_pooled)}
        for space, (name, features) in spaces.items():
            overlap, separation = _separability(side.model_id, ctx.data_id, ctx.split, space, features,
                                                _groups(ctx, side.result))
            rows.append({"model": side.title, "space (all modalities)": name,
                         "modalities told apart": None if overlap is None else round(overlap.accuracy, 3),
                         "chance (modalities)": None if overlap is None else round(overlap.chance, 3),
                         "classes told apart": None if separation is None else round(separation.accuracy, 3),
                         "chance (classes)": None if separation is None else round(separation.chance, 3)})
    return pd.DataFrame(rows)


def _shown(ctx: Context, result: InferenceResult) -> Shown:
    """The samples the charts draw (``fig.shown_samples``), cut out of ``result`` once a run: colours and hover
    texts are made for them alone (on 20,000 samples every chart made them for all 20,000 until stop 52)."""
    rows = fig.shown_samples(len(result), len(ctx.model.modalities))
    raw_text = ctx.split_data.raw_text
    part = result.subset(rows)
    return Shown(rows, part, fig.hover_texts(part, None if raw_text is None else raw_text[rows]), len(result))


def _chart(ctx: Context, shown: Shown, coords: np.ndarray, modality: str, colour: str, title: str,
           key: str) -> set[int]:
    values, continuous = fig.colour_values(shown.result, colour, modality, ctx.class_names, ctx.card)
    order = fig.category_order(shown.result, colour, ctx.class_names, ctx.model.modalities)
    figure = fig.scatter_figure(coords[shown.rows], values, continuous, shown.hover, shown.rows, title, colour,
                                order)
    event = charts.show(figure, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"))
    return set(fig.selected_rows(event.selection if event else None).tolist())


def _joint_chart(ctx: Context, shown: Shown, joint: Projection, owners: np.ndarray, colour: str,
                 key: str, title: str, select: bool = True) -> set[int]:
    modalities = list(fig.common_features(shown.result))
    picked = np.concatenate([k * shown.total + shown.rows for k in range(len(modalities))])  # stacked by modality
    owners = owners[picked]
    parts = [fig.colour_values(shown.result, colour, m, ctx.class_names, ctx.card) for m in modalities]
    values, continuous = np.concatenate([values for values, _ in parts]), parts[-1][1]
    order = fig.category_order(shown.result, colour, ctx.class_names, modalities)
    if colour == "prototype":  # the same prototype number means different things in different modalities
        values = np.array([f"{o} {v}" for o, v in zip(owners, values)], dtype=object)
        order = None
    hover = np.array([f"{h}<br>modality: {o}" for h, o in zip(np.tile(shown.hover, len(modalities)), owners)],
                     dtype=object)
    rows = np.tile(shown.rows, len(modalities))
    figure = fig.scatter_figure(joint.coords[picked], values, continuous, hover, rows, title, colour, order)
    if not select:
        charts.show(figure, key=key)
        return set()
    event = charts.show(figure, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"))
    return set(fig.selected_rows(event.selection if event else None).tolist())


def _selection(ctx: Context, rows: np.ndarray) -> None:
    st.subheader("Selected samples")
    if len(rows) == 0:
        st.caption("Select points with the lasso or box tool (or click one) in any chart to list them here.")
        return
    st.caption(f"{len(rows):,} selected (union of the selections in all charts).")
    table = fig.sample_table(ctx.result, ctx.split_data.raw_text, rows, ctx.class_names)
    st.dataframe(table, hide_index=True, key="emb_table")
    left, right = st.columns([3, 1])
    choice = left.selectbox("Sample to open", table["id"].tolist(), key="emb_open_id")
    if right.button("Open on the Sample page", key="emb_open"):
        select_sample(choice)
        st.switch_page(views.page("sample"))
