"""Have a new browser session fetch the chart and table code while the server still works on its first page.

Streamlit's browser side loads the code of plotly charts (4.7 MB) and of data frames (0.5 MB) only when the
first element of that kind arrives. On a cold Overview those came after the server's imports and the page's
computations, and the browser then took 2.4-3 s more to show the first chart (bench_dashboard, cold part).
So the first run of each session starts with one empty chart and one empty table in a hidden sidebar
container: the browser loads their code during the 2-3 s the server spends importing and computing, and the
run removes them again when it ends.
"""

from __future__ import annotations

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from app import session

CONTAINER_KEY = "prefetch_chart_code"  # Streamlit gives the container the CSS class st-key-<key>
EMPTY_CHART = {"data": [{"type": "scatter"}]}  # plotly refuses a figure without a trace


def start() -> DeltaGenerator | None:
    """In a session's first run: the hidden slot holding the empty elements (pass it to :func:`finish`)."""
    if not session.code_prefetch_due():
        return None
    # Plotly's checks look pandas up in sys.modules: while the launcher's thread is importing it, they would
    # find a half-initialised module without Series (it failed so in CI). This import waits for that import
    # to finish; the launcher imports pandas first (0.3 s), well before a browser's first run starts.
    import pandas  # noqa: F401
    slot = st.sidebar.empty()
    with slot.container(key=CONTAINER_KEY):
        # The rule travels inside the container and goes with it. Until the browser has drawn it (markdown's
        # code loads lazily too) the container is blank space under the navigation, above nothing yet.
        st.markdown(f"<style>.st-key-{CONTAINER_KEY} {{display: none}}</style>", unsafe_allow_html=True)
        st.plotly_chart(EMPTY_CHART, key=f"{CONTAINER_KEY}_chart")  # sent at once: the chart code loads first
        st.dataframe({"": []}, key=f"{CONTAINER_KEY}_table")
    return slot


def finish(slot: DeltaGenerator | None) -> None:
    """Remove the empty elements once the page is drawn (tests and users look for the page's own charts)."""
    if slot is not None:
        slot.empty()
