"""The official DecAlign trainer's work, re-implemented for timing: read the MMSA pickle, train, evaluate.

What the official ``run.py`` + ``data_loader.py`` + ``trains/ATIO.py`` do on the CPU, with this
repository's re-implementation of the official model (``tests/reference/official_model.py``): each split's
dataset object reads the whole pickle (three reads, as ``MMDataset`` does) and keeps float32 copies of
its arrays; every epoch trains over shuffled batches of 32 (forward, loss, backward, clip, Adam) and
evaluates the validation split; after the last epoch the test split is evaluated.

Run ``python bench/official_trainer.py DATA.pkl [--epochs 2] [--threads 2]``; it prints one JSON line
with the wall time of each phase. ``bench/bench_train_epoch.py`` runs it beside ``decalign train``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.reference.official_model import OfficialDecAlign, official_config_dict, official_total_loss


def read_split(path: Path, split: str) -> dict[str, np.ndarray]:
    """One split as the official ``MMDataset`` keeps it (it reads the whole pickle for every split).

    The file is the benchmark's own synthetic pickle, written a moment before: nothing untrusted.
    """
    with open(path, "rb") as handle:
        data = pickle.load(handle)  # our own benchmark file, read as the official loader reads it
    part = data[split]
    return {"text": part["text"].astype(np.float32), "audio": part["audio"].astype(np.float32),
            "vision": part["vision"].astype(np.float32),
            "labels": np.asarray(part["regression_labels"]).astype(np.float32)}


def batches(split: dict[str, np.ndarray], batch: int, shuffle: bool, rng: np.random.Generator):
    n = len(split["labels"])
    order = rng.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch):
        rows = order[start:start + batch]
        yield [torch.from_numpy(split[k][rows]) for k in ("text", "audio", "vision", "labels")]


def evaluate(model: OfficialDecAlign, split: dict[str, np.ndarray], cfg: dict) -> float:
    model.eval()
    errors = []
    with torch.no_grad():
        for text, audio, vision, labels in batches(split, cfg["batch_size"], False, np.random.default_rng(0)):
            errors.append((model(text, audio, vision)["output_logit"][:, 0] - labels).abs())
    return float(torch.cat(errors).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    splits = {name: read_split(args.data, name) for name in ("train", "valid", "test")}
    read_s = time.perf_counter() - start
    torch.manual_seed(0)
    cfg = official_config_dict(use_bert=False)
    widths = tuple(splits["train"][m].shape[2] for m in ("text", "audio", "vision"))
    model = OfficialDecAlign(cfg, feature_dims=widths, output_dim=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"], weight_decay=cfg["weight_decay"])
    rng = np.random.default_rng(0)
    epochs = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        for text, audio, vision, labels in batches(splits["train"], cfg["batch_size"], True, rng):
            optimizer.zero_grad()
            official_total_loss(model(text, audio, vision), labels, cfg).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()
        train_s = time.perf_counter() - t0
        evaluate(model, splits["valid"], cfg)
        epochs.append({"train_s": train_s, "with_valid_s": time.perf_counter() - t0})
    t0 = time.perf_counter()
    evaluate(model, splits["test"], cfg)
    result = {"read_s": read_s, "epochs": epochs, "test_s": time.perf_counter() - t0,
              "total_s": time.perf_counter() - start}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
