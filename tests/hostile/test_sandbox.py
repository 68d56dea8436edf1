"""The sandbox: a child with memory, CPU and wall-clock limits that hands back plain arrays only."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from decalign import sandbox
from decalign._sandbox_worker import selftest
from tests.hostile.helpers import listing

SMALL = sandbox.Limits(256 << 20, 20, 120)


def _fails(mode: str, limits: sandbox.Limits = SMALL, **args) -> sandbox.SandboxError:
    with pytest.raises(sandbox.SandboxError) as caught:
        sandbox.run("selftest", {"mode": mode, **args}, limits)
    return caught.value


def test_arrays_come_back_plain_and_the_folder_is_removed(private_tmp):
    result = sandbox.run("selftest", {"mode": "arrays"}, SMALL)
    np.testing.assert_array_equal(result.value["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert result.value["ids"].dtype == np.dtype("<U2") and result.value["n"] == 2
    assert 10 << 20 < result.report.peak_rss_bytes < 120 << 20  # the child's own VmHWM, not the parent's
    assert listing(private_tmp) == set()


def test_the_child_imports_neither_torch_nor_pandas():
    assert sandbox.run("selftest", {"mode": "modules"}, SMALL).value == {"heavy": []}


def test_numpy_in_the_child_asks_for_no_huge_pages(monkeypatch):
    """A fresh child and a spare both run numpy without its transparent-huge-page advice, even when the
    parent's environment asks for it (``sandbox._child_env``)."""
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "1")
    assert sandbox.run("selftest", {"mode": "hugepage"}, SMALL).value == {"madvise": False}
    sandbox.keep_spare(True)
    try:
        spare = sandbox._spare.pid
        assert sandbox.run("selftest", {"mode": "pid"}, SMALL).value == {"pid": spare}
        assert sandbox.run("selftest", {"mode": "hugepage"}, SMALL).value == {"madvise": False}
    finally:
        sandbox.keep_spare(False)


def test_memory_limit_is_one_line_with_the_limit(private_tmp):
    error = _fails("allocate", bytes=1 << 30)
    assert error.kind == "memory"
    assert str(error) == "the parser needed more than 256 MiB of memory and was stopped"
    assert listing(private_tmp) == set()


def test_a_crash_is_reported_by_its_signal():
    error = _fails("segfault")
    assert error.kind == "crash" and "signal 11, SIGSEGV" in str(error)


@pytest.mark.slow
def test_cpu_and_wall_clock_limits():
    error = _fails("spin", sandbox.Limits(256 << 20, 1, 120))
    assert error.kind == "time" and "CPU time" in str(error)
    error = _fails("sleep", sandbox.Limits(256 << 20, 20, 2), seconds=60)
    assert error.kind == "time" and "took longer than 2 s" in str(error)
    assert error.report.wall_seconds < 30


def test_object_arrays_never_leave_the_child():
    error = _fails("object")
    assert error.kind == "failed" and "allow_pickle=False" in str(error)


def test_limits_grow_with_the_input():
    small, large = sandbox.Limits.for_input(1 << 20), sandbox.Limits.for_input(3 << 30)
    assert small.memory_bytes == sandbox.BASE_MEMORY + sandbox.MEMORY_FACTOR * (1 << 20)
    assert large.memory_bytes > 18 << 30 and large.wall_seconds > small.wall_seconds


def test_every_plain_kind_comes_back_equal_from_one_arrays_file():
    got = sandbox.run("selftest", {"mode": "kinds"}, SMALL).value
    grid = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    expected = {"f32": np.linspace(-1, 1, 7, dtype=np.float32), "i64": np.array(-3), "fortran": grid,
                "flags": np.array([True, False, True]), "empty": np.zeros((0, 5), dtype=np.int16),
                "c": np.array([1 + 2j]), "u8": np.arange(3, dtype=np.uint8)}
    for name, array in expected.items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
        assert got[name].flags.writeable and got[name].flags.c_contiguous
    assert got["words"][0].tolist() == ["α", "longer text"] and got["words"][1].tolist() == [b"ab", b"c"]


def _decode(tmp_path, value, blob: bytes = bytes(64)):
    (tmp_path / sandbox.ARRAYS_FILE).write_bytes(blob)
    return sandbox._decode(value, tmp_path)


