"""Embeddings: unique and common features of every modality in 2-D, and the modalities' common parts
in one shared projection. Select points to list them and open one on the Sample page."""

from __future__ import annotations

from collections import Counter

import numpy as np
import streamlit as st

from app.context import Context, get_context
from app.figures import embeddings as fig
from app.session import select_sample
from app.views import sample
from decalign.explain.projection import Projection, project, project_joint
from decalign.safe_output import markdown_text

URL_PATH = "embeddings"
METHODS = {"UMAP": "umap", "PCA": "pca"}
# Measured on the 2-core CI box under load (load average ~8): numba compiles UMAP once per process
# (~50 s); then UMAP fits 3,000 points of width 40 in ~30 s and 5,000 in ~55 s, while fitting 5,000 of
# 10,000 and transforming the rest took ~10 s (timings swing with the load). PCA: 200,000 points in ~1.3 s.
FIT_LIMITS = {"umap": 5000, "pca": 200_000}
# How often each projection was really computed (not served from the cache), by space; read by tests.
PROJECTION_CALLS: Counter = Counter()


@st.cache_data(show_spinner=False, max_entries=64)
def _projection(model_id: str, data_id: str, split: str, space: str, method: str,
                _features: np.ndarray) -> Projection:
    PROJECTION_CALLS[space] += 1
    return project(_features, method, fit_limit=FIT_LIMITS[method])


@st.cache_data(show_spinner=False, max_entries=16)
def _joint(model_id: str, data_id: str, split: str, method: str,
           _features: dict[str, np.ndarray]) -> tuple[Projection, np.ndarray]:
    PROJECTION_CALLS["joint"] += 1
    return project_joint(_features, method, fit_limit=FIT_LIMITS[method])


def render() -> None:
    ctx = get_context()
    st.title("Embeddings")
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · split **{ctx.split}** · "
               f"{len(ctx.result):,} samples")
    left, right = st.columns(2)
    method = METHODS[left.radio("Projection", list(METHODS), key="emb_method", horizontal=True,
                                help="UMAP keeps neighbourhoods (the first UMAP run compiles for up to a minute); "
                                     "PCA is instant and linear.")]
    colour = right.selectbox("Colour by", fig.COLOUR_BY, index=1, key="emb_colour")
    selected: set[int] = set()
    notes: set[str] = set()
    with st.spinner(f"Projecting with {method.upper()}… (cached afterwards)"):
        for m in ctx.model.modalities:
            cols = st.columns(2)
            for col, space in zip(cols, (f"unique:{m}", f"common:{m}")):
                proj = _projection(ctx.model_id, ctx.data_id, ctx.split, space, method,
                                   fig.space_features(ctx.result, space))
                notes.add(proj.note)
                with col:
                    selected |= _chart(ctx, proj.coords, np.arange(len(ctx.result)), m, colour,
                                       f"{space} · {proj.method.upper()}", f"emb_chart_{space}")
        st.subheader("Common features of all modalities, one shared projection")
        joint, owners = _joint(ctx.model_id, ctx.data_id, ctx.split, method, ctx.result.common_pooled)
        notes.add(joint.note)
        selected |= _joint_chart(ctx, joint, owners, colour)
    st.caption("The common parts of a well-aligned model overlap across modalities in the shared projection; "
               "separate islands per modality mean the common spaces still differ.")
    for note in sorted(n for n in notes if n):
        st.info(note)
    _selection(ctx, np.array(sorted(selected), dtype=int))


def _chart(ctx: Context, coords: np.ndarray, rows: np.ndarray, modality: str, colour: str, title: str,
           key: str) -> set[int]:
    values, continuous = fig.colour_values(ctx.result, colour, modality, ctx.card.class_names, ctx.card)
    hover = fig.hover_texts(ctx.result, ctx.split_data.raw_text)
    figure = fig.scatter_figure(coords, values[rows], continuous, hover[rows], rows, title, colour)
    event = st.plotly_chart(figure, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"))
    return set(fig.selected_rows(event.selection if event else None).tolist())


def _joint_chart(ctx: Context, joint: Projection, owners: np.ndarray, colour: str) -> set[int]:
    n = len(ctx.result)
    rows = np.tile(np.arange(n), len(ctx.model.modalities))
    parts, continuous = [], False
    for m in ctx.model.modalities:
        values, continuous = fig.colour_values(ctx.result, colour, m, ctx.card.class_names, ctx.card)
        parts.append(values)
    values = np.concatenate(parts)
    if colour == "prototype":  # the same prototype number means different things in different modalities
        values = np.array([f"{o} {v}" for o, v in zip(owners, values)], dtype=object)
    hover = np.array([f"{h}<br>modality: {o}" for h, o in
                      zip(np.tile(fig.hover_texts(ctx.result, ctx.split_data.raw_text), len(parts)), owners)],
                     dtype=object)
    figure = fig.scatter_figure(joint.coords, values, continuous, hover, rows,
                                f"common:* · {joint.method.upper()}", colour)
    event = st.plotly_chart(figure, key="emb_chart_joint", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))
    return set(fig.selected_rows(event.selection if event else None).tolist())


def _selection(ctx: Context, rows: np.ndarray) -> None:
    st.subheader("Selected samples")
    if len(rows) == 0:
        st.caption("Select points with the lasso or box tool (or click one) in any chart to list them here.")
        return
    st.caption(f"{len(rows):,} selected (union of the selections in all charts).")
    table = fig.sample_table(ctx.result, ctx.split_data.raw_text, rows, ctx.card.class_names)
    st.dataframe(table, hide_index=True, key="emb_table")
    left, right = st.columns([3, 1])
    choice = left.selectbox("Sample to open", table["id"].tolist(), key="emb_open_id")
    if right.button("Open on the Sample page", key="emb_open"):
        select_sample(choice)
        st.switch_page(st.Page(sample.render, title="Sample", url_path=sample.URL_PATH))
