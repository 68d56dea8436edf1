"""Speed baseline: the reference re-implementation of the official DecAlign on the CPU.

Times one training step (forward, all losses, backward, gradient clipping at 0.6, Adam with
lr 2e-4 and weight decay 0.005: the official MOSI settings) and one no-grad forward in eval mode,
on synthetic MOSI-shaped inputs (text 768, audio 5, vision 20, 50 aligned steps).

Run ``python bench/official_baseline.py [--batch 32] [--threads 2] ...``; import
``time_official`` to compare against our model in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

# ``python bench/official_baseline.py`` puts bench/ first on sys.path; the oracle lives in tests/.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.reference.official_model import (
    OfficialDecAlign,
    official_config_dict,
    official_total_loss,
)


class BaselineTiming(NamedTuple):
    """Median milliseconds per training step and per eval forward, with the run's settings."""

    train_step_ms: float
    eval_forward_ms: float
    batch: int
    seq_len: int
    threads: int
    steps: int


def _synthetic_batch(batch: int, seq_len: int, widths: tuple[int, int, int], seed: int):
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(batch, seq_len, w, generator=g) for w in widths]
    labels = torch.empty(batch).uniform_(-3.0, 3.0, generator=g)  # MOSI sentiment range
    return inputs, labels


def median_ms(fn, steps: int, warmup: int) -> float:
    """Median wall time of ``fn`` in ms over ``steps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def time_official(
    batch: int = 32,
    T: int = 50,
    widths: tuple[int, int, int] = (768, 5, 20),
    threads: int = 2,
    steps: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> BaselineTiming:
    """Time the official model's training step and eval forward.

    Parameters
    ----------
    batch, T, widths : synthetic input shape, (batch, T, width) per modality (text, audio, vision).
    threads : ``torch.set_num_threads`` value for the measurement (restored afterwards).
    steps, warmup : timed and untimed repetitions of each measurement; the median is reported.

    Returns
    -------
    BaselineTiming
        ``train_step_ms`` (forward + losses + backward + clip + Adam step) and ``eval_forward_ms``
        (``model.eval()`` under ``torch.no_grad()``), both medians in milliseconds.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        cfg = official_config_dict(use_bert=False)
        model = OfficialDecAlign(cfg, feature_dims=widths, output_dim=1)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["learning_rate"],
                                     weight_decay=cfg["weight_decay"])
        inputs, labels = _synthetic_batch(batch, T, widths, seed)

        def train_step() -> None:
            model.train()
            optimizer.zero_grad()
            loss = official_total_loss(model(*inputs), labels, cfg)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
            optimizer.step()

        def eval_forward() -> None:
            if model.training:  # once, as an evaluation loop does (bench_model's eval forward: the same rule)
                model.eval()
            with torch.no_grad():
                model(*inputs)

        train_ms = median_ms(train_step, steps, warmup)
        eval_ms = median_ms(eval_forward, steps, warmup)
    finally:
        torch.set_num_threads(previous_threads)
    return BaselineTiming(train_ms, eval_ms, batch, T, threads, steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    t = time_official(batch=args.batch, T=args.seq_len, threads=args.threads, steps=args.steps,
                      warmup=args.warmup)
    print(f"official DecAlign reference, torch {torch.__version__}, batch {t.batch}, T {t.seq_len}, "
          f"{t.threads} threads, median of {t.steps} steps")
    print(f"  train step (fwd+bwd+clip+Adam): {t.train_step_ms:8.2f} ms")
    print(f"  eval forward (no grad):         {t.eval_forward_ms:8.2f} ms")


if __name__ == "__main__":
    main()
