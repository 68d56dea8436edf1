"""``decalign demo``: retrain the bundled demo model (UCI digits, three views) and its no-alignment twin."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_DATA = ASSETS / "uci_digits.npz"
DEMO_CONFIG = ASSETS / "demo_config.json"
DEMO_MODEL = ASSETS / "demo_model"
TWIN_SUFFIX = "_noalign"  # the twin lives beside the model: assets/demo_model_noalign
# Only what the dashboard reads is kept, so the bundled models stay small.
DROPPED = ("last.safetensors", "resume")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="retrain the bundled demo model and its no-alignment twin on assets/uci_digits.npz",
        description=f"Retrain the demo model the dashboard starts with: DecAlign on the UCI multiple-features "
                    f"digits (fourier, karhunen and pixel views as three modalities, 10 classes), with "
                    f"{DEMO_CONFIG.name}; then its twin, trained identically (same data, seed and settings) "
                    f"but with every alignment weight at 0, into <out>{TWIN_SUFFIX}, so the dashboard can show "
                    f"what alignment changes. Each folder gets card.json, best.safetensors, history.json, "
                    f"status.json and the explanation reference; last.safetensors and resume/ are removed.")
    parser.add_argument("--out", default=str(DEMO_MODEL), metavar="DIR",
                        help=f"run directory to (re)write (default: assets/demo_model; the twin goes to "
                             f"DIR{TWIN_SUFFIX})")
    parser.add_argument("--epochs", type=int, metavar="N", help="number of epochs (default: the demo config's)")
    parser.add_argument("--data", default=str(DEMO_DATA), metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(DEMO_CONFIG), metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="device (default: cpu, for a reproducible model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def twin_dir(model_dir: str | Path) -> Path:
    """Where the no-alignment twin of the demo model in ``model_dir`` lives."""
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + TWIN_SUFFIX)


def run(args: argparse.Namespace) -> int:
    from ..train.ablation import without_alignment
    from .common import load_config, load_data

    config = load_config(args.config, [f"train.num_epochs={args.epochs}"] if args.epochs else None)
    dataset = load_data(args.data)
    dataset.report.source = _portable_source(Path(args.data))
    out = Path(args.out)
    for name, path, settings in (("demo model", out, config),
                                 ("no-alignment twin", twin_dir(out), without_alignment(config))):
        _train_one(name, path, settings, dataset, args)
    return 0


def _portable_source(path: Path) -> str:
    """The bundled data as the card names it: ``assets/<name>``, found again on any clone (an absolute path
    would name the machine the demo was built on)."""
    resolved = path.resolve()
    return f"assets/{resolved.name}" if resolved.parent == ASSETS.resolve() else str(path)


def _train_one(name: str, out: Path, config, dataset, args: argparse.Namespace) -> None:
    from ..train import TqdmCallback, selection_rule, train
    from .common import metrics_table

    if (out / "card.json").exists():
        shutil.rmtree(out)  # the demo is always trained from scratch
    callbacks = [] if args.quiet else [TqdmCallback(selection_rule(config, dataset.task)[0])]
    result = train(dataset, config, out, device=args.device, callbacks=callbacks)
    for dropped in DROPPED:
        path = out / dropped
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    print(f"{name} written to {out} (best epoch {result.best_epoch})")
    print("test metrics:")
    print(metrics_table(result.card.metrics.get("test", {})))
