"""``decalign train``: fit a DecAlign model on a dataset file and write a run directory."""

from __future__ import annotations

import argparse
import sys
import threading

from ..imports import import_ahead
from .common import add_data, add_device, check_output_dir, load_config, load_data, metrics_table

HELP = "train a model on a dataset file and write a run directory"
# Imported while the data file is parsed, which happens in the sandbox's child on a core of its own: torch
# (1.4 s) and the trainer. The command paid them one after another with the read before. Not torch's compiler
# stack (1.6 s): the trainer's optimizer never imports it (``trainer.EagerAdam``). Not scikit-learn (1.2 s, for
# the baseline after training): resident from the start, its 143 MiB raised the command's peak memory past
# 1.2 GiB.
TRAINING_IMPORTS = ("torch", "decalign.train.trainer")
DESCRIPTION = """Train DecAlign on a dataset file (MMSA pickle or npz) and write a run directory:
card.json (config, modalities, metrics, prototypes), best.safetensors, last.safetensors, history.json,
status.json and resume/. Without --config the settings are chosen from the data (width, layers,
prototypes, batch size, epochs and learning rate from the number of training samples; the rule is in
the README); with --config (this project's JSON or an official DecAlign config such as
dec_mosi_config.json) the file's values are kept. Every --set applies last. The alignment terms follow
model.objective: official (the default, every term as the official code computes it) or studio (this
project's scale-free variants). An official config's input transforms (standardisation, averaging over
time) are fitted on the training split and stored with the run. After training a logistic
(classification) or ridge (regression) regression on the same input features is fitted as a baseline
and shown beside the model's test score."""
EPILOG = """examples:
  decalign train --data mosi.pkl --config dec_mosi_config.json --out runs/mosi
  decalign train --data mosi.pkl --set num_epochs=5 --set train.learning_rate=1e-3 --out runs/quick
  decalign train --data mosi.pkl --set objective=studio --out runs/studio
  decalign train --data mosi.pkl --out runs/mosi --resume     (continue after the last finished epoch)"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data(parser)
    parser.add_argument("--config", metavar="JSON", help="configuration file (ours or an official one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting, e.g. num_epochs=5 or model.d_model=32 (repeatable)")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to write")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out; refused if the data or the configuration differ "
                             "(except num_epochs)")
    parser.add_argument("--progress-file", metavar="JSON",
                        help="rewrite this file with the epoch, batch, losses and time left while training")
    parser.add_argument("--cancel-file", metavar="PATH",
                        help="stop cleanly (keep best, status cancelled) as soon as this file exists")
    parser.add_argument("--replay", action="store_true",
                        help="record prototypes, transport plans and probe features per epoch in RUN_DIR/replay")
    parser.add_argument("--share-cpu", action="store_true",
                        help="use one torch thread fewer per core other processes keep busy (checked twice a "
                             "second; the dashboard trains this way); results may differ in the last bits "
                             "from a fixed thread count")
    add_device(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output_dir(args.out)
    dataset = _load_while_importing(args.data)
    from ..train import train
    from ..train.baseline import baseline_comparison
    from ..train.losses import match_task_loss
    from ..train.metrics import dataset_convention

    config = _config(args, dataset)
    # As on the dashboard's Train page: the loss follows the data's task unless the user chose one.
    config, note = match_task_loss(config, dataset.task, explicit=_task_loss_chosen(args))
    if note:
        print(f"decalign: note: {note} ({args.data})", file=sys.stderr)
    callbacks = _callbacks(args, config, dataset, dataset_convention(dataset))
    result = train(dataset, config, args.out, device=args.device, callbacks=callbacks, resume=args.resume,
                   replay=args.replay)
    print(f"{result.status}: best epoch {result.best_epoch} "
          f"(valid {result.selection_metric} = {_fmt(result.best_value)}); run directory {result.run_dir}")
    if "test" in result.card.metrics:
        print("test metrics:")
        print(metrics_table(result.card.metrics["test"]))
    comparison = baseline_comparison(result.card.metrics, result.card.baseline)
    if comparison is not None:
        print(comparison["sentence"])
    return 0


def _load_while_importing(path: str):
    """``load_data(path)`` with :data:`TRAINING_IMPORTS` imported meanwhile in a thread. The data modules are
    imported first, in this thread, so the two never wait on each other's half-imported module. A file that
    cannot be read stops the imports after the current one, so its message is not held back; an import that
    fails is left to the import that needs it, which reports it."""
    from .. import data  # noqa: F401

    failed = threading.Event()
    importing = threading.Thread(target=import_ahead, args=(TRAINING_IMPORTS, failed), name="training-imports",
                                 daemon=True)
    importing.start()
    try:
        dataset = load_data(path)
        dataset.file_fingerprint()  # the run needs it first; hashed here, while the imports still run (0.2 s)
        return dataset
    except BaseException:
        failed.set()
        raise
    finally:
        importing.join()


def _config(args: argparse.Namespace, dataset):
    """The file's settings with --config; else, resuming, the run's own; else the data-driven defaults
    (``decalign.defaults``); then --set."""
    from pathlib import Path

    if args.config:
        return load_config(args.config, args.set)
    if args.resume and (Path(args.out) / "card.json").is_file():
        from ..checkpoint import load_card

        config = load_card(args.out).config
        return config.override(args.set) if args.set else config
    from ..defaults import data_defaults, describe

    config = data_defaults(dataset)
    if not args.quiet:
        print(f"no --config: settings chosen from the data ({len(dataset.splits['train'])} training samples): "
              f"{describe(config)}")
    return config.override(args.set) if args.set else config


def _callbacks(args: argparse.Namespace, config, dataset, convention: str) -> list:
    from ..train import TqdmCallback, selection_rule
    from ..train.cpu_threads import ShareCpuCallback
    from ..train.progress import CancelFileCallback, ProgressFileCallback

    callbacks = [ShareCpuCallback()] if args.share_cpu else []
    if not args.quiet:
        callbacks.append(TqdmCallback(selection_rule(config, dataset.task, convention)[0]))
    if args.progress_file:
        callbacks.append(ProgressFileCallback(args.progress_file))
    if args.cancel_file:
        callbacks.append(CancelFileCallback(args.cancel_file))
    return callbacks


def _task_loss_chosen(args: argparse.Namespace) -> bool:
    """Whether --set or the --config file names the task loss (an official config's train_mode counts)."""
    if any(item.partition("=")[0].strip() in ("task_loss", "train.task_loss") for item in args.set):
        return True
    if not args.config:
        return False
    from ..atomic import read_json_object
    from ..config import ConfigError

    data = read_json_object(args.config, ConfigError)
    train = data.get("train") if isinstance(data.get("train"), dict) else {}
    return "task_loss" in data or "train_mode" in data or "task_loss" in train


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
