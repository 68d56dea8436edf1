"""DecAlign Studio: navigation only. Each page is a ``render()`` function in ``app/views``."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app/streamlit_app.py` puts app/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import prefetch

st.set_page_config(page_title="DecAlign Studio", layout="wide")
prefetched = prefetch.start()  # before the imports below, which wait for the launcher's preload

from app import loaders, sidebar
from app.views import (
    alignment,
    audit,
    compare,
    embeddings,
    overview,
    predict,
    prototypes,
    replay,
    sample,
    train,
)
from decalign.cpu_share import share_with_training
from decalign.train.background import training_alive

PAGES = [
    st.Page(overview.render, title="Overview", url_path="overview", default=True),
    st.Page(predict.render, title="Predict", url_path="predict"),
    st.Page(sample.render, title="Sample", url_path=sample.URL_PATH),
    st.Page(embeddings.render, title="Embeddings", url_path=embeddings.URL_PATH),
    st.Page(prototypes.render, title="Prototypes and transport", url_path=prototypes.URL_PATH),
    st.Page(alignment.render, title="Alignment levels", url_path=alignment.URL_PATH),
    st.Page(audit.render, title="Audit", url_path="audit"),
    st.Page(train.render, title="Train", url_path=train.URL_PATH),
    st.Page(replay.render, title="Replay training", url_path=replay.URL_PATH),
    st.Page(compare.render, title="Compare models", url_path=compare.URL_PATH),
]
navigation = st.navigation(PAGES)
share_with_training(training_alive())  # a run started here keeps its speed while pages compute
sidebar.render()
navigation.run()
prefetch.finish(prefetched)
loaders.warm_up_projections()  # after the page: the worker's start must not delay the first chart
