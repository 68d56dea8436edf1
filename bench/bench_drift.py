"""Calibration of the drift verdict and of the flags, on the bundled demo and on MOSI-shaped synthetic data.

For each data set the model's pooled unique and common features of held-out samples are computed once:

* demo: the bundled demo model on the demo's validation and test splits (300 + 300 digits);
* MOSI-shaped: DecAlign trained for 5 epochs (settings chosen from the data) on i.i.d. synthetic data
  shaped like CMU-MOSI (text 768, audio 5, vision 20, T = 50; 400 training, 229 validation and 686 test
  samples); its run folder's reference holds the validation features, as every trained run's does.

False alarms: the held-out samples are pooled and split at random, ``R`` times, into a reference of the
validation split's size and a current batch of the test split's size: i.i.d. by construction, so every
"drifted" verdict is a false alarm (goal: at most 5%). Power: the current batch's features are moved by c
reference standard deviations per feature (every modality, or only the first), for growing c; the smallest c
detected in at least 90% of ``R_POWER`` repetitions is reported. Flags: the share of the test split flagged
with thresholds calibrated on the validation split (about 1% per unusual-input flag by design).

Run ``python bench/bench_drift.py [--resamples 200] [--power-resamples 40]``; writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch
from bench_train_epoch import RESULTS, machine, write_result

from decalign.audit.drift import drift_test
from decalign.audit.flags import compute_flags, flag_columns
from decalign.checkpoint import load_model
from decalign.data import load_dataset, make_synthetic
from decalign.defaults import data_defaults
from decalign.inference import run_inference
from decalign.train import train
from decalign.train.reference import HeldOut, load_reference, with_held_out

SHIFTS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


def demo_case():
    model, card = load_model(ROOT / "assets" / "demo_model")
    data = load_dataset(ROOT / "assets" / "uci_digits.npz")
    reference = with_held_out(load_reference(ROOT / "assets" / "demo_model"), model, card, data.splits["valid"],
                              "valid")
    return "demo (UCI digits, bundled model)", model, card, data, reference


def mosi_case():
    data = make_synthetic(400, 229, 686, seq_len=50, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        train(data, data_defaults(data).override(["train.num_epochs=5"]), tmp)
        model, card = load_model(tmp)
        reference = load_reference(tmp)
    return "MOSI-shaped synthetic (DecAlign trained 5 epochs)", model, card, data, reference


def features(model, card, split) -> dict[str, dict[str, np.ndarray]]:
    result = run_inference(model, split, task=card.task)
    return {"unique": result.unique_pooled, "common": result.common_pooled}


def join(a, b):
    return {s: {m: np.concatenate([a[s][m], b[s][m]]) for m in a[s]} for s in a}


def take(feats, rows, shift=0.0, sd=None, only=None):
    out = {}
    for space, per_mod in feats.items():
        out[space] = {m: x[rows] + (shift * sd[space][m] if sd is not None and (only is None or m == only) else 0.0)
                      for m, x in per_mod.items()}
    return out


def held(feats, rows) -> HeldOut:
    return HeldOut(take(feats, rows)["unique"], take(feats, rows)["common"], np.arange(len(rows)).astype(str),
                   "resample", len(rows))


def calibrate(feats, n_ref: int, resamples: int, seed: int) -> dict:
    n = len(next(iter(feats["unique"].values())))
    alarms, p_values, seconds = 0, [], []
    for r in range(resamples):
        order = np.random.default_rng(seed + r).permutation(n)
        start = time.perf_counter()
        report = drift_test(take(feats, order[n_ref:]), held(feats, order[:n_ref]), seed=r)
        seconds.append(time.perf_counter() - start)
        alarms += report.drifted
        p_values += report.tests["p_value"].tolist()
    rate = alarms / resamples
    half_width = 1.96 * np.sqrt(max(rate * (1 - rate), 1e-12) / resamples)
    return {"resamples": resamples, "false_alarms": alarms, "false_alarm_rate": rate,
            "rate_95ci": [max(rate - half_width, 0.0), min(rate + half_width, 1.0)],
            "raw_p_below_0.05": float(np.mean(np.asarray(p_values) < 0.05)),
            "median_seconds_per_test": float(np.median(seconds))}


def power(feats, n_ref: int, resamples: int, seed: int, only: str | None) -> dict:
    n = len(next(iter(feats["unique"].values())))
    curve = {}
    for c in SHIFTS:
        hits, effects = 0, []
        for r in range(resamples):
            order = np.random.default_rng(seed + 10_000 + r).permutation(n)
            ref = order[:n_ref]
            sd = {s: {m: x[ref].std(0, ddof=1) for m, x in per.items()} for s, per in feats.items()}
            report = drift_test(take(feats, order[n_ref:], c, sd, only), held(feats, ref), seed=r)
            hits += report.drifted
            effects.append(report.modalities.set_index("modality")["effect"].max())
        curve[str(c)] = {"power": hits / resamples, "median_effect_reported": float(np.median(effects))}
    detected = [c for c in SHIFTS if curve[str(c)]["power"] >= 0.9]
    return {"resamples": resamples, "shifted": only or "every modality", "curve": curve,
            "smallest_shift_at_90pct_power": detected[0] if detected else None}


def flag_shares(model, card, data, reference) -> dict:
    result = run_inference(model, data.splits["test"], task=card.task, prototypes=reference.prototypes)
    flags = compute_flags(result, reference, card)
    return {"samples": len(result), "thresholds_from": reference.thresholds_from,
            **{c: float(flags[c].mean()) for c in flag_columns(flags)}, "any_flag": float(flags["any_flag"].mean())}


def run_case(case, args) -> dict:
    name, model, card, data, reference = case
    valid, test = features(model, card, data.splits["valid"]), features(model, card, data.splits["test"])
    actual = drift_test(test, reference.held_out)
    pooled, n_ref = join(valid, test), len(data.splits["valid"])
    first = next(iter(data.widths))
    out = {"data": name, "reference_samples": n_ref, "current_samples": len(data.splits["test"]),
           "test_split_against_validation": {"drifted": actual.drifted,
                                             "p_corrected": actual.tests["p_corrected"].round(4).tolist(),
                                             "effect": actual.tests["effect"].round(4).tolist()},
           "false_alarms": calibrate(pooled, n_ref, args.resamples, 0),
           "power_every_modality": power(pooled, n_ref, args.power_resamples, 0, None),
           "power_one_modality": power(pooled, n_ref, args.power_resamples, 0, first),
           "flags_on_test_split": flag_shares(model, card, data, reference)}
    print(summary_line(out))
    return out


def summary_line(out: dict) -> str:
    fa = out["false_alarms"]
    return (f"{out['data']}: false alarms {fa['false_alarms']}/{fa['resamples']} = {fa['false_alarm_rate']:.1%} "
            f"(95% CI {fa['rate_95ci'][0]:.1%}-{fa['rate_95ci'][1]:.1%}); smallest shift at 90% power "
            f"{out['power_every_modality']['smallest_shift_at_90pct_power']} SD (every modality), "
            f"{out['power_one_modality']['smallest_shift_at_90pct_power']} SD (one modality); flagged on the test "
            f"split {out['flags_on_test_split']['any_flag']:.1%}; test vs validation drifted: "
            f"{out['test_split_against_validation']['drifted']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=200, help="i.i.d. splits per data set (default 200)")
    parser.add_argument("--power-resamples", type=int, default=40, help="repetitions per shift (default 40)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="demo,mosi", help="cases to (re)run; the others keep their last results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    builders = {"demo": demo_case, "mosi": mosi_case}
    previous = RESULTS / "drift.json"
    kept = json.loads(previous.read_text())["cases"] if previous.exists() else []
    cases = {key: case for key, case in zip(builders, kept)} if len(kept) == len(builders) else {}
    for key in args.only.split(","):
        cases[key] = run_case(builders[key](), args)
    path = write_result("drift.json", {"benchmark": "drift verdict calibration and power; flag shares",
                                        "machine": machine(), "seconds": round(time.perf_counter() - start, 1),
                                        "cases": [cases[k] for k in builders if k in cases]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
