"""What the sidebar chose (model, data, split) and the cached objects every page reads through ``Context``.

The model and datasets are cached with ``st.cache_resource`` (shared, never copied), inference with
``st.cache_data`` keyed by ``(model_id, data_id, split)``; heavy arguments are underscore-prefixed so
Streamlit does not hash them. A failed load (bad zip, bad data file, data that does not fit the model)
shows a message and leaves the previous choice in place.
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from decalign.checkpoint import CheckpointError, ModelCard, load_model, load_model_zip, model_fingerprint
from decalign.data import (
    DataError,
    MultimodalDataset,
    Split,
    check_compatible,
    load_dataset,
    load_dataset_bytes,
)
from decalign.device import resolve_device
from decalign.explain.projection import warm_up_umap
from decalign.inference import InferenceResult, run_inference
from decalign.model import DecAlign, TransportResult
from decalign.train.reference import TrainingReference, load_reference, training_plan

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"
MODEL_KINDS = ("Bundled demo", "Checkpoint directory", "Upload a zip", "Training run")
DATA_KINDS = ("Model's bundled data", "Upload a file")


@dataclass
class Context:
    model: DecAlign
    card: ModelCard
    model_id: str  # sha256 of weights + card (zip bytes for an uploaded zip)
    model_label: str
    run_dir: Path | None
    dataset: MultimodalDataset
    data_id: str  # sha256 of the uploaded bytes, or the bundled dataset's fingerprint
    data_label: str
    split: str
    split_data: Split
    result: InferenceResult  # inference on the current split (cached)
    reference: TrainingReference | None


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "dir" | "zip"
    label: str
    path: Path | None = None  # run directory
    digest: str = ""  # zip sha256


@dataclass(frozen=True)
class DataSource:
    kind: str  # "bundled" | "upload"
    label: str
    digest: str = ""


# ------------------------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model_from_dir(path: str, fingerprint: str) -> tuple[DecAlign, ModelCard]:
    return load_model(path)


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _model_from_zip(digest: str, _data: bytes, name: str) -> tuple[DecAlign, ModelCard]:
    return load_model_zip(_data, name)


@st.cache_resource(show_spinner="Reading the data…", max_entries=4)
def _dataset_from_path(path: str, mtime: float) -> tuple[MultimodalDataset, str]:
    dataset = load_dataset(path)
    return dataset, dataset.fingerprint()


@st.cache_resource(show_spinner="Reading the data…", max_entries=4)
def _dataset_from_bytes(digest: str, _data: bytes, name: str) -> MultimodalDataset:
    return load_dataset_bytes(_data, name)


@st.cache_resource(max_entries=4)
def _reference(path: str, fingerprint: str) -> TrainingReference | None:
    return load_reference(path)


@st.cache_resource
def warm_up_projections() -> threading.Thread:
    """Compile UMAP in the background once per server process, so the first Embeddings view is quick."""
    thread = threading.Thread(target=warm_up_umap, name="umap-warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(max_entries=2)
def _inference_model(model_id: str, _model: DecAlign, device: str) -> DecAlign:
    """The model for bulk inference: on the GPU when there is one (DECALIGN_DEVICE, default auto).

    Explanations keep using the CPU copy; only the whole-split pass, the heavy part, moves.
    """
    return _model if device == "cpu" else copy.deepcopy(_model).to(device).eval()


@st.cache_data(show_spinner="Running the model…", max_entries=16)
def _inference(model_id: str, data_id: str, split: str, _model: DecAlign, _card: ModelCard,
               _split: Split) -> InferenceResult:
    device = str(resolve_device(os.environ.get("DECALIGN_DEVICE", "auto")))
    model = _inference_model(model_id, _model, device)
    return run_inference(model, _split, task=_card.task, prototypes=_card.prototype_tensors())


# --------------------------------------------------------------------------------------- resolving


def _load(source: ModelSource) -> tuple[DecAlign, ModelCard, str]:
    if source.kind == "zip":
        data = st.session_state["model_zip_bytes"][source.digest]
        model, card = _model_from_zip(source.digest, data, source.label)
        return model, card, source.digest
    fingerprint = model_fingerprint(source.path)
    model, card = _model_from_dir(str(source.path), fingerprint)
    return model, card, fingerprint


def bundled_data_path(card: ModelCard, run_dir: Path | None) -> Path | None:
    """The data a model ships with: its card's ``data_source`` if that file exists, else the demo data
    for a model trained on the demo's modalities."""
    if card.data_source:
        for candidate in (Path(card.data_source), ROOT / card.data_source):
            if candidate.is_file() and candidate.suffix.lower() in (".npz", ".pkl", ".pickle"):
                return candidate
    if DEMO_DATA.is_file():
        demo = _dataset_from_path(str(DEMO_DATA), DEMO_DATA.stat().st_mtime)[0]
        if demo.widths == card.widths:
            return DEMO_DATA
    return None


