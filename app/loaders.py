"""Cached loaders: models, datasets, training references, inference and the training plan.

Models and datasets are cached with ``st.cache_resource`` (shared, never copied), inference with
``st.cache_data`` keyed by ``(model_id, data_id, split)``; heavy arguments are underscore-prefixed so
Streamlit does not hash them. Every page that loads a run folder or a data file goes through here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from app import import_all, session, views
from decalign import sandbox
from decalign.atomic import clean_stale_temps
from decalign.checkpoint import (
    ModelCard,
    card_data_path,
    load_card,
    load_model,
    load_model_zip,
    model_fingerprint,
)
from decalign.data import MultimodalDataset, Split, load_dataset, load_dataset_bytes
from decalign.data.transform import TRANSFORM_KEY
from decalign.explain.projection import ProjectionWorker
from decalign.safe_output import markdown_text
from decalign.train.baseline import baseline_beside

# Whatever needs torch is imported inside the loader that uses it: the sidebar and the Overview's first
# elements need only cards and data, so a fresh server draws them without importing torch (1.3 s of 2.6 s).
if TYPE_CHECKING:
    from decalign.audit.run import PreparedReference
    from decalign.inference import InferenceResult
    from decalign.model import DecAlign, TransportResult
    from decalign.train.reference import TrainingReference

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"

# Every model and data file is parsed in a sandbox child; the server keeps one started ahead, so a user
# waiting for a file does not wait for its Python and numpy start-up too (two files on a cold Overview).
sandbox.keep_spare()


# -------------------------------------------------------------------------------------------- models


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model_from_dir(path: str, fingerprint: str) -> tuple[DecAlign, ModelCard]:
    clean_stale_temps(path)  # temp files of a killed write; a live writer's are kept
    return load_model(path)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model_from_zip(digest: str, _data: bytes, name: str) -> tuple[DecAlign, ModelCard]:
    return load_model_zip(_data, name)


def model_from_dir(path: str | Path) -> tuple[DecAlign, ModelCard, str]:
    """(model, card, model_id) of a run directory; the id is the fingerprint of its weights and card."""
    fingerprint = model_fingerprint(path)
    model, card = _model_from_dir(str(path), fingerprint)
    return model, card, fingerprint


@st.cache_resource(max_entries=8)
def _card_from_dir(path: str, fingerprint: str) -> ModelCard:
    return load_card(path)


def card(source: session.ModelSource) -> tuple[ModelCard, str]:
    """(card, model_id) of a model source without building its model; raises CheckpointError or OSError.

    A run directory's card is read on its own (no torch); the card of a zip, or of a weights file named
    directly, comes with its model (:func:`load`), which the sidebar loaded when it was chosen.
    """
    if source.kind == "dir" and Path(source.path).is_dir():
        fingerprint = model_fingerprint(source.path)
        return _card_from_dir(str(source.path), fingerprint), fingerprint
    _, found, model_id = load(source)
    return found, model_id


def load(source: session.ModelSource) -> tuple[DecAlign, ModelCard, str]:
    """(model, card, model_id) of a model source; raises CheckpointError or OSError."""
    if source.kind == "zip":
        model, card = _model_from_zip(source.digest, session.zip_bytes()[source.digest], source.label)
        return model, card, source.digest
    return model_from_dir(source.path)


def demo_model_dir() -> Path:
    """assets/demo_model, or the run directory named by DECALIGN_DEMO_MODEL (tests, development)."""
    return Path(os.environ.get("DECALIGN_DEMO_MODEL", ROOT / "assets" / "demo_model"))


def default_model() -> session.ModelSource | None:
    demo = demo_model_dir()
    return session.ModelSource("dir", "bundled demo", demo) if (demo / "card.json").is_file() else None


def twin_model() -> session.ModelSource | None:
    """The bundled demo's no-alignment twin (``decalign demo`` trains both), None when it is not there."""
    from decalign.cli.demo import twin_dir

    twin = twin_dir(demo_model_dir())
    return session.ModelSource("dir", "demo without alignment", twin) if (twin / "card.json").is_file() else None


