"""Sharing the CPU: the trainer's thread governor and the server's per-thread politeness."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from decalign import cpu_share
from decalign.cpu_share import CpuWatch, others_cores, share_with_training, threads_left
from decalign.train.cpu_threads import ShareCpuCallback


def test_others_cores_subtracts_own_time():
    # 2 s of wall time; the machine's CPU time grew by 3 s, 1.2 of them this process's own
    assert others_cores((10.0, 100.0, 5.0), (12.0, 103.0, 6.2)) == pytest.approx(0.9)
    assert others_cores((10.0, 100.0, 5.0), (12.0, 100.5, 6.0)) == 0.0  # clock granularity: never negative
    assert others_cores((10.0, 100.0, 5.0), (10.0, 101.0, 5.0)) == 0.0


@pytest.mark.parametrize(("cores", "others", "maximum", "expected"), [
    (2, 0.0, 2, 2), (2, 0.49, 2, 2), (2, 0.5, 2, 1), (2, 1.7, 2, 1), (2, 3.0, 2, 1),
    (8, 2.6, 8, 5), (8, 0.2, 4, 4), (8, 7.9, 8, 1),
])
def test_threads_left(cores, others, maximum, expected):
    assert threads_left(cores, others, maximum) == expected


def _spinner(stop: threading.Event) -> None:
    code = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    stop.wait()
    proc.kill()
    proc.wait()


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="measures other processes through /proc/stat")
def test_governor_follows_a_busy_process(monkeypatch):
    """One thread while another process spins on one of the cores, all of them once it has stopped."""
    before = torch.get_num_threads()
    callback = ShareCpuCallback(check_every_s=0.3)
    monkeypatch.setattr(callback, "cores", 2)
    try:
        torch.set_num_threads(2)
        callback.on_train_start(1, 1, 10)
        assert torch.get_num_threads() == 1  # starts on one thread
        stop = threading.Event()
        spinner = threading.Thread(target=_spinner, args=(stop,))
        spinner.start()
        try:
            _tick_until(callback, lambda: callback.changes and callback.changes[-1][1] == 1, 10)
            time.sleep(1.0)
            _tick_for(callback, 1.0)
            assert torch.get_num_threads() == 1
        finally:
            stop.set()
            spinner.join()
        _tick_until(callback, lambda: torch.get_num_threads() == 2, 30)
        callback.on_train_end("finished")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _tick_for(callback, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        callback.on_batch_end(1, 1, 10, {})
        time.sleep(0.05)


def _tick_until(callback, condition, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"threads stayed {torch.get_num_threads()}; changes {callback.changes}"
        callback.on_batch_end(1, 1, 10, {})
        time.sleep(0.05)


def test_governor_without_proc_stat_keeps_the_threads(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_share, "STAT", tmp_path / "missing")
    before = torch.get_num_threads()
    callback = ShareCpuCallback(check_every_s=0.0)
    callback.on_train_start(1, 1, 10)
    callback.on_batch_end(1, 1, 10, {})
    assert torch.get_num_threads() == before and callback.changes == []


class _Others:
    def __init__(self, cores: float):
        self.cores = cores

    def others_lately(self) -> float:
        return self.cores


def test_server_thread_uses_one_torch_thread_while_training(monkeypatch):
    """One torch thread while a run is alive, the default after (on a machine nothing else uses); the
    priority is left alone."""
    monkeypatch.setattr(cpu_share, "_watch", lambda: _Others(0.0))
    seen = {}

    def page(training: bool):
        share_with_training(training)
        seen[training] = (torch.get_num_threads(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    default = torch.get_num_threads()
    for training in (True, False):
        worker = threading.Thread(target=page, args=(training,))
        worker.start()
        worker.join()
    assert seen[True] == (1, 0)
    assert seen[False] == (default, 0)


def _two_cores(monkeypatch, others: float = 0.0) -> None:
    """A 2-core machine whose other processes keep ``others`` cores busy; the process's default two threads."""
    monkeypatch.setattr(cpu_share, "_watch", lambda: _Others(others))
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu_share, "_default_threads", 2)


def _page_threads() -> int:
    seen = []
    worker = threading.Thread(target=lambda: (share_with_training(False), seen.append(torch.get_num_threads())))
    worker.start()
    worker.join()
    return seen[0]


@pytest.mark.parametrize(("others", "expected"), [(0.0, 2), (0.4, 2), (0.6, 1), (1.0, 1), (3.0, 1)])
def test_server_thread_computes_on_the_cores_the_others_leave(monkeypatch, others, expected):
    _two_cores(monkeypatch, others)
    assert _page_threads() == expected


def test_cpu_watch_measures_the_last_window_without_this_process(monkeypatch):
    """From the newest sample at least a window old to now: other processes' CPU time over wall time."""
    counters = {"machine": 100.0}
    watch = CpuWatch(every_s=60.0, window_s=1.0)  # its thread sleeps through the test
    monkeypatch.setattr(cpu_share, "machine_cpu_seconds", lambda: counters["machine"])
    now, own = time.monotonic(), sum(os.times()[:2])
    watch._samples.clear()
    watch._samples.extend([(now - 3.0, 90.0, own), (now - 2.0, 96.0, own), (now - 1.0, 99.0, own),
                           (now - 0.1, 99.9, own)])  # 0.1 s old: too fresh to measure from
    counters["machine"] = 100.5 + (sum(os.times()[:2]) - own)  # 1.5 s of others' time since the 1 s sample
    assert watch.others_lately() == pytest.approx(1.5, rel=0.05)
    watch._samples.clear()
    assert watch.others_lately() == 0.0  # nothing to measure from yet


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="measures other processes through /proc/stat")
def test_server_thread_leaves_a_busy_core_alone(monkeypatch):
    """A real process spinning on one of two cores: pages compute on one thread, on two once it stops."""
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu_share, "_default_threads", 2)
    watch = CpuWatch(every_s=0.1, window_s=0.5)
    monkeypatch.setattr(cpu_share, "_watch", lambda: watch)
    stop = threading.Event()
    spinner = threading.Thread(target=_spinner, args=(stop,))
    spinner.start()
    try:
        _until(lambda: _page_threads() == 1, 30)
    finally:
        stop.set()
        spinner.join()
    _until(lambda: _page_threads() == 2, 60)


