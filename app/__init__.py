"""DecAlign Studio's dashboard (``python3 -m app``)."""

from __future__ import annotations

import importlib


def import_all(names: tuple[str, ...]) -> list[str]:
    """Import ``names`` in order, ahead of the pages that use them; returns those that failed (the page's own
    import reports the error where the user sees it)."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the page imports it again and shows the error there
            failed.append(name)
    return failed
