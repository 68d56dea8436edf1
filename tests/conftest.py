"""Session-wide isolation: no test writes to the user's real audit trail or runs folder.

Tests (and the servers and subprocesses they start, which inherit the environment) get a temporary
``DECALIGN_AUDIT_DB``, ``DECALIGN_RUNS_DIR`` and ``DECALIGN_CACHE_DIR``; a test that needs its own sets them again.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_state(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-state")
    saved = {k: os.environ.get(k) for k in ("DECALIGN_AUDIT_DB", "DECALIGN_RUNS_DIR", "DECALIGN_CACHE_DIR")}
    os.environ["DECALIGN_AUDIT_DB"] = str(root / "audit.sqlite3")
    os.environ["DECALIGN_RUNS_DIR"] = str(root / "runs")
    os.environ["DECALIGN_CACHE_DIR"] = str(root / "cache")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
