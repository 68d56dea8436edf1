"""Importing heavy modules ahead of the code that needs them (the dashboard after its first page, the
``decalign train`` command while it reads its data)."""

from __future__ import annotations

import importlib
import threading


def import_ahead(names: tuple[str, ...], stop: threading.Event | None = None) -> list[str]:
    """Import ``names`` in order; returns those that failed. A failure is left to the code that imports the
    module where it is used, which reports it where the user sees it. Once ``stop`` is set, the imports not
    yet begun are skipped (the one in progress cannot be interrupted)."""
    failed = []
    for name in names:
        if stop is not None and stop.is_set():
            break
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - imported again where used, which raises it
            failed.append(name)
    return failed
