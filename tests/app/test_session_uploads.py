"""An uploaded file's deep copy (Streamlit hands every run one) shares the file's bytes instead of copying them."""

from __future__ import annotations

import copy

from browser_utils import ROOT
from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec
from streamlit.testing.v1 import AppTest

from app import session

UPLOADER_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import streamlit as st
from app import session
session.share_uploaded_bytes_when_copied()
upload = st.file_uploader("file", key="file")
if upload is not None:
    st.session_state.setdefault("seen", []).append(upload.getvalue())
"""


def test_a_copy_shares_the_bytes_and_has_its_own_position():
    session.share_uploaded_bytes_when_copied()
    session.share_uploaded_bytes_when_copied()  # twice: still one patch
    data = bytes(range(256)) * 64
    original = UploadedFile(UploadedFileRec("id-1", "a.npz", "application/octet-stream", data), None)
    original.read(10)
    first, second = copy.deepcopy([original, original])
    assert first is second  # one object copied once, as deepcopy's memo promises
    assert first is not original and first.getvalue() is data
    assert (first.file_id, first.name, first.type, first.size, first.tell()) == ("id-1", "a.npz",
                                                                                 "application/octet-stream",
                                                                                 len(data), 10)
    first.seek(0)
    first.write(b"changed")
    assert original.getvalue() is data and original.tell() == 10 and data[:7] != b"changed"
    assert first.getvalue()[:7] == b"changed"


def test_every_run_gets_the_same_bytes_from_streamlit():
    at = AppTest.from_string(UPLOADER_SCRIPT.format(root=str(ROOT)), default_timeout=60).run()
    data = b"\x93NUMPY" + bytes(4096)
    at.file_uploader(key="file").set_value(("x.npz", data, "application/octet-stream"))
    at.run()
    at.run()
    seen = at.session_state["seen"]
    assert len(seen) == 2 and seen[0] == data
    assert seen[0] is seen[1]  # each run's deep copy shares the stored file's bytes
