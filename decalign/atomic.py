"""The one atomic writer: every file the product writes goes through here, and JSON objects come back.

A write goes to a temporary file beside the target (``.<name>.<pid>-<random>.tmp``), is flushed to disk
(``fsync``) and renamed over the target (``os.replace``), then the folder entry is synced too. Readers see
the old file or the new one, never half of one, and a crash at any point leaves the old file intact. The
temporary file is created with ``open(..., "x")``, so the result has the usual permissions of the user's
umask (``mkstemp`` would make it owner-only). A process killed mid-write leaves its temporary file;
:func:`clean_stale_temps` removes such leftovers when a run starts or resumes and when the dashboard opens
a run folder, without touching the temporary files of a live writer.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

STALE_UNKNOWN_S = 3600.0  # a temp file whose writer cannot be identified is stale after an hour
_TEMP_NAME = re.compile(r"^\..+\.(?:(?P<pid>\d+)-[0-9a-f]+|[A-Za-z0-9_]+)\.tmp$")


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` (it writes the file at that path) and move the result onto ``path``.

    For writers that take a file name (``safetensors.save_file``); :func:`atomic_write_file` is the same
    for writers that take an open file.
    """
    return _commit(Path(path), lambda tmp: write(str(tmp)))


def atomic_write_file(path: str | Path, write: Callable[[IO], object], *, text: bool = False) -> Path:
    """Call ``write(file)`` on the open temporary file (binary, or UTF-8 text with ``newline=""``)."""
    def fill(tmp: Path) -> None:
        mode = "w" if text else "wb"
        with open(tmp, mode, encoding="utf-8" if text else None, newline="" if text else None) as handle:
            write(handle)

    return _commit(Path(path), fill)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write_file(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_file(path, lambda handle: handle.write(text), text=True)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _commit(path: Path, fill: Callable[[Path], object]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb"):  # exclusive create: umask permissions, never another writer's file
            pass
        fill(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)
    return path


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; not every platform lets a folder be opened for fsync."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def clean_stale_temps(folder: str | Path, *, depth: int = 1) -> list[Path]:
    """Remove temporary files of atomic writes that can no longer finish, in ``folder`` and its subfolders
    down to ``depth`` levels; returns what was removed.

    A temporary file is stale when the process named in it is gone, or, for a name without a process id
    (older versions wrote ``.<name>.<random>.tmp``), when it is older than ``STALE_UNKNOWN_S``.
    """
    folder = Path(folder)
    removed = []
    for candidate in _temp_candidates(folder, depth):
        if _is_stale(candidate):
            try:
                candidate.unlink()
            except FileNotFoundError:  # its writer finished (or another cleaner was quicker)
                continue
            removed.append(candidate)
    return removed


def _temp_candidates(folder: Path, depth: int) -> list[Path]:
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.is_file() and _TEMP_NAME.match(entry.name):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and depth > 0:
            found += _temp_candidates(entry, depth - 1)
    return found


def _is_stale(path: Path) -> bool:
    pid = _TEMP_NAME.match(path.name).group("pid")
    if pid is not None:
        return not _process_alive(int(pid))
    try:
        return time.time() - path.stat().st_mtime > STALE_UNKNOWN_S
    except FileNotFoundError:
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_json_object(path: str | Path, error: type[Exception], missing: str | None = None) -> dict[str, Any]:
    """Read a JSON file that must hold an object; every failure raises ``error`` naming the file.

    ``missing`` replaces the default "file not found" message.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(missing or f"{path}: file not found") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
