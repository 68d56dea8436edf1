"""Dashboard timings in Debian's Chromium (Playwright), written to bench/results/dashboard.json.

1. Warm app: per page, time from clicking its navigation link to its first chart being visible.
2. 1,000 uploaded MOSI-shaped samples (text 768, audio 5, vision 20, T = 50) on a small trained MOSI-shaped
   model: time from the upload to the predictions table, to the PCA view and to the UMAP view.
3. 20,000 demo-shaped samples: every page renders (time to first chart), and redraw times after changing
   a filter (Predict) and the colouring (Embeddings).

Run: ``python bench/bench_dashboard.py`` (about 5-10 minutes on 2 CPU cores). Uses the bundled demo model
if present, else trains a small stand-in on the demo data.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from browser_utils import free_port, launch_chromium, make_tiny_run, start_server, stop_server
from playwright.sync_api import expect, sync_playwright

from decalign.data import MultimodalDataset, Split, load_dataset, make_synthetic, save_npz

TIMEOUT = 180_000
CHART_PAGES = {"Overview", "Predict", "Sample", "Embeddings", "Prototypes and transport", "Alignment levels",
               "Audit"}
MOSI_WIDTHS = {"text": 768, "audio": 5, "vision": 20}


def _idle(page, appear_ms: int = 1500) -> None:
    """Wait for the app to start running (if it does within ``appear_ms``) and then to finish."""
    status = page.locator('[data-testid="stStatusWidget"]')
    try:
        status.first.wait_for(state="visible", timeout=appear_ms)
    except Exception:  # noqa: BLE001, S110 - a fast rerun may finish before the widget shows
        pass
    expect(status).to_have_count(0, timeout=TIMEOUT)


def _chart(page) -> None:
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=TIMEOUT)


def _try_open(page, name: str) -> float | str:
    """``_open``, or "timeout" (the page did not draw within TIMEOUT) so one slow page does not end the run."""
    try:
        return round(_open(page, name), 3)
    except AssertionError:
        return f"no chart within {TIMEOUT // 1000} s"


def _open(page, name: str) -> float:
    start = time.perf_counter()
    page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()
    expect(page.get_by_role("heading", name=name, exact=True).first).to_be_visible(timeout=TIMEOUT)
    _chart(page)
    _idle(page, 300)
    return time.perf_counter() - start


def _pages(page) -> list[str]:
    """The navigation's pages that draw charts without a training run chosen first."""
    names = [t.strip() for t in page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()]
    return [n for n in names if n in CHART_PAGES]


def _upload(page, path: Path) -> float:
    sidebar = page.locator('[data-testid="stSidebar"]')
    if not sidebar.get_by_text("MMSA pickle (.pkl) or .npz").count():
        sidebar.get_by_text("Upload a file", exact=True).click()
        expect(sidebar.get_by_text("MMSA pickle (.pkl) or .npz")).to_be_visible(timeout=TIMEOUT)
    start = time.perf_counter()
    sidebar.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(path))
    expect(sidebar.get_by_text(f"Using: {path.name}")).to_be_visible(timeout=TIMEOUT)
    return start


def _load_dir(page, run_dir: Path) -> None:
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Checkpoint directory", exact=True).click()
    sidebar.get_by_label("Run directory").fill(str(run_dir))
    sidebar.get_by_label("Run directory").press("Enter")
    _idle(page)
    sidebar.get_by_role("button", name="Load checkpoint").click()
    _idle(page)


def _projection(page, method: str) -> None:
    page.locator('[data-testid="stMain"]').get_by_text(method, exact=True).first.click()
    expect(page.get_by_text(f"· {method}").first).to_be_visible(timeout=TIMEOUT)
    _idle(page, 500)


def bench_warm(page) -> dict:
    names = _pages(page)
    for name in names:  # warm: every cache filled once
        print(f"cold {name}: {_open(page, name):.1f} s", flush=True)
    return {name: round(_open(page, name), 3) for name in names}


