"""Server memory while each hostile file is uploaded, and what the sandbox costs on a large genuine file.

1. Starts the real Streamlit server on the bundled demo model and uploads every case of the hostile corpus
   (``tests/hostile/corpus.py``) in Chromium, as a user would: data files through "Upload a file", model
   zips through "Upload a zip". A thread samples the server process's ``VmRSS`` every 10 ms from
   ``/proc/<pid>/status``; per case it records the peak while the upload is handled, the rise over the
   server's resident size before the upload, the one line the page shows, and the peak memory of the
   sandboxed parser (the same loader called here, measured in its child).
2. Loads a MOSI-shaped MMSA pickle (1,284/229/686 samples, about 350 MB) in a fresh process, parsed there
   or in the sandbox, alternating, and reports both times and the peak memory of that process and of the child.

Run: ``python bench/bench_hostile.py`` (about 5 minutes on 2 CPU cores); writes bench/results/hostile.json.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "app")]

from browser_utils import free_port, launch_chromium, start_server, stop_server
from playwright.sync_api import expect, sync_playwright

from decalign.checkpoint import CheckpointError, load_model_zip
from decalign.data import DataError, load_dataset_bytes, make_synthetic, write_mmsa_pickle
from tests.hostile.corpus import Case, all_cases, model_zip

TIMEOUT = 180_000
MIB = 1 << 20


class RssSampler:
    """Samples a process's VmRSS in a thread; ``window()`` gives the peak since the last call."""

    def __init__(self, pid: int, every: float = 0.01) -> None:
        self.path, self.every, self.peak, self.stop = Path(f"/proc/{pid}/status"), every, 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now(self) -> int:
        return _status_kib(self.path, "VmRSS") * 1024

    def hwm(self) -> int:
        return _status_kib(self.path, "VmHWM") * 1024

    def window(self) -> int:
        peak, self.peak = self.peak, self.now()
        return max(peak, self.peak)

    def _run(self) -> None:
        while not self.stop:
            try:
                self.peak = max(self.peak, self.now())
            except (OSError, ValueError):
                return
            time.sleep(self.every)


def _status_kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(field)


def _idle(page, appear_ms: int = 1500) -> None:
    status = page.locator('[data-testid="stStatusWidget"]')
    try:
        status.first.wait_for(state="visible", timeout=appear_ms)
    except Exception:  # noqa: BLE001, S110 - a fast rerun may finish before the widget shows
        pass
    expect(status).to_have_count(0, timeout=TIMEOUT)


def _choose(page, group: str, label: str) -> None:
    page.locator(f".st-key-{group} label", has_text=label).first.click()
    _idle(page, 500)


def _upload(page, case: Case, path: Path) -> str:
    """Upload ``path`` through the sidebar; returns the error line shown, or "loaded"."""
    if case.kind == "data":
        _choose(page, "data_kind", "Upload a file")
        uploader = '[class*="st-key-data_upload"]'  # the key ends in a generation, bumped to empty it
    else:
        _choose(page, "model_kind", "Upload a zip")
        uploader = '[class*="st-key-model_zip"]'
    page.locator(f"{uploader} input[type=file]").set_input_files(str(path))
    sidebar = page.locator('[data-testid="stSidebar"]')
    # Done when this file's error or "<file> is in use." shows (an earlier upload's error may still be there).
    error = sidebar.locator('[data-testid="stAlertContentError"]', has_text=re.compile("^" + re.escape(path.name)))
    expect(error.or_(sidebar.get_by_text(f"{path.name} is in use.")).first).to_be_visible(timeout=TIMEOUT)
    _idle(page, 300)
    return error.first.inner_text().strip() if error.count() else "loaded"


def _child_peak(case: Case, data: bytes) -> int | None:
    """Peak memory of the sandboxed parser for this case (the same loader the server calls)."""
    try:
        if case.kind == "data":
            return load_dataset_bytes(data, case.filename).report.parser_peak_rss_bytes
        load_model_zip(data, case.filename)
        return None
    except (DataError, CheckpointError) as err:
        report = getattr(err.__cause__, "report", None)
        return report.peak_rss_bytes if report is not None else None


