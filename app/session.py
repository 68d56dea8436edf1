"""What the dashboard remembers between reruns: every session key, named once, with typed accessors.

Views and the sidebar never index ``st.session_state`` with a bare string: they call the functions here
(``select_sample``, ``use_bundled_data``...), or give a widget its key from :class:`Key`. Keys of widgets
are part of the page (tests and the browser address them), so their values are the widgets' ``key=``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import streamlit as st


class Key(StrEnum):
    # What the sidebar chose
    MODEL_SOURCE = "model_source"  # ModelSource | None (None: the bundled demo)
    MODEL_ERROR = "model_error"
    MODEL_ZIP_BYTES = "model_zip_bytes"  # sha256 -> bytes of the zips in use
    MODEL_ZIP_SEEN = "model_zip_seen"  # file_id of the last zip upload handled
    DATA_SOURCE = "data_source"  # DataSource
    DATA_ERROR = "data_error"
    DATA_UPLOAD_BYTES = "data_upload_bytes"  # sha256 -> bytes of the upload in use
    DATA_UPLOAD_SEEN = "data_upload_seen"
    DATA_UPLOAD_GEN = "data_upload_gen"  # bumped to clear the uploader (a refused or dropped file)
    MODEL_ZIP_GEN = "model_zip_gen"
    NOTICE = "notice"  # a one-off note for the sidebar (e.g. a link whose upload cannot be restored)
    QUERY_READ = "query_read"  # the address's query parameters were applied in this session
    CODE_PREFETCHED = "code_prefetched"  # this session's browser was sent the hidden chart and table (app.prefetch)
    SPLIT = "split"
    # Sidebar widgets
    MODEL_KIND = "model_kind"
    MODEL_DIR = "model_dir"
    DATA_KIND = "data_kind"
    SPLIT_PICKER = "split_picker"
    # The sample every page opens
    SELECTED_SAMPLE = "selected_sample"
    SAMPLE_ID = "sample_id"  # the Sample page's selectbox
    SAMPLE_SYNCED = "sample_synced"  # the selected sample the selectbox last took over
    SAMPLE_SWAP = "sample_swap_with"  # the what-if tab's swap partner
    # Embeddings, Prototypes and Alignment pages: side by side with the no-alignment twin
    SAMPLE_TAB = "sample_tab"  # the Sample page's open tab, kept across reruns (e.g. after a review)
    TWIN_VIEW = "twin_view"
    # Audit page
    AUDIT_RECORDED = "audit_recorded"  # (model_id, data_id, split) already written to the trail
    AUDIT_REPORT = "audit_report"  # ((model_id, data_id, split), html)
    # Sample page review form (widgets), the reviewer remembered for the session, the last outcome
    REVIEW_VERDICT = "sample_review_verdict"
    REVIEW_COMMENT = "sample_review_comment"
    REVIEW_REVIEWER = "sample_review_reviewer"
    REVIEWER_NAME = "reviewer_name"
    REVIEW_OUTCOME = "review_outcome"  # ("success" | "error", message)
    # Train and Replay pages
    TRAIN_NEW_OPEN = "train_new_open"
    TRAIN_RUN = "train_run"  # the run followed (a selectbox)
    TRAIN_RUN_CHANGED = "train_run_changed"  # set when the user picks another run to follow
    TRAIN_ERROR = "train_error"
    TRAIN_UPLOAD = "train_upload_taken"  # (file name, sha256, bytes) of the training data uploaded
    TRAIN_UPLOAD_ERROR = "train_upload_error"
    TRAIN_UPLOAD_GEN = "train_upload_gen"  # bumped to empty the Train page's uploader once its file is handled
    REPLAY_EPOCH = "replay_epoch"  # a select slider


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


BUNDLED_DATA = DataSource("bundled", "bundled")


def _get(key: Key, default: Any = None) -> Any:
    return st.session_state.get(key, default)


def _set(key: Key, value: Any) -> None:
    st.session_state[key] = value


def _pop(key: Key) -> Any:
    return st.session_state.pop(key, None)


# ------------------------------------------------------------------------------------ model and data


def model_source() -> ModelSource | None:
    return _get(Key.MODEL_SOURCE)


def set_model_source(source: ModelSource | None) -> None:
    _set(Key.MODEL_SOURCE, source)
    _pop(Key.MODEL_ERROR)


def data_source() -> DataSource:
    return _get(Key.DATA_SOURCE, BUNDLED_DATA)


def use_bundled_data() -> None:
    """The model's bundled data becomes current: the upload is dropped, its uploader emptied, its error gone."""
    if data_source().kind == "upload":
        clear_uploader(Key.DATA_UPLOAD_GEN)
    _set(Key.DATA_SOURCE, BUNDLED_DATA)
    _pop(Key.DATA_UPLOAD_BYTES)
    _pop(Key.DATA_ERROR)


