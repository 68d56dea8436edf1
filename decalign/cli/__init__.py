"""The ``decalign`` command line: one module per subcommand, each exposing ``register(subparsers)``.

Bad input ends with exit code 2 and one line ``decalign: error: <message>`` on stderr (set
``DECALIGN_DEBUG=1`` to see the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__

# Subcommand modules, in the order --help lists them. Each imports its heavy dependencies inside ``run``,
# so building the parser (and --help) stays light.
COMMANDS = ("train", "evaluate", "predict", "audit", "report", "demo", "import_official")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="decalign",
        description="DecAlign Studio: train, evaluate, run and audit DecAlign multimodal models.",
        epilog="Run 'decalign <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"decalign {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand and return the exit code."""
    args = build_parser().parse_args(argv)  # before the imports below: --help needs no torch
    from ..audit.store import AuditError
    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data import DataError
    from ..official import OfficialImportError

    expected = (DataError, ConfigError, CheckpointError, OfficialImportError, AuditError, ValueError,
                FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)
    try:
        return int(args.func(args) or 0)
    except expected as exc:
        if os.environ.get("DECALIGN_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"decalign: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decalign: interrupted", file=sys.stderr)
        return 130
