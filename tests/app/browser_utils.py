"""Helpers shared by the dashboard tests and the dashboard benchmark.

``make_tiny_run`` trains a small DecAlign for a few epochs and writes a complete run directory (weights,
card with training prototypes and metrics, ``history.json``), so tests never depend on a large asset.
``start_server``/``stop_server`` run ``streamlit run`` on a free port; ``launch_chromium`` opens Debian's
Chromium through Playwright (never ``playwright install``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from decalign.checkpoint import ModelCard, save_model
from decalign.config import DecAlignConfig, ModelConfig, TrainConfig
from decalign.data import MultimodalDataset, iterate_batches
from decalign.inference import run_inference
from decalign.model import DecAlign, fit_gmm
from decalign.train.metrics import compute_metrics
from decalign.train.reference import build_reference, save_reference

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# The page's charts: a session's first run also holds a hidden empty chart in the sidebar (app.prefetch).
MAIN_CHARTS = '[data-testid="stMain"] .js-plotly-plot'
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]


def shown(markdown: str) -> str:
    """The text a Streamlit message displays: ``decalign.safe_output.markdown_text``'s escapes removed."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


def make_tiny_run(dataset: MultimodalDataset, run_dir: Path, *, epochs: int = 2, d_model: int = 16,
                  prototypes: int = 4, seed: int = 0, source: str = "test") -> Path:
    """Train a small DecAlign on ``dataset`` and write a run directory; returns ``run_dir``."""
    torch.manual_seed(seed)
    task = dataset.task
    out_dim = dataset.num_classes if task == "classification" else 1
    config = DecAlignConfig(ModelConfig(d_model=d_model, num_heads=2, num_layers=1, num_prototypes=prototypes,
                                        pde_dim=8),
                            TrainConfig(task_loss="cross_entropy" if task == "classification" else "l1",
                                        batch_size=64, learning_rate=3e-3, num_epochs=epochs, seed=seed))
    model = DecAlign(config.model, dataset.widths, out_dim)
    history = _train(model, dataset, config, epochs)
    card = ModelCard(config=config, widths=dataset.widths, task=task, output_dim=out_dim,
                     seq_lens={m: t for m, (t, _) in dataset.modalities.items()},
                     num_classes=dataset.num_classes, data_fingerprint=dataset.fingerprint(),
                     data_source=source, seed=seed, best_epoch=epochs)
    train = run_inference(model, dataset.splits["train"], task=task)
    card.set_prototypes({m: fit_gmm(torch.from_numpy(v), prototypes, iterations=10)
                         for m, v in train.unique_pooled.items()})
    for name, split in dataset.splits.items():
        if split.labels is not None:
            res = run_inference(model, split, task=task)
            card.metrics[name] = compute_metrics(task, res.predictions, split.labels,
                                                 num_classes=dataset.num_classes)
    run_dir = Path(run_dir)
    save_model(run_dir, model, card)
    (run_dir / "history.json").write_text(json.dumps(history), encoding="utf-8")
    save_reference(run_dir, build_reference(model, card, dataset.splits["train"]))
    return run_dir


def _train(model: DecAlign, dataset: MultimodalDataset, config: DecAlignConfig, epochs: int) -> list[dict]:
    loss_fn = torch.nn.CrossEntropyLoss() if dataset.task == "classification" else torch.nn.L1Loss()
    optim = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        sums: dict[str, float] = {}
        batches = 0
        for batch in iterate_batches(dataset.splits["train"], config.train.batch_size, shuffle=True, seed=epoch):
            out = model(batch.inputs, batch.lengths)
            target = batch.labels if dataset.task == "classification" else batch.labels.float().view(-1, 1)
            task_loss = loss_fn(out.prediction, target)
            loss = task_loss + 0.1 * out.alignment.decoupling + config.train.alpha * out.alignment.heterogeneity
            optim.zero_grad()
            loss.backward()
            optim.step()
            levels = out.alignment.as_floats()
            for k, v in {"total": float(loss.detach()), "task": float(task_loss.detach()), **levels}.items():
                sums[k] = sums.get(k, 0.0) + v
            batches += 1
        row = {"epoch": epoch, "train": {k: v / batches for k, v in sums.items()}}
        valid = dataset.splits.get("valid")
        if valid is not None and valid.labels is not None:
            res = run_inference(model, valid, task=dataset.task)
            row["valid"] = compute_metrics(dataset.task, res.predictions, valid.labels,
                                           num_classes=dataset.num_classes)
        history.append(row)
    return history


def require_browser():
    """Playwright's sync API, or skip when Chromium or Playwright is missing; in CI (``CI`` set) fail."""
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium (see /work/shared/TESTING.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if os.environ.get("CI"):  # in CI a missing Playwright fails too
        return __import__("playwright.sync_api", fromlist=["sync_playwright"])
    return pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, env: dict[str, str] | None = None, timeout: float = 90.0,
                 script: Path | None = None) -> subprocess.Popen:
    """Start the dashboard as the README does (``python3 -m app``: ``streamlit run app/streamlit_app.py`` with
    the pages' imports begun at start), or ``streamlit run script``, headless on 127.0.0.1:``port``; wait for
    /_stcore/health.

    The file watcher is off: an edit to a source file while a test runs must not pop up "source changed".
    """
    program = ["app"] if script is None else ["streamlit", "run", str(script)]
    cmd = [sys.executable, "-m", *program, "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
                if resp.read().decode().strip() == "ok":
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise TimeoutError(f"streamlit did not answer /_stcore/health on port {port} within {timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def sample_ids(dataset: MultimodalDataset, split: str) -> np.ndarray:
    return dataset.splits[split].ids
