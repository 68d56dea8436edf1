"""Every uploader lets Streamlit drop the file once the dashboard has taken it in or refused it.

Streamlit's file manager keeps an uploaded file until the browser deletes it or the session ends; an uploader
emptied by a new key deletes nothing, so each upload stayed in the server for the session's life.
"""

from __future__ import annotations

import io
import zipfile

import pytest
from browser_utils import ROOT
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.testing.v1 import AppTest

RELEASE_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import streamlit as st
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
from app import session
upload = st.file_uploader("file", key="file")
if upload is not None:
    ctx = get_script_run_ctx()
    def held():
        return len(ctx.uploaded_file_mgr.get_files(ctx.session_id, [upload.file_id]))
    before = held()
    session.release_upload(upload)
    st.session_state["held"] = (before, held(), upload.getvalue()[:6])
"""


def test_release_upload_drops_the_file_from_streamlits_manager():
    at = AppTest.from_string(RELEASE_SCRIPT.format(root=str(ROOT)), default_timeout=60).run()
    at.file_uploader(key="file").set_value(("x.npz", b"\x93NUMPY" + bytes(64), "application/octet-stream")).run()
    assert not at.exception
    assert at.session_state["held"] == (1, 0, b"\x93NUMPY")  # held before, gone after, the bytes still readable


@pytest.fixture
def file_manager_calls(monkeypatch):
    """The names of the files added to and removed from Streamlit's file manager (AppTest runs in this process)."""
    calls = {"added": {}, "removed": []}
    add, remove = MemoryUploadedFileManager.add_file, MemoryUploadedFileManager.remove_file

    def recording_add(self, session_id, file):
        calls["added"][file.file_id] = file.name
        return add(self, session_id, file)

    def recording_remove(self, session_id, file_id):
        calls["removed"].append(calls["added"].get(file_id))
        return remove(self, session_id, file_id)

    monkeypatch.setattr(MemoryUploadedFileManager, "add_file", recording_add)
    monkeypatch.setattr(MemoryUploadedFileManager, "remove_file", recording_remove)
    return calls


def _bad_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "no model here")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["data taken", "data refused", "model zip refused", "training data taken"])
def test_every_uploader_lets_streamlit_drop_its_file(page_test, demo_npz, tav_pickle, file_manager_calls, case):
    page, kind_key, kind, uploader, name, data = {
        "data taken": ("predict", "data_kind", "Upload a file", "data_upload", demo_npz.name, demo_npz.read_bytes()),
        "data refused": ("predict", "data_kind", "Upload a file", "data_upload", tav_pickle.name,
                         tav_pickle.read_bytes()),
        "model zip refused": ("predict", "model_kind", "Upload a zip", "model_zip", "bad.zip", _bad_zip()),
        "training data taken": ("train", "train_data_kind", "Upload a file", "train_upload", demo_npz.name,
                                demo_npz.read_bytes()),
    }[case]
    at = page_test(page).run()
    at.radio(key=kind_key).set_value(kind).run()
    at.file_uploader(key=uploader).set_value((name, data, "application/octet-stream")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert name in file_manager_calls["added"].values()
    assert name in file_manager_calls["removed"]
