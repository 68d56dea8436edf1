"""Sample: one sample's inputs, prediction, exact branch contributions, prototypes and transport cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, session
from app.context import Context, audit_reference, get_context, training_transport
from app.figures import sample as fig
from decalign.audit import AuditError, AuditTrail, default_audit_path
from decalign.audit.flags import compute_flags
from decalign.audit.store import VERDICTS
from decalign.data.tokens import is_token_input, token_positions
from decalign.explain import branch_contributions
from decalign.explain.attention import cross_modal_attention
from decalign.explain.attributions import integrated_gradients
from decalign.explain.counterfactual import modality_counterfactuals
from decalign.explain.story import PrototypeStory, plan_cells, prototype_story
from decalign.explain.summary import plain_summary
from decalign.safe_output import markdown_text

# ------------------------------------------------------------------ cached explanations (per sample)


@st.cache_data(show_spinner=False, max_entries=64)
def _story(model_id: str, data_id: str, split: str, row: int, _ctx: Context, _plan) -> PrototypeStory:
    return prototype_story(_ctx.model, _ctx.card, _ctx.split_data, row, _ctx.reference, plan=_plan)


@st.cache_data(show_spinner=False, max_entries=64)
def _counterfactual_frame(model_id: str, data_id: str, split: str, row: int, swap_row: int,
                          _ctx: Context) -> pd.DataFrame:
    return modality_counterfactuals(_ctx.model, _ctx.split_data, row, _ctx.reference, swap_row=swap_row)


@st.cache_data(show_spinner="Integrated gradients…", max_entries=64)
def _integrated_gradients(model_id: str, data_id: str, split: str, row: int, baseline: str, _ctx: Context):
    return integrated_gradients(_ctx.model, _ctx.split_data, row, steps=32, baseline=baseline,
                                reference=_ctx.reference)


@st.cache_data(show_spinner=False, max_entries=64)
def _attention_frames(model_id: str, data_id: str, split: str, row: int, _ctx: Context):
    return cross_modal_attention(_ctx.model, _ctx.split_data, row)


def _key(ctx: Context) -> tuple[str, str, str]:
    return ctx.model_id, ctx.data_id, ctx.split


TABS = ("Prediction", "Why", "What if", "Alignment", "Review")


def render() -> None:
    ctx = get_context()
    st.title("Sample")
    row = _pick(ctx)
    sample_id = str(ctx.result.ids[row])
    _header(ctx, row)
    contributions = branch_contributions(ctx.result, row)
    story = _story_for(ctx, row)
    counterfactuals = _counterfactual_for(ctx, row)
    st.subheader("In plain words")
    # Plain sentences built from the card's class names and the data's ids: shown as text, not Markdown.
    st.markdown(markdown_text(plain_summary(ctx.card, ctx.result, row, contributions, counterfactuals,
                                            _flags_row(ctx, row), story)))
    prediction, why, what_if, alignment, review = st.tabs(TABS, key=session.Key.SAMPLE_TAB)
    with prediction:
        _probabilities(ctx, row)
        _raw_inputs(ctx, row)
    with why:
        _contributions(ctx, row, contributions)
        _attributions(ctx, row)
        _attention(ctx, row)
    with what_if:
        _counterfactuals(ctx, row)
    with alignment:
        _prototypes(ctx, row)
    with review:
        _review(ctx, sample_id)


def _story_for(ctx: Context, row: int) -> PrototypeStory | None:
    """The sample's prototype story (cached), when the card has prototypes and the run a reference."""
    plan = training_transport(ctx) if ctx.result.posteriors is not None else None
    return None if plan is None else _story(*_key(ctx), row, ctx, plan)


def _swap_row(ctx: Context, row: int) -> int:
    """The what-if tab's swap partner: the picker's choice, else the next sample."""
    ids = [str(i) for i in ctx.result.ids]
    chosen = session.widget(session.Key.SAMPLE_SWAP)
    return ids.index(chosen) if chosen in ids else (row + 1) % len(ids)


def _counterfactual_for(ctx: Context, row: int) -> pd.DataFrame | None:
    if ctx.reference is None:
        return None
    return _counterfactual_frame(*_key(ctx), row, _swap_row(ctx, row), ctx)


def _contributions(ctx: Context, row: int, contributions: pd.DataFrame) -> None:
    st.subheader("Exact branch contributions")
    output = _output_name(ctx, row)
    charts.show(fig.waterfall_figure(contributions, output), key="sample_waterfall")
    st.caption("The head is linear, so the bars (unique and common part of each modality, plus the bias) add "
               f"up exactly to {output}.")