def alignment_pair(source: session.ModelSource | None) -> tuple[session.ModelSource, session.ModelSource] | None:
    """(with alignment, without alignment) when ``source`` is the bundled demo or its twin, else None:
    the two models trained identically except for the alignment weights."""
    demo, twin = default_model(), twin_model()
    if demo is None or twin is None or source is None or source.path not in (demo.path, twin.path):
        return None
    return demo, twin


def current_model() -> session.ModelSource | None:
    """The model the sidebar chose, else the bundled demo (None when neither is there)."""
    return session.model_source() or default_model()


# ------------------------------------------------------------------------------------------- datasets


@st.cache_resource(show_spinner="Reading the data…", max_entries=4)
def _dataset_from_path(path: str, mtime: float) -> tuple[MultimodalDataset, str]:
    dataset = load_dataset(path)
    return dataset, dataset.file_fingerprint()  # kept: audits and the baseline compare it again


@st.cache_resource(show_spinner="Reading the data…", max_entries=4)
def dataset_from_bytes(digest: str, _data: bytes, name: str) -> MultimodalDataset:
    """An uploaded data file, cached by the sha256 of its bytes; raises DataError."""
    return load_dataset_bytes(_data, name)


def dataset_from_path(path: str | Path) -> tuple[MultimodalDataset, str]:
    """(dataset, data_id) of a data file on disk, cached until the file changes; raises DataError."""
    path = Path(path)
    return _dataset_from_path(str(path), path.stat().st_mtime)


def bundled_data_path(card: ModelCard, run_dir: Path | None = None, *, warn: bool = False) -> Path | None:
    """The data a model ships with: its card's ``data_source`` if that file is in the run folder or the
    bundled assets (``card_data_path``), else the demo data for a model trained on the demo's modalities.
    With ``warn``, a card naming a file elsewhere (never read) shows a warning."""
    path, warning = card_data_path(card, run_dir)
    if warning and warn:
        st.warning(markdown_text(warning))
    if path is not None:
        return path
    if DEMO_DATA.is_file() and dataset_from_path(DEMO_DATA)[0].widths == card.widths:
        return DEMO_DATA
    return None


def dataset(source: session.DataSource, card: ModelCard, run_dir: Path | None = None, *, warn: bool = False
            ) -> tuple[MultimodalDataset, str, str] | None:
    """(dataset, data_id, label) of a data source for the model of ``card`` (from ``run_dir``); None when a
    model has no bundled data."""
    if source.kind == "upload":
        data = dataset_from_bytes(source.digest, session.upload_bytes(source.digest), source.label)
        return prepared(data, source.digest, card), source.digest, source.label
    path = bundled_data_path(card, run_dir, warn=warn)
    if path is None:
        return None
    data, fingerprint = dataset_from_path(path)
    return prepared(data, fingerprint, card), fingerprint, path.name


@st.cache_resource(max_entries=4)
def _prepared(data_id: str, transform_id: str, _dataset: MultimodalDataset, _card: ModelCard) -> MultimodalDataset:
    return _card.prepare(_dataset)


def prepared(dataset: MultimodalDataset, data_id: str, card: ModelCard) -> MultimodalDataset:
    """``dataset`` as the model of ``card`` reads it (``ModelCard.prepare``: the run's input transform, and a
    BERT model's tokens)."""
    stored = card.extra.get(TRANSFORM_KEY)
    if stored is None and not card.has_bert:
        return dataset
    if card.has_bert:  # the token view depends on the BERT's vocabulary, checked in prepare
        stored = {"transform": stored, "bert": card.config.model.bert_shape()}
    transform_id = hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()
    return _prepared(data_id, transform_id, dataset, card)


# --------------------------------------------------------------------------- reference and inference


