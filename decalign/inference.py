"""Run a model over a whole split in chunks and keep only what the product shows.

Memory is bounded: activations live for one chunk at a time; what is kept per sample is the prediction,
the head's input (2*M*d floats), the pooled unique and common features (2*M*d), the distribution encoders'
outputs (M*pde_dim: the space moment matching and MMD align) and the posteriors over the training
prototypes (M*K). For MOSI shapes (d = pde_dim = 40, M = 3, K = 7) that is under 2.5 KiB a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .cpu_share import computing, keep_share
from .data.dataset import Split
from .data.torch_batches import Batch, iterate_batches
from .model import DecAlign, DecAlignOutput, Prototypes, posteriors


@dataclass
class InferenceResult:
    ids: np.ndarray  # (N,) str
    labels: np.ndarray | None  # (N,)
    outputs: np.ndarray  # (N, out) raw head outputs (regression value or logits)
    branch_inputs: np.ndarray  # (N, 2*M*d) input of the linear head
    branch_names: list[str]  # "unique:<m>", "common:<m>"
    unique_pooled: dict[str, np.ndarray]  # (N, d)
    common_pooled: dict[str, np.ndarray]  # (N, d)
    posteriors: dict[str, np.ndarray] | None  # (N, K) over the training prototypes, if the card has them
    head_weight: np.ndarray  # (out, 2*M*d)
    head_bias: np.ndarray  # (out,)
    task: str
    distribution: dict[str, np.ndarray] | None = None  # (N, pde_dim) distribution encoders' outputs

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def predictions(self) -> np.ndarray:
        """(N,) regression values, or predicted class indices."""
        return self.outputs[:, 0] if self.task == "regression" else self.outputs.argmax(1)

    @property
    def probabilities(self) -> np.ndarray | None:
        if self.task == "regression":
            return None
        shifted = self.outputs - self.outputs.max(1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(1, keepdims=True)

    def branch_slices(self) -> dict[str, slice]:
        """Columns of ``branch_inputs`` belonging to each branch (each d wide)."""
        width = self.branch_inputs.shape[1] // len(self.branch_names)
        return {name: slice(i * width, (i + 1) * width) for i, name in enumerate(self.branch_names)}

    def contributions(self) -> np.ndarray:
        """(N, out, B + 1) exact split of every output into branch terms plus the bias (last column).

        The head is linear, ``y = W h + b``, so ``y_o = sum_b W[o, S_b] . h[S_b] + b_o`` exactly.
        """
        parts = [self.branch_inputs[:, s] @ self.head_weight[:, s].T for s in self.branch_slices().values()]
        bias = np.broadcast_to(self.head_bias, (len(self), self.head_bias.shape[0]))
        return np.stack(parts + [bias], axis=2)

    def explained_outputs(self) -> np.ndarray:
        """(N,) output column each sample's explanation splits: the predicted class, or 0 for regression."""
        return np.zeros(len(self), dtype=np.int64) if self.task == "regression" else self.outputs.argmax(1)

    def explained_contributions(self) -> np.ndarray:
        """(N, B + 1) ``contributions()`` of each sample's explained output (branch terms, then the bias)."""
        return self.contributions()[np.arange(len(self)), self.explained_outputs()]

    def subset(self, index: np.ndarray) -> InferenceResult:
        pick = lambda d: None if d is None else {m: v[index] for m, v in d.items()}
        return InferenceResult(self.ids[index], None if self.labels is None else self.labels[index],
                               self.outputs[index], self.branch_inputs[index], self.branch_names,
                               pick(self.unique_pooled), pick(self.common_pooled), pick(self.posteriors),
                               self.head_weight, self.head_bias, self.task, pick(self.distribution))


CHUNK_BYTES = 1 << 20  # one (chunk, steps, d_model) float32 activation at most; see inference_chunk
MAX_CHUNK = 256