def use_uploaded_data(name: str, digest: str, data: bytes) -> None:
    """Make an upload the current data; only the data in use is kept in memory."""
    _set(Key.DATA_UPLOAD_BYTES, {digest: data})
    _set(Key.DATA_SOURCE, DataSource("upload", name, digest))
    _pop(Key.DATA_ERROR)


def uploader_key(base: str, generation: Key) -> str:
    """The key of an uploader that :func:`clear_uploader` can empty (a new key is a new, empty widget)."""
    n = _get(generation, 0)
    return base if n == 0 else f"{base}_{n}"


def clear_uploader(generation: Key) -> None:
    """Empty the uploader counted by ``generation``, so it never lists a file that is not in use."""
    _set(generation, _get(generation, 0) + 1)


def empty_uploader_and_rerun(generation: Key, upload: Any) -> None:
    """Once its file is handled (taken in or refused) an uploader is emptied, by a new key, and the script
    reruns at once so the page shows the new, empty uploader (a file dropped on the old one before the
    next rerun would be lost). Streamlit's copy of the file (``upload``, the uploader's value) is let go first
    (:func:`release_upload`); the caller keeps the bytes it took in the session."""
    release_upload(upload)
    clear_uploader(generation)
    st.rerun()


def release_upload(upload: Any) -> None:
    """Drop an uploaded file from Streamlit's file manager, as Streamlit's chat input does with its files.

    The manager lets go of a file only when the browser deletes it from its uploader or the session ends, and
    an uploader emptied by a new key deletes nothing: every upload stayed in the server for the session's
    life (the server's RSS rose by 150-170 MiB with each 151 MB upload, 1,148 to 2,809 MiB over 11 in one
    session). Only the in-memory manager, the one Streamlit runs with, is touched."""
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx()
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=upload.file_id)


def share_uploaded_bytes_when_copied() -> None:
    """Make a deep copy of an uploaded file share the file's bytes instead of copying them.

    Streamlit hands the script a deep copy of every widget's value, so that user code cannot change the
    stored one: for a file uploader, a second copy of the whole file on the run that takes it in (0.1 s
    alone and 0.3 s in a busy server for the 1,000-sample MOSI upload of 151 MB, and as much memory again
    for a moment). The bytes are immutable, so sharing them keeps that promise: the copy has its own
    position and attributes, and writing into it copies first (``io.BytesIO`` copies on write).
    Idempotent; call it before the script's first uploader."""
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    if "__deepcopy__" in vars(UploadedFile):
        return

    def shared_copy(self: UploadedFile, memo: dict) -> UploadedFile:
        record = UploadedFileRec(self.file_id, self.name, self.type, self.getvalue())  # getvalue: no copy
        twin = UploadedFile(record, self._file_urls)
        memo[id(self)] = twin
        vars(twin).update(copy.deepcopy(vars(self), memo))
        twin.seek(self.tell())
        return twin

    UploadedFile.__deepcopy__ = shared_copy


def upload_bytes(digest: str) -> bytes:
    return _get(Key.DATA_UPLOAD_BYTES, {})[digest]


def zip_bytes() -> dict[str, bytes]:
    return dict(_get(Key.MODEL_ZIP_BYTES, {}))


def set_zip_bytes(blobs: dict[str, bytes]) -> None:
    _set(Key.MODEL_ZIP_BYTES, blobs)


