"""Helpers shared by the subcommands: common options, loading data and configs, hashing, tables."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package's data layer loads torch; --help must not wait for it
    from ..config import DecAlignConfig
    from ..data import MultimodalDataset, Split


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEV",
                        help="auto (a GPU when there is one), cpu, cuda or cuda:N (default: auto)")


def add_data(parser: argparse.ArgumentParser, help_text: str = "dataset file (.pkl MMSA pickle or .npz)"
             ) -> None:
    parser.add_argument("--data", required=True, metavar="FILE", help=help_text)


def load_config(path: str | None, assignments: list[str] | None) -> DecAlignConfig:
    """Defaults, then the JSON file (ours or an official DecAlign config), then ``--set key=value``."""
    from ..config import DecAlignConfig

    config = DecAlignConfig.from_json(path) if path else DecAlignConfig()
    return config.override(assignments) if assignments else config


def load_data(path: str) -> MultimodalDataset:
    from ..data import load_dataset

    return load_dataset(path)


def check_output_file(path: str, option: str = "--out") -> Path:
    """``path`` as a file to write: not empty, not a folder, and no file where a folder must be."""
    if not path.strip():
        raise ValueError(f"{option}: expected a file name, found an empty string")
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{option} {path}: is a folder; expected a file name")
    _check_parents(out, option, path)
    return out


def check_output_dir(path: str, option: str = "--out") -> Path:
    """``path`` as a folder to write into: not empty and not an existing file (nor below one)."""
    if not path.strip():
        raise ValueError(f"{option}: expected a folder name, found an empty string")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {path}: is a file; expected a folder")
    _check_parents(out, option, path)
    return out


def _check_parents(out: Path, option: str, path: str) -> None:
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{option} {path}: {parent} is a file, not a folder")


def pick_split(dataset: MultimodalDataset, name: str, source: str, *, labelled: bool = False) -> Split:
    if name not in dataset.splits:
        raise ValueError(f"{source}: no split {name!r}; the file has {', '.join(dataset.splits)}")
    split = dataset.splits[name]
    if labelled and split.labels is None:
        raise ValueError(f"{source}: the {name!r} split has no labels; evaluation needs them")
    return split


def check_task(dataset: MultimodalDataset, task: str, num_classes: int | None, source: str) -> None:
    if dataset.task != task:
        raise ValueError(f"{source}: the data are for {dataset.task}, the checkpoint does {task}")
    if task == "classification" and dataset.num_classes and num_classes and dataset.num_classes > num_classes:
        raise ValueError(f"{source}: the data have {dataset.num_classes} classes, the checkpoint "
                         f"predicts {num_classes}")


def metrics_table(metrics: dict[str, float]) -> str:
    """Two aligned columns: the display name and the value with 4 decimals."""
    from ..train.metrics import display_name

    names = {key: display_name(key) for key in metrics}
    width = max((len(n) for n in names.values()), default=0)
    return "\n".join(f"{names[k]:<{width}}  {v:.4f}" for k, v in metrics.items())


def audit_inputs(args: argparse.Namespace) -> dict:
    """What ``audit`` and ``report`` share: the model and data (checked against each other), the prepared
    reference (``decalign.audit.run.prepare_reference``) and the audit trail's keys for reviews.

    Returns keyword arguments of ``run_audit`` / ``make_report`` plus ``model``, ``card`` and ``dataset``.
    """
    from pathlib import Path

    from ..audit.run import prepare_reference
    from ..audit.store import AuditTrail, default_audit_path
    from ..checkpoint import file_sha256, load_model, model_fingerprint
    from ..data import check_compatible
    from ..device import resolve_device
    from ..train.reference import load_reference

    model, card = load_model(args.checkpoint, device=resolve_device(args.device))
    dataset = load_data(args.data)
    check_compatible(dataset, card.widths, args.data, bert_text=card.has_bert)
    check_task(dataset, card.task, card.num_classes, args.data)
    dataset = card.prepare(dataset)
    pick_split(dataset, args.split, args.data)
    checkpoint, data_name = Path(args.checkpoint), Path(args.data).name
    stored = load_reference(checkpoint) if checkpoint.is_dir() else None
    trail_path = default_audit_path()
    return {"model": model, "card": card, "dataset": dataset, "data_name": data_name,
            "reference": prepare_reference(model, card, dataset, data_name, stored),
            "trail": AuditTrail(trail_path) if trail_path.is_file() else None,
            "checkpoint_fingerprint": model_fingerprint(checkpoint) if checkpoint.is_dir() else None,
            "input_ids": (file_sha256(args.data), dataset.file_fingerprint())}