def test_the_parent_reads_an_array_only_where_its_reference_is_sound(tmp_path):
    ref = lambda *r: {"x": {sandbox.ARRAY_KEY: list(r)}}
    np.testing.assert_array_equal(_decode(tmp_path, ref(8, "<i4", [2]), bytes(8) + b"\x01\0\0\0\x02\0\0\0")["x"],
                                  [1, 2])
    bad = {"not a plain": [ref(0, "|O", [1]), ref(0, "f4,i4", [1]), ref(0, "<M8[D]", [1]), ref(0, "|V8", [1])],
           "bad array dtype": [ref(0, "no such type", [1])],
           "bad array reference": [ref(-8, "<f4", [1]), ref(True, "<f4", [1]), ref(0, "<f4", [-1]),
                                   ref(0, "<f4", [1] * 33), ref(0.0, "<f4", [1]), ref(0, "<f4"), ref(0, "<" + "f" * 20, [1]),
                                   ref(0, "<f4", [0, 2**70])],
           "past the file": [ref(0, "<f8", [9]), ref(60, "<f4", [2]), ref(0, "<f4", [2**31, 2**31])]}
    for message, refs in bad.items():
        for value in refs:
            with pytest.raises(ValueError, match=message):
                _decode(tmp_path, value)
    overlapping = {"a": {sandbox.ARRAY_KEY: [0, "<f8", [4]]}, "b": {sandbox.ARRAY_KEY: [16, "<f8", [2]]}}
    with pytest.raises(ValueError, match="overlap"):
        _decode(tmp_path, overlapping)


def test_a_temporary_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the temporary folder should be")
    monkeypatch.setenv("TMPDIR", str(blocked))  # a chosen temporary folder: the memory root is not used
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    error = _fails("arrays")
    assert error.kind == "failed" and str(error).startswith("the parser could not be started (")


def _folders_used(monkeypatch) -> list:
    used = []
    spawn = sandbox._spawn
    monkeypatch.setattr(sandbox, "_spawn", lambda folder, limits: used.append(folder) or spawn(folder, limits))
    return used


def test_with_room_the_child_folder_is_in_the_memory_root_and_removed_even_after_a_crash(memory_root, monkeypatch):
    assert sandbox.available_memory() > 0  # read from /proc/meminfo
    used = _folders_used(monkeypatch)
    assert sandbox.run("selftest", {"mode": "arrays"}, SMALL).value["n"] == 2
    assert _fails("segfault").kind == "crash"
    assert [folder.parent for folder in used] == [memory_root, memory_root]
    assert all(folder.name.startswith(f"decalign-sandbox-{os.getpid()}-") for folder in used)
    assert listing(memory_root) == set()


def _large_arrays() -> dict[str, np.ndarray]:
    """What the child hands back in the "large" mode, made here in this process."""
    return selftest({"mode": "large"})


def _mapping(array: np.ndarray):
    while isinstance(array.base, np.ndarray):
        array = array.base
    base = array.base.obj if isinstance(array.base, memoryview) else array.base
    return base if isinstance(base, mmap.mmap) else None


def test_large_arrays_from_the_memory_root_are_mapped_each_on_its_own_and_writeable(memory_root, monkeypatch):
    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 << 20)  # the self-test's arrays: 1-2.4 MB
    got = sandbox.run("selftest", {"mode": "large"}, SMALL).value
    assert listing(memory_root) == set()  # the folder is gone; the mappings keep their pages
    for name, array in _large_arrays().items():
        assert got[name].dtype == array.dtype and got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array)
        assert got[name].flags.writeable and got[name].flags.c_contiguous
    assert _mapping(got["small"]) is None  # under MAP_MIN_BYTES: copied
    maps = [_mapping(got[name]) for name in ("a", "b", "c")]
    assert all(m is not None for m in maps) and len({id(m) for m in maps}) == 3
    got["a"][:] = 7  # copy-on-write: nothing else changes
    np.testing.assert_array_equal(got["b"], _large_arrays()["b"])
    np.testing.assert_array_equal(got["c"], _large_arrays()["c"])


