"""Speed and memory of the DecAlign model at MOSI shapes, next to the official reference implementation.

Shapes: text 768, audio 5, vision 20, T = 50, batch 32; the official MOSI config
(``tests/reference/official_model.official_config_dict``); 2 CPU threads. Measures

* ms per training step (forward with alignment, backward, gradient clipping, Adam) and samples/s;
* ms per no-grad eval forward of a batch of 32;
* the same two figures for the official reference (``bench/official_baseline.time_official``);
* peak RSS of a fresh subprocess per phase (3 training epochs of 40 batches; 120 eval forwards), with the
  peak after each epoch, to show that memory does not grow with the number of batches.

Run ``python bench/bench_model.py``; writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_train_epoch import machine, write_result
from bench.official_baseline import median_ms, time_official
from decalign.config import DecAlignConfig
from decalign.model import DecAlign
from decalign.train.losses import total_loss
from tests.reference.official_model import official_config_dict

WIDTHS = {"text": 768, "audio": 5, "vision": 20}
BATCH, T, THREADS, STEPS, WARMUP, ROUNDS = 32, 50, 2, 7, 2, 3
EPOCHS, BATCHES_PER_EPOCH = 3, 40


def official_config() -> DecAlignConfig:
    with warnings.catch_warnings():  # the BERT-only keys of the official file are reported and ignored
        warnings.simplefilter("ignore")
        return DecAlignConfig.from_dict(official_config_dict(use_bert=False))


def make_step(seed: int = 0):
    """(train_step, eval_forward) closures over a fresh model and one synthetic batch."""
    torch.manual_seed(seed)
    config = official_config()
    model = DecAlign(config.model, WIDTHS, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate,
                                 weight_decay=config.train.weight_decay)
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(BATCH, T, w, generator=g) for m, w in WIDTHS.items()}
    labels = torch.empty(BATCH).uniform_(-3, 3, generator=g)

    def train_step() -> float:
        model.train()
        out = model(inputs, align=True)
        loss, _ = total_loss(out, labels, config.train, "regression")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
        optimizer.step()
        return loss.item()

    def eval_forward() -> None:
        model.eval()
        with torch.no_grad():
            model(inputs)

    return train_step, eval_forward


def phase(name: str) -> dict:
    """Run inside a fresh subprocess: peak RSS (MiB) after each epoch of one phase."""
    torch.set_num_threads(THREADS)
    train_step, eval_forward = make_step()
    fn = train_step if name == "train" else eval_forward
    peaks = []
    for _ in range(EPOCHS):
        for _ in range(BATCHES_PER_EPOCH):
            fn()
        peaks.append(peak_rss_mib())
    return {"phase": name, "peak_rss_mib_after_epoch": peaks}


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM): unlike ru_maxrss it does not carry the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def timings() -> tuple[dict, dict]:
    """Medians over ROUNDS rounds that alternate ours and the official reference, so that both see the
    same machine load; each round times STEPS steps after WARMUP."""
    train_step, eval_forward = make_step()
    ours, official = {"train_step_ms": [], "eval_forward_ms": []}, {"train_step_ms": [], "eval_forward_ms": []}
    for _ in range(ROUNDS):
        torch.set_num_threads(THREADS)
        ours["train_step_ms"].append(median_ms(train_step, STEPS, WARMUP))
        ours["eval_forward_ms"].append(median_ms(eval_forward, STEPS, WARMUP))
        t = time_official(batch=BATCH, T=T, threads=THREADS, steps=STEPS, warmup=WARMUP)
        official["train_step_ms"].append(t.train_step_ms)
        official["eval_forward_ms"].append(t.eval_forward_ms)
    return summarise(ours), summarise(official)


def summarise(timing: dict[str, list[float]]) -> dict:
    """Median and best (least disturbed) round of each figure; on a shared machine the best round is
    the better estimate of the code's own speed, the median shows what the load did."""
    row = {}
    for key in ("train_step_ms", "eval_forward_ms"):
        values = timing[f"{key}_per_round"] if f"{key}_per_round" in timing else timing[key]
        row.update({key: statistics.median(values), f"{key}_best_round": min(values), f"{key}_per_round": values})
    row["train_samples_per_second"] = BATCH * 1000 / row["train_step_ms"]
    row["eval_samples_per_second"] = BATCH * 1000 / row["eval_forward_ms"]
    row["train_samples_per_second_best_round"] = BATCH * 1000 / row["train_step_ms_best_round"]
    return row


def run_phase(name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--phase", name], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("train", "eval"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args.phase)))
        return {}
    memory = {"train": run_phase("train"), "eval": run_phase("eval"), "epochs": EPOCHS,
              "batches_per_epoch": BATCHES_PER_EPOCH}  # first, while this process is small
    ours, official = timings()
    result = {
        "benchmark": f"DecAlign at MOSI shapes, official MOSI config; median over {ROUNDS} alternating rounds "
                     f"of the median of {STEPS} steps after {WARMUP} warm-up",
        "shapes": {"batch": BATCH, "T": T, "widths": WIDTHS},
        "decalign_studio": ours, "official_reference": official,
        "ratio_official_over_ours": ratios(ours, official),
        "memory": memory,
        "machine": {**machine(), "torch_threads": THREADS},
    }
    print_summary(result)
    print(f"wrote {write_result('model.json', result)}")
    return result


def ratios(ours: dict, official: dict) -> dict[str, float]:
    """Official time / our time (above 1: ours is faster), for the median and the best round."""
    return {f"{key}{kind}": official[f"{key}_ms{kind}"] / ours[f"{key}_ms{kind}"]
            for key in ("train_step", "eval_forward") for kind in ("", "_best_round")}


def print_summary(r: dict) -> None:
    ours, off = r["decalign_studio"], r["official_reference"]
    print(f"{'':32}{'ours':>10}{'official':>10}")
    for key, label in (("train_step_ms", "train step (ms)"), ("eval_forward_ms", "eval forward of 32 (ms)")):
        print(f"{label + ', median':32}{ours[key]:10.1f}{off[key]:10.1f}")
        print(f"{label + ', best round':32}{ours[key + '_best_round']:10.1f}{off[key + '_best_round']:10.1f}")
    for name in ("train", "eval"):
        peaks = r["memory"][name]["peak_rss_mib_after_epoch"]
        print(f"peak RSS, {name} ({r['memory']['epochs']} x {r['memory']['batches_per_epoch']} batches): "
              + " -> ".join(f"{p:.0f}" for p in peaks) + " MiB")


if __name__ == "__main__":
    main()
