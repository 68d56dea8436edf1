"""DecAlign Studio: navigation only. Each page is a ``render()`` function in ``app/views``."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app/streamlit_app.py` puts app/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import charts, prefetch

st.set_page_config(page_title="DecAlign Studio", layout="wide")
prefetched = prefetch.start()  # before the imports below, which wait for the launcher's preload
charts.whole_pixel_chart_widths()

from app import loaders, session, sidebar, views
from decalign.cpu_share import script_run
from decalign.train.background import training_alive

PAGES = [views.page(name, default=name == "overview") for name in views.TITLES]
navigation = st.navigation(PAGES)
with script_run(training_alive()):  # a run started here keeps its speed, other sessions' runs share the cores
    session.share_uploaded_bytes_when_copied()
    sidebar.render()
    navigation.run()
prefetch.finish(prefetched)
loaders.warm_up_projections()  # after the page: the worker's start must not delay the first chart
