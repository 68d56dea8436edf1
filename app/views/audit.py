"""Audit: every prediction with its flags, metrics per slice, calibration, drift against the training
data, the audit trail, and a downloadable HTML report."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app import session
from app.context import Context, get_context
from app.figures import audit as fig
from decalign.audit import AuditError, AuditTrail, default_audit_path
from decalign.audit.drift import batch_drift
from decalign.audit.flags import compute_flags, flag_columns
from decalign.audit.report import build_report, explain_rows
from decalign.audit.rows import prediction_rows
from decalign.audit.table import prediction_table
from decalign.explain.slices import SLICE_KINDS, slice_metrics
from decalign.inference import InferenceResult, run_inference
from decalign.safe_output import markdown_text
from decalign.train.reference import TrainingReference, build_reference

MIN_DRIFT = 10  # fewer samples than this: no drift test


def render() -> None:
    ctx = get_context()
    st.title("Audit")
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · split **{ctx.split}** · "
               f"{len(ctx.result):,} samples")
    reference = _reference(ctx)
    result = _result(ctx, reference)
    flags = _flags(ctx, reference, result)
    _record(ctx, result, flags)
    table = prediction_table(result, flags, ctx.split, ctx.split_data.raw_text, ctx.card)
    _predictions(table, flags)
    if result.labels is not None:
        _slices(ctx, result, flags)
        _quality(ctx, result)
    _drift(ctx, reference, result)
    _trail_section(ctx)
    _report(ctx, reference, result, flags)


# ----------------------------------------------------------------------------------- cached maths


@st.cache_resource(show_spinner="Summarising the training data…", max_entries=4)
def _built_reference(model_id: str, data_id: str, _ctx: Context) -> TrainingReference:
    return build_reference(_ctx.model, _ctx.card, _ctx.dataset.splits["train"])


def _reference(ctx: Context) -> TrainingReference | None:
    if ctx.reference is not None:
        return ctx.reference
    train = ctx.dataset.splits.get("train")
    if train is None or len(train) < 2:
        st.info("This model has no saved training reference and the data has no train split: unusual-input "
                "flags and drift are not available.")
        return None
    st.caption("No saved training reference: using this data's train split as the training data.")
    return _built_reference(ctx.model_id, ctx.data_id, ctx)


@st.cache_data(show_spinner="Scoring against the training patterns…", max_entries=8)
def _scored(model_id: str, data_id: str, split: str, _ctx: Context, _ref: TrainingReference) -> InferenceResult:
    return run_inference(_ctx.model, _ctx.split_data, task=_ctx.card.task, prototypes=_ref.prototypes)


def _result(ctx: Context, reference: TrainingReference | None) -> InferenceResult:
    # Prototype slices need posteriors over the reference prototypes; the shared result may lack them.
    if reference is None or ctx.result.posteriors is not None:
        return ctx.result
    return _scored(ctx.model_id, ctx.data_id, ctx.split, ctx, reference)


@st.cache_data(show_spinner=False, max_entries=8)
def _cached_flags(model_id: str, data_id: str, split: str, _result: InferenceResult, _ref, _card) -> pd.DataFrame:
    return compute_flags(_result, _ref, _card)


def _flags(ctx: Context, reference, result) -> pd.DataFrame | None:
    if reference is None:
        return None
    return _cached_flags(ctx.model_id, ctx.data_id, ctx.split, result, reference, ctx.card)


@st.cache_data(show_spinner="Testing for drift…", max_entries=8)
def _cached_drift(model_id: str, data_id: str, split: str, _result, _ref, _card) -> pd.DataFrame:
    return batch_drift(_result, _ref, n_resamples=10, var_floor=_card.config.model.gmm_var_floor)


# ------------------------------------------------------------------------------------------ sections


def _predictions(table: pd.DataFrame, flags: pd.DataFrame | None) -> None:
    st.subheader("Predictions")
    if flags is not None:
        counts = {c: int(flags[c].sum()) for c in flag_columns(flags)}
        st.caption(f"{int(flags['any_flag'].sum()):,} flagged: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    cols = st.columns(3)
    filters = {
        "labels": cols[0].multiselect("Label", sorted(table["label"].dropna().unique().tolist()),
                                      key="audit_labels") if table["label"].notna().any() else (),
        "predictions": cols[1].multiselect("Prediction", sorted(table["prediction"].unique().tolist()),
                                           key="audit_predictions"),
        "branches": cols[2].multiselect("Dominant branch", sorted(table["dominant_branch"].unique()),
                                        key="audit_branches"),
    }
    cols = st.columns(3)
    err = table["error"].dropna()
    if len(err) and err.max() > err.min():
        filters["error_range"] = cols[0].slider("Error", float(err.min()), float(err.max()),
                                                (float(err.min()), float(err.max())), key="audit_error")
    if flags is not None:
        filters["flags"] = cols[1].multiselect("Flags", flag_columns(flags), key="audit_flags")
        filters["only_flagged"] = cols[2].checkbox("Only flagged samples", key="audit_only_flagged")
    shown = fig.filter_predictions(table, **filters)
    st.caption(f"{len(shown):,} of {len(table):,} rows shown.")
    st.dataframe(shown, hide_index=True, key="audit_table", height=360)


def _slices(ctx: Context, result, flags) -> None:
    st.subheader("Metrics per slice")
    options = [k for k in SLICE_KINDS if k != "flags" or flags is not None]
    options += [f"prototype:{m}" for m in (result.posteriors or {})]
    by = st.selectbox("Slice by", options, key="audit_slice_by")
    table = slice_metrics(result, flags, ctx.card, by=by)
    if by in ("class", "label_bin") and ctx.class_names:  # class slices by name
        table["slice"] = table["slice"].map(lambda v: ctx.class_name(int(v)) if str(v).isdigit() else v)
    st.dataframe(table, hide_index=True, key="audit_slices")


def _quality(ctx: Context, result) -> None:
    if result.task == "regression":
        st.plotly_chart(fig.residual_figure(result), key="audit_residuals")
        return
    left, right = st.columns(2)
    left.plotly_chart(fig.confusion_figure(result, ctx.class_names), key="audit_confusion")
    right.plotly_chart(fig.reliability_figure(result), key="audit_reliability")


def _drift(ctx: Context, reference, result) -> None:
    st.subheader("Drift against the training data")
    if reference is None or len(result) < MIN_DRIFT:
        st.info(f"Drift needs a training reference and at least {MIN_DRIFT} samples.")
        return
    drift = _cached_drift(ctx.model_id, ctx.data_id, ctx.split, result, reference, ctx.card)
    drifted = drift[drift.drifted]
    st.metric("Drifted from the training data?", "yes" if len(drifted) else "no",
              help="A statistic above the 95th percentile of the same statistic on random training subsets "
                   "of this size.")
    if len(drifted):
        st.warning("Drifted: " + ", ".join(f"{r.modality} ({r.space} space)" for r in drifted.itertuples()))
    st.plotly_chart(fig.drift_figure(drift), key="audit_drift_chart")
    st.dataframe(drift, hide_index=True, key="audit_drift_table")


def _open_trail() -> AuditTrail:
    return AuditTrail(default_audit_path())


def _record(ctx: Context, result, flags) -> None:
    """Record this split's predictions once per (model, data, split)."""
    key = (ctx.model_id, ctx.data_id, ctx.split)
    if session.audit_recorded(key):
        return
    try:
        trail = _open_trail()
        if not trail.count(checkpoint_fingerprint=ctx.model_id, input_sha256=ctx.data_id, split=ctx.split,
                           source="dashboard"):
            trail.record_predictions(prediction_rows(
                result, source="dashboard", checkpoint_fingerprint=ctx.model_id, input_sha256=ctx.data_id,
                input_name=ctx.data_label, split=ctx.split, flags=flags))
    except AuditError as exc:
        st.warning(f"The audit trail could not be written: {markdown_text(exc)}")
        return
    session.mark_audit_recorded(key)


