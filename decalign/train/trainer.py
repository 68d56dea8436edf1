"""The training loop: Adam, ReduceLROnPlateau, gradient clipping, early stopping, checkpoints, resume.

``train(dataset, config, run_dir)`` is the entry point. Every finished epoch appends a row to
``history.json``::

    {"epoch": 3, "lr": 0.001, "seconds": 4.2,
     "train": {"total", "task", "contrastive", "decoupling", "prototype_transport", "sample_to_prototype",
               "moment_matching", "mmd"}       (sample-weighted means over the epoch's batches)
     "valid": {every metric of decalign.train.metrics.compute_metrics, "loss"},
     "selection": value of the selection metric, "improved": bool}

The data order of epoch e is drawn from (seed, e), and every RNG is saved with the epoch, so a resumed
run reproduces an uninterrupted one exactly on the CPU.
"""

from __future__ import annotations

import ctypes
import gc
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ..atomic import clean_stale_temps
from ..checkpoint import ModelCard, load_card, save_card, save_model
from ..config import DecAlignConfig
from ..data.dataset import MultimodalDataset
from ..data.tokens import TEXT, bert_inputs
from ..data.torch_batches import iterate_batches
from ..data.transform import TRANSFORM_KEY, apply_feature_transform, fit_feature_transform
from ..device import resolve_device
from ..inference import InferenceResult
from ..loss_names import LOSS_KEYS
from ..model import AlignmentLevels
from . import distributed, finalize
from .callbacks import Callback, CallbackList
from .losses import balanced_class_weight, total_loss
from .metrics import ERRORS, dataset_convention
from .replay import ReplayRecorder
from .runs import (
    ResumeState,
    RunError,
    check_resumable,
    has_resume,
    load_resume,
    read_history,
    save_resume,
    write_history,
    write_status,
)
from .selection import scheduler_rule, selection_rule, with_composites
from .sizing import cap_prototypes

BATCH_KEYS = (*LOSS_KEYS, *AlignmentLevels.LEVELS)


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # finished | cancelled
    best_epoch: int | None
    best_value: float | None
    selection_metric: str
    history: list[dict[str, Any]]
    card: ModelCard


