"""The dashboard's pages: one module per page, each with a ``render()``, named here in the navigation's order.

A page's module is imported when the page is first opened (:func:`page`), so a fresh server draws its first
page without waiting for the other pages' imports (torch, scikit-learn); ``app.loaders`` imports them in the
background once that page is drawn. The module's name is the page's URL path.
"""

from __future__ import annotations

import importlib

TITLES = {
    "overview": "Overview",
    "predict": "Predict",
    "sample": "Sample",
    "embeddings": "Embeddings",
    "prototypes": "Prototypes and transport",
    "alignment": "Alignment levels",
    "audit": "Audit",
    "train": "Train",
    "replay": "Replay training",
    "compare": "Compare models",
}
MODULES = tuple(f"{__name__}.{name}" for name in TITLES)


def page(name: str, *, default: bool = False):
    """The ``st.Page`` of the page module ``name`` (a key of :data:`TITLES`); for ``st.navigation`` and
    ``st.switch_page``, which know a page by its URL path."""
    import streamlit as st

    def render() -> None:
        importlib.import_module(f"{__name__}.{name}").render()

    render.__name__ = name
    return st.Page(render, title=TITLES[name], url_path=name, default=default)