def _trail_section(ctx: Context) -> None:
    st.subheader("Audit trail")
    try:
        trail = _open_trail()
        predictions = trail.predictions(limit=200, checkpoint_fingerprint=ctx.model_id)
        reviews = trail.reviews(limit=200, checkpoint_fingerprint=ctx.model_id)
    except AuditError as exc:
        st.warning(f"The audit trail cannot be read: {markdown_text(exc)}")
        return
    st.caption(f"{markdown_text(trail.path)}: newest predictions and reviews of this model.")
    tabs = st.tabs(["Predictions", "Reviews"])
    for tab, table, key in ((tabs[0], predictions.astype(str), "audit_trail_predictions"),
                            (tabs[1], reviews, "audit_trail_reviews")):
        shown, helps = fig.shorten_hashes(table)
        tab.dataframe(shown, hide_index=True, key=key,
                      column_config={c: st.column_config.TextColumn(c, help=h) for c, h in helps.items()})
    table = st.radio("Export", ["predictions", "reviews"], horizontal=True, key="audit_export_table")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.csv"
        trail.export_csv(path, table, checkpoint_fingerprint=ctx.model_id)
        data = path.read_bytes()
    st.download_button(f"Download {table} (CSV)", data, file_name=f"audit_{table}.csv", mime="text/csv",
                       key="audit_export")


def _report(ctx: Context, reference, result, flags) -> None:
    st.subheader("Report")
    key = (ctx.model_id, ctx.data_id, ctx.split)
    chosen = session.selected_sample()
    ids = [chosen] if chosen is not None and chosen in set(map(str, result.ids)) else []
    st.caption("An HTML file with the model card, metrics, drift, flagged samples"
               + (f" and the explanation of sample {chosen}" if ids else "") + "; it opens offline.")
    if st.button("Prepare the report", key="audit_prepare_report"):
        with st.spinner("Writing the report…"):
            slices = None
            if result.labels is not None:
                slices = slice_metrics(result, flags, ctx.card, by="class" if result.task != "regression"
                                       else "label_bin")
            drift = (_cached_drift(ctx.model_id, ctx.data_id, ctx.split, result, reference, ctx.card)
                     if reference is not None and len(result) >= MIN_DRIFT else None)
            rows = explain_rows(ctx.model, ctx.card, ctx.split_data, result, reference, ids, flags)
            session.set_audit_report(key, build_report(
                ctx.card, ctx.data_label, result, flags, slices, drift, rows,
                title=f"DecAlign audit: {ctx.model_label} on {ctx.data_label}", split_name=ctx.split))
    html = session.audit_report(key)
    if html:
        st.download_button("Download the report (HTML)", html.encode("utf-8"), file_name="decalign_report.html",
                           mime="text/html", key="audit_report_download")
