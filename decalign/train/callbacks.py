"""Callbacks: how the training loop reports progress (tqdm, the dashboard) and how it is cancelled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Callback:
    """Base class with no-op hooks; override the ones you need.

    The trainer calls, in order: ``on_train_start`` once; per epoch ``on_epoch_start``, then
    ``on_batch_end`` after each optimiser step, then ``on_epoch_end`` with the epoch's history row;
    ``on_train_end`` once with the final status. After every batch it asks ``should_stop()``: when any
    callback says yes, the trainer stops cleanly (saves ``last``, keeps ``best``, status "cancelled").
    """

    def on_train_start(self, total_epochs: int, start_epoch: int, batches_per_epoch: int) -> None:
        """``start_epoch`` is 1 for a fresh run and later when resuming."""

    def on_epoch_start(self, epoch: int) -> None:
        """Epochs are numbered from 1."""

    def on_batch_end(self, epoch: int, batch: int, num_batches: int, losses: dict[str, float]) -> None:
        """``losses``: every loss term and every alignment level of this batch, as floats.

        ``batch`` counts from 1. On the CPU this is called after every batch; on a GPU only every
        ``Trainer.sync_every`` batches and after the last one, so that the host does not wait for the
        device at every step.
        """

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """``row``: the history row just appended (see ``decalign.train.trainer``)."""

    def on_train_end(self, status: str) -> None:
        """``status``: finished, cancelled or failed."""

    def should_stop(self) -> bool:
        """Return True to request a clean stop after the current batch."""
        return False


class CallbackList(Callback):
    """Fan every hook out to several callbacks; ``should_stop`` is true if any says so."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)

    def on_train_start(self, total_epochs, start_epoch, batches_per_epoch):
        for cb in self.callbacks:
            cb.on_train_start(total_epochs, start_epoch, batches_per_epoch)

    def on_epoch_start(self, epoch):
        for cb in self.callbacks:
            cb.on_epoch_start(epoch)

    def on_batch_end(self, epoch, batch, num_batches, losses):
        for cb in self.callbacks:
            cb.on_batch_end(epoch, batch, num_batches, losses)

    def on_epoch_end(self, epoch, row):
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, row)

    def on_train_end(self, status):
        for cb in self.callbacks:
            cb.on_train_end(status)

    def should_stop(self) -> bool:
        return any(cb.should_stop() for cb in self.callbacks)


class TqdmCallback(Callback):
    """A progress bar per epoch on the terminal, showing the running loss and the validation metric."""

    def __init__(self, selection_metric: str | None = None, **tqdm_kwargs: Any):
        self.selection_metric = selection_metric
        self.tqdm_kwargs = {"leave": False, "dynamic_ncols": True, **tqdm_kwargs}
        self.bar = None
        self.total_epochs = 0

    def on_train_start(self, total_epochs, start_epoch, batches_per_epoch):
        self.total_epochs, self.batches = total_epochs, batches_per_epoch

    def on_epoch_start(self, epoch):
        from tqdm.auto import tqdm  # imported here: the library works without a terminal

        self.bar = tqdm(total=self.batches, desc=f"epoch {epoch}/{self.total_epochs}", unit="batch",
                        **self.tqdm_kwargs)

    def on_batch_end(self, epoch, batch, num_batches, losses):
        if self.bar is not None:
            self.bar.update(batch - self.bar.n)
            self.bar.set_postfix(loss=f"{losses['total']:.4f}", refresh=False)

    def on_epoch_end(self, epoch, row):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        from tqdm.auto import tqdm

        valid = row.get("valid", {})
        shown = f" valid {self.selection_metric}={valid[self.selection_metric]:.4f}" \
            if self.selection_metric in valid else ""
        tqdm.write(f"epoch {epoch}/{self.total_epochs}: train loss {row['train']['total']:.4f}{shown}"
                   f"{' (best)' if row.get('improved') else ''}")

    def on_train_end(self, status):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
