"""Training across processes with torch.distributed (``torchrun --nproc_per_node N -m decalign train``).

Every rank draws the same global batch order (same seed) and takes its own contiguous share of each
global batch. Prototype fitting and the alignment losses see the whole global batch: the pooled features
are gathered from all ranks with ``gather_rows``, whose backward hands each rank the gradient of its own
rows, summed over ranks. Since every rank computes the same global alignment loss, that sum is W times the
gradient, and DistributedDataParallel's averaging over W ranks gives back exactly the single-process
gradient. The per-sample terms (task, decoupling) are scaled by ``W * n_local / n_global`` for the same
reason, so a W-rank step equals a one-process step on the same global batch up to float round-off.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from ..data.torch_batches import Batch


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def context_from_env() -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    """gloo on the CPU, NCCL on CUDA; idempotent."""
    if ctx.active and not dist.is_initialized():
        # Loaded before the group exists: its functions take the group in effect when it loads as a
        # default argument, and would keep ours alive past destroy_process_group (DDP loads it).
        import torch.distributed.nn.functional
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank,
                                world_size=ctx.world_size)


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank on its own GPU (by LOCAL_RANK) when training on CUDA."""
    if ctx.active and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows; backward returns this rank's rows of the rank-summed gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], rank: int) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, rank
        biggest = max(sizes)
        padded = x.new_zeros((biggest,) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's gradient for every row, summed
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None


def gather_rows(x: torch.Tensor, ctx: DistContext, sizes: list[int]) -> torch.Tensor:
    """(n_local, ...) -> (n_global, ...) with gradients flowing back to each rank's own rows."""
    if not ctx.active:
        return x
    return _GatherRows.apply(x, tuple(sizes), ctx.rank)


def all_gather_array(values: np.ndarray, ctx: DistContext) -> np.ndarray:
    """Concatenate numpy arrays of (possibly) different lengths from all ranks, in rank order."""
    if not ctx.active:
        return values
    device = _collective_device(ctx)
    size = torch.tensor([len(values)], device=device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    rows = _GatherRows.apply(torch.from_numpy(np.ascontiguousarray(values)).to(device),
                             tuple(int(s) for s in sizes), ctx.rank)
    return rows.cpu().numpy()


def _collective_device(ctx: DistContext) -> torch.device:
    """NCCL moves only CUDA tensors; gloo only CPU ones."""
    return torch.device("cuda", ctx.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def destroy_process_group(ctx: DistContext, drop_wrappers: Callable[[], None]) -> None:
    """Tear the group down once a run is over, while the interpreter is whole, and join gloo's threads
    with the GIL released.

    gloo's worker threads may still be freeing the last collectives' work after the callers' waits have
    returned, and freeing a tensor Python created takes the GIL. The group's own destructor releases the
    GIL while it joins those threads; DDP's reducer also holds the group, and its destructor keeps the
    GIL. When the reducer let go last, the join and the worker each waited on the other: a rank hung for
    good after a finished run (2 of 20 two-rank runs on a loaded machine). So ``drop_wrappers`` lets go
    of every DDP wrapper while this function still holds the group, and the group goes last.
    """
    if not (ctx.active and dist.is_initialized()):
        return
    group = dist.group.WORLD
    dist.destroy_process_group()
    drop_wrappers()
    gc.collect()  # a wrapper caught in a reference cycle is freed now, before the group
    del group  # the last reference: the group's destructor joins gloo's threads without the GIL


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()


def wrap_model(model: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several ranks; the model itself otherwise."""
    if not ctx.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def local_share(batch: Batch, ctx: DistContext, global_alignment: bool = True):
    """This rank's rows of a global batch, the gather hook for the alignment, and the per-sample scale.

    With ``global_alignment`` off there is no gather: each rank fits prototypes and computes the
    alignment losses on its own rows only, and DDP averages those per-rank losses' gradients.
    """
    if not ctx.active:
        return batch, None, 1.0
    bounds = np.linspace(0, len(batch), ctx.world_size + 1).round().astype(int)
    sizes = np.diff(bounds).tolist()
    rows = slice(int(bounds[ctx.rank]), int(bounds[ctx.rank + 1]))
    local = Batch({m: x[rows] for m, x in batch.inputs.items()},
                  None if batch.labels is None else batch.labels[rows],
                  {m: v[rows] for m, v in batch.lengths.items()}, batch.index[rows])
    scale = ctx.world_size * sizes[ctx.rank] / len(batch)
    gather = partial(gather_rows, ctx=ctx, sizes=sizes) if global_alignment else None
    return local, gather, scale


def eval_shard(n: int, ctx: DistContext):
    """(rows, gather) for ``finalize.evaluate_split``: each rank predicts a contiguous share of n samples."""
    if not ctx.active:
        return None
    bounds = np.linspace(0, n, ctx.world_size + 1).round().astype(int)
    rows = np.arange(bounds[ctx.rank], bounds[ctx.rank + 1])
    return rows, partial(all_gather_array, ctx=ctx)


def all_reduce_sum(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.active:
        x = x.clone()
        dist.all_reduce(x)
    return x


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's decision (e.g. cancel) for everyone, so all ranks stop at the same step."""
    if not ctx.active:
        return flag
    value = torch.tensor([1 if flag else 0], device=_collective_device(ctx))
    dist.broadcast(value, src=0)
    return bool(value.item())