def test_large_arrays_from_a_temporary_folder_are_copied(private_tmp):
    got = sandbox.run("selftest", {"mode": "large"}, SMALL).value
    for name, array in _large_arrays().items():
        np.testing.assert_array_equal(got[name], array)
        assert _mapping(got[name]) is None


def test_without_room_or_with_a_chosen_temporary_folder_the_temporary_folder_is_used(memory_root, monkeypatch,
                                                                                    tmp_path):
    """The memory root is used when half of what it and the machine's available memory have left holds the
    given files."""
    default = tmp_path / "default-tmp"
    default.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(default))
    used = _folders_used(monkeypatch)
    free = sandbox._free_bytes(memory_root)
    monkeypatch.setattr(sandbox, "_free_bytes", lambda root: 2 * 100 + 1)  # half: 100 bytes, the file's size
    sandbox.run("selftest", {"mode": "arrays"}, SMALL, files={"input.bin": bytes(100)})
    monkeypatch.setattr(sandbox, "_free_bytes", lambda root: free)
    with monkeypatch.context() as short:  # room in the folder, not in the machine's available memory
        short.setattr(sandbox, "available_memory", lambda: 2 * 100 + 1)
        sandbox.run("selftest", {"mode": "arrays"}, SMALL, files={"input.bin": bytes(100)})
    monkeypatch.setenv("TMPDIR", str(default))
    sandbox.run("selftest", {"mode": "arrays"}, SMALL)
    assert [folder.parent for folder in used] == [default, default, default]
    assert listing(memory_root) == set() and listing(default) == set()


def test_limits_far_over_the_memory_left_still_use_the_memory_root(memory_root, monkeypatch):
    """A child's limits are bounds, not sizes: an npz's allow for unpacking to 4 GiB, which sent every npz
    over 40 MB to the temporary folder. Only the given files and the arrays handed back count."""
    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 << 20)
    used = _folders_used(monkeypatch)
    huge = sandbox.Limits(memory_bytes=4 * sandbox.available_memory(), cpu_seconds=60.0, wall_seconds=120.0)
    got = sandbox.run("selftest", {"mode": "large"}, huge, files={"input.bin": bytes(1000)}).value
    assert [folder.parent for folder in used] == [memory_root]
    assert _mapping(got["a"]) is not None  # read from memory, mapped
    assert listing(memory_root) == set()


def test_arrays_over_the_memory_roots_room_spill_to_the_temporary_folder(memory_root, monkeypatch, tmp_path):
    """The child writes its arrays to the spill folder (in the temporary folder) when they would take more
    than the memory root's room left after the given files; they come back whole, copied, and both
    folders are removed."""
    default = tmp_path / "default-tmp"
    default.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(default))
    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 << 20)
    used = _folders_used(monkeypatch)
    outputs = []
    collect = sandbox._collect
    monkeypatch.setattr(sandbox, "_collect", lambda folder, limits, report, spill, in_place: outputs.append(
        {f.parent for f in (folder, Path(spill["folder"])) if (f / "out" / "arrays.bin").exists()})
        or collect(folder, limits, report, spill, in_place))
    given = 1000
    expected = _large_arrays()
    arrays = sum(a.nbytes + 64 for a in expected.values())
    for room, where in ((arrays + 64, memory_root), (arrays - 64, default)):
        monkeypatch.setattr(sandbox, "_free_bytes", lambda root, room=room: 2 * (given + room))
        got = sandbox.run("selftest", {"mode": "large"}, SMALL, files={"input.bin": bytes(given)}).value
        for name, array in expected.items():
            np.testing.assert_array_equal(got[name], array)
        assert (_mapping(got["a"]) is not None) == (where == memory_root)
        assert outputs[-1] == {where}
    assert [folder.parent for folder in used] == [memory_root, memory_root]
    assert listing(memory_root) == set() and listing(default) == set()


MIB = 1 << 20


def _given_file(seed: int = 0, size: int = 5 * MIB) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _views(data: bytes, views: dict) -> dict[str, np.ndarray]:
    """The self-test's "views" made here: {name: [start, bytes, dtype]} of ``data``."""
    raw = np.frombuffer(data, dtype=np.uint8)
    return {name: raw[start:start + n].view(dtype) for name, (start, n, dtype) in views.items()}


