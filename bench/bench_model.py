"""Speed and memory of the DecAlign model at MOSI shapes, next to the official reference implementation.

Shapes: text 768, audio 5, vision 20, T = 50, batch 32; the official MOSI config
(``tests/reference/official_model.official_config_dict``); 2 CPU threads. Measures

* ms per training step (forward with alignment, backward, gradient clipping, Adam as the trainer builds
  it) and samples/s, and ms per eval forward of a batch of 32 under ``torch.inference_mode`` (as
  ``decalign.inference`` runs it, the model put in eval mode once before its batches, not before each: since
  stop 50; the official reference's eval forward the same way);
* the same two figures for the official reference (``bench/official_baseline.time_official``) and, with
  ``--before REV``, for this repository at an earlier commit, each in the same alternating rounds, so all
  see the same machine load (the machine is shared: compare ratios within one run);
* where a training step's time goes (forward with and without alignment, loss, backward, clipping,
  Adam) and the
  operators that take the most time in a training step and in an eval forward (``torch.profiler``);
* the training step with ``torch.compile`` (inductor, CPU) of the batched transformers
  (``decalign.model.fusion.encode``, most of the step), its compile time, and the eager step in the same
  rounds;
* the floor the machine sets: the floating-point operations of an eval forward and of a training step
  (``torch.utils.flop_counter`` for the products, the fused attention's from its shapes) over the best rate
  of a large single-precision matrix product on the same threads, i.e. the time if every operation ran at
  that rate (softmax, LayerNorm, dropout and memory traffic not counted: a lower bound);
* peak RSS of a fresh subprocess per phase (3 training epochs of 40 batches; 120 eval forwards), with the
  peak after each epoch, to show that memory does not grow with the number of batches.

Run ``python bench/bench_model.py [--before REV] [--rounds N] [--compile]``; writes bench/results/model.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TREE = Path(os.environ.get("DECALIGN_BENCH_TREE", ROOT))  # --before runs this file on an older checkout
sys.path.insert(0, str(TREE))

from bench.bench_train_epoch import machine, write_result
from bench.official_baseline import median_ms, time_official
from decalign.config import DecAlignConfig
from decalign.model import DecAlign
from decalign.train.losses import total_loss
from decalign.train.trainer import make_optimizer
from tests.reference.official_model import official_config_dict

WIDTHS = {"text": 768, "audio": 5, "vision": 20}
BATCH, T, THREADS, STEPS, WARMUP, ROUNDS = 32, 50, 2, 7, 2, 3
EPOCHS, BATCHES_PER_EPOCH = 3, 40


def official_config() -> DecAlignConfig:
    with warnings.catch_warnings():  # the BERT-only keys of the official file are reported and ignored
        warnings.simplefilter("ignore")
        return DecAlignConfig.from_dict(official_config_dict(use_bert=False))


def make_step(seed: int = 0):
    """(train_step, eval_forward, parts) closures over a fresh model and one synthetic batch."""
    torch.manual_seed(seed)
    config = official_config()
    model = DecAlign(config.model, WIDTHS, 1)
    optimizer = make_optimizer(model, config.train)
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(BATCH, T, w, generator=g) for m, w in WIDTHS.items()}
    labels = torch.empty(BATCH).uniform_(-3, 3, generator=g)

    def train_step(times: dict[str, list[float]] | None = None) -> float:
        clock = _Clock(times)
        model.train()
        out = model(inputs, align=True)
        clock("forward_with_alignment")
        loss, _ = total_loss(out, labels, config.train, "regression")
        clock("loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
        clock("clip")
        optimizer.step()
        clock("adam")
        return loss.item()

    def eval_forward() -> None:
        if model.training:  # once, as an evaluation loop does: the walk over 142 modules took 0.3 ms
            model.eval()
        with torch.inference_mode():
            model(inputs)

    return train_step, eval_forward, (model, inputs)


class _Clock:
    """Appends the ms since the previous call to ``times[name]``; does nothing without ``times``."""

    def __init__(self, times: dict[str, list[float]] | None):
        self.times, self.last = times, time.perf_counter()

    def __call__(self, name: str) -> None:
        if self.times is not None:
            now = time.perf_counter()
            self.times.setdefault(name, []).append((now - self.last) * 1000)
            self.last = now


def time_this_tree() -> dict[str, float]:
    """Median ms of STEPS training steps and eval forwards after WARMUP, for the ``decalign`` on sys.path."""
    torch.set_num_threads(THREADS)
    train_step, eval_forward, _ = make_step()
    return {"train_step_ms": median_ms(train_step, STEPS, WARMUP),
            "eval_forward_ms": median_ms(eval_forward, STEPS, WARMUP)}


def time_tree(tree: Path) -> dict[str, float]:
    """``time_this_tree`` in a subprocess that imports ``decalign`` from another checkout."""
    done = subprocess.run([sys.executable, __file__, "--phase", "time"], capture_output=True, text=True,
                          check=True, cwd=tree, env={**os.environ, "DECALIGN_BENCH_TREE": str(tree)})
    return json.loads(done.stdout.strip().splitlines()[-1])


def timings(before: Path | None, count: int = ROUNDS) -> dict[str, dict]:
    """Medians over ``count`` rounds that alternate ours, the official reference and (optionally) an older
    commit, so that all see the same machine load; each round times STEPS steps after WARMUP. Against an
    older commit ours runs in a fresh process too: a process's own state (its allocations so far, where
    its memory landed) moved a step by 10-15% between processes on this machine, so both sides get it."""
    names = ["decalign_studio", "official_reference"] + (["before"] if before else [])
    rounds = {name: {"train_step_ms": [], "eval_forward_ms": []} for name in names}
    for _ in range(count):
        for name in names:
            if name == "decalign_studio":
                figures = time_tree(TREE) if before else time_this_tree()
            elif name == "before":
                figures = time_tree(before)
            else:
                t = time_official(batch=BATCH, T=T, threads=THREADS, steps=STEPS, warmup=WARMUP)
                figures = {"train_step_ms": t.train_step_ms, "eval_forward_ms": t.eval_forward_ms}
            for key, value in figures.items():
                rounds[name][key].append(value)
    return {name: summarise(timing) for name, timing in rounds.items()}


def summarise(timing: dict[str, list[float]]) -> dict:
    """Median and best (least disturbed) round of each figure; on a shared machine the best round is
    the better estimate of the code's own speed, the median shows what the load did."""
    row = {}
    for key in ("train_step_ms", "eval_forward_ms"):
        values = timing[key]
        row.update({key: statistics.median(values), f"{key}_best_round": min(values), f"{key}_per_round": values})
    row["train_samples_per_second"] = BATCH * 1000 / row["train_step_ms"]
    row["eval_samples_per_second"] = BATCH * 1000 / row["eval_forward_ms"]
    row["train_samples_per_second_best_round"] = BATCH * 1000 / row["train_step_ms_best_round"]
    return row


