"""Overview: the model card, training curves and the dataset at a glance.

Everything but the linear baseline comes from the card, the run's history and the data, so it is drawn
before the model is built; the baseline's comparison needs the model's scores and is filled in last. On a
fresh server this is the first page, and it then shows its charts without waiting for torch's import.
"""

from __future__ import annotations

import json

import streamlit as st

from app import charts
from app.context import baseline_view, get_card_context, with_model
from app.figures import overview as fig
from app.figures.style import short_hash
from decalign.safe_output import markdown_text
from decalign.train.runs import RunError, read_history


def render() -> None:
    ctx = get_card_context()
    card = ctx.card
    st.title("Overview")
    problems = st.container()  # where a model whose weights cannot be loaded is reported, at the top
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · "
               f"split **{ctx.split}**")
    left, right = st.columns(2)
    with left:
        st.subheader("Model card")
        st.markdown(f"Task: **{card.task}** · outputs: **{card.output_dim}** · source: **{markdown_text(card.source)}** · "
                    f"best epoch: **{card.best_epoch}** · seed: **{card.seed}**")
        st.dataframe(fig.card_summary(card), hide_index=True, key="overview_modalities")
        st.markdown(f"Training data: {markdown_text(card.data_source)}  \n"
                    f"Fingerprint: {markdown_text(short_hash(card.data_fingerprint))} · model id "
                    f"{markdown_text(short_hash(ctx.model_id))} · created {markdown_text(card.created_at)}",
                    help=f"Training-data fingerprint: {card.data_fingerprint}  \nModel id (weights and card): "
                         f"{ctx.model_id}")
        if card.class_names:
            st.caption("Classes: " + ", ".join(f"{i} = {markdown_text(n)}" for i, n in enumerate(card.class_names)))
        if card.extra.get("prototype_note"):
            st.info(markdown_text(f"Prototypes: {card.extra['prototype_note']}."))
    with right:
        st.subheader("Metrics per split")
        metrics = fig.metrics_table(card)
        if metrics.empty:
            st.info("The card records no metrics.")
        else:
            st.dataframe(metrics, key="overview_metrics")
        baseline_slot = st.container()
        with st.expander("Configuration"):
            st.code(json.dumps(card.config.to_dict(), indent=2), language="json")
    _training_curves(ctx.run_dir)
    st.subheader("Dataset")
    for warning in ctx.dataset.report.warnings:
        st.warning(markdown_text(f"Small data: {warning}."))
    if ctx.dataset.report.notes:
        st.caption(" · ".join(markdown_text(note) for note in ctx.dataset.report.notes))
    left, right = st.columns(2)
    charts.show_in(left, fig.split_sizes_figure(ctx.dataset), key="overview_sizes")
    charts.show_in(right, fig.label_distribution_figure(ctx.dataset, ctx.class_names), key="overview_labels")
    with problems:
        full = with_model(ctx)
    with baseline_slot:
        _baseline(full)


def _baseline(ctx) -> None:
    st.subheader("Linear baseline")
    baseline, comparison, note = baseline_view(ctx)
    if baseline is None:
        st.info(note or "No linear baseline: it needs labelled train and validation splits.")
        return
    if comparison is not None:
        (st.info if comparison["verdict"] == "beats" else st.warning)(comparison["sentence"])
    st.caption(f"{baseline['name'].capitalize()} on the input features averaged over time and standardised "
               f"({baseline['parameter']} = {baseline['value']:g}, chosen on the validation split)."
               + (f" {note}" if note else ""))
    st.dataframe(fig.baseline_table(baseline), key="overview_baseline")


def _training_curves(run_dir) -> None:
    st.subheader("Training curves")
    try:
        figures = fig.history_figures(fig.history_frame(read_history(run_dir)))
    except RunError as exc:
        st.warning(f"The training curves cannot be shown: {markdown_text(exc)}")
        return
    if not figures:
        st.info("This run has no history.json (imported or uploaded model): no training curves to show.")
    for i, figure in enumerate(figures.values()):
        charts.show(figure, key=f"overview_curve_{i}")
