"""``python3 -m app``: the README's dashboard command."""

import gc
import subprocess
import sys

import pytest
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


def test_prefetch_waits_for_pandas_and_the_launcher_imports_it_first():
    """Plotly's checks look pandas up in sys.modules, where a half-imported pandas has no Series (CI hit it:
    the prefetch's chart was built while the launcher's thread imported pandas). So the launcher imports
    pandas first and the prefetch imports it before any chart; this shows the failure it prevents."""
    import inspect
    import types

    import plotly.tools

    import app.__main__ as launcher
    from app import prefetch

    assert launcher.PRELOAD[0] == "pandas"
    source = inspect.getsource(prefetch.start)
    assert source.index("import pandas") < source.index("st.plotly_chart")
    half_imported = types.ModuleType("pandas")
    saved = sys.modules["pandas"]
    sys.modules["pandas"] = half_imported
    try:
        with pytest.raises(AttributeError, match="Series"):
            plotly.tools.return_figure_from_figure_or_data(prefetch.EMPTY_CHART, validate_figure=True)
    finally:
        sys.modules["pandas"] = saved


def test_the_prefetch_is_due_in_a_sessions_first_run_only():
    from streamlit.testing.v1 import AppTest

    def script():
        import streamlit as st

        from app import session

        st.markdown(f"due: {session.code_prefetch_due()}")

    at = AppTest.from_function(script).run()
    assert [m.value for m in at.markdown] == ["due: True"]
    assert [m.value for m in at.run().markdown] == ["due: False"]
    assert [m.value for m in at.run().markdown] == ["due: False"]