def _dataset(source: DataSource, card: ModelCard, run_dir: Path | None
             ) -> tuple[MultimodalDataset, str, str] | None:
    if source.kind == "upload":
        data = st.session_state["data_upload_bytes"][source.digest]
        return _dataset_from_bytes(source.digest, data, source.label), source.digest, source.label
    path = bundled_data_path(card, run_dir)
    if path is None:
        return None
    dataset, fingerprint = _dataset_from_path(str(path), path.stat().st_mtime)
    return dataset, fingerprint, path.name


def demo_model_dir() -> Path:
    """assets/demo_model, or the run directory named by DECALIGN_DEMO_MODEL (tests, development)."""
    return Path(os.environ.get("DECALIGN_DEMO_MODEL", ROOT / "assets" / "demo_model"))


def _default_model() -> ModelSource | None:
    demo = demo_model_dir()
    return ModelSource("dir", "bundled demo", demo) if (demo / "card.json").is_file() else None


def get_context() -> Context:
    """The model, data, split and inference the sidebar chose; stops the page with a message if none."""
    source = st.session_state.get("model_source") or _default_model()
    if source is None:
        st.warning(f"No model loaded: the bundled demo model ({demo_model_dir()}) is not there. Choose a checkpoint "
                   "directory or upload a zipped run directory in the sidebar.")
        st.stop()
    try:
        model, card, model_id = _load(source)
    except CheckpointError as exc:
        st.error(f"The model {source.label} cannot be loaded: {exc}")
        st.stop()
    data_source = st.session_state.get("data_source", DataSource("bundled", "bundled"))
    found = _dataset(data_source, card, source.path)
    if found is None:
        st.warning(f"The model {source.label} has no bundled data. Upload a dataset with modalities "
                   f"{_widths_text(card.widths)} in the sidebar.")
        st.stop()
    dataset, data_id, data_label = found
    split = _current_split(dataset)
    part = dataset.splits[split]
    result = _inference(model_id, data_id, split, model, card, part)
    reference = _reference(str(source.path), model_id) if source.path is not None else None
    return Context(model, card, model_id, source.label, source.path, dataset, data_id, data_label, split, part,
                   result, reference)


def _current_split(dataset: MultimodalDataset) -> str:
    split = st.session_state.get("split")
    if split not in dataset.splits:
        split = "test" if "test" in dataset.splits else next(iter(dataset.splits))
    return split


def _widths_text(widths: dict[str, int]) -> str:
    return ", ".join(f"{m} (width {d})" for m, d in widths.items())


# ------------------------------------------------------------------------------------------ sidebar


def sidebar() -> None:
    """Model picker, data picker and split picker; loads are checked before they replace the current one."""
    with st.sidebar:
        st.header("Model")
        _model_picker()
        st.header("Data")
        _data_picker()
        _split_picker()


def _sticky_radio(label: str, options: tuple[str, ...], key: str, on_change=None) -> str:
    """A radio whose choice survives page switches (``st.switch_page`` drops widget state otherwise):
    the last choice is kept under a non-widget key and written back before the widget is drawn."""
    sticky = f"{key}_choice"
    if sticky in st.session_state:
        st.session_state[key] = st.session_state[sticky]

    def remember() -> None:
        st.session_state[sticky] = st.session_state[key]
        if on_change is not None:
            on_change(st.session_state[key])

    return st.radio(label, options, key=key, on_change=remember, label_visibility="collapsed")


def _model_kind_changed(kind: str) -> None:
    if kind == MODEL_KINDS[0] and st.session_state.get("model_source") not in (None, _default_model()):
        _set_model(_default_model())


def _model_picker() -> None:
    kind = _sticky_radio("Model", MODEL_KINDS, "model_kind", _model_kind_changed)
    if kind == MODEL_KINDS[1]:
        path = st.text_input("Run directory", key="model_dir", placeholder="runs/my_run")
        if st.button("Load checkpoint", key="model_dir_load") and path:
            _try_model(ModelSource("dir", path, Path(path).expanduser()))
    elif kind == MODEL_KINDS[2]:
        upload = st.file_uploader("Zipped run directory", type=["zip"], key="model_zip")
        if upload is not None and st.session_state.get("model_zip_seen") != upload.file_id:
            st.session_state["model_zip_seen"] = upload.file_id
            data = upload.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            _try_model(ModelSource("zip", upload.name, None, digest), data)
    elif kind == MODEL_KINDS[3]:
        _run_picker()
    _show_error("model_error")
    current = st.session_state.get("model_source") or _default_model()
    st.caption(f"Using: **{current.label}**" if current else "No model loaded")


def trained_runs() -> dict[str, Path]:
    """Runs of the runs folder ($DECALIGN_RUNS_DIR, else ./runs) that hold a model, newest first."""
    from decalign.train.background import list_runs

    return {info.name: info.path for info in list_runs() if info.has_model}


def _run_picker() -> None:
    runs = trained_runs()
    if not runs:
        st.caption("No trained runs yet: start one on the Train page.")
        return
    name = st.selectbox("Run", list(runs), key="model_run")
    if st.button("Load run", key="model_run_load"):
        _try_model(ModelSource("dir", f"run {name}", runs[name]))


