"""Audit: the linear baseline, every prediction with its error and flags, metrics per slice, calibration,
drift against held-out data, the audit trail, and a downloadable HTML report. Every number comes from
one ``decalign.audit.run.run_audit`` (the same ``decalign audit`` and the report use)."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, session
from app.context import Context, audit_reference, get_context
from app.figures import audit as fig
from decalign.audit import AuditError, AuditTrail, default_audit_path
from decalign.audit.drift import MIN_SAMPLES
from decalign.audit.flags import flag_columns
from decalign.audit.report import build_report, explain_rows
from decalign.audit.rows import prediction_rows
from decalign.audit.run import AuditResult, PreparedReference, run_audit, split_reviews
from decalign.explain.slices import SLICE_KINDS, slice_metrics
from decalign.inference import InferenceResult, run_inference
from decalign.safe_output import markdown_text
from decalign.train.metrics import ERROR_TEXT


def render() -> None:
    ctx = get_context()
    st.title("Audit")
    st.caption(f"Model **{markdown_text(ctx.model_label)}** · data **{markdown_text(ctx.data_label)}** · "
               f"split **{ctx.split}** · {len(ctx.result):,} samples")
    prepared = audit_reference(ctx)
    result = _result(ctx, prepared)
    audit = _audit(ctx.model_id, ctx.data_id, ctx.split, ctx, prepared, result)
    for note in audit.notes:  # notes name the data file: untrusted text
        st.caption(markdown_text(note))
    _record(ctx, result, audit.flags)
    _baseline(audit)
    _predictions(audit)
    if audit.metrics is not None:
        _slices(ctx, result, audit)
        _quality(ctx, result)
    _drift(audit)
    _trail_section(ctx)
    _report(ctx, prepared, result, audit)


# ----------------------------------------------------------------------------------- cached maths


@st.cache_data(show_spinner="Scoring against the training patterns…", max_entries=8)
def _scored(model_id: str, data_id: str, split: str, _ctx: Context, _prepared: PreparedReference
            ) -> InferenceResult:
    return run_inference(_ctx.model, _ctx.split_data, task=_ctx.card.task,
                         prototypes=_prepared.reference.prototypes)


def _result(ctx: Context, prepared: PreparedReference) -> InferenceResult:
    # Prototype slices need posteriors over the reference prototypes; the shared result may lack them.
    if prepared.reference is None or ctx.result.posteriors is not None:
        return ctx.result
    return _scored(ctx.model_id, ctx.data_id, ctx.split, ctx, prepared)


@st.cache_data(show_spinner="Auditing: flags, drift test, baseline…", max_entries=8)
def _audit(model_id: str, data_id: str, split: str, _ctx: Context, _prepared: PreparedReference,
           _result: InferenceResult) -> AuditResult:
    # Reviews change while the page is open: they are read live (_live_reviews), not cached here.
    return run_audit(_ctx.model, _ctx.card, _ctx.dataset, split, data_name=_ctx.data_label, reference=_prepared,
                     result=_result)


# ------------------------------------------------------------------------------------------ sections


def _baseline(audit: AuditResult) -> None:
    if audit.comparison is not None:
        st.info(audit.comparison["sentence"])


def _predictions(audit: AuditResult) -> None:
    st.subheader("Predictions")
    table, flags = audit.table, audit.flags
    st.caption(f"Error: {ERROR_TEXT[audit.error]}.")
    if flags is not None:
        counts = ", ".join(f"{k} {v}" for k, v in audit.flag_counts.items())
        source = "validation" if audit.thresholds_from == "valid" else "training"
        st.caption(f"{int(flags['any_flag'].sum()):,} flagged: {counts} (unusual-input and decoupling "
                   f"thresholds calibrated on the {source} samples).")
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


def _slices(ctx: Context, result, audit: AuditResult) -> None:
    st.subheader("Metrics per slice")
    options = [k for k in SLICE_KINDS if k != "flags" or audit.flags is not None]
    options += [f"prototype:{m}" for m in (result.posteriors or {})]
    by = st.selectbox("Slice by", options, key="audit_slice_by")
    if by in ("class", "label_bin") and result.task == "classification":
        st.caption("One row per class: precision, recall and F1 of that class against all others, its support "
                   "(n) and how often it was predicted.")
    table = audit.slices if by == audit.slice_by else slice_metrics(result, audit.flags, ctx.card, by=by)
    if by in ("class", "label_bin") and ctx.class_names:  # class slices by name
        table["slice"] = table["slice"].map(lambda v: ctx.class_name(int(v)) if str(v).isdigit() else v)
    st.dataframe(table, hide_index=True, key="audit_slices")


def _quality(ctx: Context, result) -> None:
    if result.task == "regression":
        charts.show(fig.residual_figure(result), key="audit_residuals")
        return
    left, right = st.columns(2)
    charts.show_in(left, fig.confusion_figure(result, ctx.class_names), key="audit_confusion")
    charts.show_in(right, fig.reliability_figure(result), key="audit_reliability")


def _drift(audit: AuditResult) -> None:
    st.subheader("Drift against held-out data")
    if audit.drift is None:
        st.info(markdown_text(audit.drift_missing or f"Drift needs at least {MIN_SAMPLES} samples."))
        return
    drift = audit.drift
    st.metric("Drifted from the held-out data?", "yes" if drift.drifted else "no",
              help=f"A two-sample permutation test per modality and feature space against "
                   f"{markdown_text(drift.reference)}; "
                   f"'yes' when a p-value corrected for {len(drift.tests)} tests (Holm) is below {drift.alpha:g}.")
    for sentence in drift.sentences():  # they name the reference's data file
        st.markdown(f"- {markdown_text(sentence)}")
    charts.show(fig.drift_figure(drift.tests), key="audit_drift_chart")
    st.dataframe(drift.tests, hide_index=True, key="audit_drift_table")


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


def _live_reviews(ctx: Context, result) -> pd.DataFrame | None:
    try:
        return split_reviews(_open_trail(), ctx.model_id, (ctx.data_id,), result)
    except AuditError:
        return None


def _report(ctx: Context, prepared: PreparedReference, result, audit: AuditResult) -> None:
    st.subheader("Report")
    key = (ctx.model_id, ctx.data_id, ctx.split)
    chosen = session.selected_sample()
    ids = [chosen] if chosen is not None and chosen in set(map(str, result.ids)) else []
    st.caption("An HTML file with the model card, the baseline, metrics, drift, flagged samples, reviews"
               + (f" and the explanation of sample {chosen}" if ids else "") + "; it opens offline.")
    if st.button("Prepare the report", key="audit_prepare_report"):
        with st.spinner("Writing the report…"):
            rows = explain_rows(ctx.model, ctx.card, ctx.split_data, result, prepared.reference, ids, audit.flags)
            full = dataclasses.replace(audit, reviews=_live_reviews(ctx, result))
            session.set_audit_report(key, build_report(
                ctx.card, full, result, rows, title=f"DecAlign audit: {ctx.model_label} on {ctx.data_label}"))
    html = session.audit_report(key)
    if html:
        st.download_button("Download the report (HTML)", html.encode("utf-8"), file_name="decalign_report.html",
                           mime="text/html", key="audit_report_download")