def breakdown(steps: int = 2 * STEPS) -> dict:
    """Median ms of each part of a training step, and the operators that take the most time."""
    torch.set_num_threads(THREADS)
    train_step, eval_forward, (model, inputs) = make_step()
    for _ in range(WARMUP):
        train_step()
        eval_forward()
    times: dict[str, list[float]] = {}
    for _ in range(steps):
        train_step(times)
        clock = _Clock(times)
        model.train()
        model(inputs, align=False)  # the alignment's share is the difference
        clock("forward_without_alignment")
    parts = {name: round(statistics.median(values), 2) for name, values in times.items()}
    return {"train_step_parts_ms": parts, "train_step_top_ops": top_ops(train_step),
            "eval_forward_top_ops": top_ops(eval_forward)}


def top_ops(fn, calls: int = 5, rows: int = 12) -> list[dict]:
    """The operators with the most self CPU time over ``calls`` calls of ``fn`` (torch.profiler)."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(calls):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "self_ms_per_call": round(e.self_cpu_time_total / 1000 / calls, 2),
             "share": round(e.self_cpu_time_total / total, 3), "count_per_call": e.count // calls}
            for e in events[:rows]]


def flop_floor(peak_rounds: int = 10, size: int = 2048) -> dict:
    """GFLOP of an eval forward and of a training step, and the ms they would take at the best rate of a
    ``size``-cubed float32 matrix product on THREADS threads (best of ``peak_rounds``)."""
    from torch.utils.flop_counter import FlopCounterMode

    from decalign.model import fusion, native

    torch.set_num_threads(THREADS)
    train_step, eval_forward, _ = make_step()
    train_step()
    eval_forward()
    attention_flop = [0]
    fused = fusion.attention

    def counted(qt, kt, vt, *args, **kwargs):  # qt (M, B, h, hd, Tq), kt (M, B, h, hd, Tk): QK^T and PV
        if native.applies(qt, kt, vt):  # torch's path runs bmm, which the counter sees itself
            attention_flop[0] += 4 * qt.numel() * kt.shape[-1]
        return fused(qt, kt, vt, *args, **kwargs)

    flop = {}
    fusion.attention = counted
    products_apply = native.products_apply
    native.products_apply = lambda *tensors: False  # the same products on torch's bmm, which the counter sees
    try:
        for name, step, backward_factor in (("eval_forward", eval_forward, 1), ("train_step", train_step, 3)):
            attention_flop[0] = 0
            with FlopCounterMode(display=False) as counter:
                step()
            # the fused attention's backward takes four products (dV, dP, dQ, dK) to the forward's two
            flop[name] = counter.get_total_flops() + backward_factor * attention_flop[0]
    finally:
        fusion.attention = fused
        native.products_apply = products_apply
    peak = _best_gflops(size, peak_rounds)
    return {"sgemm_gflops_best": round(peak, 1), "sgemm_size": size,
            **{name: {"gflop": round(value / 1e9, 3), "ms_at_best_sgemm_rate": round(value / 1e6 / peak, 1)}
               for name, value in flop.items()}}


def _best_gflops(size: int, rounds: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(rounds))
    return 2 * size**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compiled_transformers(rounds: int = ROUNDS) -> dict:
    """Training step with the transformers compiled by ``torch.compile`` (inductor) against eager, in
    alternating rounds, and the first (compiling) step's time. The product runs them eagerly: this is
    the measurement behind that choice."""
    import decalign.model.decalign as model_module

    torch.set_num_threads(THREADS)
    eager = model_module.encode
    compiled = torch.compile(eager, dynamic=False)
    train_step, eval_forward, _ = make_step()
    train_step()
    eval_forward()
    model_module.encode = compiled
    try:
        start = time.perf_counter()
        train_step()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        eval_forward()
        compile_eval_s = time.perf_counter() - start
        times = {f"{kind}_ms_{name}": [] for kind in ("train_step", "eval_forward") for name in ("eager", "compiled")}
        for _ in range(rounds):
            for name, encode in (("eager", eager), ("compiled", compiled)):
                model_module.encode = encode
                times[f"train_step_ms_{name}"].append(median_ms(train_step, STEPS, WARMUP))
                times[f"eval_forward_ms_{name}"].append(median_ms(eval_forward, STEPS, WARMUP))
    finally:
        model_module.encode = eager
    return {"first_step_with_compile_s": round(compile_s, 1), "first_eval_with_compile_s": round(compile_eval_s, 1),
            **{key: round(statistics.median(v), 1) for key, v in times.items()},
            **{f"{key}_per_round": [round(x, 1) for x in v] for key, v in times.items()}}


def phase(name: str) -> dict:
    """Run inside a fresh subprocess: peak RSS (MiB) after each epoch of one phase."""
    torch.set_num_threads(THREADS)
    train_step, eval_forward, _ = make_step()
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


def run_phase(name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--phase", name], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkout(rev: str, into: Path) -> Path:
    """This repository's files at ``rev`` (git archive), for --before."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("train", "eval", "time"), help=argparse.SUPPRESS)
    parser.add_argument("--before", metavar="REV", help="also time this repository at an earlier commit")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="alternating timing rounds (default 3)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the step with torch.compile of the transformers (about a minute more)")
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(time_this_tree() if args.phase == "time" else phase(args.phase)))
        return {}
    memory = {"train": run_phase("train"), "eval": run_phase("eval"), "epochs": EPOCHS,
              "batches_per_epoch": BATCHES_PER_EPOCH}  # first, while this process is small
    with tempfile.TemporaryDirectory() as tmp:
        rows = timings(checkout(args.before, Path(tmp)) if args.before else None, args.rounds)
    result = {
        "benchmark": f"DecAlign at MOSI shapes, official MOSI config; median over {args.rounds} alternating rounds "
                     f"of the median of {STEPS} steps after {WARMUP} warm-up",
        "shapes": {"batch": BATCH, "T": T, "widths": WIDTHS},
        **rows,
        "ratio_official_over_ours": ratios(rows["decalign_studio"], rows["official_reference"]),
        "breakdown": breakdown(),
        "flop_floor": flop_floor(),
        "torch_compile": compiled_transformers() if args.compile else "not run (--compile)",
        "memory": memory,
        "machine": {**machine(), "torch_threads": THREADS},
    }
    if args.before:
        result["before_commit"] = args.before
        result["ratio_before_over_ours"] = ratios(rows["decalign_studio"], rows["before"])
    print_summary(result)
    print(f"wrote {write_result('model.json', result)}")
    return result


