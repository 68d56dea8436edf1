"""Where the product keeps what it computes once and reuses: ``$DECALIGN_CACHE_DIR``, else
``~/.cache/decalign-studio`` (projections; the native kernels where the package folder is read-only)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$DECALIGN_CACHE_DIR``, else ``~/.cache/decalign-studio``."""
    return Path(os.environ.get("DECALIGN_CACHE_DIR") or "~/.cache/decalign-studio").expanduser()
