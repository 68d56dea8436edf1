"""Share the CPU with the other processes on the machine: a training run this server started, the browser.

Torch's OpenMP threads spin while they wait for each other. Two processes that each run two such threads
on two cores keep descheduling each other's partner thread, and both slow down by far more than half:
on this project's 2-core machine a demo epoch took 1.5 s alone and 34-105 s beside a busy 2-thread
torch loop. So while a training process started by this server is alive, the server's page computations
run on one torch thread; the training process (``decalign train --share-cpu``) then sees that core busy
and trains on the other.

The same holds for anything else that keeps a core busy, most often a browser on the same machine drawing
the page the script is computing: inference on 1,000 MOSI-shaped samples (a small model) took 0.09 s on two
threads and 0.14 s on one on a quiet 2-core machine, but 0.25-0.46 s on two and 0.14-0.16 s on one while
another process kept a core busy. So without a run, a page computes on the cores the other processes left
free over the last second (:func:`threads_left`, as ``--share-cpu`` decides), measured
by a sampler thread four times a second from ``/proc/stat``. This process's own time (its other sessions
included) does not count as the others'.

The torch thread count is set per script run, in the thread that runs it (Streamlit runs each script run
in a thread of its own). The thread's scheduling priority is left alone: a lower one also delayed the
Train page's own live view behind the run it shows.

Two sessions whose script runs compute at the same moment are one process, invisible to each other in
``/proc/stat``: each took every free core, and their spinning teams took turns on them. So a script run's
long computations (:func:`computing`: inference on a whole split) count themselves among this process's
computing runs while they last, each run gets its part of the free cores (at least one thread), and takes
it again between chunks (:func:`keep_share`), when another run has begun or ended computing meanwhile.
Inference on 1,000 MOSI-shaped samples in two runs at once on this project's 2-core machine: both done after
1.55 s with two threads each, 1.34 s with one each (one alone: 0.85 s on two) at a busy moment of its host,
1.00 s against 0.97 s at a quieter one (``bench/bench_sessions.py``).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SAMPLE_EVERY_S = 0.25
WINDOW_S = 1.0  # how far back "lately" reaches
STAT = Path("/proc/stat")

_default_threads: int | None = None


_runs_lock = threading.Lock()
_script_runs: dict[int, bool] = {}  # thread ident of each script run now running -> a training run alive
_computing: dict[int, int] = {}  # thread ident of each script run inside computing() -> its depth there


@contextmanager
def script_run(training: bool) -> Iterator[None]:
    """The calling thread runs a script run until the block ends; its torch threads are set now
    (:func:`share_with_training`) and again where it computes (:func:`computing`, :func:`keep_share`)."""
    ident = threading.get_ident()
    with _runs_lock:
        _script_runs[ident] = training
    try:
        share_with_training(training)
        yield
    finally:
        with _runs_lock:
            _script_runs.pop(ident, None)
            _computing.pop(ident, None)


@contextmanager
def computing() -> Iterator[None]:
    """A long computation of the calling script run (e.g. inference on a whole split): while it lasts the run
    counts among those that share the free cores, and its threads are its part (a no-op outside a script run).
    Only computing runs count: a run waiting for another's cached result (Streamlit lets one compute it)
    takes no core, and counting it had left the run that computes on one thread."""
    ident = threading.get_ident()
    with _runs_lock:
        inside = ident in _script_runs
        if inside:
            _computing[ident] = _computing.get(ident, 0) + 1
    try:
        keep_share()
        yield
    finally:
        if inside:
            with _runs_lock:
                depth = _computing.pop(ident, 1) - 1
                if depth:
                    _computing[ident] = depth


def keep_share() -> None:
    """Between chunks of a long computation: the calling script run's threads for the runs computing now (a
    no-op outside a script run, e.g. on the command line)."""
    training = _script_runs.get(threading.get_ident())
    if training is not None:
        share_with_training(training)


def computing_runs() -> int:
    """Script runs of this process computing now, the caller's counted whether or not it is inside
    :func:`computing` (it is about to compute, or it would not ask)."""
    ident = threading.get_ident()
    with _runs_lock:
        return len(_computing) + (ident not in _computing)


def share_with_training(training: bool) -> None:
    """Set the calling thread's torch threads: one while a run is alive (``training``), else this script
    run's part of the cores the other processes left free lately (:func:`threads_for_run`), at most the
    process's default."""
    if not training and "torch" not in sys.modules:
        return  # no thread can have changed torch's count, and a fresh server's first page needs no torch
    import torch  # here, not at the top: importing this module stays light

    global _default_threads
    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    wanted = 1 if training else threads_for_run(
        threads_left(usable_cores(), _watch().others_lately(), _default_threads), computing_runs())
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


def threads_for_run(free_threads: int, runs: int) -> int:
    """One run's part of ``free_threads`` shared by ``runs`` running at once; at least one thread."""
    return max(1, free_threads // max(1, runs))


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_cpu_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (``/proc/stat``, neither idle nor
    iowait); None without ``/proc/stat``."""
    try:
        fields = STAT.read_text(encoding="ascii").split("\n", 1)[0].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8) if i < len(fields)) / tick


def cpu_sample() -> tuple[float, float, float] | None:
    """(monotonic seconds, CPU seconds of every process, CPU seconds of this one); None without ``/proc/stat``."""
    busy = machine_cpu_seconds()
    return None if busy is None else (time.monotonic(), busy, sum(os.times()[:2]))


def others_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """Cores the other processes kept busy on average between two samples."""
    wall = after[0] - before[0]
    if wall <= 0:
        return 0.0
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / wall


def threads_left(cores: int, others: float, max_threads: int) -> int:
    """Threads for the cores the others leave: a core counts as taken from half its time on."""
    return max(1, min(max_threads, cores - math.floor(others + 0.5)))


class CpuWatch:
    """Samples (monotonic s, the machine's CPU s, this process's CPU s) every ``every_s`` in a daemon thread."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S, window_s: float = WINDOW_S):
        self.every_s, self.window_s = every_s, window_s
        self._samples: deque[tuple[float, float, float]] = deque(maxlen=int(window_s / every_s) + 2)
        self._lock = threading.Lock()
        first = cpu_sample()
        self.available = first is not None
        if self.available:
            self._samples.append(first)
            threading.Thread(target=self._run, name="cpu-watch", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            now = cpu_sample()
            if now is not None:
                with self._lock:
                    self._samples.append(now)

    def others_lately(self) -> float:
        """Cores the other processes kept busy from about ``window_s`` ago to now; 0 with nothing to go on."""
        now = cpu_sample() if self.available else None
        if now is None:
            return 0.0
        with self._lock:  # oldest first; one fresher than half a period measures too short a time
            old_enough = [s for s in self._samples if now[0] - s[0] >= min(self.every_s, self.window_s) / 2]
        if not old_enough:
            return 0.0
        start = next((s for s in reversed(old_enough) if now[0] - s[0] >= self.window_s), old_enough[0])
        return others_cores(start, now)


_watch_lock = threading.Lock()
_the_watch: CpuWatch | None = None


def _watch() -> CpuWatch:
    global _the_watch
    with _watch_lock:
        if _the_watch is None:
            _the_watch = CpuWatch()
        return _the_watch
