"""``python3 -m app [streamlit options]``: the dashboard, as ``streamlit run app/streamlit_app.py`` starts it,
with the pages' imports begun as soon as the server is up.

A fresh server runs nothing of the app until a browser connects. Here a background thread imports what the
first page draws with (pandas, plotly, the loaders, the sidebar and the Overview: 0.5 s, no torch) once the
server answers, while the browser loads Streamlit's page, so the first run finds them in ``sys.modules``.
Torch and the other pages are imported once that page is drawn (``app.loaders.warm_up_projections``): before,
their 2 s of imports held the first page back. The thread only imports modules (no Streamlit call, no file
read); an import that fails is left for the page's own import to report.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "app" / "streamlit_app.py"
# pandas first: the first run's app.prefetch waits for it (plotly must not see it half imported)
PRELOAD = ("pandas", "plotly.graph_objects", "app.loaders", "app.sidebar", "app.context", "app.views.overview")


def preload(names: tuple[str, ...] = PRELOAD, wait_s: float = 30.0) -> list[str]:
    """Once the server is up (or after ``wait_s``), import ``names`` (``app.import_all``); returns those that
    failed. Waiting first keeps the imports from delaying the server's start: they hold the GIL."""
    _wait_for_server(wait_s)
    from app import import_all

    return import_all(names)


def _wait_for_server(wait_s: float) -> None:
    from streamlit.runtime import Runtime
    from streamlit.runtime.runtime import RuntimeState

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if Runtime.exists() and Runtime.instance().state != RuntimeState.INITIAL:
            return
        time.sleep(0.05)


def limit_blas_threads(environ) -> None:
    """One OpenBLAS thread for the server's numpy and scipy, unless the user set a count; call before numpy
    loads (OpenBLAS reads it once).

    The server's BLAS work is small (a page's PCA, neighbour counts) and shares the cores with the browser,
    so a second OpenBLAS thread waits for a busy core: a PCA of 1,000 x 40 features took 38-74 ms in a
    server whose browser was drawing, 9 ms on one thread (alone beside two busy processes: 14-17 ms, up
    to 270 ms, against 6 ms). Torch's products run on its own MKL threads. The processes the server starts
    inherit it: the sandbox's and the projection worker's children set their own counts anyway, and a
    training run's numpy work is as small (the Sinkhorn sweeps' plans, the baseline already on one thread).
    """
    environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def keep_uploads_in_memory(available: int | None = None) -> int:
    """Let the server hold an upload in memory while it arrives, up to an eighth of the memory available
    now (``available``, default the kernel's estimate); returns that limit in bytes.

    Streamlit's server (Starlette) spools each uploaded file into memory up to
    ``MultiPartParser.spool_max_size`` (1 MiB) and into a temporary file on disk past it, then Streamlit
    reads the whole file back into memory for the app. So every file over 1 MiB was written to disk only to be
    read back: for a 151 MB npz, 1.0 s of writing and 0.8 s of reading in the server's threads on this
    machine's /tmp (a virtual disk); its predictions table came 2.08-2.71 s after the upload instead of
    2.78-2.84 s (alternating runs). While Streamlit copies it the upload is held twice, hence an eighth;
    larger files still spool to disk.
    """
    from starlette.formparsers import MultiPartParser

    from decalign.memory import available_memory

    room = available_memory() if available is None else available
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, room // 8)
    return MultiPartParser.spool_max_size


def main(argv: list[str] | None = None) -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    args = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(args):
        print("usage: python3 -m app [OPTIONS]\n\n" + (__doc__ or "") + "\nOPTIONS are those of `streamlit run` "
              "(see `python3 -m streamlit run --help`), e.g. --server.port 8502.")
        return
    limit_blas_threads(os.environ)
    keep_uploads_in_memory()
    threading.Thread(target=preload, name="preload-imports", daemon=True).start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(SCRIPT), *args]
    cli.main()


if __name__ == "__main__":
    main()
