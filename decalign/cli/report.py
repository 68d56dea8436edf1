"""``decalign report``: a self-contained HTML audit report of a checkpoint on one split of a dataset."""

from __future__ import annotations

import argparse

from .common import add_data, add_device, audit_inputs, check_output_file

HELP = "write an offline HTML audit report (metrics, slices, drift, flags, explanations)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help=HELP,
        description="Audit a run directory (or its zip) on one split of a dataset file and write one HTML "
                    "file that opens offline: the same audit as 'decalign audit' (metrics, slices, flags, "
                    "drift, reviews, baseline) with figures and explained samples. Flags need the run's "
                    "training reference (reference.json); without it the data file's train split stands in. "
                    "Drift needs held-out features: those stored with the run, or the validation split of "
                    "the run's own data file.")
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
    from ..audit.report import make_report, write_report

    out = check_output_file(args.out)
    inputs = audit_inputs(args)
    model, card, dataset = inputs.pop("model"), inputs.pop("card"), inputs.pop("dataset")
    ids = [s.strip() for s in args.samples.split(",") if s.strip()]
    text = make_report(model, card, dataset, args.split, sample_ids=ids, title=args.title, **inputs)
    path = write_report(out, text)
    missing = inputs["reference"].reference is None
    print(f"wrote {path} ({len(dataset.splits[args.split])} samples, {len(ids)} explained"
          f"{', no training reference: flags and drift left out' if missing else ''})")
    return 0
