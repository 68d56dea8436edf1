"""The one atomic writer: permissions, no leftovers, and the clean-up of temp files of killed writers."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest

from decalign.atomic import (
    STALE_UNKNOWN_S,
    atomic_write,
    atomic_write_file,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_files_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        paths = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write(tmp_path / "b.bin",
                                                                          lambda tmp: open(tmp, "wb").close())]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_stream_writer_replaces_and_a_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_file(path, lambda handle: handle.write("a,b\r\n1,2\r\n"), text=True)
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"  # newline="": the writer decides the line ends

    def fail(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_file(path, fail)
    assert path.read_bytes() == b"a,b\r\n1,2\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]
    with pytest.raises(ValueError):  # JSON has no NaN: refused before anything is replaced
        atomic_write_json(path, {"x": float("nan")})
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_clean_stale_temps_removes_only_what_no_writer_will_finish(tmp_path):
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "deep").mkdir()
    dead = tmp_path / f".card.json.{_dead_pid()}-0a1b2c3d.tmp"
    dead_in_sub = tmp_path / "resume" / f".state.json.{_dead_pid()}-ffffffff.tmp"
    live = tmp_path / f".best.safetensors.{os.getpid()}-12345678.tmp"
    old_format = tmp_path / ".history.json.k2j4x9_a.tmp"  # mkstemp name of earlier versions, no pid
    fresh_old_format = tmp_path / ".status.json.q8w7e6r5.tmp"
    too_deep = tmp_path / "resume" / "deep" / f".x.json.{_dead_pid()}-00000000.tmp"
    keep = [tmp_path / "card.json", tmp_path / ".hidden", tmp_path / "notes.tmp"]
    for path in [dead, dead_in_sub, live, old_format, fresh_old_format, too_deep, *keep]:
        path.write_text("x")
    hour_ago = time.time() - STALE_UNKNOWN_S - 60
    os.utime(old_format, (hour_ago, hour_ago))
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, dead_in_sub, old_format])
    for path in [live, fresh_old_format, too_deep, *keep]:
        assert path.exists(), path
    assert clean_stale_temps(tmp_path / "missing") == []
