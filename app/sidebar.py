"""The sidebar: what is in use (model, data, split), and the pickers that change it.

A new model or data file is loaded and checked before it replaces the current one; a failure shows its
message and leaves the previous choice in place. Either way the uploader is emptied once its file is
handled, and the uploaded file in use is named under it. A message stays only while its cause does: a new
choice of model or data clears it. The choices live in the address
(``?model=...&data=...&split=...&sample=...``), so a refresh or a shared link restores what can be
restored: a bundled model, a run of the runs folder, the bundled data.
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

MODEL_KINDS = ("Bundled demo", "Demo without alignment", "Checkpoint directory", "Upload a zip", "Training run")
DATA_KINDS = ("Model's bundled data", "Upload a file")
RUN_PREFIX = "run:"


def render() -> None:
    """What is in use, then the model, data and split pickers; the address follows the choices."""
    _restore_from_address()
    with st.sidebar:
        status = st.container()
        st.header("Model")
        _model_picker()
        st.header("Data")
        _data_picker()
        split = _split_picker()
        with status:
            _in_use(split)
    _write_address()


# ------------------------------------------------------------------------------------------ in use


def _in_use(split: tuple[str, int] | None) -> None:
    """The model and data every page works on, whatever the pickers below show."""
    model = loaders.current_model()
    data = session.data_source()
    label = _data_label(model, data)
    where = " (uploaded)" if data.kind == "upload" else "" if label.startswith("none") else " (bundled with the model)"
    lines = [f"Model in use: **{markdown_text(model.label) if model else 'none'}**",
             f"Data in use: **{markdown_text(label)}**{where}"]
    if split is not None:
        lines.append(f"Split: **{split[0]}**, {split[1]:,} samples")
    st.info("  \n".join(lines))
    if session.notice():
        st.warning(markdown_text(session.notice()))


def _data_label(model: ModelSource | None, data: session.DataSource) -> str:
    if data.kind == "upload":
        return data.label
    if model is None:
        return "none"
    try:
        card, _ = loaders.card(model)
        path = loaders.bundled_data_path(card, model.path)
    except (CheckpointError, OSError):
        return "none"
    return path.name if path is not None else "none (upload data for this model)"


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
    session.clear_error(Key.MODEL_ERROR)  # a message about another kind of model no longer applies
    fixed = {MODEL_KINDS[0]: loaders.default_model(), MODEL_KINDS[1]: loaders.twin_model()}
    if kind in fixed and fixed[kind] is not None and session.model_source() != fixed[kind]:
        _set_model(fixed[kind])


def _model_picker() -> None:
    kinds = MODEL_KINDS if loaders.twin_model() is not None else (MODEL_KINDS[0], *MODEL_KINDS[2:])
    kind = _sticky_radio("Model", kinds, Key.MODEL_KIND, _model_kind_changed)
    if kind == MODEL_KINDS[2]:
        path = st.text_input("Run directory", key=Key.MODEL_DIR, placeholder="runs/my_run")
        if st.button("Load checkpoint", key="model_dir_load") and path:
            _try_model(ModelSource("dir", path, Path(path).expanduser()))
    elif kind == MODEL_KINDS[3]:
        key = session.uploader_key("model_zip", Key.MODEL_ZIP_GEN)
        upload = st.file_uploader("Zipped run directory", type=["zip"], key=key)
        if upload is not None and session.first_sight(Key.MODEL_ZIP_SEEN, upload.file_id):
            data = upload.getvalue()
            _try_model(ModelSource("zip", upload.name, None, hashlib.sha256(data).hexdigest()), data)
            session.empty_uploader_and_rerun(Key.MODEL_ZIP_GEN, upload)
        model = session.model_source()
        if model is not None and model.kind == "zip":
            st.caption(f"**{markdown_text(model.label)}** is in use. Drop another zip above to replace it.")
    elif kind == MODEL_KINDS[4]:
        _run_picker()
    _show_error(Key.MODEL_ERROR)


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
    twin = loaders.twin_model()
    if path is None or (twin is not None and Path(path) == twin.path):
        source = loaders.default_model() if path is None else twin
        session.set_choice(Key.MODEL_KIND, MODEL_KINDS[0] if path is None else MODEL_KINDS[1])
        _set_model(source)
    else:
        session.set_choice(Key.MODEL_KIND, MODEL_KINDS[2])
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
    session.set_notice(None)
    # Data chosen for another model may not fit this one: check it, else go back to the bundled data.
    data = session.data_source()
    if source is None or data.kind != "upload":
        return
    card, _ = loaders.card(source)
    dataset = loaders.dataset_from_bytes(data.digest, session.upload_bytes(data.digest), data.label)
    try:
        check_compatible(dataset, card.widths, data.label, bert_text=card.has_bert)
    except DataError:
        use_bundled_data()
        session.set_notice(f"{data.label} does not fit {source.label}: back on the model's bundled data.")


# ---------------------------------------------------------------------------------------------- data


def _data_kind_changed(kind: str) -> None:
    if kind == DATA_KINDS[0]:
        session.use_bundled_data()
    session.clear_error(Key.DATA_ERROR)


def _data_picker() -> None:
    kind = _sticky_radio("Data", DATA_KINDS, Key.DATA_KIND, _data_kind_changed)
    if kind == DATA_KINDS[1]:
        key = session.uploader_key("data_upload", Key.DATA_UPLOAD_GEN)
        upload = st.file_uploader("MMSA pickle (.pkl) or .npz", type=["pkl", "pickle", "npz"], key=key)
        if upload is not None and session.first_sight(Key.DATA_UPLOAD_SEEN, upload.file_id):
            _try_data(upload.getvalue(), upload.name)
            session.empty_uploader_and_rerun(Key.DATA_UPLOAD_GEN, upload)
        data = session.data_source()
        if data.kind == "upload":
            st.caption(f"**{markdown_text(data.label)}** is in use. Drop another file above to replace it.")
    _show_error(Key.DATA_ERROR)


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
    card, _ = loaders.card(source)
    try:
        _, digest = load_upload(data, name, card)
    except DataError as exc:
        kept = session.data_source().label if session.data_source().kind == "upload" else "the bundled data"
        session.set_error(Key.DATA_ERROR, f"{exc} (not loaded: still using {kept})")
        return
    session.use_uploaded_data(name, digest, data)
    session.set_notice(None)


def _split_picker() -> tuple[str, int] | None:
    """The split selectbox; returns (split in use, its size), or None without usable data."""
    source = loaders.current_model()
    if source is None:
        return None
    try:
        card, _ = loaders.card(source)
        found = loaders.dataset(session.data_source(), card, source.path)
    except (CheckpointError, DataError, OSError):
        return None
    if found is None:
        return None
    split = current_split(found[0])
    session.show_split_in_picker(split)
    st.selectbox("Split", list(found[0].splits), key=Key.SPLIT_PICKER, on_change=session.split_from_picker)
    return split, len(found[0].splits[split])


def _show_error(key: Key) -> None:
    message = session.error(key)
    if message:
        st.error(markdown_text(message))


# -------------------------------------------------------------------------------------- the address


def model_param(source: ModelSource | None) -> str | None:
    """How the address names a model, or None for one it cannot restore (an upload, a folder elsewhere)."""
    if source is None:
        return None
    for name, fixed in (("demo", loaders.default_model()), ("demo_noalign", loaders.twin_model())):
        if fixed is not None and source.path == fixed.path:
            return name
    runs = trained_runs() if source.kind == "dir" else {}
    for name, path in runs.items():
        if source.path is not None and Path(source.path).resolve() == Path(path).resolve():
            return RUN_PREFIX + name
    return None


def _restore_from_address() -> None:
    """Apply ``?model=&data=&split=&sample=`` once per session; say what cannot be restored."""
    params = session.query_params_once()
    if not params:
        return
    problems = []
    model = params.get("model")
    if model:
        source = _model_from_param(model)
        if source is None:
            problems.append(f"the model {model!r} is not a bundled model or a run of the runs folder")
        elif source != loaders.current_model():
            use_model_dir(None if source == loaders.default_model() else source.path, source.label)
    data = params.get("data")
    if data and data != "bundled":
        problems.append(f"the data {data.removeprefix('upload:')!r} was an upload, which is not kept on the "
                        "server: upload it again")
    if params.get("split"):
        session.set_split(params["split"])
    if params.get("sample"):
        session.select_sample(params["sample"])
    if problems:
        session.set_notice("The link could not restore everything: " + "; ".join(problems) + ".")


def _model_from_param(value: str) -> ModelSource | None:
    if value == "demo":
        return loaders.default_model()
    if value == "demo_noalign":
        return loaders.twin_model()
    if value.startswith(RUN_PREFIX):
        name = value.removeprefix(RUN_PREFIX)
        path = trained_runs().get(name)  # only a run listed in the runs folder: never a path from the address
        return ModelSource("dir", f"run {name}", path) if path is not None else None
    return None


def _write_address() -> None:
    model = loaders.current_model()
    data = session.data_source()
    session.write_query_params({
        "model": model_param(model),
        "data": "bundled" if data.kind == "bundled" else f"upload:{data.label}",
        "split": session.split(),
        "sample": session.selected_sample(),
    })
