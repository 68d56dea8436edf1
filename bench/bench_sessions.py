"""Two dashboard sessions computing at the same moment in one server process.

Each session's script run is a thread of the one server process, so the other processes' CPU time
(``decalign.cpu_share``'s measure) cannot see it. Here two threads, each inside
``cpu_share.script_run`` as the dashboard runs a page, run inference on 1,000 MOSI-shaped samples at once
(the official MOSI config, random weights; 2 cores): with the rule (each computing run takes its part of the
free cores, and takes it again between chunks) and without it (each run takes every free core, as before
stop 48),
in alternating rounds; and one run alone. Figures: seconds until both are done.

Run ``python bench/bench_sessions.py [--rounds N]``; writes bench/results/sessions.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_model import WIDTHS, official_config
from bench.bench_train_epoch import machine, write_result
from decalign import cpu_share
from decalign.data import make_synthetic
from decalign.inference import run_inference
from decalign.model import DecAlign

SAMPLES = 1000


def _session(model: DecAlign, split, seconds: list[float], slot: int) -> None:
    start = time.perf_counter()
    with cpu_share.script_run(False):
        run_inference(model, split, task="regression")
    seconds[slot] = time.perf_counter() - start


def both_done_s(model: DecAlign, splits: list, shared: bool) -> float:
    """Seconds until two sessions started together are both done; ``shared``: the rule for runs at once."""
    counted = cpu_share.computing_runs
    if not shared:  # as before the rule: every run sees itself alone
        cpu_share.computing_runs = lambda: 1
    try:
        seconds = [0.0, 0.0]
        threads = [threading.Thread(target=_session, args=(model, split, seconds, i)) for i, split in enumerate(splits)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return max(seconds)
    finally:
        cpu_share.computing_runs = counted


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    args = parser.parse_args(argv)
    model = DecAlign(official_config().model, WIDTHS, 1).eval()
    splits = [make_synthetic(0, 0, SAMPLES, widths=WIDTHS, seq_len=50, seed=seed).splits["test"] for seed in (2, 3)]
    alone = [0.0]
    for _ in range(2):  # the first warms the kernels up
        _session(model, splits[0], alone, 0)
    times: dict[str, list[float]] = {"shared": [], "each_takes_every_free_core": []}
    for _ in range(args.rounds):
        for name, seconds in times.items():
            seconds.append(both_done_s(model, splits, name == "shared"))
    shared, unshared = (statistics.median(times[k]) for k in times)
    result = {"samples_per_session": SAMPLES, "one_session_alone_s": round(alone[0], 3),
              "two_at_once_both_done_s": {k: {"median": round(statistics.median(v), 3),
                                              "rounds": [round(x, 3) for x in v]} for k, v in times.items()},
              "rule_faster_in_rounds": sum(a < b for a, b in zip(*times.values())),
              "rounds": args.rounds, "speedup": round(unshared / shared, 3), "machine": machine()}
    path = write_result("sessions.json", result)
    print(f"one session alone {alone[0]:.3f} s; two at once, both done after: shared {shared:.3f} s, each on every "
          f"free core {unshared:.3f} s (median of {args.rounds}; the rule faster in {result['rule_faster_in_rounds']})")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
