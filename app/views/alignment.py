"""Alignment levels: the five levels of DecAlign's hierarchy on the current data, per modality pair,
beside the training set and over the training epochs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts
from app.context import Context, Side, alignment_sides, get_context
from app.figures import alignment as fig
from decalign.explain.compare import levels_side_by_side
from decalign.explain.levels import (
    GROUPS,
    LEVEL_MEANING,
    LEVEL_TITLES,
    LEVELS,
    WEIGHTED,
    alignment_levels,
    level_totals,
    levels_history,
)
from decalign.safe_output import markdown_text
from decalign.train.runs import RunError, read_history

PROTOTYPE_CHOICES = ("Training prototypes (model card)", "Fitted on each chunk, as in training")
MAX_SAMPLES = 4096


@st.cache_data(show_spinner="Computing the alignment levels…", max_entries=16)
def _levels(model_id: str, data_id: str, split: str, fixed: bool, _ctx: Context) -> pd.DataFrame:
    prototypes = _ctx.card.prototype_tensors() if fixed else None
    return alignment_levels(_ctx.model, _ctx.split_data, prototypes=prototypes,
                            batch_size=_ctx.card.config.train.batch_size, max_samples=MAX_SAMPLES,
                            weights=_ctx.card.config.train)


def render() -> None:
    ctx = get_context()
    st.title("Alignment levels")
    options = PROTOTYPE_CHOICES if ctx.card.prototypes else PROTOTYPE_CHOICES[1:]
    choice = st.radio("Prototypes for levels 2 and 3", options, key="align_protos", horizontal=True)
    levels = _levels(ctx.model_id, ctx.data_id, ctx.split, choice == PROTOTYPE_CHOICES[0], ctx)
    training = ctx.card.extra.get("training_alignment")
    try:
        history = levels_history(read_history(ctx.run_dir))
    except RunError as exc:
        st.warning(f"The per-epoch values cannot be shown: {markdown_text(exc)}")
        history = levels_history([])
    n = int(levels.samples.iloc[0])
    st.caption(f"Split **{ctx.split}**: {n:,} samples"
               + (f" (a random {MAX_SAMPLES:,} of {len(ctx.split_data):,})" if n < len(ctx.split_data) else "")
               + f", in chunks of {ctx.card.config.train.batch_size} like training batches; each level is the "
               f"chunk-size-weighted mean, under the model's {ctx.card.config.model.objective} objective. Lower "
               "is better-aligned for every level.")
    st.dataframe(_summary(levels, training, ctx.card.config.train), hide_index=True, key="align_summary")
    for level in LEVELS:
        st.subheader(LEVEL_TITLES[level])
        left, right = st.columns([3, 2])
        charts.show_in(left, fig.level_figure(levels, level, fig.training_value(training, level), "this data"),
                       key=f"align_level_{level}")
        curve = fig.history_figure(history, level)
        if curve is None:
            right.info("No per-epoch values of this level in the run's history.json.")
        else:
            charts.show_in(right, curve, key=f"align_history_{level}")
        st.caption(LEVEL_MEANING[level])
    _alignment_changed(ctx, choice == PROTOTYPE_CHOICES[0])


@st.cache_data(show_spinner="Computing the twin's alignment levels…", max_entries=8)
def _side_levels(model_id: str, data_id: str, split: str, fixed: bool, _side: Side, _ctx: Context) -> pd.DataFrame:
    prototypes = _side.card.prototype_tensors() if fixed else None
    return alignment_levels(_side.model, _ctx.split_data, prototypes=prototypes,
                            batch_size=_side.card.config.train.batch_size, max_samples=MAX_SAMPLES)


def _alignment_changed(ctx: Context, fixed: bool) -> None:
    sides = alignment_sides(ctx)
    if sides is None:
        return
    frames = [_side_levels(s.model_id, ctx.data_id, ctx.split, fixed and bool(s.card.prototypes), s, ctx)
              for s in sides]
    table = levels_side_by_side(*frames)
    names = (sides[0].title, sides[1].title)
    charts.show(fig.comparison_figure(table, names), key="align_twin_chart")
    shown = table[table["kind"] == "total"].rename(columns={"A": names[0], "B": names[1]})
    st.dataframe(shown.drop(columns=["kind", "scope"]), hide_index=True, key="align_twin_table")
    st.caption("Both models were trained on the same data with the same seed and settings; the second with every "
               "alignment weight at 0, so none of these levels moved its weights. A level clearly lower with "
               "alignment is what that term of the loss achieved; a level about equal on both is one the task "
               "alone already brings about, or one the alignment weight is too small to change.")


def _summary(levels: pd.DataFrame, training: dict | None, weights) -> pd.DataFrame:
    totals = level_totals(levels)
    train = {level: fig.training_value(training, level) for level in LEVELS}
    for group, members in GROUPS.items():  # the official hete_loss and homo_loss
        parts = [train[m] for m in members]
        train[group] = None if None in parts else sum(parts)
    parts = [train["decoupling"], train["heterogeneous"], train["homogeneous"]]
    train[WEIGHTED] = None if None in parts else (weights.dec_loss_weight * parts[0] + weights.alpha * parts[1]
                                                  + weights.beta * parts[2])
    names = {**LEVEL_TITLES, **{g: f"{g} ({' + '.join(m)})" for g, m in GROUPS.items()},
             WEIGHTED: "weighted alignment part of the training loss"}
    return pd.DataFrame([{"level": names[key], "current data": f"{totals[key]:.4g}",
                          "training set": "not recorded" if train[key] is None else f"{train[key]:.4g}"}
                         for key in names])
