"""What the product computes once and reuses: on disk in ``$DECALIGN_CACHE_DIR``, else
``~/.cache/decalign-studio`` (projections; the native kernels where the package folder is read-only); in
memory, values computed from a file, kept while the file is unchanged (:class:`SignatureCache`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SETTLED_NS = 2_000_000_000  # a file changed more recently than this may change again unseen (coarse clocks)


def cache_root() -> Path:
    """``$DECALIGN_CACHE_DIR``, else ``~/.cache/decalign-studio``."""
    return Path(os.environ.get("DECALIGN_CACHE_DIR") or "~/.cache/decalign-studio").expanduser()


class SignatureCache:
    """Values computed from a file, kept while the file's signature (path, device, inode, size, mtime_ns,
    ctime_ns) holds: every rewrite of a file this program writes is a rename onto it (a new inode) or a write
    (a new mtime and ctime). At most ``kept`` values, the oldest dropped first. Callers must not change a
    value they are given: it is shared."""

    def __init__(self, kept: int):
        self.kept = kept
        self._values: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, compute: Callable[[Path], Any]) -> Any:
        signature = file_signature(path)
        key = (str(path.resolve()), *signature)
        with self._lock:
            if key in self._values:
                return self._values[key]
        value = compute(path)
        # Kept only when not rewritten while read, and when its last change is older than a coarse file system's
        # clock tick: a rewrite in the same tick, of the same size, on a reused inode would look unchanged.
        settled = time.time_ns() - max(signature[-2:]) > SETTLED_NS
        if settled and file_signature(path) == signature:
            with self._lock:
                if len(self._values) >= self.kept:
                    self._values.pop(next(iter(self._values)))
                self._values[key] = value
        return value


def file_signature(path: Path) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime_ns, ctime_ns) of ``path``."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
