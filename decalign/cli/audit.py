"""``decalign audit``: the whole audit of a checkpoint on one split, as text or one JSON object (pipelines)."""

from __future__ import annotations

import argparse
import json

from .common import add_data, add_device, audit_inputs, metrics_table

HELP = "audit a checkpoint on a split: metrics, slices, flags, drift, reviews, baseline (--json for pipelines)"
DRIFT_EXIT = 3


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit", help=HELP,
        description="Audit a run directory (or its zip) on one split of a dataset file: metrics, metrics per "
                    "slice, flag counts, the drift verdict per modality and overall against the run's "
                    "held-out (validation) features, the reviews recorded in the audit trail, and the linear "
                    "baseline. The Audit page and 'decalign report' show the same audit.",
        epilog=f"exit codes: 0 done, 2 bad input, {DRIFT_EXIT} drift found (only with --fail-on-drift)")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory or its zip")
    add_data(parser)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to audit (default: test)")
    parser.add_argument("--json", action="store_true", help="print the audit as one JSON object")
    parser.add_argument("--fail-on-drift", action="store_true",
                        help=f"exit with code {DRIFT_EXIT} when the data has drifted")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..audit.run import run_audit

    inputs = audit_inputs(args)
    model, card, dataset = inputs.pop("model"), inputs.pop("card"), inputs.pop("dataset")
    audit = run_audit(model, card, dataset, args.split, **inputs)
    if args.json:
        print(json.dumps(audit.to_json(), indent=2, allow_nan=False, default=str))
    else:
        print(text_report(audit))
    drifted = audit.drift is not None and audit.drift.drifted
    return DRIFT_EXIT if args.fail_on_drift and drifted else 0


def text_report(audit) -> str:
    """The audit in a few plain paragraphs for the terminal."""
    head = f"{audit.split} split of {audit.data}: {audit.n} samples ({audit.task}, metric convention {audit.convention})"
    lines = [head]
    if audit.metrics:
        lines += ["", metrics_table({k: v for k, v in audit.metrics.items() if not k.startswith("F1_class_")})]
    if audit.comparison:
        lines += ["", audit.comparison["sentence"]]
    if audit.flags is not None:
        counts = ", ".join(f"{k} {v}" for k, v in audit.flag_counts.items())
        lines += ["", f"flagged: {int(audit.flags['any_flag'].sum())} of {audit.n} ({counts})"]
    lines += [""] + (audit.drift.sentences() if audit.drift is not None else [audit.drift_missing])
    if audit.reviews is not None:
        lines += ["", f"reviews in the audit trail for this split: {len(audit.reviews)}"]
    lines += ([""] + audit.notes) if audit.notes else []
    return "\n".join(lines)
