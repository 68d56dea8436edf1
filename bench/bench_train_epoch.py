"""Speed of one training epoch through the command line, on a MOSI-shaped synthetic file.

Writes a synthetic MMSA pickle (text 768, audio 5, vision 20, T = 50; 1,284 / 229 / 686 samples as
MOSI), runs ``decalign train ... --set num_epochs=1`` in a subprocess, and reports training samples per
second (from the epoch time in history.json), the whole command's wall time and the subprocess's peak
RSS. Run ``python bench/bench_train_epoch.py [--threads 2]``; writes bench/results/train_epoch.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from decalign.data import make_synthetic, write_mmsa_pickle

RESULTS = ROOT / "bench" / "results"

N_TRAIN, N_VALID, N_TEST = 1284, 229, 686  # CMU-MOSI's splits


def machine() -> dict:
    """CPU model (from /proc/cpuinfo), logical CPUs, torch threads, versions and the current load."""
    model = "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return {"cpu": model, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_data(path: Path) -> None:
    # In a function so the arrays are freed before the subprocess forks (Linux children inherit
    # the parent's peak RSS at fork time in ru_maxrss).
    write_mmsa_pickle(make_synthetic(N_TRAIN, N_VALID, N_TEST, seq_len=50, seed=0), path)
    gc.collect()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mosi_like.pkl"
        write_data(data)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DECALIGN_AUDIT_DB": str(Path(tmp) / "a.db")}
        command = [sys.executable, "-m", "decalign", "train", "--data", str(data), "--out", str(Path(tmp) / "run"),
                   "--set", "num_epochs=1", "--quiet", "--device", "cpu"]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"decalign train failed ({done.returncode}): {done.stderr.strip()}")
        history = json.loads((Path(tmp) / "run" / "history.json").read_text())
    epoch_s = history[0]["seconds"]
    result = {
        "benchmark": "one training epoch through `decalign train`, MOSI-shaped synthetic data",
        "shapes": {"text": [50, 768], "audio": [50, 5], "vision": [50, 20]},
        "samples": {"train": N_TRAIN, "valid": N_VALID, "test": N_TEST}, "batch_size": 32,
        "config": "defaults (the official MOSI settings: d 40, 10 heads, 5 layers, K 7)",
        "epoch_seconds": epoch_s, "train_samples_per_second": N_TRAIN / epoch_s,
        "command_wall_seconds": wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "machine": {**machine(), "torch_threads": args.threads},
    }
    print(f"epoch: {epoch_s:.1f} s, {result['train_samples_per_second']:.1f} training samples/s; "
          f"whole command {wall:.1f} s; peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(f"wrote {write_result('train_epoch.json', result)}")
    return result


if __name__ == "__main__":
    main()
