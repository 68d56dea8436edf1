"""What every analysis page works on: the model, data, split and inference the sidebar chose.

``get_context()`` resolves the session's choices through the cached loaders (``app.loaders``); a choice
that cannot be loaded stops the page with a message, and the sidebar keeps the previous one.
``get_card_context()`` resolves the same choices without building the model (no torch import): what a page
shows from the card and the data alone, before its model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from app import loaders, session
from decalign.checkpoint import CheckpointError, ModelCard
from decalign.data import MultimodalDataset, Split
from decalign.safe_output import markdown_text

if TYPE_CHECKING:  # the model's side needs torch, imported by the loaders that build it
    from decalign.audit.run import PreparedReference
    from decalign.inference import InferenceResult
    from decalign.model import DecAlign, TransportResult
    from decalign.train.reference import TrainingReference


@dataclass
class CardContext:
    """The model's card and the data, split and ids the sidebar chose, without the model itself."""

    card: ModelCard
    model_id: str  # sha256 of weights + card (zip bytes for an uploaded zip)
    model_label: str
    run_dir: Path | None
    dataset: MultimodalDataset
    data_id: str  # sha256 of the uploaded bytes, or the bundled dataset's fingerprint
    data_label: str
    split: str
    split_data: Split

    @property
    def class_names(self) -> list[str] | None:
        """The card's class names, else the data's when they name as many classes as the model has; a name
        given twice (a card may hold anything) gets its class number, so charts never merge two classes."""
        names = self.card.class_names
        if not names:
            names = self.dataset.class_names
            if not (names and self.card.task == "classification" and len(names) == self.card.output_dim):
                return None
        return distinct_names(names)

    def class_name(self, k: int) -> str:
        names = self.class_names
        return names[k] if names and 0 <= k < len(names) else str(k)


@dataclass
class Context(CardContext):
    """A :class:`CardContext` with the model, its inference on the split and its training reference."""

    model: DecAlign
    result: InferenceResult  # inference on the current split (cached)
    reference: TrainingReference | None


def distinct_names(names: list[str]) -> list[str]:
    """``names`` with every repeated name followed by its position: ``["x", "x"]`` -> ``["x (0)", "x (1)"]``."""
    return [f"{n} ({i})" if names.count(n) > 1 else n for i, n in enumerate(names)]


@dataclass
class Side:
    """One of the two models trained identically but for the alignment weights, on the current data."""

    title: str  # "with alignment" | "without alignment"
    label: str  # the model's name in the sidebar
    model: DecAlign
    card: ModelCard
    model_id: str
    result: InferenceResult
    reference: TrainingReference | None


def get_context() -> Context:
    """The model, data, split and inference the sidebar chose; stops the page with a message if none."""
    source = _model_source()
    model, card, model_id = _loaded(loaders.load, source)
    return _with_model(_card_context(source, card, model_id), source, model, card, model_id)


def with_model(base: CardContext) -> Context:
    """``base`` (from :func:`get_card_context`) completed with its model, inference and reference; stops the
    page with a message when the model cannot be loaded."""
    source = _model_source()
    model, card, model_id = _loaded(loaders.load, source)
    return _with_model(base, source, model, card, model_id)


def _with_model(base: CardContext, source: session.ModelSource, model: DecAlign, card: ModelCard,
                model_id: str) -> Context:
    result = loaders.inference(model_id, base.data_id, base.split, model, card, base.split_data)
    fields = {**vars(base), "card": card, "model_id": model_id}  # the loaded model's own card and id
    return Context(**fields, model=model, result=result, reference=_reference(source, model_id, model))


def get_card_context() -> CardContext:
    """The card, data and split the sidebar chose, without building the model; stops the page with a
    message if there is none. A model that then fails to load is reported by :func:`with_model`."""
    source = _model_source()
    card, model_id = _loaded(loaders.card, source)
    return _card_context(source, card, model_id)


def _model_source() -> session.ModelSource:
    source = loaders.current_model()
    if source is None:
        st.warning(f"No model loaded: the bundled demo model ({markdown_text(loaders.demo_model_dir())}) is not "
                   "there. Choose a checkpoint directory or upload a zipped run directory in the sidebar.")
        st.stop()
    return source