def _probabilities(ctx: Context, row: int) -> None:
    if ctx.card.task != "classification":
        return
    names = [ctx.class_name(k) for k in range(ctx.result.outputs.shape[1])]
    charts.show(fig.probability_figure(ctx.result.probabilities[row], names,
                                       None if ctx.result.labels is None else int(ctx.result.labels[row])),
                key="sample_probabilities")


def _flags_row(ctx: Context, row: int) -> pd.Series | None:
    """This sample's audit flags, with the Audit page's reference (thresholds calibrated on held-out data)."""
    reference = audit_reference(ctx).reference
    if reference is None:
        return None
    return compute_flags(ctx.result.subset(np.array([row])), reference, ctx.card).iloc[0]


def _pick(ctx: Context) -> int:
    ids = [str(i) for i in ctx.result.ids]
    session.sync_sample_picker(ids)  # a sample chosen on another page shows here
    choice = st.selectbox("Sample id", ids, key=session.Key.SAMPLE_ID, on_change=session.sample_from_picker)
    return ids.index(choice)


def _output_name(ctx: Context, row: int) -> str:
    if ctx.card.task == "regression":
        return "prediction"
    k = int(ctx.result.predictions[row])
    return f"logit of class {_class_name(ctx, k)}"


def _class_name(ctx: Context, k: int) -> str:
    return ctx.class_name(k)


def _header(ctx: Context, row: int) -> None:
    result = ctx.result
    cols = st.columns(3)
    if ctx.card.task == "classification":
        k = int(result.predictions[row])
        cols[0].metric("Prediction", _class_name(ctx, k))
        cols[1].metric("Probability", f"{result.probabilities[row, k]:.3f}")
        if result.labels is not None:
            cols[2].metric("Label", _class_name(ctx, int(result.labels[row])))
    else:
        cols[0].metric("Prediction", f"{result.predictions[row]:.3f}")
        if result.labels is not None:
            cols[1].metric("Label", f"{result.labels[row]:.3f}")
            cols[2].metric("Error", f"{abs(result.predictions[row] - result.labels[row]):.3f}")


def _raw_inputs(ctx: Context, row: int) -> None:
    st.subheader("Inputs")
    part = ctx.split_data
    if part.raw_text is not None:
        st.markdown("\n".join(f"> {markdown_text(line)}" for line in str(part.raw_text[row]).splitlines()))
    images = [m for m in part.features if m in fig.IMAGE_MODALITIES]
    others = list(part.features)
    cols = st.columns([1, 3]) if images else [None, st.container()]
    if images:
        with cols[0]:
            for m in images:
                charts.show(fig.image_figure(part.features[m][row], f"{m} (as an image)"),
                            key=f"sample_image_{m}")
    with cols[1]:
        for m in others:
            if is_token_input(part.features[m]):  # a BERT model's text: its tokens' positions, ids as ids
                st.caption(f"{m}: BERT tokens at their positions (ids; no vocabulary ships with the model)")
                st.dataframe(token_positions(part.features[m][row]), hide_index=True, key=f"sample_tokens_{m}")
                continue
            length = int(part.lengths[m][row]) if m in part.lengths else None
            charts.show(fig.sequence_figure(part.features[m][row], m, length), key=f"sample_seq_{m}")


def _prototypes(ctx: Context, row: int) -> PrototypeStory | None:
    st.subheader("Where the sample sits among the training prototypes")
    if ctx.result.posteriors is None:
        st.info("The model card has no training prototypes, so no prototype assignment can be shown.")
        return None
    post = {m: p[row] for m, p in ctx.result.posteriors.items()}
    left, right = st.columns([2, 1])
    charts.show_in(left, fig.posterior_figure(post), key="sample_posteriors")
    table = fig.assignment_table(post)
    right.dataframe(table, hide_index=True, key="sample_assignment")
    plan = training_transport(ctx)
    if plan is None:
        st.info("This run has no training reference (reference.json), so the transport plan between the "
                "training prototypes and the nearest training samples are not available.")
        return None
    cells = dict(zip(table["modality"], table["prototype"]))
    pairs = {k: v.detach().cpu().numpy() for k, v in plan.pair_plans().items()}
    charts.show(fig.transport_cells_figure(pairs, cells), key="sample_transport")
    st.dataframe(plan_cells(pairs, cells), hide_index=True, key="sample_cells")
    story = _story(*_key(ctx), row, ctx, plan)
    st.markdown("**Nearest training samples** (pooled unique features): those of the same prototype and the same "
                "answer first, then the rest of the prototype (columns same_prototype, same_answer)")
    st.dataframe(story.nearest, hide_index=True, key="sample_nearest")
    return story