def ratios(ours: dict, other: dict) -> dict[str, float]:
    """Other time / our time (above 1: ours is faster), for the median and the best round."""
    return {f"{key}{kind}": other[f"{key}_ms{kind}"] / ours[f"{key}_ms{kind}"]
            for key in ("train_step", "eval_forward") for kind in ("", "_best_round")}


def print_summary(r: dict) -> None:
    names = [n for n in ("decalign_studio", "official_reference", "before") if n in r]
    print(f"{'':32}" + "".join(f"{n[:12]:>14}" for n in names))
    for key, label in (("train_step_ms", "train step (ms)"), ("eval_forward_ms", "eval forward of 32 (ms)")):
        for kind, suffix in (("", ", median"), ("_best_round", ", best round")):
            print(f"{label + suffix:32}" + "".join(f"{r[n][key + kind]:14.1f}" for n in names))
    print("train step parts (ms): " + ", ".join(f"{k} {v}" for k, v in r["breakdown"]["train_step_parts_ms"].items()))
    f = r["flop_floor"]
    print(f"floor at the best sgemm rate ({f['sgemm_gflops_best']} GFLOP/s): " + "; ".join(
        f"{name.replace('_', ' ')} {f[name]['gflop']} GFLOP = {f[name]['ms_at_best_sgemm_rate']} ms"
        for name in ("train_step", "eval_forward")))
    if isinstance(r["torch_compile"], dict):
        c = r["torch_compile"]
        print(f"torch.compile of the transformers: step {c['train_step_ms_compiled']} ms against eager "
              f"{c['train_step_ms_eager']} ms; eval {c['eval_forward_ms_compiled']} ms against eager "
              f"{c['eval_forward_ms_eager']} ms; first step with compiling {c['first_step_with_compile_s']} s")
    for name in ("train", "eval"):
        peaks = r["memory"][name]["peak_rss_mib_after_epoch"]
        print(f"peak RSS, {name} ({r['memory']['epochs']} x {r['memory']['batches_per_epoch']} batches): "
              + " -> ".join(f"{p:.0f}" for p in peaks) + " MiB")


if __name__ == "__main__":
    main()
