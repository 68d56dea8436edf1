"""``decalign eval``: metrics of a trained checkpoint on one split of a dataset file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import add_data, add_device, check_task, load_data, metrics_table, pick_split

HELP = "metrics of a checkpoint on a split of a dataset file"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help=HELP,
        description="Evaluate a run directory (or a zip of one) on one split of a dataset file. The data "
                    "must have exactly the checkpoint's modalities and widths.")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory or its zip")
    add_data(parser)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to evaluate (default: test)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N", help="samples per forward pass")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..data import check_compatible
    from ..device import resolve_device
    from ..train.baseline import baseline_beside
    from ..train.finalize import EvalArgs, evaluate_split
    from ..train.metrics import card_convention

    device = resolve_device(args.device)
    model, card = load_model(args.checkpoint, device=device)
    dataset = load_data(args.data)
    check_compatible(dataset, card.widths, args.data, bert_text=card.has_bert)
    dataset = card.prepare(dataset)  # the run's input transform, if it has one
    check_task(dataset, card.task, card.num_classes, args.data)
    split = pick_split(dataset, args.split, args.data, labelled=True)
    train = card.config.train
    eval_args = EvalArgs(card.task, train.task_loss, card.num_classes, card_convention(card), max(1, args.batch_size),
                         binary_task_weight=train.binary_task_weight, smooth_l1_beta=train.smooth_l1_beta)
    metrics = evaluate_split(model, split, eval_args)
    baseline, comparison, note = baseline_beside(card, dataset, Path(args.data).name, args.split, metrics)
    if args.json:
        print(json.dumps({"split": args.split, "samples": len(split), "metric_convention": eval_args.convention,
                          "metrics": metrics, "baseline": baseline, "baseline_comparison": comparison,
                          "notes": [note] if note else []}, indent=2))
    else:
        print(f"{args.split} split of {args.data}: {len(split)} samples")
        print(metrics_table(metrics))
        for line in (comparison["sentence"] if comparison else None, note):
            if line:
                print(line)
    return 0