def use_model_dir(path: Path | None, label: str) -> None:
    """Make the run directory ``path`` (None: the bundled demo) the current model; safe in a widget callback."""
    kind = MODEL_KINDS[0] if path is None else MODEL_KINDS[1]
    st.session_state["model_kind"] = st.session_state["model_kind_choice"] = kind
    if path is None:
        _set_model(_default_model())
    else:
        st.session_state["model_dir"] = str(path)
        _try_model(ModelSource("dir", label, Path(path)))


def _try_model(source: ModelSource, zip_bytes: bytes | None = None) -> None:
    previous = st.session_state.get("model_zip_bytes", {})
    if zip_bytes is not None:
        st.session_state["model_zip_bytes"] = {**previous, source.digest: zip_bytes}
    try:
        _load(source)
    except (CheckpointError, OSError) as exc:
        st.session_state["model_error"] = str(exc)
        st.session_state["model_zip_bytes"] = previous
        return
    current = st.session_state.get("model_source")
    if zip_bytes is not None:  # keep only the zip in use (if any) and the new one
        keep = {source.digest} | ({current.digest} if current is not None and current.kind == "zip" else set())
        st.session_state["model_zip_bytes"] = {k: v for k, v in st.session_state["model_zip_bytes"].items()
                                               if k in keep}
    _set_model(source)


def _set_model(source: ModelSource | None) -> None:
    st.session_state["model_source"] = source
    st.session_state.pop("model_error", None)
    # Data chosen for another model may not fit this one: check it, else go back to the bundled data.
    data = st.session_state.get("data_source")
    if source is None or data is None or data.kind != "upload":
        return
    _, card, _ = _load(source)
    dataset = _dataset_from_bytes(data.digest, st.session_state["data_upload_bytes"][data.digest], data.label)
    try:
        check_compatible(dataset, card.widths, data.label)
    except DataError:
        st.session_state["data_source"] = DataSource("bundled", "bundled")


def _data_kind_changed(kind: str) -> None:
    if kind == DATA_KINDS[0]:
        st.session_state["data_source"] = DataSource("bundled", "bundled")


def _data_picker() -> None:
    kind = _sticky_radio("Data", DATA_KINDS, "data_kind", _data_kind_changed)
    if kind == DATA_KINDS[1]:
        upload = st.file_uploader("MMSA pickle (.pkl) or .npz", type=["pkl", "pickle", "npz"], key="data_upload")
        if upload is not None and st.session_state.get("data_upload_seen") != upload.file_id:
            st.session_state["data_upload_seen"] = upload.file_id
            _try_data(upload.getvalue(), upload.name)
    _show_error("data_error")
    current = st.session_state.get("data_source")
    if current is not None and current.kind == "upload":
        st.caption(f"Using: **{current.label}**")


def load_upload(data: bytes, name: str, card: ModelCard) -> tuple[MultimodalDataset, str]:
    """Read an uploaded dataset and check it fits ``card``; raises DataError with the reason.

    Returns the dataset and the sha256 of the bytes (its ``data_id``).
    """
    digest = hashlib.sha256(data).hexdigest()
    dataset = _dataset_from_bytes(digest, data, name)
    check_compatible(dataset, card.widths, name)
    return dataset, digest


def _try_data(data: bytes, name: str) -> None:
    source = st.session_state.get("model_source") or _default_model()
    if source is None:
        st.session_state["data_error"] = "Load a model first: uploaded data is checked against the model's card."
        return
    _, card, _ = _load(source)
    try:
        _, digest = load_upload(data, name, card)
    except DataError as exc:
        st.session_state["data_error"] = str(exc)
        return
    st.session_state["data_upload_bytes"] = {digest: data}  # only the data in use is kept in memory
    st.session_state["data_source"] = DataSource("upload", name, digest)
    st.session_state.pop("data_error", None)


def _split_picker() -> None:
    source = st.session_state.get("model_source") or _default_model()
    if source is None:
        return
    try:
        _, card, _ = _load(source)
        found = _dataset(st.session_state.get("data_source", DataSource("bundled", "bundled")), card, source.path)
    except (CheckpointError, DataError):
        return
    if found is None:
        return
    splits = list(found[0].splits)
    st.session_state["split_picker"] = _current_split(found[0])
    st.selectbox("Split", splits, key="split_picker",
                 on_change=lambda: st.session_state.update(split=st.session_state["split_picker"]))


def _show_error(key: str) -> None:
    if st.session_state.get(key):
        st.error(st.session_state[key])


# ---------------------------------------------------------------------------------- selected sample


def select_sample(sample_id: str) -> None:
    """Remember ``sample_id`` so the Sample page opens it."""
    st.session_state["selected_sample"] = str(sample_id)


def selected_sample() -> str | None:
    return st.session_state.get("selected_sample")


# ----------------------------------------------------------------------------------- cached helpers


@st.cache_resource(max_entries=4)
def _training_plan(model_id: str, _reference: TrainingReference, _card: ModelCard) -> TransportResult:
    return training_plan(_reference, _card.config.model)


def training_transport(ctx: Context) -> TransportResult | None:
    """The transport plan between the training prototypes (cached per model); None without a reference."""
    if ctx.reference is None:
        return None
    return _training_plan(ctx.model_id, ctx.reference, ctx.card)
