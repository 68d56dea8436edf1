"""The ``decalign`` command line: one module per subcommand, each exposing ``register(subparsers)``.

Bad input ends with exit code 2 and one line ``decalign: error: <message>`` on stderr (set
``DECALIGN_DEBUG=1`` to see the traceback instead).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from .. import __version__

# Subcommand modules, in the order --help lists them. Each imports its heavy dependencies inside ``run``,
# so building the parser (and --help) stays light.
COMMANDS = ("train", "evaluate", "levels", "predict", "audit", "report", "demo", "import_official")


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
    args = build_parser().parse_args(argv)  # before the import below: --help needs no torch
    from safetensors import SafetensorError  # a weights file that cannot be written (a full disk)

    # The project's own errors (DataError, ConfigError, CheckpointError, OfficialImportError, AuditError)
    # are ValueErrors: naming them here imported torch and pandas (2 s) before the command could start
    # its own imports alongside reading the data.
    expected = (ValueError, OSError, SafetensorError)
    try:
        return int(args.func(args) or 0)
    except expected as exc:
        if os.environ.get("DECALIGN_DEBUG"):
            raise
        print(f"decalign: error: {_one_line(exc, getattr(args, 'out', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("decalign: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The process's entry point (the ``decalign`` script, ``python -m decalign``): :func:`main`, then every
    object left is frozen out of the garbage collector. Python's shutdown collects them all again, and after a
    command that imported torch that took 0.4-1.0 s of the command's time; the process's memory goes back to
    the system when it exits either way. Only here: a process that calls :func:`main` and goes on (the tests)
    must keep collecting."""
    code = main()
    gc.freeze()
    return code


def _one_line(exc: BaseException, out: str | None) -> str:
    """The message on one line; an OSError (full disk, no permission) as ``<file>: <reason>``, naming
    the command's ``--out`` when the error does not say which file (a failed write does not)."""
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else out or "a file"
        text = f"{where}: {exc.strerror}"
    elif type(exc).__name__ == "SafetensorError":
        text = f"{out or 'a weights file'}: {exc}"
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__
