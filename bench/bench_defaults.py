"""What the settings chosen from the data (``decalign.defaults``) reach, against the linear baseline.

Each data set is trained through ``decalign train`` without ``--config`` (the data-driven defaults), and,
where asked, with the library defaults (the official MOSI settings, ``--config`` of the defaults) for
comparison; the card's test score is set beside the baseline the run fitted (``decalign.train.baseline``).

Data sets (all offline):

* demo: the bundled UCI multiple-features digits (three views, 10 classes, 1400/300/300);
* sklearn-digits: scikit-learn's bundled 8x8 digits (1,797) as three views: the left and the right half of
  the image as sequences of 8 rows (T 8, D 4), and the row and column sums (T 1, D 16); 70/15/15 split;
* breast-cancer: scikit-learn's bundled Wisconsin data (569, 2 classes) as its three natural views: the
  means, standard errors and worst values of the ten cell measurements, each feature standardised with the
  training split's mean and standard deviation (its raw scales run from 0.001 to 4,000); 70/15/15 split;
* synthetic regression: MOSI-like labels in (-3, 3) from ``decalign.data.make_synthetic`` (text 64,
  audio 5, vision 20, T 20; 1,284/229/686 as MOSI).

Run ``python bench/bench_defaults.py [--only demo,...] [--library-defaults demo,...]``; writes
bench/results/defaults.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train_epoch import machine, write_result

from decalign.checkpoint import load_card
from decalign.config import DecAlignConfig
from decalign.data import LoadReport, MultimodalDataset, Split, make_synthetic, save_npz
from decalign.train.baseline import card_comparison


def _split(features: dict[str, np.ndarray], labels: np.ndarray, seed: int = 0) -> MultimodalDataset:
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    cut = [int(0.7 * n), int(0.85 * n)]
    parts = {"train": order[:cut[0]], "valid": order[cut[0]:cut[1]], "test": order[cut[1]:]}
    splits = {name: Split({m: x[rows].astype(np.float32) for m, x in features.items()}, labels[rows].astype(np.int64),
                          np.array([f"s{i}" for i in rows])) for name, rows in parts.items()}
    return MultimodalDataset(splits, "classification", int(labels.max()) + 1, LoadReport(source="sklearn"))


def sklearn_digits() -> MultimodalDataset:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images / 16.0  # (N, 8, 8)
    sums = np.concatenate([images.sum(2), images.sum(1)], axis=1)[:, None, :]
    return _split({"left": images[:, :, :4], "right": images[:, :, 4:], "sums": sums}, data.target)


def breast_cancer() -> MultimodalDataset:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    train = np.random.default_rng(0).permutation(len(data.target))[:int(0.7 * len(data.target))]  # as _split
    x = (data.data - data.data[train].mean(0)) / data.data[train].std(0)
    x = x[:, None, :]  # (N, 1, 30): 10 means, 10 standard errors, 10 worst values
    return _split({"mean": x[:, :, :10], "error": x[:, :, 10:20], "worst": x[:, :, 20:]}, data.target)


def synthetic_regression() -> MultimodalDataset:
    return make_synthetic(1284, 229, 686, widths={"text": 64, "audio": 5, "vision": 20}, seq_len=20, seed=0)


CASES = {"demo": None, "sklearn-digits": sklearn_digits, "breast-cancer": breast_cancer,
         "synthetic-regression": synthetic_regression}


def train_once(data: Path, out: Path, config: Path | None, threads: int) -> dict:
    cmd = [sys.executable, "-m", "decalign", "train", "--data", str(data), "--out", str(out), "--quiet",
           "--device", "cpu"] + (["--config", str(config)] if config else [])
    env_threads = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**__import__("os").environ, **env_threads,
                                                                    "PYTHONPATH": str(ROOT)}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    card = load_card(out)
    comparison = card_comparison(card)
    return {"seconds": round(time.perf_counter() - start, 1), "epochs_run": card.extra.get("epochs_run"),
            "best_epoch": card.best_epoch, "config": {"model": {k: v for k, v in card.config.to_dict()["model"].items()
                                                                if k in ("d_model", "num_heads", "num_layers",
                                                                         "num_prototypes")},
                                                      "train": {k: v for k, v in card.config.to_dict()["train"].items()
                                                                if k in ("batch_size", "num_epochs", "learning_rate",
                                                                         "early_stop_patience")}},
            "test": {k: v for k, v in card.metrics.get("test", {}).items() if not k.startswith("F1_class_")},
            "baseline_test": {k: v for k, v in card.baseline["metrics"]["test"].items()
                              if not k.startswith("F1_class_")},
            "comparison": comparison}


def run_case(name: str, library: bool, threads: int, folder: Path) -> dict:
    data = ROOT / "assets" / "uci_digits.npz" if CASES[name] is None else folder / f"{name}.npz"
    if CASES[name] is not None:
        save_npz(CASES[name](), data)
    out = {"data": name, "data_driven": train_once(data, folder / f"{name}-data", None, threads)}
    print(_line(name, "data-driven defaults", out["data_driven"]), flush=True)
    if library:
        config = folder / "library.json"
        config.write_text(json.dumps(DecAlignConfig().to_dict()))
        if name != "synthetic-regression":
            config.write_text(json.dumps(DecAlignConfig().override(["train.task_loss=cross_entropy"]).to_dict()))
        out["library_defaults"] = train_once(data, folder / f"{name}-library", config, threads)
        print(_line(name, "library defaults", out["library_defaults"]), flush=True)
    return out


def _line(name: str, which: str, result: dict) -> str:
    c = result["comparison"]
    return (f"{name} ({which}, {result['seconds']} s, {result['epochs_run']} epochs): {c['metric']} "
            f"{c['model']:.3f} vs baseline {c['baseline']:.3f}: DecAlign {c['verdict']} it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated data sets")
    parser.add_argument("--library-defaults", default="demo", help="data sets also trained with the library defaults")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    library = set(filter(None, args.library_defaults.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_case(name, name in library, args.threads, Path(tmp)) for name in args.only.split(",")]
    path = write_result("defaults.json", {"benchmark": "data-driven defaults against the linear baseline",
                                           "machine": machine(), "seconds": round(time.perf_counter() - start, 1),
                                           "cases": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