def _run_views(data: bytes, views: dict, **args) -> sandbox.SandboxResult:
    return sandbox.run("selftest", {"mode": "views", "file": "input.bin", "views": views, **args}, SMALL,
                       files={"input.bin": data})


def test_large_views_of_a_given_file_in_memory_come_back_from_where_they_lie(memory_root, monkeypatch):
    """Arrays that are views of a file the parent gave (an npz upload's stored members) are moved down to a
    64-byte boundary in that file and handed back from there, not written again; arrays that the move would
    touch (in the gap below a moved one) or met a second time are copied first, and everything is equal."""
    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 * MIB)
    data = _given_file()
    views = {"a": [3, 2 * MIB, "<f4"],  # moved 3 bytes down to offset 0
             "close_below": [2 * MIB + 3 + 16, 40, "<f4"],  # small: copied; overwritten by b's move
             "b": [2 * MIB + 3 + 61, 1 * MIB + 4, "<i2"],  # the gap below it holds close_below's end
             "overlaps_b": [3 * MIB + 100, MIB, "<f4"],  # starts 33 bytes before b ends: copied
             "too_small": [4 * MIB + 200, MIB - 4, "<f4"]}
    result = _run_views(data, views, twice=["a"])
    expected = _views(data, views)
    for name, array in expected.items():
        assert result.value[name].dtype == array.dtype, name
        np.testing.assert_array_equal(result.value[name], array, err_msg=name)
    np.testing.assert_array_equal(result.value["twice"][0], expected["a"])  # the same array a second time
    assert result.report.in_place_bytes == 2 * MIB + (MIB + 4)  # a and b
    assert listing(memory_root) == set()


def test_views_are_written_as_before_where_the_file_is_not_in_memory_or_not_filled_or_not_given(
        memory_root, monkeypatch, tmp_path):
    default = tmp_path / "default-tmp"
    default.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(default))
    monkeypatch.setattr(sandbox, "MAP_MIN_BYTES", 1 * MIB)
    data = _given_file(1)
    half = {"x": [5, 2 * MIB + 4, "<f4"]}  # under half of the 5 MiB file: its mapping would keep 5 MiB alive
    result = _run_views(data, half)
    np.testing.assert_array_equal(result.value["x"], _views(data, half)["x"])
    assert result.report.in_place_bytes == 0
    most = {"x": [5, 4 * MIB, "<f4"]}
    assert _run_views(data, most).report.in_place_bytes == 4 * MIB
    user_file = tmp_path / "user.bin"  # a file read where it is (not given): never rewritten
    user_file.write_bytes(data)
    result = sandbox.run("selftest", {"mode": "views", "path": str(user_file), "views": most}, SMALL)
    np.testing.assert_array_equal(result.value["x"], _views(data, most)["x"])
    assert result.report.in_place_bytes == 0 and user_file.read_bytes() == data
    monkeypatch.setattr(sandbox, "MEMORY_ROOT", None)  # no memory root: the temporary folder, a disk
    result = _run_views(data, most)
    np.testing.assert_array_equal(result.value["x"], _views(data, most)["x"])
    assert result.report.in_place_bytes == 0 and listing(default) == set() and listing(memory_root) == set()


