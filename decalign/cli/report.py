"""``decalign report``: a self-contained HTML audit report of a checkpoint on one split of a dataset."""

from __future__ import annotations

import argparse

from .common import add_data, add_device, check_output_file, load_data, pick_split

HELP = "write an offline HTML audit report (metrics, slices, drift, flags, explanations)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help=HELP,
        description="Audit a run directory (or its zip) on one split of a dataset file and write one HTML "
                    "file that opens offline. Flags and drift need the run's training reference "
                    "(reference.json); without it they are computed from the data file's train split if it "
                    "has one, else left out.")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory or its zip")
    add_data(parser)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"),
                        help="split to audit (default: test)")
    parser.add_argument("--samples", default="", metavar="ID,ID",
                        help="comma-separated sample ids to explain in the report")
    parser.add_argument("--title", default="DecAlign audit report", help="report title")
    parser.add_argument("--out", required=True, metavar="FILE", help="HTML file to write")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..audit.report import make_report, write_report
    from ..checkpoint import load_model
    from ..data import check_compatible
    from ..device import resolve_device
    from ..train.reference import build_reference, load_reference

    out = check_output_file(args.out)
    model, card = load_model(args.checkpoint, device=resolve_device(args.device))
    dataset = load_data(args.data)
    check_compatible(dataset, card.widths, args.data, bert_text=card.has_bert)
    dataset = card.prepare(dataset)  # the run's input transform, if it has one
    split = pick_split(dataset, args.split, args.data)
    checkpoint = Path(args.checkpoint)
    reference = load_reference(checkpoint) if checkpoint.is_dir() else None
    if reference is None and "train" in dataset.splits and len(dataset.splits["train"]) >= 2:
        reference = build_reference(model, card, dataset.splits["train"])
    ids = [s.strip() for s in args.samples.split(",") if s.strip()]
    text = make_report(model, card, split, dataset_name=Path(args.data).name, split_name=args.split,
                       reference=reference, sample_ids=ids, title=args.title)
    path = write_report(out, text)
    print(f"wrote {path} ({len(split)} samples, {len(ids)} explained"
          f"{'' if reference is not None else ', no training reference: flags and drift left out'})")
    return 0