@st.cache_resource(max_entries=4)
def reference(path: str, fingerprint: str, _model: DecAlign) -> TrainingReference | None:
    """The training reference saved in a run directory, with its projection maps (fitted from ``_model``
    for references written before they were stored); None when the run directory has none."""
    from decalign.train.reference import load_reference, with_maps

    found = load_reference(path)
    return None if found is None else with_maps(found, _model)


@st.cache_resource(show_spinner="Preparing the reference data…", max_entries=4)
def prepared_reference(model_id: str, data_id: str, _model: DecAlign, _card: ModelCard, _dataset: MultimodalDataset,
                       data_label: str, _stored: TrainingReference | None) -> PreparedReference:
    """The audit's reference for a model on a dataset (``decalign.audit.run.prepare_reference``)."""
    from decalign.audit.run import prepare_reference

    return prepare_reference(_model, _card, _dataset, data_label, _stored)


@st.cache_data(show_spinner="Fitting the linear baseline…", max_entries=8)
def baseline(model_id: str, data_id: str, _card: ModelCard, _dataset: MultimodalDataset, data_label: str, split: str,
             metrics: dict | None) -> tuple[dict | None, dict | None, str | None]:
    """(baseline, comparison, note) of a model on a dataset (``decalign.train.baseline.baseline_beside``):
    the card's, or fitted now (and cached) when the card has none."""
    return baseline_beside(_card, _dataset, data_label, split, metrics)


@st.cache_resource(max_entries=2)
def _inference_model(model_id: str, _model: DecAlign, device: str) -> DecAlign:
    """The model for bulk inference: on the GPU when there is one (DECALIGN_DEVICE, default auto).

    Explanations keep using the CPU copy; only the whole-split pass, the heavy part, moves.
    """
    return _model if device == "cpu" else copy.deepcopy(_model).to(device).eval()


@st.cache_data(show_spinner="Running the model…", max_entries=16)
def inference(model_id: str, data_id: str, split: str, _model: DecAlign, _card: ModelCard,
              _split: Split) -> InferenceResult:
    """The model on a whole split, with posteriors over the card's training prototypes."""
    from decalign.device import resolve_device
    from decalign.inference import run_inference

    device = str(resolve_device(os.environ.get("DECALIGN_DEVICE", "auto")))
    model = _inference_model(model_id, _model, device)
    return run_inference(model, _split, task=_card.task, prototypes=_card.prototype_tensors())


@st.cache_resource(max_entries=4)
def training_transport(model_id: str, _reference: TrainingReference, _card: ModelCard) -> TransportResult:
    """The model's transport plan between its training prototypes (``decalign.train.reference``)."""
    from decalign.train.reference import training_plan

    return training_plan(_reference, _card.config.model)


@st.cache_resource
def projection_worker() -> ProjectionWorker:
    """The server's one background projection worker (``decalign.explain.projection.ProjectionWorker``):
    a low-priority child process that computes UMAP views and keeps them on disk. Started with the
    server, it compiles UMAP first, so the first UMAP view a user asks for does not pay for that."""
    worker = ProjectionWorker()
    worker.warm_up()
    return worker


# Imported once a server has drawn its first page, in the background, so the next page opened finds them
# loaded: torch (which the first page does not wait for, see app.__main__), every page, and scikit-learn,
# which pages import only where used (1-1.6 s on a cold page).
LATER_IMPORTS = ("torch", *views.MODULES, "sklearn.decomposition", "sklearn.neighbors", "sklearn.model_selection",
                 "sklearn.metrics", "sklearn.linear_model", "sklearn.preprocessing")


def warm_up_projections() -> ProjectionWorker:
    """After a page: the projection worker (started once) and the imports pages make later."""
    _later_imports()
    return projection_worker()


@st.cache_resource
def _later_imports() -> threading.Thread:
    thread = threading.Thread(target=import_all, args=(LATER_IMPORTS,), name="later-imports", daemon=True)
    thread.start()
    return thread
