"""Helpers of the hostile-file tests (imported by package path: ``tests.hostile.helpers``)."""

from __future__ import annotations

from pathlib import Path


def listing(folder: Path) -> set[str]:
    """Every path below ``folder``, relative to it: what a case may not have changed."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}
