"""``decalign predict``: predictions with exact per-branch contributions, streamed to a CSV file.

The split is processed in chunks of ``--batch-size`` samples, each chunk's rows appended to a temporary
file that replaces ``--out`` at the end, so memory stays bounded for any number of samples. Within a
chunk the model runs in forwards of ``inference_chunk`` samples (fastest for the data's shapes).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from .common import add_data, add_device, check_output_file, check_task, load_data

HELP = "predict a dataset file with a checkpoint and write a CSV (with branch contributions)"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help=HELP,
        description="One CSV row per sample: id, split, prediction (for classification the predicted class "
                    "and prob_<c> per class), label when known, its error by the model card's one definition "
                    "(absolute error, or 0/1 misclassification with p_label, the probability of the true "
                    "label), and the exact contribution of every branch "
                    "of the linear head (contrib_unique_<m>, contrib_common_<m>, contrib_bias; for "
                    "classification those of the predicted class), which sum to the head's output. "
                    "The predictions are also appended to the audit trail ($DECALIGN_AUDIT_DB or "
                    "~/.local/share/decalign-studio/audit.sqlite3) unless --no-audit.")
    parser.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="run directory or its zip")
    add_data(parser)
    parser.add_argument("--split", default="test", choices=("train", "valid", "test", "all"),
                        help="split to predict, or all of them (default: test)")
    parser.add_argument("--out", required=True, metavar="CSV", help="CSV file to write")
    parser.add_argument("--batch-size", type=int, default=1024, metavar="N",
                        help="samples per chunk of rows written (default: 1024); the model itself runs "
                             "in smaller forwards sized to the data's shapes")
    parser.add_argument("--no-audit", action="store_true", help="do not record the predictions")
    add_device(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_file
    from ..checkpoint import load_model
    from ..data import check_compatible
    from ..device import resolve_device
    from ..safe_output import SafeCsvWriter

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, found {args.batch_size}")
    out = check_output_file(args.out)
    model, card = load_model(args.checkpoint, device=resolve_device(args.device))
    dataset = load_data(args.data)
    check_compatible(dataset, card.widths, args.data, bert_text=card.has_bert)
    dataset = card.prepare(dataset)  # the run's input transform, if it has one
    check_task(dataset, card.task, card.num_classes, args.data)
    names = list(dataset.splits) if args.split == "all" else [args.split]
    missing = [n for n in names if n not in dataset.splits]
    if missing:
        raise ValueError(f"{args.data}: no split {missing[0]!r}; the file has {', '.join(dataset.splits)}")
    audit = None if args.no_audit else _Audit(args.checkpoint, args.data)
    count = 0

    def write(handle) -> None:
        nonlocal count
        writer = SafeCsvWriter(handle)  # ids and labels come from the file: no formulas
        writer.writerow(header(model.modalities, card.task, card.output_dim))
        for name in names:
            for result in _chunks(model, dataset.splits[name], card.task, args.batch_size):
                rows = list(result_rows(result, name, card))
                writer.writerows(rows)
                count += len(rows)
                if audit is not None:
                    audit.record(result, name)

    atomic_write_file(out, write, text=True)
    print(f"wrote {count} predictions to {args.out}" + ("" if audit is None else f"; audit trail {audit.path}"))
    return 0


def header(modalities: list[str], task: str, output_dim: int) -> list[str]:
    classification = task == "classification"
    probs = [f"prob_{c}" for c in range(output_dim)] if classification else []
    errors = ["error", "p_label"] if classification else ["error"]
    branches = [f"contrib_unique_{m}" for m in modalities] + [f"contrib_common_{m}" for m in modalities]
    return ["id", "split", "prediction", *probs, "label", *errors, *branches, "contrib_bias"]


def result_rows(result, split: str, card) -> Iterator[list]:
    """CSV rows of one chunk's ``InferenceResult``: errors (``result_errors``, empty without a label) and
    the contributions of the predicted output."""
    from ..explain.slices import result_errors

    picked = result.explained_contributions()  # (N, B + 1)
    probs = result.probabilities
    labels = result.labels
    errors = result_errors(result, card).to_numpy(dtype=float)  # (N, 1 or 2)
    predictions = result.predictions  # a property over all rows: taken once, not per row
    for i, sample_id in enumerate(result.ids):
        pred = predictions[i]
        row = [sample_id, split, int(pred) if result.task == "classification" else float(pred)]
        if probs is not None:
            row += [float(p) for p in probs[i]]
        row.append("" if labels is None else labels[i].item())
        row += ["" if labels is None else float(e) for e in errors[i]]
        row += [float(v) for v in picked[i]]
        yield row


def _chunks(model, split, task: str, size: int):
    import numpy as np

    from ..inference import run_inference

    for start in range(0, len(split), size):
        part = split.subset(np.arange(start, min(start + size, len(split))))
        yield run_inference(model, part, task=task)  # forwards in the model's own chunks (inference_chunk)


class _Audit:
    """Appends each chunk's predictions to the audit trail, tagged with the checkpoint and input file."""

    def __init__(self, checkpoint: str, data: str):
        from ..audit.store import AuditTrail
        from ..checkpoint import file_sha256, model_fingerprint

        self.trail = AuditTrail()
        self.path = self.trail.path
        self.fingerprint = model_fingerprint(checkpoint)
        self.sha = file_sha256(data)
        self.name = Path(data).name

    def record(self, result, split: str) -> None:
        from ..audit.rows import prediction_rows

        self.trail.record_predictions(prediction_rows(
            result, source="cli", checkpoint_fingerprint=self.fingerprint, input_sha256=self.sha,
            input_name=self.name, split=split))