def inference_chunk(model: DecAlign, split: Split, device: torch.device | None = None) -> int:
    """Samples per forward when the caller does not choose. On the CPU: as many as keep one activation of
    all the modalities' steps, (chunk, steps, d_model) in float32, within CHUNK_BYTES, from 16 to MAX_CHUNK;
    on a GPU, which is served better by few large kernels, MAX_CHUNK.

    Measured on 2 threads: at MOSI shapes (150 steps, d 40) 1,000 samples took 1.3-1.5 s in chunks of
    48-64 and 1.8-1.9 s in chunks of 256 (the activations leave the cache); the demo (18 steps, d 32)
    is fastest in chunks of 256-512 (28-31 us a sample, 48-50 in chunks of 64). Outputs do not depend
    on the chunking beyond float rounding.
    """
    device = device if device is not None else next(model.parameters()).device
    if device.type != "cpu":
        return MAX_CHUNK
    steps = sum(x.shape[1] for x in split.features.values())
    per_sample = max(1, steps * model.config.d_model * 4)
    return int(min(MAX_CHUNK, max(16, CHUNK_BYTES // per_sample)))


def run_inference(model: DecAlign, split: Split, *, task: str, batch_size: int | None = None,
                  device: str | torch.device | None = None, prototypes: dict[str, Prototypes] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  on_chunk: Callable[[Batch, DecAlignOutput], None] | None = None) -> InferenceResult:
    """Predict every sample of ``split`` in chunks of ``batch_size`` (default :func:`inference_chunk`)
    without building autograd graphs.

    ``on_chunk(batch, output)`` sees each chunk's full model output before it is dropped: for what a
    caller needs from the step-wise features in the same pass (the trainer's final decoupling values).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batch_size = batch_size or inference_chunk(model, split, device)
    model.eval()
    chunks: dict[str, list] = {"out": [], "branch": []}
    unique, common, post = {m: [] for m in model.modalities}, {m: [] for m in model.modalities}, {}
    spread = {m: [] for m in model.modalities}
    done = 0
    with torch.inference_mode(), computing():  # a dashboard session computing beside others takes its part
        for batch in iterate_batches(split, batch_size, shuffle=False, device=device):
            out = model(batch.inputs, batch.lengths)
            chunks["out"].append(out.prediction.float().cpu().numpy())
            chunks["branch"].append(out.branch_inputs.float().cpu().numpy())
            for m in model.modalities:
                unique[m].append(out.unique_pooled[m].float().cpu().numpy())
                common[m].append(out.common_pooled[m].float().cpu().numpy())
                # The space the homogeneity losses (moments, MMD) align: what "common" views should show.
                spread[m].append(model.distribution_encoders[m](out.common_pooled[m].float()).cpu().numpy())
                if prototypes is not None:
                    proto = _on(prototypes[m], device)
                    post.setdefault(m, []).append(posteriors(out.unique_pooled[m].float(), proto).cpu().numpy())
            if on_chunk is not None:
                on_chunk(batch, out)
            done += len(batch)
            if progress:
                progress(done, len(split))
            keep_share()  # a session that began or ended computing meanwhile changes this one's part
    head = model.head
    return InferenceResult(
        ids=split.ids, labels=split.labels, outputs=_cat(chunks["out"], (0, model.output_dim)),
        branch_inputs=_cat(chunks["branch"], (0, head.in_features)),
        branch_names=[f"unique:{m}" for m in model.modalities] + [f"common:{m}" for m in model.modalities],
        unique_pooled={m: _cat(v, (0, model.config.d_model)) for m, v in unique.items()},
        common_pooled={m: _cat(v, (0, model.config.d_model)) for m, v in common.items()},
        posteriors={m: np.concatenate(v) for m, v in post.items()} if prototypes is not None else None,
        head_weight=head.weight.detach().cpu().numpy().copy(), head_bias=head.bias.detach().cpu().numpy().copy(),
        task=task, distribution={m: _cat(v, (0, model.config.pde_dim)) for m, v in spread.items()},
    )


def _on(proto: Prototypes, device) -> Prototypes:
    return Prototypes(proto.means.to(device).float(), proto.variances.to(device).float(),
                      proto.weights.to(device).float())


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, int]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape, dtype=np.float32)
