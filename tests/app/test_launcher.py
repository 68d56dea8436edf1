"""``python3 -m app``: the README's dashboard command."""

import gc
import json
import os
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


BLAS_THREADS_SCRIPT = """
import json, sys
import streamlit.web.cli as cli
import app.__main__ as launcher
seen = {}
def fake_streamlit_main():  # what the server process would start with
    import numpy, scipy.linalg, threadpoolctl
    seen.update(numpy_before_main=seen_before, counts=sorted({i["num_threads"] for i in
                threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"}))
seen_before = "numpy" in sys.modules
cli.main = fake_streamlit_main
launcher.threading.Thread = lambda **kwargs: type("NoThread", (), {"start": lambda self: None})()
launcher.main(["--server.headless", "true"])
print(json.dumps(seen))
"""


@pytest.mark.parametrize(("user_value", "expected"), [(None, [1]), ("2", [2])])
def test_the_server_runs_numpy_and_scipy_on_one_blas_thread_unless_told(user_value, expected):
    """The launcher sets OpenBLAS's thread count before Streamlit loads numpy (OpenBLAS reads it once): every
    OpenBLAS that numpy and scipy load runs one thread, and a count the user set is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_value is not None:
        env["OPENBLAS_NUM_THREADS"] = user_value
    out = subprocess.run([sys.executable, "-c", BLAS_THREADS_SCRIPT], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True, timeout=300)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"numpy_before_main": False, "counts": expected}


def test_preload_imports_the_pages_and_reports_what_failed(monkeypatch):
    import app.__main__ as launcher

    monkeypatch.setattr(launcher, "_wait_for_server", lambda wait_s: None)
    try:
        assert launcher.preload(("json", "no_such_module_here")) == ["no_such_module_here"]
        assert set(launcher.PRELOAD) >= {"app.loaders", "app.sidebar", "app.views.overview"}
        assert launcher.preload() == []  # every name is a module that imports
    finally:
        gc.unfreeze()  # this test process's later tests may count on collecting what exists now


def test_the_first_page_imports_no_torch_and_the_rest_comes_after_it():
    """A fresh server's first run imports the launcher's PRELOAD, the navigation and the Overview: none of it
    may pull in torch (1.3 s) or another page, which ``app.loaders`` imports after the first page instead."""
    first_run = ("app.__main__", "app.prefetch", "app.views", "decalign.cpu_share", "decalign.train.background")
    code = ("import sys, app.__main__ as launcher\n"
            f"for name in (*launcher.PRELOAD, *{first_run!r}):\n"
            "    __import__(name)\n"
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('sklearn', 'decalign.model'))\n"
            "               or (m.startswith('app.views.') and m != 'app.views.overview'))\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip() == "[]", out.stdout

    from app import loaders, views

    assert loaders.LATER_IMPORTS[0] == "torch"
    assert set(views.MODULES) - {"app.views.overview"} <= set(loaders.LATER_IMPORTS)


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


FIRST_RUN_SCRIPT = """
import json, sys, traceback
from streamlit.testing.v1 import AppTest

class TorchWatch:  # records the stack of torch's first import, then lets the import go on
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "stack" not in vars(TorchWatch):
            TorchWatch.stack = [f.name for f in traceback.extract_stack()]
        return None

sys.meta_path.insert(0, TorchWatch())
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
assert not at.exception, at.exception
print(json.dumps([[t.value for t in at.title], [f for f in TorchWatch.stack if f in ("render", "with_model")]]))
"""


def test_a_fresh_overview_imports_torch_only_for_its_last_section(demo_dir):
    """The first page's charts are sent before torch is imported: torch's first import comes from the
    Overview's baseline (``context.with_model``), its last section, not from the navigation or the sidebar."""
    out = subprocess.run([sys.executable, "-c", FIRST_RUN_SCRIPT, str(ROOT / "app" / "streamlit_app.py")],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    titles, frames = json.loads(out.stdout.strip().splitlines()[-1])
    assert titles == ["Overview"]
    assert frames[-2:] == ["render", "with_model"], frames


def _spooled_upload(size: int):
    """Starlette's multipart parser on one file of ``size`` bytes, as the server's upload route runs it."""
    import asyncio

    from starlette.datastructures import Headers
    from starlette.formparsers import MultiPartParser

    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.npz"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n" + os.urandom(size) + b"\r\n--b--\r\n")

    async def stream():
        for start in range(0, len(body), 1 << 16):
            yield body[start:start + (1 << 16)]

    headers = Headers({"content-type": "multipart/form-data; boundary=b"})
    form = asyncio.run(MultiPartParser(headers, stream()).parse())
    return form["file"].file


def test_uploads_up_to_an_eighth_of_the_available_memory_stay_in_memory(monkeypatch):
    """Starlette writes an upload past ``spool_max_size`` (1 MiB by default) to a temporary file, which
    Streamlit reads back into memory anyway; the launcher raises that limit to an eighth of the available
    memory, never below Starlette's own."""
    from starlette.formparsers import MultiPartParser

    import app.__main__ as launcher

    monkeypatch.setattr(MultiPartParser, "spool_max_size", MultiPartParser.spool_max_size)
    default = MultiPartParser.spool_max_size
    assert _spooled_upload(3 << 20)._rolled  # the default: on disk
    assert launcher.keep_uploads_in_memory(available=64 << 20) == 8 << 20
    spool = _spooled_upload(3 << 20)
    assert not spool._rolled and len(spool.read()) == 3 << 20
    assert _spooled_upload(9 << 20)._rolled  # over the limit: still on disk
    assert launcher.keep_uploads_in_memory(available=0) == 8 << 20  # never lowered
    monkeypatch.setattr(MultiPartParser, "spool_max_size", default)
    assert launcher.keep_uploads_in_memory(available=4 << 20) == default
    assert launcher.keep_uploads_in_memory() >= default  # the kernel's estimate
