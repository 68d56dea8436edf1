"""The sidebar: model picker, data picker and split picker.

A new model or data file is loaded and checked before it replaces the current one; a failure shows its
message and leaves the previous choice in place.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import streamlit as st

from app import loaders, session
from app.context import current_split
from app.session import Key, ModelSource
from decalign.checkpoint import CheckpointError, ModelCard
from decalign.data import DataError, MultimodalDataset, check_compatible
from decalign.safe_output import markdown_text

MODEL_KINDS = ("Bundled demo", "Checkpoint directory", "Upload a zip", "Training run")
DATA_KINDS = ("Model's bundled data", "Upload a file")


def render() -> None:
    """Model picker, data picker and split picker."""
    with st.sidebar:
        st.header("Model")
        _model_picker()
        st.header("Data")
        _data_picker()
        _split_picker()


def _sticky_radio(label: str, options: tuple[str, ...], key: Key, on_change=None) -> str:
    """A radio whose choice survives page switches (see ``session.restore_choice``)."""
    session.restore_choice(key)

    def remember() -> None:
        choice = session.remember_choice(key)
        if on_change is not None:
            on_change(choice)

    return st.radio(label, options, key=key, on_change=remember, label_visibility="collapsed")


# --------------------------------------------------------------------------------------------- model


def _model_kind_changed(kind: str) -> None:
    if kind == MODEL_KINDS[0] and session.model_source() not in (None, loaders.default_model()):
        _set_model(loaders.default_model())


def _model_picker() -> None:
    kind = _sticky_radio("Model", MODEL_KINDS, Key.MODEL_KIND, _model_kind_changed)
    if kind == MODEL_KINDS[1]:
        path = st.text_input("Run directory", key=Key.MODEL_DIR, placeholder="runs/my_run")
        if st.button("Load checkpoint", key="model_dir_load") and path:
            _try_model(ModelSource("dir", path, Path(path).expanduser()))
    elif kind == MODEL_KINDS[2]:
        upload = st.file_uploader("Zipped run directory", type=["zip"], key="model_zip")
        if upload is not None and session.first_sight(Key.MODEL_ZIP_SEEN, upload.file_id):
            data = upload.getvalue()
            _try_model(ModelSource("zip", upload.name, None, hashlib.sha256(data).hexdigest()), data)
    elif kind == MODEL_KINDS[3]:
        _run_picker()
    _show_error(Key.MODEL_ERROR)
    current = loaders.current_model()
    st.caption(f"Using: **{markdown_text(current.label)}**" if current else "No model loaded")


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
    session.set_choice(Key.MODEL_KIND, MODEL_KINDS[0] if path is None else MODEL_KINDS[1])
    if path is None:
        _set_model(loaders.default_model())
    else:
        session.set_widget(Key.MODEL_DIR, str(path))
        _try_model(ModelSource("dir", label, Path(path)))


def use_bundled_data() -> None:
    """Make the model's bundled data current again; safe in a widget callback."""
    session.set_choice(Key.DATA_KIND, DATA_KINDS[0])
    session.use_bundled_data()


def _try_model(source: ModelSource, zip_bytes: bytes | None = None) -> None:
    previous = session.zip_bytes()
    if zip_bytes is not None:
        session.set_zip_bytes({**previous, source.digest: zip_bytes})
    try:
        loaders.load(source)
    except (CheckpointError, OSError) as exc:
        session.set_error(Key.MODEL_ERROR, str(exc))
        session.set_zip_bytes(previous)
        return
    current = session.model_source()
    if zip_bytes is not None:  # keep only the zip in use (if any) and the new one
        keep = {source.digest} | ({current.digest} if current is not None and current.kind == "zip" else set())
        session.set_zip_bytes({k: v for k, v in session.zip_bytes().items() if k in keep})
    _set_model(source)


def _set_model(source: ModelSource | None) -> None:
    session.set_model_source(source)
    # Data chosen for another model may not fit this one: check it, else go back to the bundled data.
    data = session.data_source()
    if source is None or data.kind != "upload":
        return
    _, card, _ = loaders.load(source)
    dataset = loaders.dataset_from_bytes(data.digest, session.upload_bytes(data.digest), data.label)
    try:
        check_compatible(dataset, card.widths, data.label, bert_text=card.has_bert)
    except DataError:
        session.use_bundled_data()


# ---------------------------------------------------------------------------------------------- data


def _data_kind_changed(kind: str) -> None:
    if kind == DATA_KINDS[0]:
        session.use_bundled_data()


def _data_picker() -> None:
    kind = _sticky_radio("Data", DATA_KINDS, Key.DATA_KIND, _data_kind_changed)
    if kind == DATA_KINDS[1]:
        upload = st.file_uploader("MMSA pickle (.pkl) or .npz", type=["pkl", "pickle", "npz"], key="data_upload")
        if upload is not None and session.first_sight(Key.DATA_UPLOAD_SEEN, upload.file_id):
            _try_data(upload.getvalue(), upload.name)
    _show_error(Key.DATA_ERROR)
    current = session.data_source()
    if current.kind == "upload":
        st.caption(f"Using: **{markdown_text(current.label)}**")


def load_upload(data: bytes, name: str, card: ModelCard) -> tuple[MultimodalDataset, str]:
    """Read an uploaded dataset and check it fits ``card``; raises DataError with the reason.

    Returns the dataset and the sha256 of the bytes (its ``data_id``).
    """
    digest = hashlib.sha256(data).hexdigest()
    dataset = loaders.dataset_from_bytes(digest, data, name)
    check_compatible(dataset, card.widths, name, bert_text=card.has_bert)
    return dataset, digest


def _try_data(data: bytes, name: str) -> None:
    source = loaders.current_model()
    if source is None:
        session.set_error(Key.DATA_ERROR, "Load a model first: uploaded data is checked against the model's card.")
        return
    _, card, _ = loaders.load(source)
    try:
        _, digest = load_upload(data, name, card)
    except DataError as exc:
        session.set_error(Key.DATA_ERROR, str(exc))
        return
    session.use_uploaded_data(name, digest, data)


def _split_picker() -> None:
    source = loaders.current_model()
    if source is None:
        return
    try:
        _, card, _ = loaders.load(source)
        found = loaders.dataset(session.data_source(), card, source.path)
    except (CheckpointError, DataError):
        return
    if found is None:
        return
    session.show_split_in_picker(current_split(found[0]))
    st.selectbox("Split", list(found[0].splits), key=Key.SPLIT_PICKER, on_change=session.split_from_picker)


def _show_error(key: Key) -> None:
    message = session.error(key)
    if message:
        st.error(markdown_text(message))
