"""Prototypes and transport: each modality's prototypes among its samples, which prototype of one modality
corresponds to which of another (in words), the plans sorted so the correspondence lies on the diagonal,
the main flows across all modalities, and how the plan changes with the entropy setting."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts
from app.context import Context, Side, alignment_sides, get_context
from app.figures import transport as fig
from decalign.config import ModelConfig
from decalign.explain.correspondence import PairCorrespondence, agreement, correspondences, main_flows
from decalign.explain.projection import project_with_points
from decalign.explain.transport_view import (
    LAMBDA_UNITS,
    PlanView,
    assignments,
    entropy_sweep,
    fit_prototypes,
    label_groups,
    prototype_table,
    solve_plan,
)
from decalign.model import Prototypes
from decalign.safe_output import markdown_text

SOURCES = ("Training prototypes (model card)", "Fitted on the current data")
MARGINALS = ("Prototype weights", "Mean posteriors on the current data")
LAMBDAS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
FLOWS = ("Exact matching (ot.emd)", "Entropic plan at this setting")
SENTENCES_SHOWN = 8
JARGON = {
    "nats": "Entropy H(P) = -Σ P log P of the plan, in natural-log units. A plan spread evenly over n cells has "
            "log n nats (6.91 for 10×10×10); a plan that sends each prototype to one partner has far less.",
    "Sinkhorn sweeps": "The plan is found by Sinkhorn's algorithm, which rescales it to match each modality's "
                       "marginal in turn; one sweep rescales every modality once. The model stops after its "
                       "iteration cap or once the marginals match.",
    "marginal error": "How far the plan's marginals are from their targets (largest L1 gap over the modalities). "
                      "Near 0: every prototype sends and receives exactly its share of mass.",
    "cost": "How different two prototypes are as Gaussian clusters (the model's cost between prototypes). Mass "
            "on cheap cells means the modalities' clusters correspond.",
    "exact matching": "The optimal transport with no entropy at all (POT's ot.emd on the same cost and "
                      "marginals): the few cells it uses are the clearest correspondences.",
}


@st.cache_data(show_spinner="Fitting prototypes…", max_entries=16)
def _fitted(model_id: str, data_id: str, split: str, k: int, _ctx: Context) -> dict[str, Prototypes]:
    return fit_prototypes(_ctx.result, _ctx.card.config.model, k)


@st.cache_data(show_spinner="Solving the transport plan…", max_entries=64)
def _plan(model_id: str, data_id: str, split: str, source: str, k: int, marginals: str, lambda_ot: float,
          _protos: dict[str, Prototypes], _marginals: dict[str, np.ndarray] | None, _config: ModelConfig) -> PlanView:
    return solve_plan(_protos, _config, _marginals, lambda_ot=lambda_ot)


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep(model_id: str, data_id: str, split: str, source: str, k: int, marginals: str,
           _protos: dict[str, Prototypes], _marginals: dict[str, np.ndarray] | None, _config: ModelConfig):
    return entropy_sweep(_protos, _config, _marginals, LAMBDAS)


@st.cache_data(show_spinner="Reading the prototypes' labels…", max_entries=16)
def _members(model_id: str, data_id: str, split: str, source: str, k: int, _features: dict[str, np.ndarray],
             _protos: dict[str, Prototypes], _groups: np.ndarray | None) -> pd.DataFrame:
    return prototype_table(_features, _protos, _groups)


def render() -> None:
    ctx = get_context()
    st.title("Prototypes and transport")
    source, k, protos = _choose_prototypes(ctx)
    post = assignments(ctx.result, protos)
    marginal_name, marginals = _choose_marginals(ctx, source, post)
    members, where = _training_members(ctx, source, k, protos)
    _prototype_section(ctx, protos, post, members, where)
    st.header("Transport between the modalities")
    default = min(LAMBDAS, key=lambda v: abs(np.log(v / ctx.card.config.model.lambda_ot)))
    unit = LAMBDA_UNITS[ctx.card.config.model.objective]
    lam = st.select_slider(f"Entropy setting lambda_ot ({unit})", LAMBDAS, value=default, key="proto_lambda",
                           help="Smaller: a sharper, cheaper plan that links each prototype to few partners; larger: "
                                "a more spread one.")
    keys = (ctx.model_id, ctx.data_id, ctx.split, source, k, marginal_name)
    config = ctx.card.config.model
    view = _plan(*keys, lam, protos, marginals, config)
    pairs = correspondences(view, members, ctx.class_names)
    _plan_metrics(view, config, pairs)
    _correspondence_section(pairs, where)
    _heatmaps(view, pairs)
    _flows(view, pairs)
    st.subheader("How the plan changes with the entropy setting")
    charts.show(fig.entropy_figure(_sweep(*keys, protos, marginals, config), lam, unit), key="proto_entropy")
    _alignment_changed(ctx, lam)
    with st.expander("What the words on this page mean"):
        st.markdown("\n".join(f"- **{term}**: {text}" for term, text in JARGON.items()))


def _choose_prototypes(ctx: Context) -> tuple[str, int, dict[str, Prototypes]]:
    card_protos = ctx.card.prototype_tensors()
    options = SOURCES if card_protos else SOURCES[1:]
    if not card_protos:
        st.info("This model card has no training prototypes; prototypes are fitted on the current data.")
    left, right = st.columns(2)
    source = left.radio("Prototypes", options, key="proto_source", horizontal=True)
    if source == SOURCES[0]:
        return source, card_protos[ctx.model.modalities[0]].means.shape[0], card_protos
    k = int(right.number_input("Prototypes per modality (K)", 1, 32, ctx.card.config.model.num_prototypes,
                               key="proto_k"))
    return source, k, _fitted(ctx.model_id, ctx.data_id, ctx.split, k, ctx)


def _choose_marginals(ctx: Context, source: str, post: dict[str, np.ndarray]
                      ) -> tuple[str, dict[str, np.ndarray] | None]:
    if source != SOURCES[0]:
        return MARGINALS[0], None  # fitted prototypes: their weights are the current data's mean posteriors
    name = st.radio("Marginals of the plan", MARGINALS, key="proto_marginals", horizontal=True)
    return name, None if name == MARGINALS[0] else {m: p.mean(0) for m, p in post.items()}


def _training_members(ctx: Context, source: str, k: int, protos: dict[str, Prototypes]
                      ) -> tuple[pd.DataFrame, str]:
    """Each prototype's size, majority label and purity: on the training set (the reference's features)
    for the training prototypes, else on the current data."""
    ref = ctx.reference
    if source == SOURCES[0] and ref is not None and ref.train_labels is not None:
        groups = label_groups(ref.train_labels, ctx.card.task, ctx.class_names)
        return _members(ctx.model_id, "training", "train", source, k, ref.train_unique, protos, groups), \
            "the training set"
    groups = label_groups(ctx.result.labels, ctx.card.task, ctx.class_names)
    return _members(ctx.model_id, ctx.data_id, ctx.split, source, k, ctx.result.unique_pooled, protos, groups), \
        f"the {ctx.split} split"


def _prototype_section(ctx: Context, protos: dict[str, Prototypes], post: dict[str, np.ndarray],
                       members: pd.DataFrame, where: str) -> None:
    st.header("Prototypes of each modality")
    cols = st.columns(len(protos))
    for col, (m, proto) in zip(cols, protos.items()):
        coords, means = project_with_points(ctx.result.unique_pooled[m], proto.means.double().numpy())
        charts.show_in(col, fig.prototype_scatter(coords, means, post[m].argmax(1), proto.weights.numpy(),
                                                  f"unique:{m}"), key=f"proto_scatter_{m}")
    shown = members.rename(columns={"majority_label": "majority label", "mean_posterior": "mean posterior"})
    st.dataframe(shown, hide_index=True, key="proto_table",
                 column_config={"purity": st.column_config.ProgressColumn("purity", min_value=0, max_value=1)})
    what = "sign of the label" if ctx.card.task == "regression" else "class"
    st.caption(f"On {where}. Size: samples whose most probable prototype it is. Purity: share of the majority "
               f"{what} among them (1 = every sample of the prototype has the same one). Stars: prototype means "
               "in the PCA plane of the samples, sized by weight.")


def _plan_metrics(view: PlanView, config: ModelConfig, pairs: dict) -> None:
    cols = st.columns(4)
    cells = int(np.prod(view.plan.shape))
    cols[0].metric("Entropy H(P)", f"{view.entropy:.3f} nats", help=f"{JARGON['nats']} Here: at most "
                   f"{np.log(cells):.2f} nats for {cells:,} cells.")
    cols[1].metric("Transport cost ⟨P, C⟩", f"{view.transport_cost:.4g}", help=JARGON["cost"])
    share = np.mean([p.diagonal_share for p in pairs.values()]) if pairs else float("nan")
    cols[2].metric("Plan mass on the exact matching", f"{share:.0%}",
                   help="Share of each pair's plan on the cells the exact matching uses (mean over pairs): 100% "
                        "means the plan is as sharp as the exact matching.")
    cols[3].metric("Same majority label", f"{agreement(pairs):.0%}",
                   help="Share of the exact matching's mass that links prototypes whose samples mostly carry the "
                        "same label: how often the correspondences pair up clusters that mean the same thing.")
    st.caption(f"Solver: {view.iterations} Sinkhorn sweeps, marginal error {view.marginal_error:.1e} (see "
               "'What the words on this page mean' at the bottom).")
    if not view.converged:
        st.warning(f"The solver stopped after {view.iterations} sweeps (the model's ot_num_iters) before the "
                   f"marginals matched to {config.ot_tol:g} (error {view.marginal_error:.1e}), as it does in "
                   "training; the plan shown is approximate.")


def _correspondence_section(pairs: dict[tuple[str, str], PairCorrespondence], where: str) -> None:
    st.subheader("Which prototype corresponds to which")
    st.caption(f"The exact optimal matching of each modality pair (POT's ot.emd on the pair's cost and the plan's "
               f"marginals), largest mass first; majority labels and purities on {where}.")
    for pair in pairs.values():
        st.markdown(f"**{markdown_text(pair.a)} ↔ {markdown_text(pair.b)}**")
        lines = pair.table["sentence"].head(SENTENCES_SHOWN).tolist()
        st.markdown("\n".join(f"- {markdown_text(line)}" for line in lines))
        with st.expander(f"All {len(pair.table)} matched pairs of {pair.a} ↔ {pair.b}"):
            st.dataframe(pair.table.drop(columns=["sentence", "pair"]), hide_index=True,
                         key=f"proto_matches_{pair.a}_{pair.b}")


def _heatmaps(view: PlanView, pairs: dict[tuple[str, str], PairCorrespondence]) -> None:
    st.subheader("Cost and plan of each pair, sorted so the matching lies on the diagonal")
    for (a, b), pair in pairs.items():
        left, right = st.columns(2)
        cost_fig, plan_fig = fig.plan_figures(view, a, b, pair)
        charts.show_in(left, cost_fig, key=f"proto_cost_{a}_{b}")
        charts.show_in(right, plan_fig, key=f"proto_plan_{a}_{b}")
    st.caption("Rows and columns keep their prototype numbers but are reordered (rows by majority label) so the "
               "exact matching runs down the diagonal; its cells are framed in red. A cell of the plan is the mass "
               "sent from a prototype of one modality to a prototype of the other; the bars are its marginals.")


def _flows(view: PlanView, pairs: dict[tuple[str, str], PairCorrespondence]) -> None:
    st.subheader("Main flows across all modalities")
    which = st.radio("Flows of", FLOWS, key="proto_flows", horizontal=True)
    links, share = main_flows(pairs, view.order, exact=which == FLOWS[0])
    charts.show(fig.sankey_figure(links, view.order), key="proto_sankey")
    st.caption(f"Only each prototype's two largest flows (and none under 0.005) are drawn: {share:.0%} of the "
               "mass between neighbouring modalities is shown.")


def _alignment_changed(ctx: Context, lam: float) -> None:
    sides = alignment_sides(ctx)
    if sides is None:
        return
    rows = [_side_numbers(ctx, side, lam) for side in sides]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="proto_twin_table")
    st.caption("Both models' training prototypes and their plan at this entropy setting, with the prototype "
               "weights as marginals; labels of the prototypes on each model's training set.")


def _side_numbers(ctx: Context, side: Side, lam: float) -> dict:
    protos = side.card.prototype_tensors()
    if not protos:
        return {"model": side.title}
    k = protos[side.model.modalities[0]].means.shape[0]
    view = _plan(side.model_id, ctx.data_id, ctx.split, SOURCES[0], k, MARGINALS[0], lam, protos, None,
                 side.card.config.model)
    members = None
    if side.reference is not None and side.reference.train_labels is not None:
        groups = label_groups(side.reference.train_labels, side.card.task, ctx.class_names)
        members = _members(side.model_id, "training", "train", SOURCES[0], k, side.reference.train_unique,
                           protos, groups)
    pairs = correspondences(view, members, ctx.class_names)
    purity = float(members["purity"].mean()) if members is not None else float("nan")
    return {"model": side.title, "entropy (nats)": round(view.entropy, 3),
            "plan mass on the exact matching": round(float(np.mean([p.diagonal_share for p in pairs.values()])), 3),
            "matched pairs with the same majority label": round(agreement(pairs), 3),
            "mean prototype purity": round(purity, 3)}