def train(dataset: MultimodalDataset, config: DecAlignConfig, run_dir: str | Path, *,
          device: str | torch.device = "cpu", callbacks: Sequence[Callback] = (), resume: bool = False,
          replay: bool = False) -> TrainResult:
    """Train a DecAlign model on ``dataset`` and write the run directory (see ``decalign.train.runs``).

    Parameters
    ----------
    dataset : needs labelled ``train`` and ``valid`` splits; ``test`` is evaluated at the end if present.
    config : model and training settings (``config.train`` holds the optimisation ones).
    run_dir : output folder; must not hold a run unless ``resume``.
    device : ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device.
    callbacks : progress reporting and cancellation (``decalign.train.callbacks``).
    resume : continue the run in ``run_dir`` after its last finished epoch; refused when the data or the
        configuration (other than ``train.num_epochs``) differ.
    replay : after every epoch, record prototypes, transport plans and probe features on a fixed probe
        batch into ``run_dir/replay`` (``decalign.train.replay``).
    """
    return Trainer(dataset, config, run_dir, device=device, callbacks=callbacks, resume=resume,
                   replay=replay).fit()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s data order: a function of (seed, epoch) only, so resuming is exact."""
    return int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1)[0])


class Trainer:
    """One training run; see ``train``. ``sync_every``: on a GPU, report batch losses and check for a
    cancel request this often (every batch on the CPU)."""

    sync_every = 10

    def __init__(self, dataset: MultimodalDataset, config: DecAlignConfig, run_dir: str | Path, *,
                 device: str | torch.device = "cpu", callbacks: Sequence[Callback] = (), resume: bool = False,
                 replay: bool = False):
        self.run_dir = Path(run_dir)
        self.config, self.size_note = cap_prototypes(config.validate(), dataset)
        self.dist = distributed.context_from_env()  # a world of one unless started by torchrun
        self.device = distributed.rank_device(self.dist, resolve_device(device))
        distributed.init_process_group(self.dist, self.device)
        self.callbacks = CallbackList(callbacks if self.dist.is_main else [])
        self.resume = resume
        check_trainable(dataset)
        self.task = dataset.task
        self.convention = dataset_convention(dataset)
        self.selection, self.mode = selection_rule(config, self.task, self.convention)
        self.scheduler_key, self.scheduler_mode = scheduler_rule(config, self.task, self.convention)
        self.transform = fit_feature_transform(config.data, dataset.splits["train"], dataset.report.source)
        self.dataset = apply_feature_transform(dataset, self.transform)
        self.pretrained_bert = None
        if self.config.model.use_bert:  # the BERT's shape and weights come from the local folder `pretrained`
            self.config, self.pretrained_bert = with_pretrained_bert(self.config)
            self.dataset = bert_inputs(self.dataset, self.config.model)
        self.recorder = ReplayRecorder(self.run_dir, self.dataset, self.config) if replay else None
        self.best_valid: InferenceResult | None = None  # the best epoch's validation pass, when it ran here

    # ------------------------------------------------------------------------ setup

    def fit(self) -> TrainResult:
        self._prepare()
        self._write_status("running")
        self.callbacks.on_train_start(self.config.train.num_epochs, self.state.epoch + 1, self._num_batches())
        try:
            status = self._loop()
            self._finish(status)
        except BaseException as exc:
            self._write_status("failed", error=f"{type(exc).__name__}: {exc}")
            self.callbacks.on_train_end("failed")
            raise
        finally:
            distributed.destroy_process_group(self.dist, self._unwrap_model)
        self.callbacks.on_train_end(status)
        return TrainResult(self.run_dir, status, self.state.best_epoch, self.state.best_value, self.selection,
                           self.history, self.card)

    def _unwrap_model(self) -> None:
        """Let go of the DDP wrapper (and its reducer) before the process group goes."""
        self.step_model = getattr(self, "model", None)

    def _prepare(self) -> None:
        cfg = self.config.train
        fingerprint = self.dataset.file_fingerprint()  # the file's data identify the run, not their transform
        if self.dist.is_main:  # a killed earlier attempt may have left temp files of unfinished writes
            clean_stale_temps(self.run_dir)
        if self.resume:
            check_resumable(self.run_dir, self.config, fingerprint)
        elif (self.run_dir / "card.json").exists():
            raise RunError(f"{self.run_dir}: already holds a run; pass --resume to continue it or choose "
                           "another output folder")
        distributed.barrier(self.dist)  # every rank has checked before rank 0 writes
        seed_everything(cfg.seed)
        self.card = self._new_card(fingerprint) if not self.resume else _resumed_card(self.run_dir, self.config)
        self.model = self.card.build_model()
        if self.pretrained_bert is not None:
            self.model.text_encoder.bert.load_state_dict(self.pretrained_bert)
            self.pretrained_bert = None
        self.model.to(self.device)
        self.step_model = distributed.wrap_model(self.model, self.dist, self.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode=self.scheduler_mode, patience=cfg.scheduler_patience, factor=cfg.factor)
        self.class_weight = self._class_weight()
        self.state, self.history = ResumeState(0, None, None, 0), []
        if self.resume and has_resume(self.run_dir):
            self.state = load_resume(self.run_dir, self.model, self.optimizer, self.scheduler)
            self.history = read_history(self.run_dir)[: self.state.epoch]
        if self.dist.is_main:
            save_card(self.run_dir, self.card)

    def _new_card(self, fingerprint: str) -> ModelCard:
        train = self.dataset.splits["train"]
        classes = self.dataset.num_classes if self.task == "classification" else None
        extra = {"selection_metric": self.selection, "selection_mode": self.mode,
                 "scheduler_metric": self.scheduler_key, "scheduler_mode": self.scheduler_mode}
        if not self.transform.is_identity:
            extra[TRANSFORM_KEY] = self.transform.to_dict()
        if self.size_note:
            extra["prototype_note"] = self.size_note
        return ModelCard(
            config=self.config, widths=self._model_widths(), task=self.task, output_dim=classes or 1,
            seq_lens={m: t for m, (t, _) in self.dataset.modalities.items()}, num_classes=classes,
            class_names=self.dataset.class_names if classes else None,
            label_range=[float(train.labels.min()), float(train.labels.max())],
            data_fingerprint=fingerprint, data_source=self.dataset.report.source, seed=self.config.train.seed,
            metric_convention=self.convention, error=ERRORS[self.convention],
            extra=extra,
        )

    def _model_widths(self) -> dict[str, int]:
        """The data's widths, the text's being the BERT's hidden size when a BERT reads its tokens."""
        model = self.config.model
        return {m: model.bert_hidden_size if m == TEXT and model.use_bert else d
                for m, d in self.dataset.widths.items()}

    def _class_weight(self) -> torch.Tensor | None:
        if self.task != "classification" or self.config.train.class_weight != "balanced":
            return None
        labels = self.dataset.splits["train"].labels
        return balanced_class_weight(labels, self.dataset.num_classes).to(self.device)

    def _num_batches(self) -> int:
        return math.ceil(len(self.dataset.splits["train"]) / self.config.train.batch_size)

    # ------------------------------------------------------------------------ the loop

    def _loop(self) -> str:
        cfg = self.config.train
        for epoch in range(self.state.epoch + 1, cfg.num_epochs + 1):
            if self._early_stop_due():
                break
            self.callbacks.on_epoch_start(epoch)
            start = time.perf_counter()
            means = self._train_epoch(epoch)
            if means is None:  # cancelled mid-epoch: keep the weights reached, best stays as it was
                if self.dist.is_main:
                    save_model(self.run_dir, self.model, self.card, tag="last", write_card=False)
                return "cancelled"
            row = self._end_epoch(epoch, means, time.perf_counter() - start)
            self.callbacks.on_epoch_end(epoch, row)
            if self.callbacks.should_stop():
                return "cancelled"
        return "finished"

    def _early_stop_due(self) -> bool:
        patience = self.config.train.early_stop_patience
        return patience >= 1 and self.state.bad_epochs >= patience

    def _train_epoch(self, epoch: int) -> dict[str, float] | None:
        """One pass over the training split; the epoch's mean of every term, or None if cancelled."""
        cfg, model = self.config.train, self.model
        train_split, n_batches = self.dataset.splits["train"], self._num_batches()
        model.train()
        summed = torch.zeros(len(BATCH_KEYS), device=self.device)  # stays on the device: one sync an epoch
        batches = iterate_batches(train_split, cfg.batch_size, shuffle=True, seed=epoch_seed(cfg.seed, epoch),
                                  device=self.device)
        for i, batch in enumerate(batches, 1):
            batch, gather, scale = distributed.local_share(batch, self.dist, cfg.global_alignment)
            with self._autocast():
                out = self.step_model(batch.inputs, batch.lengths, align=True, gather=gather)
            total, terms = total_loss(out, batch.labels, cfg, self.task, self.class_weight, local_scale=scale,
                                      gather=gather)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            self.optimizer.step()
            values = _batch_values(terms, out.alignment)  # (len(BATCH_KEYS),) detached
            summed += values * len(batch)
            if self.device.type == "cpu" or i % self.sync_every == 0 or i == n_batches:
                # On a GPU both the report and the (broadcast) cancel check wait for the device: not every step.
                self.callbacks.on_batch_end(epoch, i, n_batches, dict(zip(BATCH_KEYS, values.tolist())))
                if distributed.broadcast_flag(self.callbacks.should_stop(), self.dist):
                    return None
        summed = distributed.all_reduce_sum(summed, self.dist)  # alignment levels are global already
        return dict(zip(BATCH_KEYS, (summed / len(train_split)).tolist()))

    def _end_epoch(self, epoch: int, means: dict[str, float], seconds: float) -> dict[str, Any]:
        valid, result = self._evaluate_valid()
        valid = with_composites(valid, (self.selection, self.scheduler_key))
        value = valid[self.selection]
        improved = self._improved(value)
        lr = self.optimizer.param_groups[0]["lr"]
        if improved:
            self.state.best_value, self.state.best_epoch, self.state.bad_epochs = value, epoch, 0
            self.card.best_epoch, self.card.metrics = epoch, {"valid": valid}
            self.best_valid = result
            if self.dist.is_main:
                save_model(self.run_dir, self.model, self.card, tag="best")
        else:
            self.state.bad_epochs += 1
        self.scheduler.step(valid[self.scheduler_key])
        self.state.epoch = epoch
        row = {"epoch": epoch, "lr": lr, "seconds": round(seconds, 3), "train": means, "valid": valid,
               "selection": value, "improved": improved}
        self.history.append(row)
        if self.dist.is_main:  # only rank 0 writes checkpoints, history and status
            self._write_epoch(epoch)
        return row

    def _write_epoch(self, epoch: int) -> None:
        save_model(self.run_dir, self.model, self.card, tag="last", write_card=False)
        if self.recorder is not None:  # before save_resume: an epoch redone after a crash re-records itself
            self.recorder.record(self.model, epoch)
        # History first: a kill between the two leaves a row the resume truncates, never a missing row.
        write_history(self.run_dir, self.history)
        save_resume(self.run_dir, self.state, self.model, self.optimizer, self.scheduler)
        write_status(self.run_dir, "running", epoch)

    def _evaluate_valid(self) -> tuple[dict[str, float], InferenceResult | None]:
        """The validation metrics and, on one process, the whole inference result, which the final pass
        reuses if this epoch turns out best (the same weights, chunks and outputs; 0.4 s at MOSI shapes)."""
        split = self.dataset.splits["valid"]
        if self.dist.active:
            shard = distributed.eval_shard(len(split), self.dist)
            return finalize.evaluate_split(self.model, split, self._eval_args(), shard=shard), None
        return finalize.evaluate_inference(self.model, split, self._eval_args())

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        best = self.state.best_value
        return best is None or (value < best if self.mode == "min" else value > best)

    def _eval_args(self) -> finalize.EvalArgs:
        cfg = self.config.train
        return finalize.EvalArgs(self.task, cfg.task_loss, self.dataset.num_classes, self.convention,
                                 max(cfg.batch_size, 256), self.class_weight, cfg.binary_task_weight,
                                 cfg.smooth_l1_beta)

    # ------------------------------------------------------------------------ the end

    def _autocast(self):
        """bf16 autocast on CUDA when asked; the model keeps its alignment maths in float32."""
        enabled = self.config.train.mixed_precision and self.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled)

    def _write_status(self, status: str, error: str | None = None) -> None:
        if self.dist.is_main:
            write_status(self.run_dir, status, self.state.epoch, error=error)

    def _finish(self, status: str) -> None:
        distributed.barrier(self.dist)  # rank 0's last checkpoint is on disk before anyone reads it
        best = self.run_dir / "best.safetensors"
        if self.dist.is_main and best.exists():
            return_free_memory()  # before the final pass, so that it does not raise the run's peak
            self.model.load_state_dict(load_file(str(best)))
            self.model.to(self.device)
            known = {"valid": self.best_valid} if self.best_valid is not None else None
            final = finalize.finish_card(self.model, self.card, self.dataset, self.config, self._eval_args(), known)
            self.card.extra.update(status=status, epochs_run=self.state.epoch,
                                   stopped_early=status == "finished" and self._early_stop_due())
            save_card(self.run_dir, self.card)
            finalize.write_reference(self.run_dir, self.model, self.card, self.dataset.splits["train"],
                                     self.dataset.splits["valid"], final)
        self._write_status(status)
        distributed.barrier(self.dist)