def _until(condition, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"still {_page_threads()} threads after {deadline_s} s"
        time.sleep(0.1)


@pytest.mark.parametrize(("free", "runs", "expected"), [(2, 1, 2), (2, 2, 1), (2, 3, 1), (4, 2, 2), (5, 2, 2),
                                                          (1, 1, 1), (3, 0, 3)])
def test_threads_for_run(free, runs, expected):
    assert cpu_share.threads_for_run(free, runs) == expected


def test_computing_runs_share_the_cores_and_waiting_runs_do_not_count(monkeypatch):
    """A run computing alone takes both free cores. A second run starting takes one (it is about to compute),
    but while it only waits (for a cached result another run computes) the first keeps both at its next
    chunk; once the second computes too, each has one; once it is done computing, the first has both again."""
    _two_cores(monkeypatch)
    seen, steps = {}, [threading.Event() for _ in range(4)]

    def second_run():
        with cpu_share.script_run(False):
            seen["second starting"] = torch.get_num_threads()
            steps[0].set()
            steps[1].wait(60)
            with cpu_share.computing():
                seen["second computing"] = torch.get_num_threads()
                steps[2].set()
                steps[3].wait(60)

    def first_run():
        with cpu_share.script_run(False), cpu_share.computing():
            seen["alone"] = torch.get_num_threads()
            other = threading.Thread(target=second_run)
            other.start()
            steps[0].wait(60)
            cpu_share.keep_share()
            seen["beside a waiting run"] = torch.get_num_threads()
            steps[1].set()
            steps[2].wait(60)
            cpu_share.keep_share()
            seen["beside a computing run"] = torch.get_num_threads()
            steps[3].set()
            other.join()
            cpu_share.keep_share()
            seen["after it"] = torch.get_num_threads()

    worker = threading.Thread(target=first_run)
    worker.start()
    worker.join()
    assert seen == {"alone": 2, "second starting": 1, "beside a waiting run": 2, "second computing": 1,
                    "beside a computing run": 1, "after it": 2}
    assert not cpu_share._script_runs and not cpu_share._computing


def test_computing_outside_a_script_run_leaves_the_threads_alone(monkeypatch):
    _two_cores(monkeypatch)
    seen = []

    def command_line():
        torch.set_num_threads(1)
        with cpu_share.computing():
            seen.append(torch.get_num_threads())
            seen.append(dict(cpu_share._computing))

    worker = threading.Thread(target=command_line)
    worker.start()
    worker.join()
    assert seen == [1, {}]


def test_a_run_left_by_an_error_leaves_the_count(monkeypatch):
    _two_cores(monkeypatch)

    def failing_run():
        with pytest.raises(RuntimeError), cpu_share.script_run(False), cpu_share.computing(), cpu_share.computing():
            raise RuntimeError("a page failed")

    worker = threading.Thread(target=failing_run)
    worker.start()
    worker.join()
    assert not cpu_share._script_runs and not cpu_share._computing


@pytest.mark.parametrize(("second_computes", "expected"), [(True, [2, 1, 1]), (False, [2, 2, 2])])
def test_inference_takes_its_share_between_chunks(monkeypatch, second_computes, expected):
    """run_inference in a script run: a second run that starts computing during its first chunk gets one
    thread and leaves it one from the second chunk on; one that only waits leaves it both."""
    from decalign.data import make_synthetic
    from decalign.inference import run_inference
    from decalign.model import DecAlign
    from tests.model.helpers import WIDTHS, small_config

    _two_cores(monkeypatch)
    model = DecAlign(small_config(), WIDTHS, 1)
    split = make_synthetic(0, 0, 12, widths=WIDTHS, seq_len=3, seed=0).splits["test"]
    started, release, threads, second = threading.Event(), threading.Event(), [], []

    def second_run():
        with cpu_share.script_run(False), cpu_share.computing() if second_computes else contextlib.nullcontext():
            second.append(torch.get_num_threads())
            started.set()
            release.wait(60)

    helper = threading.Thread(target=second_run)

    def on_chunk(batch, output):
        threads.append(torch.get_num_threads())
        if len(threads) == 1:
            helper.start()
            started.wait(60)

    def page():
        with cpu_share.script_run(False):
            run_inference(model, split, task="regression", batch_size=4, on_chunk=on_chunk)
        release.set()

    worker = threading.Thread(target=page)
    worker.start()
    worker.join()
    helper.join()  # a second run still leaving its blocks would count in the next case's first chunk
    assert threads == expected
    assert second == [1]  # the inference counts as computing, whether or not the second run computes
    assert not cpu_share._script_runs and not cpu_share._computing
