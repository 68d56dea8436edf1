"""Parsing an uploaded data file in the sandbox, as the dashboard does: the upload's bytes to a dataset.

Two MOSI-shaped uploads: an npz of 1,000 samples (151 MB, stored members, as ``save_npz(compress=False)``
and ``np.savez`` write them) and an MMSA pickle of 1,284 + 229 + 686 samples (349 MB, as MMSA writes it).
Each round runs a fresh process that keeps a spare parser child (``sandbox.keep_spare``, as the dashboard
does) and parses the upload 5 times, 1 s apart: the median of those, the child's peak resident memory and
how many bytes of arrays came back from the parent's copy of the upload instead of being written again
(``SandboxReport.in_place_bytes``). With ``--before REV`` every round also runs that commit's code, in
alternating order.

Run ``python bench/bench_parse.py [--rounds N] [--before REV]``; writes bench/results/parse.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARSES = 5
# One round in a fresh process: PYTHONPATH picks the code; prints the median seconds, the child's peak and the
# bytes handed back in place (0 where the code does not report them).
_ROUND = """
import json, statistics, sys, time
from decalign import sandbox
from decalign.data import load_dataset_bytes
data, name = open(sys.argv[1], "rb").read(), sys.argv[2]
reports, collect = [], sandbox._collect
def keep(*args):
    value, report = collect(*args)
    reports.append(report)
    return value, report
sandbox._collect = keep
sandbox.keep_spare(True)
seconds = []
for _ in range(int(sys.argv[3])):
    time.sleep(1.0)  # the spare's start is paid while nothing waits, as between a user's uploads
    start = time.perf_counter()
    dataset = load_dataset_bytes(data, name)
    seconds.append(time.perf_counter() - start)
    del dataset
print(json.dumps({"s": statistics.median(seconds), "child_peak": max(r.peak_rss_bytes or 0 for r in reports),
                  "in_place": getattr(reports[-1], "in_place_bytes", 0)}))
"""
MIB = 1 << 20


def write_uploads(folder: Path) -> dict[str, Path]:
    from bench.bench_model import WIDTHS
    from decalign.data import make_synthetic, save_npz, write_mmsa_pickle

    npz = folder / "mosi_1000.npz"
    save_npz(make_synthetic(0, 0, 1000, widths=WIDTHS, seq_len=50, seed=3), npz, compress=False)
    pickle = folder / "mosi.pkl"
    write_mmsa_pickle(make_synthetic(1284, 229, 686, widths=WIDTHS, seq_len=50, seed=0), pickle)
    return {"npz": npz, "pkl": pickle}


def one_round(code: Path, upload: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _ROUND, str(upload), upload.name, str(PARSES)], check=True,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(rows: list[dict]) -> dict:
    return {"median_s": round(statistics.median(r["s"] for r in rows), 3),
            "rounds_s": [round(r["s"], 3) for r in rows],
            "child_peak_mib": round(max(r["child_peak"] for r in rows) / MIB, 1),
            "in_place_mib": round(rows[-1]["in_place"] / MIB, 1)}


def main(argv: list[str] | None = None) -> dict:
    from bench.bench_model import checkout
    from bench.bench_train_epoch import machine, write_result

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds, each a fresh process (default 4)")
    parser.add_argument("--before", metavar="REV", help="also time this repository at an earlier commit")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        uploads = write_uploads(Path(tmp))
        trees = {"this": ROOT}
        if args.before:
            (Path(tmp) / "before").mkdir()
            trees["before"] = checkout(args.before, Path(tmp) / "before")
        rows = {kind: {tree: [] for tree in trees} for kind in uploads}
        for turn in range(args.rounds):
            for kind, upload in uploads.items():
                for tree in (list(trees) if turn % 2 == 0 else list(trees)[::-1]):
                    rows[kind][tree].append(one_round(trees[tree], upload))
        sizes = {kind: round(path.stat().st_size / 1e6, 1) for kind, path in uploads.items()}
    result = {"benchmark": f"an upload parsed in the sandbox with a spare child: median of {PARSES} parses a "
                           "round, each round a fresh process", "before": args.before,
              "uploads": {kind: {"file_mb": sizes[kind], **{tree: summary(r) for tree, r in rows[kind].items()}}
                          for kind in uploads},
              "machine": machine()}
    for kind, figures in result["uploads"].items():
        line = ", ".join(f"{tree} {f['median_s']:.3f} s (child peak {f['child_peak_mib']} MiB, in place "
                         f"{f['in_place_mib']} MiB)" for tree, f in figures.items() if tree in trees)
        print(f"{kind} ({figures['file_mb']} MB): {line}")
    print(f"wrote {write_result('parse.json', result)}")
    return result


if __name__ == "__main__":
    main()
