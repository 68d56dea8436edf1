"""Speed and memory of the whole `decalign train` command against the official trainer, same data, same run.

Writes a synthetic MMSA pickle (text 768, audio 5, vision 20, T = 50; 1,284 / 229 / 686 samples as
MOSI) and the official MOSI settings without BERT (d 40, 10 heads, 5 layers, K 7, batch 32) as a config
file, then runs, one after the other in subprocesses with the same thread count:

* ``decalign train --data ... --config ... --set num_epochs=E`` (E = 2 by default), and
* ``bench/official_trainer.py`` (the official trainer's work: read the pickle per split, E epochs with
  validation, the test split at the end).

For each: wall time, peak RSS of the process itself (``VmHWM``, polled) and with its children
(``wait4``; ours parses the file in a sandboxed child). For ours also the epoch times from history.json and
the time spent after the last epoch (final metrics, prototypes, reference). Run
``python bench/bench_train_epoch.py [--threads 2] [--epochs 2] [--repeat 1]``; writes
bench/results/train_epoch.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from decalign.data import make_synthetic, write_mmsa_pickle
from tests.reference.official_model import official_config_dict

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


def run_measured(command: list[str], env: dict) -> dict:
    """Run ``command``; wall seconds, its own peak RSS (VmHWM, polled) and with children (wait4), stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        own_kib = 0
        while True:
            own_kib = max(own_kib, _vm_hwm_kib(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode:
        raise SystemExit(f"{command[1:4]} failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return {"wall_s": wall, "peak_rss_mib": own_kib / 1024, "peak_rss_with_children_mib": usage.ru_maxrss / 1024,
            "stdout": stdout, "end": time.time()}


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_inputs(tmp: Path) -> tuple[Path, Path]:
    """The MOSI-shaped pickle and the official MOSI settings (without BERT) in ``tmp``: (data, config)."""
    data, config = tmp / "mosi_like.pkl", tmp / "official_mosi.json"
    write_data(data)
    config.write_text(json.dumps(official_config_dict(use_bert=False)))
    return data, config


def ours_run_dir(tmp: Path, tag: str) -> Path:
    """Where :func:`run_ours` writes the run tagged ``tag``."""
    return tmp / f"run-{tag}"


def run_ours(tmp: Path, data: Path, config: Path, env: dict, epochs: int, tag: str) -> dict:
    run_dir = ours_run_dir(tmp, tag)
    command = [sys.executable, "-m", "decalign", "train", "--data", str(data), "--config", str(config),
               "--out", str(run_dir), "--set", f"num_epochs={epochs}", "--quiet", "--device", "cpu"]
    measured = run_measured(command, env)
    history = json.loads((run_dir / "history.json").read_text())
    after = measured["end"] - (run_dir / "history.json").stat().st_mtime
    epoch_s = [row["seconds"] for row in history]
    return {"wall_s": round(measured["wall_s"], 2), "epoch_train_s": epoch_s,
            "after_last_epoch_s": round(after, 2),
            "peak_rss_mib": round(measured["peak_rss_mib"]),
            "peak_rss_with_children_mib": round(measured["peak_rss_with_children_mib"])}


def run_official(data: Path, env: dict, epochs: int, threads: int) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "official_trainer.py"), str(data), "--epochs", str(epochs),
               "--threads", str(threads)]
    measured = run_measured(command, env)
    phases = json.loads(measured["stdout"].strip().splitlines()[-1])
    return {"wall_s": round(measured["wall_s"], 2), "read_s": round(phases["read_s"], 2),
            "epoch_train_s": [round(e["train_s"], 2) for e in phases["epochs"]],
            "peak_rss_mib": round(measured["peak_rss_mib"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="alternate ours and official this many times")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, config = write_inputs(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "DECALIGN_AUDIT_DB": str(tmp / "a.db")}
        for i in range(args.repeat):
            load = round(os.getloadavg()[0], 2)
            ours = run_ours(tmp, data, config, env, args.epochs, str(i))
            official = run_official(data, env, args.epochs, args.threads)
            runs.append({"ours": ours, "official": official, "speedup": round(official["wall_s"] / ours["wall_s"], 2),
                         "load_average_1min_before": load})
            print(f"run {i + 1}: decalign train {ours['wall_s']:.1f} s (epochs {ours['epoch_train_s']} s, "
                  f"{ours['after_last_epoch_s']:.1f} s after the last epoch), peak RSS {ours['peak_rss_mib']} MiB "
                  f"(with the parser child {ours['peak_rss_with_children_mib']} MiB); official trainer "
                  f"{official['wall_s']:.1f} s (read {official['read_s']:.1f} s, epochs {official['epoch_train_s']} s),"
                  f" peak RSS {official['peak_rss_mib']} MiB; speed-up {runs[-1]['speedup']:.2f}x")
    result = {
        "benchmark": "the whole `decalign train` command against the official trainer, MOSI-shaped synthetic data",
        "command": f"python bench/bench_train_epoch.py --threads {args.threads} --epochs {args.epochs} "
                   f"--repeat {args.repeat}",
        "shapes": {"text": [50, 768], "audio": [50, 5], "vision": [50, 20]},
        "samples": {"train": N_TRAIN, "valid": N_VALID, "test": N_TEST}, "batch_size": 32, "epochs": args.epochs,
        "config": "the official MOSI settings without BERT (d 40, 10 heads, 5 layers, K 7), for both",
        "runs": runs,
        "median_speedup": round(statistics.median(r["speedup"] for r in runs), 2),  # the mean of an even count's middle two
        "machine": {**machine(), "torch_threads": args.threads},
    }
    print(f"wrote {write_result('train_epoch.json', result)}")
    return result


if __name__ == "__main__":
    main()