def test_arrays_are_moved_a_window_at_a_time_or_not_at_all_when_no_window_can_be_mapped(tmp_path, monkeypatch):
    from decalign import _sandbox_worker as worker

    monkeypatch.setattr(worker, "MOVE_WINDOW", 1 << 16)  # 64 windows, each overlapping the one before it
    data = _given_file(2)
    (tmp_path / "input.bin").write_bytes(data)
    views = {"x": [7, 4 * MIB, "<f4"]}
    value = worker.selftest({"mode": "views", "folder": str(tmp_path), "file": "input.bin", "views": views})
    offer = {"files": ["input.bin"], "min_bytes": MIB}
    mapping = mmap.mmap

    def no_room(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", no_room)
    assert worker._in_place_plan(value, tmp_path, offer) == {}  # every array is then written as usual
    monkeypatch.setattr(mmap, "mmap", mapping)
    plan = worker._in_place_plan(value, tmp_path, offer)
    assert [spot[1:] for spot in plan.values()] == [(7, 0, 4 * MIB)]
    encoded = worker._encode(value, tmp_path / "out", plan, tmp_path)
    assert encoded["x"] == {sandbox.ARRAY_KEY: [0, "<f4", [MIB], "input.bin"]}
    moved = (tmp_path / "input.bin").read_bytes()
    assert moved[:4 * MIB] == data[7:7 + 4 * MIB] and moved[4 * MIB + 7:] == data[4 * MIB + 7:]


def test_the_parent_reads_from_a_given_file_only_where_the_reference_is_sound(tmp_path):
    (tmp_path / "out").mkdir()
    given = {"input.bin": tmp_path / "input.bin"}
    given["input.bin"].write_bytes(bytes(64) + np.arange(4, dtype="<i4").tobytes())
    ref = lambda *r: {"x": {sandbox.ARRAY_KEY: list(r)}}
    got = sandbox._decode(ref(64, "<i4", [4], "input.bin"), tmp_path / "out", given=given)
    np.testing.assert_array_equal(got["x"], [0, 1, 2, 3])
    for value, message in ((ref(64, "<i4", [4], "request.json"), "not a file given"),
                           (ref(64, "<i4", [4], "../input.bin"), "not a file given"), (ref(64, "<i4", [4], 7), "not a file given"),
                           (ref(64, "<i4", [5], "input.bin"), "input.bin: an array of 20 bytes at 64 ends past"),
                           ({"a": ref(0, "<i4", [17], "input.bin"), "b": ref(64, "<i4", [1], "input.bin")},
                            "input.bin: two arrays overlap")):
        with pytest.raises(ValueError, match=message):
            sandbox._decode(value, tmp_path / "out", given=given)


def test_folders_left_by_a_process_that_is_gone_are_swept_once(memory_root):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    stale = memory_root / f"decalign-sandbox-{int(gone.stdout)}-abc"
    (stale / "out").mkdir(parents=True)
    (stale / "out" / sandbox.ARRAYS_FILE).write_bytes(bytes(1000))
    live = memory_root / f"decalign-sandbox-{os.getpid()}-def"
    other = memory_root / "someone-else"
    live.mkdir()
    other.mkdir()
    sandbox.run("selftest", {"mode": "arrays"}, SMALL)
    assert listing(memory_root) == {live.name, other.name}
    stale.mkdir()
    sandbox.run("selftest", {"mode": "arrays"}, SMALL)  # swept once a process: later runs do not list it
    assert listing(memory_root) == {live.name, other.name, stale.name}


@pytest.fixture
def spare():
    sandbox.keep_spare(True)
    try:
        yield
    finally:
        sandbox.keep_spare(False)


def test_a_spare_child_takes_the_next_file_and_another_is_started(spare, private_tmp):
    first = sandbox._spare.pid
    assert sandbox.run("selftest", {"mode": "pid"}, SMALL).value == {"pid": first}
    second = sandbox._spare
    assert second.pid != first and second.poll() is None
    assert sandbox.run("selftest", {"mode": "pid"}, SMALL).value == {"pid": second.pid}
    assert sandbox.run("selftest", {"mode": "modules"}, SMALL).value == {"heavy": []}
    assert listing(private_tmp) == set()
    waiting = sandbox._spare
    sandbox.keep_spare(False)
    assert waiting.wait(timeout=60) == 0 and sandbox._spare is None  # its stdin closed: it exits
    assert sandbox.run("selftest", {"mode": "pid"}, SMALL).value["pid"] != waiting.pid and sandbox._spare is None


def test_a_spare_child_is_limited_like_a_fresh_one(spare, private_tmp):
    assert _fails("allocate", bytes=1 << 30).kind == "memory"
    assert "signal 11, SIGSEGV" in str(_fails("segfault"))
    assert "allow_pickle=False" in str(_fails("object"))
    error = _fails("sleep", sandbox.Limits(256 << 20, 20, 2), seconds=60)
    assert error.kind == "time" and error.report.wall_seconds < 30
    assert listing(private_tmp) == set()


def test_a_dead_spare_is_replaced_by_a_fresh_child(spare):
    sandbox._spare.kill()
    sandbox._spare.wait()
    result = sandbox.run("selftest", {"mode": "arrays"}, SMALL)
    np.testing.assert_array_equal(result.value["x"], np.arange(6, dtype=np.float32).reshape(2, 3))