def error(key: Key) -> str | None:
    """The message of a failed model or data load (``Key.MODEL_ERROR`` / ``Key.DATA_ERROR`` /
    ``Key.TRAIN_UPLOAD_ERROR``)."""
    return _get(key)


def set_error(key: Key, message: str) -> None:
    _set(key, message)


def clear_error(key: Key) -> None:
    _pop(key)


def notice() -> str | None:
    return _get(Key.NOTICE)


def set_notice(message: str | None) -> None:
    if message is None:
        _pop(Key.NOTICE)
    else:
        _set(Key.NOTICE, message)


def code_prefetch_due() -> bool:
    """True in a session's first run only: when ``app.prefetch`` sends the browser its hidden elements."""
    if _get(Key.CODE_PREFETCHED):
        return False
    _set(Key.CODE_PREFETCHED, True)
    return True


def first_sight(key: Key, file_id: str) -> bool:
    """True once per uploaded file (``Key.MODEL_ZIP_SEEN`` / ``Key.DATA_UPLOAD_SEEN``): handle it once."""
    if _get(key) == file_id:
        return False
    _set(key, file_id)
    return True


def split() -> str | None:
    return _get(Key.SPLIT)


def set_split(name: str) -> None:
    _set(Key.SPLIT, name)


def show_split_in_picker(name: str) -> None:
    _set(Key.SPLIT_PICKER, name)


def split_from_picker() -> None:
    """Widget callback: the split picker's value becomes the current split."""
    set_split(_get(Key.SPLIT_PICKER))


def set_widget(key: Key, value: Any) -> None:
    """Put ``value`` into a widget (before it is drawn, or in a callback)."""
    _set(key, value)


def widget(key: Key) -> Any:
    return _get(key)


# --------------------------------------------------------------------------------- the address


def query_params_once() -> dict[str, str] | None:
    """The address's query parameters on the session's first run (a refresh or a shared link is a new
    session), else None: they are applied once, then the address follows the sidebar."""
    if _get(Key.QUERY_READ):
        return None
    _set(Key.QUERY_READ, True)
    return {k: st.query_params.get(k) for k in st.query_params}


def write_query_params(values: dict[str, str | None]) -> None:
    """Show the current choices in the address (entries that are None are removed), without a rerun."""
    for key, value in values.items():
        if value is None:
            if key in st.query_params:
                del st.query_params[key]
        elif st.query_params.get(key) != value:
            st.query_params[key] = value


# --------------------------------------------------------------------------------- sticky choices


def restore_choice(key: Key) -> None:
    """A radio's choice survives page switches (``st.switch_page`` drops widget state): write the last
    choice, kept under a non-widget key, back into the widget before it is drawn."""
    if _choice_key(key) in st.session_state:
        st.session_state[key] = st.session_state[_choice_key(key)]


def remember_choice(key: Key) -> Any:
    st.session_state[_choice_key(key)] = st.session_state[key]
    return st.session_state[key]


def set_choice(key: Key, value: Any) -> None:
    """Choose ``value`` in a sticky radio from code (e.g. in a widget callback)."""
    st.session_state[key] = st.session_state[_choice_key(key)] = value


def _choice_key(key: Key) -> str:
    return f"{key}_choice"


# ------------------------------------------------------------------------------------ selected sample


def select_sample(sample_id: str) -> None:
    """Remember ``sample_id`` so the Sample page opens it."""
    _set(Key.SELECTED_SAMPLE, str(sample_id))


def selected_sample() -> str | None:
    return _get(Key.SELECTED_SAMPLE)


def sync_sample_picker(ids: list[str]) -> None:
    """Before the Sample page's selectbox is drawn: show the sample chosen on another page, or keep the
    picker's own choice, or fall back to the first id."""
    wanted = selected_sample()
    if wanted in ids and _get(Key.SAMPLE_SYNCED) != wanted:
        _set(Key.SAMPLE_ID, wanted)
    if _get(Key.SAMPLE_ID) not in ids:
        _set(Key.SAMPLE_ID, wanted if wanted in ids else ids[0])
    _set(Key.SAMPLE_SYNCED, _get(Key.SAMPLE_ID))


