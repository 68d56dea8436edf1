"""The sandbox: a child with memory, CPU and wall-clock limits that hands back plain arrays only."""

from __future__ import annotations

import io
import tempfile

import numpy as np
import pytest

from decalign import sandbox
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


@pytest.mark.parametrize("array", [np.array([object()], dtype=object),
                                   np.zeros(3, dtype=[("a", "<f4")]),
                                   np.array(["2020-01-01"], dtype="datetime64[D]")])
def test_the_parent_reads_only_plain_npy(tmp_path, array):
    path = tmp_path / "a0.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain"):
        sandbox.read_plain_npy(path)


def test_an_npy_whose_size_does_not_match_its_header_is_refused(tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(1000))
    path = tmp_path / "a0.npy"
    path.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(ValueError, match="size does not match"):
        sandbox.read_plain_npy(path)


def test_a_temporary_folder_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the temporary folder should be")
    monkeypatch.setattr(tempfile, "tempdir", str(blocked))
    error = _fails("arrays")
    assert error.kind == "failed" and str(error).startswith("the parser could not be started (")
