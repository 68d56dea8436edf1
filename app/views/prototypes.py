"""Prototypes and transport: each modality's prototypes among its samples, the transport plan between
every pair, flows across all modalities, and how the plan changes with the entropy setting."""

from __future__ import annotations

import itertools

import numpy as np
import streamlit as st

from app.context import Context, get_context
from app.figures import transport as fig
from decalign.config import ModelConfig
from decalign.explain.projection import project_with_points
from decalign.explain.transport_view import (
    LAMBDA_UNITS,
    PlanView,
    assignments,
    entropy_sweep,
    fit_prototypes,
    label_groups,
    prototype_table,
    sankey_links,
    solve_plan,
)
from decalign.model import Prototypes

URL_PATH = "prototypes"
SOURCES = ("Training prototypes (model card)", "Fitted on the current data")
MARGINALS = ("Prototype weights", "Mean posteriors on the current data")
LAMBDAS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]


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


def render() -> None:
    ctx = get_context()
    st.title("Prototypes and transport")
    source, k, protos = _choose_prototypes(ctx)
    post = assignments(ctx.result, protos)
    marginal_name, marginals = _choose_marginals(ctx, source, post)
    _prototype_section(ctx, protos, post)
    st.header("Transport between the modalities")
    default = min(LAMBDAS, key=lambda v: abs(np.log(v / ctx.card.config.model.lambda_ot)))
    unit = LAMBDA_UNITS[ctx.card.config.model.objective]
    lam = st.select_slider(f"Entropy setting lambda_ot ({unit})", LAMBDAS, value=default,
                           key="proto_lambda", help="Smaller: a sharper, cheaper plan; larger: a more spread one.")
    keys = (ctx.model_id, ctx.data_id, ctx.split, source, k, marginal_name)
    config = ctx.card.config.model
    view = _plan(*keys, lam, protos, marginals, config)
    _plan_metrics(view, config)
    for a, b in itertools.combinations(view.order, 2):
        left, right = st.columns(2)
        cost_fig, plan_fig = fig.plan_figures(view, a, b)
        left.plotly_chart(cost_fig, key=f"proto_cost_{a}_{b}")
        right.plotly_chart(plan_fig, key=f"proto_plan_{a}_{b}")
    st.caption("A cell of the plan is the mass sent from a prototype of one modality to a prototype of the other; "
               "the bars are its marginals. Mass on cheap (light) cost cells means the modalities' clusters "
               "correspond.")
    st.subheader("Flows across all modalities")
    st.plotly_chart(fig.sankey_figure(sankey_links(view), view.order), key="proto_sankey")
    st.caption("Each band is the share of the joint plan linking two prototypes of neighbouring modalities "
               "(the two-modality marginal of the multi-marginal plan).")
    st.subheader("How the plan changes with the entropy setting")
    st.plotly_chart(fig.entropy_figure(_sweep(*keys, protos, marginals, config), lam, unit), key="proto_entropy")


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


def _prototype_section(ctx: Context, protos: dict[str, Prototypes], post: dict[str, np.ndarray]) -> None:
    st.header("Prototypes of each modality")
    labels = label_groups(ctx.result.labels, ctx.card.task)
    table = prototype_table(ctx.result, protos, labels)
    cols = st.columns(len(protos))
    for col, (m, proto) in zip(cols, protos.items()):
        coords, means = project_with_points(ctx.result.unique_pooled[m], proto.means.double().numpy())
        with col:
            st.plotly_chart(fig.prototype_scatter(coords, means, post[m].argmax(1), proto.weights.numpy(),
                                                  f"unique:{m}"), key=f"proto_scatter_{m}")
    shown = table.rename(columns={"majority_label": "majority label", "mean_posterior": "mean posterior"})
    st.dataframe(shown, hide_index=True, key="proto_table",
                 column_config={"purity": st.column_config.ProgressColumn("purity", min_value=0, max_value=1)})
    what = "sign of the label" if ctx.card.task == "regression" else "class"
    st.caption(f"Size: samples whose most probable prototype it is. Purity: share of the majority {what} among "
               "them (1 = every sample of the prototype has the same one). Stars: prototype means in the PCA "
               "plane of the samples, sized by weight.")


def _plan_metrics(view: PlanView, config: ModelConfig) -> None:
    cols = st.columns(4)
    cols[0].metric("Entropy H(P)", f"{view.entropy:.3f} nats")
    cols[1].metric("Transport cost ⟨P, C⟩", f"{view.transport_cost:.4g}")
    cols[2].metric("Sinkhorn sweeps", f"{view.iterations}")
    cols[3].metric("Marginal error", f"{view.marginal_error:.1e}")
    if not view.converged:
        st.warning(f"The solver stopped after {view.iterations} sweeps (the model's ot_num_iters) before the "
                   f"marginals matched to {config.ot_tol:g} (error {view.marginal_error:.1e}), as it does in "
                   "training; the plan shown is approximate.")