def upload_corpus(work: Path) -> list[dict]:
    victim = work / "victim.npz"
    victim.write_bytes(b"not read")
    cases = all_cases(victim)
    port = free_port()
    server = start_server(port, env={"DECALIGN_AUDIT_DB": str(work / "audit.sqlite3"),
                                     "DECALIGN_RUNS_DIR": str(work / "runs"), "OMP_NUM_THREADS": "1"})
    sampler = RssSampler(server.pid)
    rows = []
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}/")
            expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=TIMEOUT)
            _idle(page)
            # The data cases are checked against a model of their own modalities (text, audio, vision).
            fitting = work / "fitting" / "tav_model.zip"
            fitting.parent.mkdir()
            fitting.write_bytes(model_zip())
            assert _upload(page, Case("fitting", "model", fitting.name, model_zip, "loads"), fitting) == "loaded"
            for case in cases:
                data = case.make()
                path = work / "uploads" / case.name / case.filename
                path.parent.mkdir(parents=True)
                path.write_bytes(data)
                before = sampler.now()
                sampler.window()
                start = time.perf_counter()
                shown = _upload(page, case, path)
                seconds = time.perf_counter() - start
                peak = sampler.window()
                child = _child_peak(case, data)
                rows.append({"case": case.name, "kind": case.kind, "file_bytes": len(data), "expected": case.outcome,
                             "shown": shown[:300], "seconds": round(seconds, 2),
                             "server_rss_before_mib": round(before / MIB, 1),
                             "server_peak_mib": round(peak / MIB, 1),
                             "server_rise_mib": round((peak - before) / MIB, 1),
                             "parser_child_peak_mib": None if child is None else round(child / MIB, 1),
                             "what": case.what})
                print(f"{case.name:30s} {len(data):>11,d} B  server peak {peak / MIB:7.1f} MiB "
                      f"(+{(peak - before) / MIB:5.1f})  child {'-' if child is None else f'{child / MIB:5.1f}'}"
                      f"  {shown[:90]}", flush=True)
            browser.close()
        hwm = sampler.hwm()
    finally:
        sampler.stop = True
        stop_server(server)
    return rows, hwm


_LOAD = """
import sys, time
from decalign.data import load_dataset
start = time.perf_counter()
data = load_dataset(sys.argv[1], sandbox=sys.argv[2] == "sandboxed")
seconds = time.perf_counter() - start
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
arrays = sum(x.nbytes for part in data.splits.values() for x in part.features.values())
print(seconds, int(hwm) * 1024, arrays, data.report.parser_peak_rss_bytes or 0)
"""


def sandbox_cost(work: Path) -> dict:
    """A MOSI-shaped MMSA pickle loaded in a fresh process, parsed there or in the sandbox, three
    alternating rounds each: time, that process's peak memory (VmHWM) and the child's."""
    dataset = make_synthetic(1284, 229, 686, widths={"text": 768, "audio": 5, "vision": 20}, seq_len=50, seed=0)
    path = work / "mosi_shaped.pkl"
    write_mmsa_pickle(dataset, path)
    del dataset
    runs = {"in_process": [], "sandboxed": []}
    for _ in range(3):
        for mode, rows in runs.items():
            out = subprocess.run([sys.executable, "-c", _LOAD, str(path), mode], capture_output=True, text=True,
                                 check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
            rows.append([float(out[0]), int(out[1]), int(out[2]), int(out[3])])
    return {"file_mb": round(path.stat().st_size / 1e6, 1),
            "feature_arrays_mib": round(runs["sandboxed"][0][2] / MIB, 1),
            **{f"{mode}_s": sorted(round(r[0], 2) for r in rows) for mode, rows in runs.items()},
            **{f"{mode}_process_peak_mib": round(max(r[1] for r in rows) / MIB, 1) for mode, rows in runs.items()},
            "sandboxed_child_peak_mib": round(max(r[3] for r in runs["sandboxed"]) / MIB, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows, hwm = upload_corpus(work)
        cost = sandbox_cost(work)
    refused = [r for r in rows if r["expected"] == "refused"]
    result = {
        "machine": platform.platform(), "python": platform.python_version(),
        "server": "streamlit run app/streamlit_app.py on the bundled demo model; Debian Chromium, headless",
        "cases": rows,
        "summary": {
            "cases": len(rows),
            "refused_as_expected": sum(r["shown"] != "loaded" for r in refused),
            "loaded_as_expected": sum(r["shown"] == "loaded" for r in rows if r["expected"] == "loads"),
            "max_server_peak_mib": max(r["server_peak_mib"] for r in rows),
            "max_server_rise_mib": max(r["server_rise_mib"] for r in rows),
            "max_parser_child_peak_mib": max(r["parser_child_peak_mib"] or 0 for r in rows),
            "server_vmhwm_after_all_mib": round(hwm / MIB, 1),
        },
        "mosi_shaped_pickle": cost,
    }
    out = ROOT / "bench" / "results" / "hostile.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(json.dumps(cost, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