def return_free_memory() -> None:
    """Hand the heap pages training freed back to the system. glibc keeps them, and the final pass's
    differently sized allocations then land beside them: at MOSI shapes (bench_train_epoch's data, 2
    epochs) the run's peak RSS went from 1,290 to 1,206 MiB. A no-op where the C library has no
    ``malloc_trim`` (not glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _batch_values(terms: dict[str, torch.Tensor], levels: AlignmentLevels) -> torch.Tensor:
    parts = [terms["total"], terms["task"], terms["contrastive"]]
    parts += [getattr(levels, name) for name in AlignmentLevels.LEVELS]
    return torch.stack([p.detach().float().reshape(()) for p in parts])


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Adam:
    """Adam as the official trainer builds it: with ``bert_learning_rate`` set, the BERT's parameters form
    a group of their own at that rate (same weight decay); otherwise one group at ``learning_rate``.

    Where every parameter is on the CPU, torch's fused Adam: one kernel a tensor, where the multi-tensor
    (``foreach``) implementation runs each of Adam's operations tensor by tensor on the CPU. The official MOSI
    model's 201 tensors took 10-11 ms a step one by one (torch's CPU default), 5.6-7 ms with ``foreach``,
    2-3.7 ms fused. Fused Adam rounds differently: after 30 steps the parameters differ from torch's default
    Adam by at most 1.5e-8 (tested to 1e-6 relative over a short run). Elsewhere (a GPU) the multi-tensor
    implementation, torch's default there, the same numbers as the official trainer's to the bit."""
    text_encoder = getattr(model, "text_encoder", None)
    params: Any = list(model.parameters())
    kind = {"fused": True} if all(p.device.type == "cpu" for p in params) else {"foreach": True}
    if text_encoder is not None and cfg.bert_learning_rate:
        bert = list(text_encoder.parameters())
        ids = {id(p) for p in bert}
        params = [{"params": bert, "lr": cfg.bert_learning_rate},
                  {"params": [p for p in params if id(p) not in ids]}]
    return EagerAdam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, **kind)


def _unwrapped(method):
    """``method`` without torch's torch.compile wrapper (``functools.wraps`` keeps it as ``__wrapped__``)."""
    return getattr(method, "__wrapped__", method)