def _loaded(loader, source: session.ModelSource) -> tuple:
    """``loader(source)`` (``loaders.load`` or ``loaders.card``), or the page stopped with the reason."""
    try:
        return loader(source)
    except (CheckpointError, OSError) as exc:
        st.error(f"The model {markdown_text(source.label)} cannot be loaded: {markdown_text(exc)}")
        st.stop()


def _card_context(source: session.ModelSource, card: ModelCard, model_id: str) -> CardContext:
    found = loaders.dataset(session.data_source(), card, source.path, warn=True)
    if found is None:
        st.warning(f"The model {markdown_text(source.label)} has no bundled data. Upload a dataset with modalities "
                   f"{widths_text(card.widths)} in the sidebar.")
        st.stop()
    dataset, data_id, data_label = found
    split = current_split(dataset)
    return CardContext(card, model_id, source.label, source.path, dataset, data_id, data_label, split,
                       dataset.splits[split])


def _reference(source, model_id: str, model: DecAlign) -> TrainingReference | None:
    """The run's training reference with its maps; None (and a warning naming the file) when it cannot be used."""
    if source.path is None:
        return None
    try:
        return loaders.reference(str(source.path), model_id, model)
    except CheckpointError as exc:
        st.warning(f"The training reference of {markdown_text(source.label)} cannot be used, so the pages show "
                   f"nothing that compares with the training set: {markdown_text(exc)}")
        return None


def current_split(dataset: MultimodalDataset) -> str:
    """The chosen split if the data has it, else test, else the first."""
    split = session.split()
    if split not in dataset.splits:
        split = "test" if "test" in dataset.splits else next(iter(dataset.splits))
    return split


def widths_text(widths: dict[str, int]) -> str:
    return ", ".join(f"{markdown_text(m)} (width {d})" for m, d in widths.items())


def audit_reference(ctx: Context) -> PreparedReference:
    """The reference the Audit page and the Sample page's flags use (``decalign.audit.run.prepare_reference``),
    cached per model and data."""
    return loaders.prepared_reference(ctx.model_id, ctx.data_id, ctx.model, ctx.card, ctx.dataset, ctx.data_label,
                                      ctx.reference)


def baseline_view(ctx: Context) -> tuple[dict | None, dict | None, str | None]:
    """(baseline, comparison, note) beside the model on the data's test split (``baseline_beside``)."""
    split = "test" if "test" in ctx.dataset.splits else ctx.split
    part = ctx.dataset.splits[split]
    metrics = None
    if part.labels is not None and len(part):
        from decalign.explain.slices import result_metrics

        result = loaders.inference(ctx.model_id, ctx.data_id, split, ctx.model, ctx.card, part)
        metrics = result_metrics(result, ctx.card)
    return loaders.baseline(ctx.model_id, ctx.data_id, ctx.card, ctx.dataset, ctx.data_label, split, metrics)


def alignment_sides(ctx: Context) -> tuple[Side, Side] | None:
    """The "What alignment changed" section's heading and switch, and when the current model is the bundled
    demo or its no-alignment twin (``loaders.alignment_pair``) and the switch is on, both models on the
    current data and split; None otherwise. The twin is loaded only once the switch is on."""
    pair = loaders.alignment_pair(loaders.current_model())
    if pair is None:
        return None
    st.subheader("What alignment changed")
    if not st.toggle("Show the model trained without alignment beside it", key=session.Key.TWIN_VIEW,
                     help="The bundled demo has a twin trained on the same data with the same seed and settings, "
                          "but with every alignment weight at 0."):
        return None
    sides = []
    for title, source in zip(("with alignment", "without alignment"), pair):
        model, card, model_id = loaders.load(source)
        result = loaders.inference(model_id, ctx.data_id, ctx.split, model, card, ctx.split_data)
        sides.append(Side(title, source.label, model, card, model_id, result,
                          _reference(source, model_id, model)))
    return sides[0], sides[1]


def training_transport(ctx: Context) -> TransportResult | None:
    """The transport plan between the training prototypes (cached per model); None without a reference."""
    if ctx.reference is None:
        return None
    return loaders.training_transport(ctx.model_id, ctx.reference, ctx.card)