def bench_mosi(page, tmp: Path) -> dict:
    train = make_synthetic(300, 60, 0, widths=MOSI_WIDTHS, seq_len=50, seed=1)
    run = make_tiny_run(train, tmp / "mosi_run", epochs=1, source="synthetic MOSI-shaped")
    upload = make_synthetic(0, 0, 1000, widths=MOSI_WIDTHS, seq_len=50, seed=2)
    path = tmp / "mosi_1000.npz"
    save_npz(MultimodalDataset({"test": upload.splits["test"]}, upload.task), path, compress=False)
    _load_dir(page, run)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Predict").first.click()
    _idle(page)
    start = _upload(page, path)
    expect(page.get_by_text("1,000 of 1,000 rows shown").first).to_be_visible(timeout=TIMEOUT)
    _chart(page)
    table = time.perf_counter() - start
    # A second, new file uploaded while the Embeddings page shows PCA: upload -> PCA view, then UMAP.
    page.locator('[data-testid="stSidebarNav"] a', has_text="Embeddings").first.click()
    expect(page.get_by_role("heading", name="Embeddings", exact=True).first).to_be_visible(timeout=TIMEOUT)
    _idle(page)
    _projection(page, "PCA")
    second = make_synthetic(0, 0, 1000, widths=MOSI_WIDTHS, seq_len=50, seed=3)
    path2 = tmp / "mosi_1000_b.npz"
    save_npz(MultimodalDataset({"test": second.splits["test"]}, second.task), path2, compress=False)
    start = _upload(page, path2)
    expect(page.get_by_text("1,000 samples").first).to_be_visible(timeout=TIMEOUT)
    _idle(page)
    _chart(page)
    pca = time.perf_counter() - start
    umap_start = time.perf_counter()
    _projection(page, "UMAP")
    _chart(page)
    umap = time.perf_counter() - umap_start
    return {"samples": 1000, "file_mb": round(path.stat().st_size / 2**20, 1),
            "upload_to_predictions_table_s": round(table, 3), "upload_to_pca_view_s": round(pca, 3),
            "pca_to_umap_view_s": round(umap, 3), "upload_to_umap_view_s": round(pca + umap, 3),
            "targets": {"predictions_and_pca_s": 3.0, "umap_s": 10.0}}


def large_digits(n: int, seed: int = 0) -> MultimodalDataset:
    """``n`` demo-shaped test samples: digits resampled with small Gaussian noise."""
    digits = load_dataset(ROOT / "assets" / "uci_digits.npz")
    base = digits.splits["train"]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(base), n)
    feats = {m: (x[pick] + 0.05 * rng.standard_normal(x[pick].shape)).astype(np.float32)
             for m, x in base.features.items()}
    ids = np.array([f"big-{i:05d}" for i in range(n)])
    return MultimodalDataset({"test": Split(feats, base.labels[pick], ids)}, "classification", 10)


def bench_large(page, tmp: Path, n: int = 20_000) -> dict:
    path = tmp / "digits_20k.npz"
    save_npz(large_digits(n), path)
    page.locator('[data-testid="stSidebar"]').get_by_text("Bundled demo", exact=True).click()
    _idle(page)
    page.locator('[data-testid="stSidebarNav"] a', has_text="Predict").first.click()
    _idle(page)
    start = _upload(page, path)
    expect(page.get_by_text(f"{n:,} of {n:,} rows shown").first).to_be_visible(timeout=TIMEOUT)
    upload = time.perf_counter() - start
    pages = {}
    for name in _pages(page):
        pages[name] = _try_open(page, name)
        print(f"20k {name}: {pages[name]}", flush=True)
    _open(page, "Predict")
    start = time.perf_counter()
    page.locator('[data-testid="stMultiSelect"]').first.click()
    page.get_by_role("option").first.click()
    page.keyboard.press("Escape")
    _idle(page)
    _chart(page)
    filter_s = time.perf_counter() - start
    _open(page, "Embeddings")
    _projection(page, "PCA")
    start = time.perf_counter()
    page.locator('[data-testid="stSelectbox"]', has_text="Colour by").click()
    page.get_by_role("option", name="prediction").click()
    _idle(page)
    _chart(page)
    colour_s = time.perf_counter() - start
    return {"samples": n, "upload_to_predictions_s": round(upload, 3), "page_first_chart_s": pages,
            "filter_redraw_s": round(filter_s, 3), "colour_redraw_s": round(colour_s, 3),
            "targets": {"redraw_s": 2.0}}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_dashboard_") as folder:
        run_all(Path(folder))


def run_all(tmp: Path) -> None:
    demo = ROOT / "assets" / "demo_model"
    env = {}
    if not (demo / "best.safetensors").is_file():
        run = make_tiny_run(load_dataset(ROOT / "assets" / "uci_digits.npz"), tmp / "demo", epochs=2)
        env["DECALIGN_DEMO_MODEL"] = str(run)
    port = free_port()
    proc = start_server(port, env=env)
    results: dict = {"machine": platform.platform(), "python": platform.python_version(),
                     "browser": "Debian chromium, headless, 1280x1600"}
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}")
            expect(page.get_by_role("heading", name="Overview").first).to_be_visible(timeout=TIMEOUT)
            _idle(page)
            results["warm_page_first_chart_s"] = bench_warm(page)
            print("warm", results["warm_page_first_chart_s"], flush=True)
            results["mosi_1000_upload"] = bench_mosi(page, tmp)
            print("mosi", results["mosi_1000_upload"], flush=True)
            results["digits_20000_upload"] = bench_large(page, tmp)
            print("large", results["digits_20000_upload"], flush=True)
            browser.close()
    finally:
        stop_server(proc)
    out = ROOT / "bench" / "results" / "dashboard.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
