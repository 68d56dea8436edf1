"""Callbacks that let another process follow and stop a training run through files in the run directory.

``ProgressFileCallback`` rewrites ``progress.json`` (atomically, at most every ``interval`` seconds and
at every epoch boundary)::

    {"state": "running"|"finished"|"cancelled"|"failed", "epoch": e, "total_epochs": E, "start_epoch": s,
     "batch": b, "num_batches": B, "fraction": share of all planned batches done, "elapsed_s": ...,
     "seconds_per_batch": ..., "eta_s": ..., "batches": [{"batch": 1, "total": ..., ...}, ...] (this epoch),
     "updated_at": ISO time}

``CancelFileCallback`` asks the trainer to stop cleanly as soon as a file (``run_dir/cancel``) exists.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from .callbacks import Callback

PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel"


def eta_seconds(elapsed: float, done: int, remaining: int) -> float | None:
    """Time left, from the mean wall time per batch so far: ``elapsed / done * remaining``.

    ``elapsed`` counts everything since this process started training (validation and checkpoints
    included), so the estimate charges their cost to the batches too. None before the first batch.
    """
    if done <= 0:
        return None
    return elapsed / done * max(remaining, 0)


class ProgressFileCallback(Callback):
    """Write the run's progress to ``path`` (see the module docstring) for a dashboard to poll."""

    def __init__(self, path: str | Path, interval: float = 0.5):
        self.path, self.interval = Path(path), interval
        self.total_epochs = self.start_epoch = self.num_batches = 0
        self.epoch = self.batch = self.done = 0
        self.batches: list[dict[str, float]] = []
        self.started = self.last_write = 0.0

    def on_train_start(self, total_epochs, start_epoch, batches_per_epoch):
        self.total_epochs, self.start_epoch, self.num_batches = total_epochs, start_epoch, batches_per_epoch
        self.epoch, self.started = start_epoch, time.monotonic()
        self._write("running", force=True)

    def on_epoch_start(self, epoch):
        self.epoch, self.batch, self.batches = epoch, 0, []
        self._write("running", force=True)

    def on_batch_end(self, epoch, batch, num_batches, losses):
        self.done += batch - self.batch  # on a GPU the trainer reports every few batches
        self.epoch, self.batch, self.num_batches = epoch, batch, num_batches
        self.batches.append({"batch": batch, **{k: _finite(v) for k, v in losses.items()}})
        self._write("running", force=batch == num_batches)

    def on_train_end(self, status):
        self._write(status, force=True)

    def _remaining(self) -> int:
        return (self.total_epochs - self.epoch) * self.num_batches + (self.num_batches - self.batch)

    def snapshot(self, state: str) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        planned = max(self.total_epochs * self.num_batches, 1)
        finished = (self.epoch - 1) * self.num_batches + self.batch
        return {
            "state": state, "epoch": self.epoch, "total_epochs": self.total_epochs,
            "start_epoch": self.start_epoch, "batch": self.batch, "num_batches": self.num_batches,
            "fraction": min(max(finished / planned, 0.0), 1.0), "elapsed_s": elapsed,
            "seconds_per_batch": elapsed / self.done if self.done else None,
            "eta_s": eta_seconds(elapsed, self.done, self._remaining()), "batches": self.batches,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def _write(self, state: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_write < self.interval:
            return
        self.last_write = now
        atomic_write_json(self.path, self.snapshot(state))


def _finite(value: float) -> float | None:
    """JSON has no NaN/inf (and ``atomic_write_json`` refuses them): a diverged loss is written as null."""
    value = float(value)
    return value if math.isfinite(value) else None


class CancelFileCallback(Callback):
    """Stop cleanly once ``path`` exists (one ``stat`` per batch: cheap next to a training step)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def should_stop(self) -> bool:
        return self.path.exists()


def read_progress(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``progress.json``, or None when there is none yet (or it is being replaced)."""
    path = Path(run_dir) / PROGRESS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
