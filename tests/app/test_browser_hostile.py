"""In Chromium: Markdown and HTML in uploaded data and in a model card are shown as text and fetch nothing.

A local listener stands for an attacker's server. The test uploads a zipped model whose card's ``source``
and ``data_source`` are Markdown images pointing at it, and a data file whose ids and raw text are Markdown
and HTML images pointing at it; it opens the Overview, Predict and Sample pages, sees the text shown
literally, and the listener must have received no request (the issue saw the browser fetch such URLs with
the dashboard's address as Referer). Never skipped in CI: without Chromium it fails.
"""

from __future__ import annotations

import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from browser_utils import ROOT, free_port, launch_chromium, require_browser, start_server, stop_server

from decalign.data import MultimodalDataset, Split, load_dataset, save_npz

pytestmark = pytest.mark.browser
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"
TIMEOUT = 90_000


REQUESTS: list[str] = []  # every path the "attacker's server" was asked for


class _Listener(BaseHTTPRequestHandler):
    def do_GET(self):
        REQUESTS.append(self.path)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _hostile_files(demo_dir, tmp_path, port: int):
    url = f"http://127.0.0.1:{port}"
    card = json.loads((demo_dir / "card.json").read_text())
    card.update(source=f"![s]({url}/card-source.png)", data_source=f"![d]({url}/card-data.png)")
    model = tmp_path / "hostile_model.zip"
    with zipfile.ZipFile(model, "w") as archive:
        archive.writestr("run/card.json", json.dumps(card))
        archive.write(demo_dir / "best.safetensors", "run/best.safetensors")
    digits = subset(load_dataset(DEMO_DATA), 6)
    for name, part in list(digits.splits.items()):
        ids = np.array([f"![i]({url}/id-{name}{i}.png)" for i in range(len(part))])
        text = np.array([f"![t]({url}/raw.png) <img src={url}/raw-html.png> **loud**"] * len(part))
        digits.splits[name] = Split(part.features, part.labels, ids, text)
    data = tmp_path / "hostile_data.npz"
    save_npz(digits, data)
    return model, data


def test_markup_in_data_and_cards_is_text_and_fetches_nothing(demo_dir, tmp_path):
    sync_playwright = require_browser().sync_playwright
    from playwright.sync_api import expect

    listener = ThreadingHTTPServer(("127.0.0.1", free_port()), _Listener)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    port = listener.server_address[1]
    model, data = _hostile_files(demo_dir, tmp_path, port)
    server_port = free_port()
    server = start_server(server_port, env={"DECALIGN_DEMO_MODEL": str(demo_dir), "OMP_NUM_THREADS": "1"})
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"http://127.0.0.1:{server_port}/")
            expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=TIMEOUT)
            page.locator(".st-key-model_kind label", has_text="Upload a zip").click()
            page.locator(".st-key-model_zip input[type=file]").set_input_files(str(model))
            expect(page.get_by_text(f"![s](http://127.0.0.1:{port}/card-source.png)")).to_be_visible(
                timeout=TIMEOUT)
            page.locator(".st-key-data_kind label", has_text="Upload a file").click()
            page.locator(".st-key-data_upload input[type=file]").set_input_files(str(data))
            expect(page.locator('[data-testid="stSidebar"] [data-testid="stAlert"]',
                                has_text="Data in use: hostile_data.npz")).to_be_visible(timeout=TIMEOUT)
            for name in ("Predict", "Sample"):
                page.locator('[data-testid="stSidebarNav"] a', has_text=name).first.click()
                expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible(timeout=TIMEOUT)
                expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=TIMEOUT)
            expect(page.get_by_text(f"![t](http://127.0.0.1:{port}/raw.png)").first).to_be_visible(
                timeout=TIMEOUT)
            assert page.locator(f"img[src*='127.0.0.1:{port}']").count() == 0
            page.wait_for_timeout(2000)  # time for any lazy image to be requested
            browser.close()
    finally:
        stop_server(server)
        listener.shutdown()
    assert REQUESTS == []


def subset(dataset: MultimodalDataset, n: int) -> MultimodalDataset:
    """The first ``n`` samples of every split."""
    return MultimodalDataset({s: p.subset(np.arange(min(n, len(p)))) for s, p in dataset.splits.items()},
                             dataset.task, dataset.num_classes)
