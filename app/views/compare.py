"""Compare: two models on the same data, side by side, down to the samples whose prediction changed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app import charts, loaders, session, sidebar, views
from app.figures import compare as fig
from decalign.checkpoint import CheckpointError, ModelCard, load_card, model_fingerprint
from decalign.data import DataError, MultimodalDataset, check_compatible
from decalign.explain.compare import (
    compare_metrics,
    levels_side_by_side,
    match_prototypes,
    prediction_changes,
    slice_differences,
)
from decalign.explain.levels import alignment_levels
from decalign.inference import InferenceResult, run_inference
from decalign.model import DecAlign
from decalign.safe_output import markdown_text
from decalign.train import background as bg

OTHER = "Another run directory…"


@dataclass(frozen=True)
class Side:
    """One of the two models compared."""

    label: str  # as the picker shows it
    path: Path  # run directory
    model: DecAlign
    card: ModelCard
    model_id: str  # fingerprint of weights and card


@st.cache_data(max_entries=8, show_spinner="Running the model…")
def _infer(model_id: str, data_id: str, split: str, _model, _card: ModelCard, _dataset) -> InferenceResult:
    data = _card.prepare(_dataset)  # each model reads the data through its own input transform
    return run_inference(_model, data.splits[split], task=_card.task, prototypes=_card.prototype_tensors())


@st.cache_data(max_entries=8, show_spinner="Measuring the alignment levels…")
def _levels(model_id: str, data_id: str, split: str, _model, _card: ModelCard, _dataset):
    return alignment_levels(_model, _card.prepare(_dataset).splits[split], max_samples=512)


def _choices() -> dict[str, Path]:
    """Every model to compare, the most recently trained first (the bundled demo and its twin by their cards'
    creation time, like the runs)."""
    runs = {f"run {r.name}": r.path for r in bg.list_runs() if r.has_model}
    bundled = {s.label: s.path for s in (loaders.default_model(), loaders.twin_model()) if s is not None}
    found = {**runs, **bundled}
    return dict(sorted(found.items(), key=lambda item: _created(item[1]), reverse=True))


def _created(path: Path) -> str:
    try:
        return load_card(path).created_at or ""
    except (CheckpointError, OSError):
        return ""


def default_pair(choices: dict[str, Path]) -> tuple[int, int]:
    """Positions in ``choices`` of A, the first model, and B, the first other model (different weights) that takes
    the same inputs and does the same task, so the page opens on a comparison it can make (a MOSI run beside the
    bundled digits models would open on an error); without one, the first other model, and the page says why
    they cannot be compared. A model alone is compared with itself."""
    paths = list(choices.values())
    if not paths:
        return 0, 0
    first, inputs = model_fingerprint(paths[0]), _inputs(paths[0])
    fallback = 0
    # lazily, as the page reruns on every click: the cards and fingerprints are read only up to the pick
    for i, path in enumerate(paths[1:], 1):
        if model_fingerprint(path) == first:
            continue
        if inputs is not None and _inputs(path) == inputs:
            return 0, i
        fallback = fallback or i
    return 0, fallback


def _inputs(path: Path) -> tuple | None:
    """What a model takes and does, from its card: (task, modalities and widths, BERT text); None if unreadable."""
    try:
        card = load_card(path)
    except (CheckpointError, OSError):
        return None
    return card.task, tuple(sorted(card.widths.items())), card.has_bert


def _pick(side: str, choices: dict[str, Path], default: int) -> Side | None:
    options = [*choices, OTHER]
    label = st.selectbox(f"Model {side}", options, index=min(default, len(options) - 1), key=f"compare_{side}")
    path = choices.get(label)
    if label == OTHER:
        text = st.text_input(f"Run directory of {side}", key=f"compare_{side}_path")
        if not text:
            return None
        path = Path(text).expanduser()
    try:
        model, card, model_id = loaders.model_from_dir(path)
    except (CheckpointError, OSError) as exc:
        st.error(f"Model {side} ({markdown_text(path)}): {markdown_text(exc)}")
        return None
    return Side(label, path, model, card, model_id)


def render() -> None:
    st.title("Compare models")
    choices = _choices()
    first, second = default_pair(choices)
    left, right = st.columns(2)
    with left:
        a = _pick("A", choices, first)
    with right:
        b = _pick("B", choices, second)
    if a is not None and b is not None and a.model_id == b.model_id:
        st.info("A and B are the same model: every difference below is zero. Pick another model for B.")
    if a is None or b is None:
        st.info("Choose two models (the bundled demo, a run from the Train page, or a run directory).")
        return
    found = _same_data(a, b)
    if found is None:
        return
    dataset, data_id, data_path = found
    splits = [s for s, p in dataset.splits.items() if p.labels is not None and len(p)]
    split = st.selectbox("Split", splits, index=splits.index("test") if "test" in splits else 0, key="compare_split")
    st.caption(f"Data: {markdown_text(data_path.name)} ({split}, {len(dataset.splits[split])} samples)")
    ra = _infer(a.model_id, data_id, split, a.model, a.card, dataset)
    rb = _infer(b.model_id, data_id, split, b.model, b.card, dataset)
    _metrics(ra, rb, a.card, b.card)
    _changes(ra, rb, a, b, split)
    _slices(ra, rb, a.card, b.card)
    _levels_section(a, b, data_id, split, dataset)
    _prototypes(ra, rb, a.card, b.card, a.path == b.path)


def _same_data(a: Side, b: Side) -> tuple[MultimodalDataset, str, Path] | None:
    path = (loaders.bundled_data_path(a.card, a.path, warn=True)
            or loaders.bundled_data_path(b.card, b.path, warn=True))
    if path is None:
        st.warning("Neither model names a data file that is still there; compare them on the Train page's data.")
        return None
    dataset, data_id = loaders.dataset_from_path(path)
    try:
        for side in (a, b):
            check_compatible(dataset, side.card.widths, f"{path.name} for model {side.label}", bert_text=side.card.has_bert)
    except DataError as exc:
        st.error(f"The two models do not take the same inputs: {markdown_text(exc)}")
        return None
    if a.card.task != b.card.task:
        st.error(f"The models do different tasks ({a.card.task}, {b.card.task}).")
        return None
    return dataset, data_id, path


def _metrics(ra, rb, card_a, card_b) -> None:
    st.subheader("Metrics")
    table = compare_metrics(ra, rb, card_a, card_b)
    left, right = st.columns([2, 3])
    left.dataframe(table.drop(columns="metric"), hide_index=True, key="compare_metrics")
    charts.show_in(right, fig.metrics_figure(table), key="compare_metrics_fig")


def _changes(ra, rb, a: Side, b: Side, split: str) -> None:
    changes = prediction_changes(ra, rb, a.card, b.card)
    kind = "flipped" if ra.task == "classification" else "changed sign"
    n = int(changes["changed"].sum())
    st.subheader(f"Predictions that changed: {n} {kind}")
    st.dataframe(changes.drop(columns="row").head(200), hide_index=True, key="compare_changes")
    ids = changes["id"].head(200).tolist()
    chosen = st.selectbox("Sample", ids, key="compare_sample")
    st.caption("The Sample page explains the current model: these buttons make A or B current, then open it.")
    for col, letter, side in zip(st.columns(2), "AB", (a, b)):
        path = None if side.path == loaders.demo_model_dir() else side.path
        if col.button(f"Explain with model {letter} ({markdown_text(side.label)})", key=f"compare_explain_{letter}",
                      on_click=_make_current, args=(path, side.label, chosen, split)):
            st.switch_page(views.page("sample"))


def _make_current(path: Path | None, label: str, sample_id: str, split: str) -> None:
    sidebar.use_model_dir(path, label)
    sidebar.use_bundled_data()
    session.set_split(split)
    session.select_sample(sample_id)


def _slices(ra, rb, card_a, card_b) -> None:
    st.subheader("Per slice")
    by = st.selectbox("Slice by", ["label_bin", "dominant_modality"], key="compare_slice_by",
                      format_func={"label_bin": "label (class or rounded value)",
                                   "dominant_modality": "dominant modality of model A"}.get)
    table = slice_differences(ra, rb, card_a, card_b, by=by)
    left, right = st.columns([2, 3])
    left.dataframe(table, hide_index=True, key="compare_slices")
    charts.show_in(right, fig.slices_figure(table), key="compare_slices_fig")


def _levels_section(a: Side, b: Side, data_id: str, split: str, dataset) -> None:
    st.subheader("Alignment levels")
    table = levels_side_by_side(_levels(a.model_id, data_id, split, a.model, a.card, dataset),
                                _levels(b.model_id, data_id, split, b.model, b.card, dataset))
    left, right = st.columns([2, 3])
    left.dataframe(table, hide_index=True, key="compare_levels")
    charts.show_in(right, fig.levels_figure(table), key="compare_levels_fig")


def _prototypes(ra, rb, card_a, card_b, same: bool) -> None:
    st.subheader("Prototypes: which of A became which of B")
    if not card_a.prototypes or not card_b.prototypes:
        st.info("A model card without training prototypes: nothing to match.")
        return
    align = st.checkbox("First map B's feature space onto A's (orthogonal Procrustes on both models' unique "
                        "features of this split)", value=not same, key="compare_align")
    features = (ra.unique_pooled, rb.unique_pooled) if align else (None, None)
    try:
        matches = match_prototypes(card_a.prototype_tensors(), card_b.prototype_tensors(),
                                   features_a=features[0], features_b=features[1])
    except ValueError as exc:
        st.error(markdown_text(exc))
        return
    st.caption("Exact optimal transport (POT ot.emd) with the Bures cost between the Gaussian prototypes and their "
               "weights as marginals.")
    for m, match in matches.items():
        left, right = st.columns([3, 2])
        charts.show_in(left, fig.match_figure(match), key=f"compare_match_{m}")
        right.dataframe(match.matches().head(10), hide_index=True, key=f"compare_match_table_{m}")
