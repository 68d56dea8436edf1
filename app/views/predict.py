"""Predict: every prediction of the chosen split or upload, filterable, downloadable; pick a row to open it."""

from __future__ import annotations

import streamlit as st

from app import charts, views
from app.context import Context, get_context
from app.figures import predict as fig
from app.session import select_sample, selected_sample
from decalign.explain.slices import result_metrics
from decalign.safe_output import frame_csv, markdown_text
from decalign.train.metrics import display_name


def render() -> None:
    ctx = get_context()
    st.title("Predict")
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · split **{ctx.split}** · "
               f"{len(ctx.result):,} samples")
    frame = fig.predictions_frame(ctx.result, ctx.split_data, ctx.card, ctx.class_names)
    _metrics(ctx)
    shown = fig.filter_frame(frame, **_filters(ctx, frame))
    st.caption(f"{len(shown):,} of {len(frame):,} rows shown; click a row to select that sample.")
    event = st.dataframe(shown, hide_index=True, on_select="rerun", selection_mode="single-row",
                         key="predict_table", height=420)
    rows = event.selection.rows if event is not None else []
    if rows:
        select_sample(shown.iloc[rows[0]]["id"])
    chosen = selected_sample()
    left, right = st.columns(2)
    if left.button(f"Open sample {markdown_text(chosen)} on the Sample page" if chosen else "Select a row first",
                   key="predict_open", disabled=chosen is None):
        st.switch_page(views.page("sample"))
    right.download_button("Download CSV", frame_csv(shown).encode("utf-8"),  # formula-safe
                          file_name=f"predictions_{ctx.split}.csv", mime="text/csv", key="predict_csv")
    charts.show(fig.summary_figure(shown, ctx.card.task, ctx.card.num_classes or ctx.dataset.num_classes,
                                   ctx.class_names), key="predict_summary")


def _metrics(ctx: Context) -> None:
    if ctx.result.labels is None:
        st.info("This split has no labels: predictions only, no metrics.")
        return
    values = result_metrics(ctx.result, ctx.card)
    shown = {k: v for k, v in values.items() if not k.startswith("F1_class_")}
    for column, (name, value) in zip(st.columns(len(shown)), shown.items()):
        column.metric(display_name(name), f"{value:.4f}")


def _filters(ctx: Context, frame) -> dict:
    # Filter ranges belong to one table: keyed by data and split so a new upload starts unfiltered.
    tag = f"{ctx.data_id[:12]}_{ctx.split}"
    cols = st.columns(3)
    out: dict = {}
    if "error" in frame and len(frame):
        lo, hi = float(frame["error"].min()), float(frame["error"].max())
        if hi > lo:
            out["error_range"] = cols[0].slider("Error", lo, hi, (lo, hi), key=f"predict_error_{tag}")
    if ctx.card.task == "classification":
        order = [ctx.class_name(k) for k in range(ctx.card.output_dim)] if ctx.class_names else range(ctx.card.output_dim)
        classes = [c for c in order if c in set(frame["prediction"])]
        if "label" in frame:
            labels = [c for c in order if c in set(frame["label"])]
            out["labels"] = cols[1].multiselect("Label", labels, key=f"predict_labels_{tag}")
        out["predictions"] = cols[2].multiselect("Prediction", classes, key=f"predict_predictions_{tag}")
    else:
        for col, name in ((cols[1], "label"), (cols[2], "prediction")):
            if name in frame and len(frame) and frame[name].max() > frame[name].min():
                lo, hi = float(frame[name].min()), float(frame[name].max())
                out[f"{name}s"] = tuple(col.slider(name.capitalize(), lo, hi, (lo, hi), key=f"predict_{name}_{tag}"))
    return out
