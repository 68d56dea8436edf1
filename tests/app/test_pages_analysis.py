"""AppTest of the Embeddings, Prototypes and transport, and Alignment levels pages on the demo run.

Pages are callables in ``st.navigation``; ``AppTest.switch_page`` only finds file pages, so each page runs
through the ``page_test`` fixture (sidebar + ``render()``), like the other page tests.
"""

from __future__ import annotations

import json

import numpy as np
import streamlit as st
from browser_utils import ROOT

from app import loaders
from app.views import embeddings
from decalign.checkpoint import load_model
from decalign.data import load_dataset
from decalign.explain.levels import alignment_levels, level_totals


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _charts(at) -> int:
    return len(at.get("plotly_chart"))


def _modalities(demo_dir) -> list[str]:
    return load_model(demo_dir)[0].modalities


def test_embeddings_charts_and_projection_cached_across_colours(page_test, demo_dir):
    st.cache_data.clear()
    embeddings.PROJECTION_CALLS.clear()
    at = page_test("embeddings")
    at.session_state["emb_method"] = "PCA"
    _ok(at.run())
    m = len(_modalities(demo_dir))
    assert at.title[0].value == "Embeddings"
    assert _charts(at) == 2 * m + 1  # unique and common per modality, plus the joint common chart
    assert sum(embeddings.PROJECTION_CALLS.values()) == 2 * m + 1
    for colour in ("prediction", "error", "prototype", "modality"):
        _ok(at.selectbox(key="emb_colour").set_value(colour).run())
        assert _charts(at) == 2 * m + 1
    # only the colour changed: no projection was recomputed
    assert sum(embeddings.PROJECTION_CALLS.values()) == 2 * m + 1
    _ok(at.radio(key="emb_method").set_value("PCA").run())
    assert "Select points" in " ".join(c.value for c in at.caption)


def _titles(at) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_embeddings_shows_pca_at_once_then_umap_from_the_background(page_test, demo_dir, tmp_path, monkeypatch):
    """UMAP never blocks the page: PCA first with a progress bar, UMAP once the worker has it, from disk after."""
    monkeypatch.setenv("DECALIGN_CACHE_DIR", str(tmp_path / "cache"))
    st.cache_resource.clear()  # a fresh worker, on the empty cache folder
    st.cache_data.clear()
    at = page_test("embeddings")
    at.session_state["emb_method"] = "UMAP"
    _ok(at.run())
    m = len(_modalities(demo_dir))
    worker = loaders.projection_worker()
    try:
        assert all("PCA" in t for t in _titles(at)) and len(_titles(at)) == 2 * m + 1
        assert any("UMAP is being computed in the background" in p.proto.text for p in at.get("progress"))
        assert worker.wait(timeout=900)
        _ok(at.run())
        assert all("UMAP" in t for t in _titles(at)), _titles(at)
        assert worker.computed == 2 * m + 1
        assert len(list((tmp_path / "cache" / "projections").glob("*.npz"))) == 2 * m + 1
    finally:
        worker.close()
        st.cache_resource.clear()


def test_prototypes_page_plans_sankey_and_entropy(page_test, demo_dir):
    at = _ok(page_test("prototypes").run())
    m = len(_modalities(demo_dir))
    pairs = m * (m - 1) // 2
    assert at.title[0].value == "Prototypes and transport"
    assert _charts(at) == m + 2 * pairs + 2  # scatter per modality, cost + plan per pair, Sankey, entropy
    table = at.dataframe[0].value
    assert set(table.modality) == set(_modalities(demo_dir))
    entropy = lambda: next(x.value for x in at.metric if x.label == "Entropy H(P)")
    sharp = entropy()
    _ok(at.select_slider(key="proto_lambda").set_value(2.0).run())
    assert float(entropy().split()[0]) > float(sharp.split()[0])
    _ok(at.radio(key="proto_source").set_value("Fitted on the current data").run())
    _ok(at.number_input(key="proto_k").set_value(3).run())
    assert len(at.dataframe[0].value) == 3 * m


def test_alignment_page_values_match_the_library(page_test, demo_dir):
    at = _ok(page_test("alignment").run())
    assert at.title[0].value == "Alignment levels"
    levels = [h.value for h in at.subheader if " · " in h.value]  # "1 · Decoupling" ... "5 · MMD ..."
    assert len(levels) == 5 and _charts(at) >= 5
    summary = at.dataframe[0].value
    model, card = load_model(demo_dir)
    split = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"]
    expected = alignment_levels(model, split, prototypes=card.prototype_tensors(),
                                batch_size=card.config.train.batch_size, weights=card.config.train)
    totals = level_totals(expected)  # five levels, the official groupings, the weighted alignment part
    assert len(summary) == 8
    np.testing.assert_allclose(summary["current data"].astype(float).to_numpy(), list(totals.values()), rtol=1e-3)
    recorded = card.extra.get("training_alignment")
    assert (summary["training set"] == "not recorded").all() == (not recorded)
    assert any("near 0 means they carry different information" in c.value for c in at.caption)


