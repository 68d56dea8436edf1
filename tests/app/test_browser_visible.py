"""In Chromium: the views show alignment and every chart is readable, on the demo and on an uploaded
two-modality data set; the sidebar always names what is in use; the address restores model, data, split
and sample.

One server for the module; the pages are visited in order on one browser page. Screenshots of every page
go to ``test-artifacts/visible_*.png``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_utils import (
    MAIN_CHARTS,
    ROOT,
    free_port,
    launch_chromium,
    make_tiny_run,
    require_browser,
    start_server,
    stop_server,
)

from decalign.data import load_dataset, make_synthetic, save_npz

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT = 60_000  # a busy 2-core machine: first renders and cold UMAP take a while
ACTIVITIES = ["walk", "run", "sit", "stand"]
RUN_NAME = "20260101-000000-activity"
PAGES = ["Overview", "Predict", "Sample", "Embeddings", "Prototypes and transport", "Alignment levels", "Audit",
         "Train", "Replay training", "Compare models"]
# Streamlit's own probes under a page path 404 (streamlit#7074): not the app's errors.
KNOWN_404 = ("/_stcore/health", "/_stcore/host-config")
TICKS_JS = """el => Array.from(el.querySelectorAll('g.subplot')).map(sp => ({
    x: Array.from(sp.querySelectorAll('.xaxislayer-above .xtick text')).map(t => t.textContent),
    y: Array.from(sp.querySelectorAll('.yaxislayer-above .ytick text')).map(t => t.textContent)}))"""


@pytest.fixture(scope="module")
def activity(tmp_path_factory):
    """A two-modality classification data set with class names, and a tiny run trained on it in a runs folder."""
    folder = tmp_path_factory.mktemp("activity")
    data = make_synthetic(120, 40, 40, widths={"accel": 6, "gyro": 4}, seq_len=8, task="classification",
                          num_classes=4, seed=4, signal=2.0)
    data.class_names = list(ACTIVITIES)
    path = folder / "activity.npz"
    save_npz(data, path)
    runs = folder / "runs"
    make_tiny_run(data, runs / RUN_NAME, epochs=12, prototypes=3, source="activity.npz")
    return path, runs


@pytest.fixture(scope="module")
def server(demo_dir, activity, tmp_path_factory):
    port = free_port()
    env = {"DECALIGN_DEMO_MODEL": str(demo_dir), "DECALIGN_RUNS_DIR": str(activity[1]),
           "DECALIGN_AUDIT_DB": str(tmp_path_factory.mktemp("audit") / "audit.sqlite3"), "OMP_NUM_THREADS": "1"}
    proc = start_server(port, env=env, timeout=300)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def _settle(page, heading: str) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=heading, exact=True).first).to_be_visible(timeout=TIMEOUT)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=4 * TIMEOUT)


def _open(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()
    _settle(page, name)


def _chart(page, title: str):
    """The plotly chart whose title contains ``title``, once drawn."""
    from playwright.sync_api import expect

    chart = page.locator(MAIN_CHARTS, has=page.locator(".gtitle", has_text=title)).first
    expect(chart).to_be_visible(timeout=4 * TIMEOUT)
    return chart


def _ticks(chart) -> list[dict[str, list[str]]]:
    return chart.evaluate(TICKS_JS)


def _sidebar_text(page) -> str:
    return page.locator('[data-testid="stSidebar"]').inner_text()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"visible_{name}.png"))


def _upload(page, path: Path) -> None:
    sidebar = page.locator('[data-testid="stSidebar"]')
    if not sidebar.locator('[data-testid="stFileUploader"]').count():
        sidebar.get_by_text("Upload a file", exact=True).click()
    uploader = sidebar.locator('[data-testid="stFileUploader"] input[type="file"]')
    uploader.wait_for(state="attached", timeout=TIMEOUT)
    uploader.set_input_files(str(path))


def test_alignment_views_readable_charts_and_honest_state(server, activity, demo_dir):
    sync = require_browser()
    expect = sync.expect
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    with sync.sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" and not any(
            k in (m.location or {}).get("url", "") for k in KNOWN_404) else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(server)
            _settle(page, "Overview")
            _demo_pages(page, expect)
            _address_restores_the_choice(page, server, expect)
            _refused_upload_leaves_no_trace(page, expect)
            _two_modality_upload(page, server, activity[0], expect)
        except Exception:
            _shot(page, "failure")
            raise
        finally:
            browser.close()
    assert not errors, errors


def _demo_pages(page, expect) -> None:
    # Overview: epoch axes with at most ~10 ticks, every class labelled
    curves = _chart(page, "Loss terms")
    assert all(len(axis["x"]) <= 11 for axis in _ticks(curves)), _ticks(curves)
    labels = _ticks(_chart(page, "Label distribution"))[0]["x"]
    assert labels == [f"digit {d}" for d in range(10)]
    assert "Model in use: bundled demo" in _sidebar_text(page)
    _shot(page, "demo_overview")
    _open(page, "Predict")
    confusion = _ticks(_chart(page, "Confusion matrix"))[0]
    assert confusion["x"] == confusion["y"] == [f"digit {d}" for d in range(10)]
    _shot(page, "demo_predict")
    _open(page, "Sample")
    for tab in ("Prediction", "Why", "What if", "Alignment", "Review"):
        expect(page.get_by_role("tab", name=tab)).to_be_visible(timeout=TIMEOUT)
    summary = page.get_by_text(re.compile("^The model predicts")).first
    assert summary.bounding_box()["y"] < page.get_by_role("tab", name="Prediction").bounding_box()["y"]
    _chart(page, "Probability of each class")
    _shot(page, "demo_sample_prediction")
    page.get_by_role("tab", name="Why").click()
    fourier = _chart(page, "fourier: attribution")  # a single-step modality: bars, whole feature numbers
    assert all(re.fullmatch(r"\d+", t) for t in _ticks(fourier)[0]["x"]), _ticks(fourier)
    _shot(page, "demo_sample_why")
    page.get_by_role("tab", name="Alignment").click()
    _shot(page, "demo_sample_alignment")
    _open(page, "Embeddings")
    expect(page.get_by_text(re.compile(r"Modalities told apart \(chance 0\.33\)")).first).to_be_visible(
        timeout=4 * TIMEOUT)
    expect(page.get_by_text(re.compile(r"Classes told apart \(chance 0\.10\)")).first).to_be_visible()
    _shot(page, "demo_embeddings")
    # the switch comes after the page's first projection: a cold UMAP on a busy machine takes minutes
    page.get_by_text("Show the model trained without alignment beside it").click(timeout=4 * TIMEOUT)
    expect(page.get_by_text(re.compile(r"with alignment and \d\.\d\d without")).first).to_be_visible(
        timeout=4 * TIMEOUT)
    expect(page.get_by_text(re.compile(r"Modalities told apart")).nth(2)).to_be_visible(timeout=4 * TIMEOUT)
    _shot(page, "demo_embeddings_twin")
    _open(page, "Prototypes and transport")
    expect(page.get_by_text(re.compile(r"fourier prototype \d+ ↔ karhunen prototype \d+: .* mass 0\.\d{3}")).first
           ).to_be_visible(timeout=4 * TIMEOUT)
    _chart(page, "Plan fourier – karhunen")
    # three scatters to a row: whole pixels wide, or plotly and Streamlit read their width apart and plotly redraws
    widths = page.evaluate("[...document.querySelectorAll('[data-testid=stMain] .stPlotlyChart')]"
                           ".map(chart => chart.getBoundingClientRect().width)")
    assert len(widths) >= 3 and all(width == int(width) for width in widths), widths
    _shot(page, "demo_prototypes")
    _open(page, "Alignment levels")
    # the switch comes after the page's first projection: a cold UMAP on a busy machine takes minutes
    page.get_by_text("Show the model trained without alignment beside it").click(timeout=4 * TIMEOUT)
    _chart(page, "Each level on this data, both models")
    _shot(page, "demo_alignment")
    for name in ("Audit", "Train", "Replay training", "Compare models"):
        _open(page, name)
        page.wait_for_timeout(500)
        _settle(page, name)
        _shot(page, f"demo_{name.split()[0].lower()}")
    a = page.locator(".st-key-compare_A").inner_text()
    b = page.locator(".st-key-compare_B").inner_text()
    assert a.split("\n")[-1] != b.split("\n")[-1], (a, b)  # the two most recent different models


def _address_restores_the_choice(page, server: str, expect) -> None:
    valid = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["valid"].ids
    page.goto(f"{server}/sample?model=demo_noalign&data=bundled&split=valid&sample={valid[5]}")
    for attempt in range(2):  # the link, then a refresh of the page it leads to
        _settle(page, "Sample")
        sidebar = _sidebar_text(page)
        assert "Model in use: demo without alignment" in sidebar and "Split: valid, 300 samples" in sidebar
        # the selectbox shows its choice as the value of its combobox input, not as text
        expect(page.locator(".st-key-sample_id input[role='combobox']")).to_have_value(valid[5], timeout=TIMEOUT)
        assert "model=demo_noalign" in page.url and f"sample={valid[5]}" in page.url
        if attempt == 0:
            _shot(page, "address_restored")
            page.reload()
    page.goto(f"{server}/?model=demo&split=test")
    _settle(page, "Overview")
    assert "Model in use: bundled demo" in _sidebar_text(page)


def _refused_upload_leaves_no_trace(page, expect) -> None:
    _open(page, "Predict")
    bad = ARTIFACTS / "not_for_this_model.npz"
    data = make_synthetic(20, 5, 5, widths={"text": 3, "audio": 2}, seq_len=2, seed=1)
    save_npz(data, bad)
    _upload(page, bad)
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar.locator('[data-testid="stAlert"]', has_text="does not match the checkpoint")).to_be_visible(
        timeout=TIMEOUT)
    text = _sidebar_text(page)
    assert "Data in use: uci_digits.npz (bundled with the model)" in text
    assert "not loaded: still using the bundled data" in text
    assert sidebar.locator('[data-testid="stFileUploaderFile"]').count() == 0  # the refused file is not listed
    _shot(page, "refused_upload")
    sidebar.get_by_text("Model's bundled data", exact=True).click()  # the cause is gone: so is the message
    expect(sidebar.get_by_text("does not match the checkpoint")).to_have_count(0, timeout=TIMEOUT)
    bad.unlink()


def _two_modality_upload(page, server: str, data: Path, expect) -> None:
    page.goto(f"{server}/predict?model=run:{RUN_NAME}")
    expect(page.get_by_text(f"The model run {RUN_NAME} has no bundled data")).to_be_visible(timeout=TIMEOUT)
    sidebar_text = _sidebar_text(page)
    assert f"Model in use: run {RUN_NAME}" in sidebar_text
    assert "Data in use: none (upload data for this model)" in sidebar_text and "bundled with" not in sidebar_text
    _upload(page, data)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Data in use: activity.npz (uploaded)")
           ).to_be_visible(timeout=TIMEOUT)
    confusion = _ticks(_chart(page, "Confusion matrix"))[0]
    assert confusion["x"] == ACTIVITIES and confusion["y"] == ACTIVITIES
    _shot(page, "two_predict")
    _open(page, "Overview")
    assert _ticks(_chart(page, "Label distribution"))[0]["x"] == ACTIVITIES
    assert all(len(axis["x"]) <= 11 for axis in _ticks(_chart(page, "Loss terms")))
    _shot(page, "two_overview")
    _open(page, "Sample")
    accel = _chart(page, "accel: 6 features over 8 steps")  # a narrow series: one line per feature
    assert all(re.fullmatch(r"\d+", t) for t in _ticks(accel)[0]["x"])
    _shot(page, "two_sample")
    _open(page, "Embeddings")
    expect(page.get_by_text(re.compile(r"Modalities told apart \(chance 0\.50\)")).first).to_be_visible(
        timeout=4 * TIMEOUT)
    # coloured by label, every class named, in class order; waits for plotly to draw the legend's SVG text
    expect(page.locator(MAIN_CHARTS).first.locator(".legendtext")).to_have_text(ACTIVITIES, timeout=4 * TIMEOUT)
    _shot(page, "two_embeddings")
    _open(page, "Prototypes and transport")
    expect(page.get_by_text(re.compile(r"accel prototype \d ↔ gyro prototype \d: ")).first).to_be_visible(
        timeout=4 * TIMEOUT)
    _shot(page, "two_prototypes")
    for name in ("Alignment levels", "Audit"):
        _open(page, name)
        _shot(page, f"two_{name.split()[0].lower()}")
    page.reload()  # an upload cannot come back from the address: the page says so (and has no data to show)
    expect(page.get_by_text(re.compile("was an upload, which is not kept on the server"))).to_be_visible(
        timeout=TIMEOUT)
    assert f"Model in use: run {RUN_NAME}" in _sidebar_text(page)
    _shot(page, "two_after_refresh")
