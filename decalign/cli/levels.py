"""``decalign levels``: the alignment levels of a checkpoint on the first samples of a split, as one batch."""

from __future__ import annotations

import argparse
import json

from .common import add_data, add_device, load_data, pick_split

HELP = "alignment levels of a checkpoint on the first N samples of a split (one batch, eval mode)"
DESCRIPTION = """Run a checkpoint on the first N samples of one split as a single batch, in eval mode (no
dropout), and print its alignment levels under the run's objective (official or studio): decoupling,
prototype transport, sample-to-prototype, moment matching and MMD; the official groupings heterogeneous
(transport + sample-to-prototype, the official hete_loss) and homogeneous (moments + MMD, the official
homo_loss); and the weighted alignment part of the training loss (dec_loss_weight * decoupling + alpha *
heterogeneous + beta * homogeneous, with the run's weights). Prototypes are fitted on the batch, as in
training. The run's input transform, if it has one, is applied to the data first."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("levels", help=HELP, description=DESCRIPTION)
    parser.add_argument("--checkpoint", required=True, metavar="RUN", help="run directory or its zip")
    add_data(parser)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to read (default: test)")
    parser.add_argument("--max-samples", type=int, metavar="N",
                        help="number of samples, taken from the start of the split (default: the run's "
                             "training batch size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_model
    from ..data import check_compatible
    from ..device import resolve_device
    from ..explain.levels import alignment_levels, level_totals

    model, card = load_model(args.checkpoint, device=resolve_device(args.device))
    count = card.config.train.batch_size if args.max_samples is None else args.max_samples
    if count < 2:
        raise ValueError(f"--max-samples must be at least 2 (prototypes need a batch), found {count}")
    dataset = load_data(args.data)
    check_compatible(dataset, card.widths, args.data, bert_text=card.has_bert)
    split = pick_split(card.prepare(dataset), args.split, args.data)
    levels = alignment_levels(model, split, batch_size=None, max_samples=count, first=True,
                              weights=card.config.train)
    totals = level_totals(levels)
    samples = int(levels.samples.iloc[0])
    weights = {k: getattr(card.config.train, k) for k in ("dec_loss_weight", "alpha", "beta")}
    if args.json:
        print(json.dumps({"split": args.split, "samples": samples, "objective": card.config.model.objective,
                          "levels": totals, "weights": weights}, indent=2))
        return 0
    print(f"{args.split} split of {args.data}: first {samples} samples as one batch, objective "
          f"{card.config.model.objective}")
    width = max(len(name) for name in totals)
    print("\n".join(f"{name:<{width}}  {value:.6g}" for name, value in totals.items()))
    print("weights: " + ", ".join(f"{k} {v:g}" for k, v in weights.items()))
    return 0