class EagerAdam(torch.optim.Adam):
    """``torch.optim.Adam`` without the torch.compile hooks around its methods, for an eager training loop.

    torch wraps the optimizer's ``step`` (graph breaks), ``add_param_group`` (called by the constructor),
    ``zero_grad``, ``state_dict`` and ``load_state_dict`` so that torch.compile can trace them; the wrappers
    import ``torch._dynamo`` on first use: 1.5 s of CPU on this 2-core machine, the longest import of
    ``decalign train``, for a compiler it never runs. The methods here are torch's own, called without the
    wrappers, so the numbers are Adam's to the bit (tested)."""

    add_param_group = _unwrapped(torch.optim.Optimizer.add_param_group)
    zero_grad = _unwrapped(torch.optim.Optimizer.zero_grad)
    state_dict = _unwrapped(torch.optim.Optimizer.state_dict)
    load_state_dict = _unwrapped(torch.optim.Optimizer.load_state_dict)

    def step(self, closure=None):
        # what the wrapper does besides its graph breaks: gradients off unless the optimizer is differentiable
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _unwrapped(torch.optim.Adam.step)(self, closure)


def with_pretrained_bert(config: DecAlignConfig) -> tuple[DecAlignConfig, dict[str, torch.Tensor]]:
    """The config with the shape of the BERT in the local folder ``pretrained`` recorded, and its weights."""
    from ..model.text_encoder import bert_fields, load_pretrained_bert

    shape, state = load_pretrained_bert(config.model.pretrained)
    model = replace(config.model, **bert_fields(shape))
    return replace(config, model=model).validate(), state


def check_trainable(dataset: MultimodalDataset) -> None:
    """ValueError naming the file and the split when ``dataset`` cannot be trained on (the Train page checks
    an upload with it before offering to start a run)."""
    for name, least in (("train", 2), ("valid", 1)):  # prototypes and the explanation reference need two
        split = dataset.splits.get(name)
        if split is None or len(split) < least:
            found = 0 if split is None else len(split)
            raise ValueError(f"{dataset.report.source}: the {name!r} split has {found} sample(s); training "
                             f"needs at least {least}")
        if split.labels is None:
            raise ValueError(f"{dataset.report.source}: the {name!r} split has no labels; training needs them")
    if dataset.task == "classification" and not dataset.num_classes:
        raise ValueError(f"{dataset.report.source}: classification data without num_classes")


def _resumed_card(run_dir: Path, config: DecAlignConfig) -> ModelCard:
    card = load_card(run_dir)
    card.config = config  # only num_epochs may differ (checked by check_resumable)
    return card