def _counterfactuals(ctx: Context, row: int) -> pd.DataFrame | None:
    st.subheader("What if a modality were missing or swapped")
    if ctx.reference is None:
        st.info("Counterfactuals replace a modality by the training mean input, which needs the run's "
                "training reference; this run has none.")
        return None
    ids = [str(i) for i in ctx.result.ids]
    swap = _swap_row(ctx, row)
    session.set_widget(session.Key.SAMPLE_SWAP, ids[swap])
    other = st.selectbox("Swap in the modality from sample", ids, key=session.Key.SAMPLE_SWAP)
    frame = _counterfactual_frame(*_key(ctx), row, ids.index(other), ctx)
    charts.show(fig.counterfactual_figure(frame, ctx.card.task), key="sample_counterfactuals")
    st.dataframe(frame, hide_index=True, key="sample_counterfactual_table")
    return frame


def _attributions(ctx: Context, row: int) -> None:
    st.subheader("Which time steps and features mattered (integrated gradients)")
    baselines = ["zeros"] + (["training_mean"] if ctx.reference is not None else [])
    baseline = st.radio("Baseline", baselines, horizontal=True, key="sample_ig_baseline")
    ig = _integrated_gradients(*_key(ctx), row, baseline, ctx)
    st.caption(f"Output {ig.output:.4f} vs baseline {ig.baseline_output:.4f}; the attributions add up to the "
               f"difference within {abs(ig.completeness_gap):.2e}.")
    for m, a in ig.attributions.items():
        charts.show(fig.attribution_figure(a, m), key=f"sample_ig_{m}")


def _attention(ctx: Context, row: int) -> None:
    st.subheader("Cross-modal attention")
    attention = _attention_frames(*_key(ctx), row, ctx)
    if not attention or not any(attention.values()):
        st.info("This model has no cross-modal attention layers.")
        return
    layers = len(next(iter(attention.values())))
    layer = st.slider("Layer", 1, layers, layers, key="sample_attention_layer") if layers > 1 else 1
    cols = st.columns(len(attention))
    for col, (m, frames) in zip(cols, attention.items()):
        charts.show_in(col, fig.attention_figure(frames[layer - 1], f"{m} attends to"), key=f"sample_attention_{m}")


def _review(ctx: Context, sample_id: str) -> None:
    st.subheader("Review")
    try:
        trail = AuditTrail(default_audit_path())
        history = trail.reviews_for(ctx.model_id, ctx.data_id, sample_id)
    except AuditError as exc:  # e.g. DECALIGN_AUDIT_DB not writable: the rest of the page still works
        st.warning(f"Reviews cannot be recorded: {markdown_text(exc)}")
        return
    session.fill_reviewer()
    with st.form("sample_review_form", clear_on_submit=False):
        st.radio("Verdict on this prediction", VERDICTS, index=None, horizontal=True, key=session.Key.REVIEW_VERDICT)
        st.text_area("Comment", key=session.Key.REVIEW_COMMENT, max_chars=2000)
        st.text_input("Reviewer (your name; required, remembered while this browser tab is open)",
                      key=session.Key.REVIEW_REVIEWER)
        st.form_submit_button("Record review", on_click=_submit_review, args=(trail, ctx.model_id, ctx.data_id,
                                                                           sample_id))
    outcome = session.review_outcome()
    if outcome is not None:
        (st.success if outcome[0] == "success" else st.error)(markdown_text(outcome[1]))
    if len(history):
        st.dataframe(history[["created_at", "reviewer", "verdict", "comment"]], hide_index=True,
                     key="sample_review_history")
    else:
        st.caption("No reviews of this sample yet.")


def _submit_review(trail: AuditTrail, model_id: str, data_id: str, sample_id: str) -> None:
    """Form callback: record the review, or keep the form as it is and say what is missing."""
    verdict, comment, reviewer = session.review_form()
    try:
        trail.record_review(model_id, data_id, sample_id, verdict, comment, reviewer.strip())
    except AuditError as exc:
        session.review_refused(f"Review not recorded: {exc}.")
        return
    session.review_recorded(reviewer.strip(), "Review recorded.")