def sample_from_picker() -> None:
    """Widget callback: the Sample page's selectbox value becomes the selected sample."""
    select_sample(_get(Key.SAMPLE_ID))


# ------------------------------------------------------------------------------------------ audit


def audit_recorded(key: tuple[str, str, str]) -> bool:
    return key in _get(Key.AUDIT_RECORDED, set())


def mark_audit_recorded(key: tuple[str, str, str]) -> None:
    st.session_state.setdefault(Key.AUDIT_RECORDED, set()).add(key)


def audit_report(key: tuple[str, str, str]) -> str | None:
    """The HTML report prepared for (model, data, split), if it is the last one prepared."""
    made_for, html = _get(Key.AUDIT_REPORT, (None, None))
    return html if made_for == key else None


def set_audit_report(key: tuple[str, str, str], html: str) -> None:
    _set(Key.AUDIT_REPORT, (key, html))


def fill_reviewer() -> None:
    """Before the review form is drawn: its reviewer field shows the name remembered for this session."""
    if not _get(Key.REVIEW_REVIEWER) and _get(Key.REVIEWER_NAME):
        _set(Key.REVIEW_REVIEWER, _get(Key.REVIEWER_NAME))


def review_form() -> tuple[str | None, str, str]:
    """(verdict or None, comment, reviewer) as the review form holds them."""
    return _get(Key.REVIEW_VERDICT), _get(Key.REVIEW_COMMENT) or "", _get(Key.REVIEW_REVIEWER) or ""


def review_recorded(reviewer: str, message: str) -> None:
    """A review was written: remember the reviewer, clear verdict and comment (in a callback, before the
    widgets are drawn again)."""
    _set(Key.REVIEWER_NAME, reviewer)
    _pop(Key.REVIEW_VERDICT)
    _pop(Key.REVIEW_COMMENT)
    _set(Key.REVIEW_OUTCOME, ("success", message))


def review_refused(message: str) -> None:
    """A review was refused: the form keeps what was typed; the message says why."""
    _set(Key.REVIEW_OUTCOME, ("error", message))


def review_outcome() -> tuple[str, str] | None:
    """The outcome of the last "Record review", shown once."""
    outcome = _get(Key.REVIEW_OUTCOME)
    _pop(Key.REVIEW_OUTCOME)
    return outcome


# ---------------------------------------------------------------------------------- train and replay


def new_run_open(default: bool) -> bool:
    """Whether the "New run" expander is open: decided once per session (an expander whose ``expanded``
    changes between reruns would snap shut mid-edit)."""
    return st.session_state.setdefault(Key.TRAIN_NEW_OPEN, default)


def followed_run(names: list[str]) -> str:
    """The run the Train page follows; the newest when the remembered one is gone."""
    if _get(Key.TRAIN_RUN) not in names:
        _set(Key.TRAIN_RUN, names[0])
    return _get(Key.TRAIN_RUN)


def follow_run(name: str) -> None:
    _set(Key.TRAIN_RUN, name)


def mark_followed_changed() -> None:
    """The Train page's run selector's callback: the page redraws whole, charts included."""
    _set(Key.TRAIN_RUN_CHANGED, True)


def take_followed_changed() -> bool:
    """Whether another run was picked since the last call (read once)."""
    return bool(_pop(Key.TRAIN_RUN_CHANGED))


def train_error() -> str | None:
    return _get(Key.TRAIN_ERROR)


def set_train_error(message: str | None) -> None:
    if message is None:
        _pop(Key.TRAIN_ERROR)
    else:
        _set(Key.TRAIN_ERROR, message)


def train_upload() -> tuple[str, str, bytes] | None:
    """(file name, sha256, bytes) of the training data taken from the Train page's uploader, if any."""
    return _get(Key.TRAIN_UPLOAD)


def set_train_upload(name: str, digest: str, data: bytes) -> None:
    _set(Key.TRAIN_UPLOAD, (name, digest, data))


def restart_replay() -> None:
    """Widget callback: a new run's replay starts at its last epoch."""
    _pop(Key.REPLAY_EPOCH)
