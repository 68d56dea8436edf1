"""``python3 -m app``: the README's dashboard command."""

import gc
import subprocess
import sys

from browser_utils import ROOT


def test_help_is_printed_without_importing_torch():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "app", "--help"], cwd=ROOT, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: python3 -m app")
    assert "streamlit run" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported and "app.loaders" not in imported


def test_preload_imports_the_pages_and_reports_what_failed(monkeypatch):
    import app.__main__ as launcher

    monkeypatch.setattr(launcher, "_wait_for_server", lambda wait_s: None)
    try:
        assert launcher.preload(("json", "no_such_module_here")) == ["no_such_module_here"]
        assert set(launcher.PRELOAD) >= {"torch", "app.loaders", "app.views.overview", "app.views.embeddings"}
        assert launcher.preload() == []  # every name is a module that imports
    finally:
        gc.unfreeze()  # this test process's later tests may count on collecting what exists now


def test_imports_are_frozen_out_of_later_full_collections():
    """After ``import_all`` the objects that existed are in the permanent generation: Streamlit's full
    collection after every script run no longer scans them."""
    from app import import_all

    gc.unfreeze()
    existing = [[]]  # a container the collector tracks
    try:
        assert any(obj is existing for obj in gc.get_objects())
        import_all(("json",))
        assert gc.get_freeze_count() > 0
        assert not any(obj is existing for obj in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(obj is existing for obj in gc.get_objects())
