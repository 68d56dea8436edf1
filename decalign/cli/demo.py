"""``decalign demo``: retrain the bundled demo model (UCI digits, three views) from the repository's files."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
DEMO_DATA = ASSETS / "uci_digits.npz"
DEMO_CONFIG = ASSETS / "demo_config.json"
# Only what the dashboard reads is kept, so the bundled model stays small.
DROPPED = ("last.safetensors", "resume")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="retrain the bundled demo model on assets/uci_digits.npz",
        description=f"Retrain the demo model the dashboard starts with: DecAlign on the UCI multiple-features "
                    f"digits (fourier, karhunen and pixel views as three modalities, 10 classes), with "
                    f"{DEMO_CONFIG.name}. Writes card.json, best.safetensors, history.json, status.json "
                    f"(and the explanation reference); last.safetensors and resume/ are removed.")
    parser.add_argument("--out", default=str(ASSETS / "demo_model"), metavar="DIR",
                        help="run directory to (re)write (default: assets/demo_model)")
    parser.add_argument("--epochs", type=int, metavar="N", help="number of epochs (default: the demo config's)")
    parser.add_argument("--data", default=str(DEMO_DATA), metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=str(DEMO_CONFIG), metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help="device (default: cpu, for a reproducible model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import TqdmCallback, selection_rule, train
    from .common import load_config, load_data, metrics_table

    config = load_config(args.config, [f"train.num_epochs={args.epochs}"] if args.epochs else None)
    dataset = load_data(args.data)
    out = Path(args.out)
    if (out / "card.json").exists():
        shutil.rmtree(out)  # the demo is always trained from scratch
    callbacks = [] if args.quiet else [TqdmCallback(selection_rule(config, dataset.task)[0])]
    result = train(dataset, config, out, device=args.device, callbacks=callbacks)
    for name in DROPPED:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    print(f"demo model written to {out} (best epoch {result.best_epoch})")
    print("test metrics:")
    print(metrics_table(result.card.metrics.get("test", {})))
    return 0