def _values(array) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array ``{"dtype", "bdata"}`` (base64 of the raw values)."""
    import base64

    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).astype(float)
    return np.asarray(array, dtype=float)


def test_embeddings_places_the_data_on_the_training_map(page_test, demo_dir):
    """The PCA view of a space is the training reference's PCA (scikit-learn, fitted on the training rows)
    applied to the shown samples, and the page says so."""
    from sklearn.decomposition import PCA

    from decalign.explain.maps import MAP_NOTE
    from decalign.inference import run_inference
    from decalign.train.reference import load_reference

    st.cache_data.clear()
    at = page_test("embeddings")
    at.session_state["emb_method"] = "PCA"
    _ok(at.run())
    model, card = load_model(demo_dir)[:2]
    m = model.modalities[0]
    reference = load_reference(demo_dir)
    shown = run_inference(model, load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"], task=card.task)
    expected = PCA(n_components=2, svd_solver="full").fit(reference.train_unique[m].astype(np.float64))
    expected = expected.transform(shown.unique_pooled[m].astype(np.float64))
    spec = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                if json.loads(c.proto.spec)["layout"]["title"]["text"].startswith(f"unique:{m} "))
    xy = np.concatenate([np.column_stack([_values(t["x"]), _values(t["y"])]) for t in spec["data"]
                         if t.get("x") is not None])
    xy, expected = xy[np.lexsort(xy.T[::-1])], expected[np.lexsort(expected.T[::-1])]
    assert xy.shape == expected.shape
    signs = np.sign((xy * expected).sum(0))  # principal axes are defined up to sign
    np.testing.assert_allclose(xy, expected * signs, atol=1e-4)
    assert any(MAP_NOTE in i.value for i in at.info)


def test_embeddings_draws_a_seeded_sample_of_large_sets(page_test, demo_dir, monkeypatch):
    """Above MAX_DRAWN_POINTS the charts draw the same seeded sample of samples, and the page says so."""
    from app.figures import embeddings as emb_fig

    m = len(_modalities(demo_dir))
    monkeypatch.setattr(emb_fig, "MAX_DRAWN_POINTS", 40 * 3 * m)  # 40 samples a chart
    st.cache_data.clear()
    at = page_test("embeddings")
    at.session_state["emb_method"] = "PCA"
    _ok(at.run())
    n = len(load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"])
    expected = np.sort(np.random.default_rng(0).choice(n, 40, replace=False))
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        rows = np.concatenate([_values(t["customdata"]) for t in spec["data"] if t.get("customdata") is not None])
        joint = spec["layout"]["title"]["text"].startswith("common:*")
        assert len(rows) == 40 * (m if joint else 1)
        np.testing.assert_array_equal(np.unique(rows), expected)
    assert any(f"random 40 of the {n:,} samples" in c.value for c in at.caption)


def test_embeddings_colours_and_hover_of_the_drawn_rows_are_the_full_results(page_test, demo_dir, monkeypatch):
    """Above MAX_DRAWN_POINTS every chart's point of row r has the colour and hover text the full result
    gives row r, for every colouring, and colours and hover texts are built for the drawn rows alone."""
    from app.figures import embeddings as emb_fig
    from decalign.inference import run_inference

    monkeypatch.setattr(emb_fig, "MAX_DRAWN_POINTS", 40 * 3 * len(_modalities(demo_dir)))  # 40 samples a chart
    hover_sizes = []
    hover_texts = emb_fig.hover_texts
    monkeypatch.setattr(emb_fig, "hover_texts", lambda result, raw: hover_sizes.append(len(result)) or
                        hover_texts(result, raw))
    st.cache_data.clear()
    model, card = load_model(demo_dir)[:2]
    split = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"]
    full = run_inference(model, split, task=card.task, prototypes=card.prototype_tensors())
    names = card.class_names
    hover = hover_texts(full, split.raw_text)
    at = page_test("embeddings")
    at.session_state["emb_method"] = "PCA"
    _ok(at.run())
    for colour in emb_fig.COLOUR_BY:
        _ok(at.selectbox(key="emb_colour").set_value(colour).run())
        checked = 0
        for chart in at.get("plotly_chart"):
            spec = json.loads(chart.proto.spec)
            space = spec["layout"]["title"]["text"].split(" · ")[0]
            for trace in spec["data"]:
                rows = _values(trace["customdata"]).astype(int)
                for row, text in zip(rows, trace["text"]):
                    # one trace per category (its name), or one for more categories than colours (in the text)
                    text, drawn = (text, trace["name"]) if "name" in trace else text.rsplit(f"<br>{colour}: ", 1)
                    joint = space == "common:*"
                    text, modality = text.rsplit("<br>modality: ", 1) if joint else (text, space.split(":")[1])
                    value = emb_fig.colour_values(full, colour, modality, names, card)[0][row]
                    if colour == "prototype" and space == "common:*":
                        value = f"{modality} {value}"
                    assert (drawn, text) == (str(value), hover[row]), (space, colour, row)
                    checked += 1
        assert checked == 40 * (2 * len(model.modalities) + len(model.modalities))
    assert hover_sizes and max(hover_sizes) == 40
