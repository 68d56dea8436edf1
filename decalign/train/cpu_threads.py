"""Training that leaves the cores to other processes while they need them (``decalign train --share-cpu``).

Torch's OpenMP threads spin while they wait for each other, so a training process that runs one thread
per core slows down several-fold as soon as anything else runs (a browser drawing the live view, the
dashboard computing a page): at MOSI shapes on 2 cores one epoch took 2.5 s alone; beside one busy
process it took 7.2 s training on two threads and 3.2 s on one. ``ShareCpuCallback`` measures, about twice a second,
how many cores the other processes on the machine used (all CPU time from ``/proc/stat`` minus this
process's own) and runs on the cores left over, at least one and at most the starting thread count. It
starts on one thread: two threads beside a busy process cost far more than one thread on an idle machine
(1.35x at MOSI shapes) for the half second before the first measurement.

Changing the thread count can change the order of floating-point sums, so a run trained this way may
differ in the last bits from one with a fixed thread count; the command line keeps a fixed count
unless asked.
"""

from __future__ import annotations

import sys
import time

from ..cpu_share import cpu_sample, others_cores, threads_left, usable_cores
from .callbacks import Callback

CHECK_EVERY_S = 0.5


class ShareCpuCallback(Callback):
    """After a batch, at most every ``CHECK_EVERY_S``: torch threads = cores the others leave free."""

    def __init__(self, check_every_s: float = CHECK_EVERY_S):
        self.check_every_s = check_every_s
        self.max_threads = 0
        self.used: set[int] = set()
        self.cores = usable_cores()
        self._last: tuple[float, float, float] | None = None
        self.changes: list[tuple[float, int]] = []  # (seconds since the start, threads)

    def on_train_start(self, total_epochs: int, start_epoch: int, batches_per_epoch: int) -> None:
        import torch

        self.max_threads = torch.get_num_threads()
        self._start = time.monotonic()
        self._last = cpu_sample()
        if self._last is not None:  # start on one thread: a wrong guess costs less this way round
            self._apply(1)
        self.used = {torch.get_num_threads()}

    def on_batch_end(self, epoch: int, batch: int, num_batches: int, losses: dict[str, float]) -> None:
        if self._last is None or self.max_threads <= 1:
            return
        if time.monotonic() - self._last[0] < self.check_every_s:
            return
        now = cpu_sample()
        if now is None:
            self._last = None  # no /proc/stat: nothing to measure, keep the threads as they are
            return
        others = others_cores(self._last, now)
        self._last = now
        self._apply(threads_left(self.cores, others, self.max_threads))

    def on_train_end(self, status: str) -> None:
        if self.max_threads:
            print(f"decalign: --share-cpu: ran on {' and '.join(map(str, sorted(self.used)))} of "
                  f"{self.max_threads} torch threads ({len(self.changes)} changes)", file=sys.stderr)
            self._apply(self.max_threads)  # the starting count again, for whatever this process runs next

    def _apply(self, threads: int) -> None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
            self.changes.append((round(time.monotonic() - self._start, 2), threads))
            self.used.add(threads)
