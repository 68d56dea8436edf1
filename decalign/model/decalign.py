"""The DecAlign model: decouple, align hierarchically, fuse. One loop over a dict of modalities."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..data.tokens import TEXT, is_token_input
from .alignment import (
    decoupling_loss,
    gaussian_mmd,
    moment_matching_loss,
    official_local_loss_matrix,
    official_mmd_matrix,
    official_moment_distance_matrix,
    sample_to_prototype_loss,
)
from .dropout import dropout
from .fusion import CrossModalEncoder, encode
from .output import AlignmentLevels, DecAlignOutput, Prototypes
from .prototypes import fit_prototypes, posteriors
from .transport import transport_plan


class DistributionEncoder(nn.Module):
    """Maps pooled common features to the space where moments and MMD are matched (official ``pde_*``).

    Its dropout rate is ``output_dropout`` under the official objective (as the official code) and
    ``relu_dropout`` under the studio one.
    """

    def __init__(self, dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DecAlign(nn.Module):
    """DecAlign (Qian et al., ICLR 2026) over any two or more named modalities.

    Parameters
    ----------
    config : architecture and alignment settings.
    widths : modality name -> input feature width D_m, in the order used for fusion and the head.
    output_dim : 1 for regression, C for C-class classification.

    With ``config.use_bert`` the "text" modality goes through a BERT first (``text_encoder``, the official
    ``text_model``): its input is then (N, T, 3) integer tokens, and its width the BERT's hidden size.
    """

    def __init__(self, config: ModelConfig, widths: dict[str, int], output_dim: int = 1):
        super().__init__()
        config.validate()
        if len(widths) < 2:
            raise ValueError(f"DecAlign needs at least two modalities, found {list(widths)}")
        self.config, self.widths, self.output_dim = config, dict(widths), output_dim
        if config.use_bert:
            self.text_encoder = self._text_encoder(config, widths)
        d = config.d_model
        self.projections = nn.ModuleDict({
            m: nn.Identity() if w == d else nn.Conv1d(w, d, config.kernel_size(m), bias=False)
            for m, w in widths.items()
        })
        self.unique_encoders = nn.ModuleDict({m: nn.Conv1d(d, d, 1, bias=False) for m in widths})
        self.common_encoder = nn.Conv1d(d, d, 1, bias=False)
        self.transformers = nn.ModuleDict({m: self._encoder(m) for m in widths})
        pde_dropout = config.output_dropout if config.objective == "official" else config.relu_dropout
        self.distribution_encoders = nn.ModuleDict(
            {m: DistributionEncoder(d, config.pde_dim, pde_dropout) for m in widths}
        )
        self.head = nn.Linear(2 * len(widths) * d, output_dim)

    @property
    def modalities(self) -> list[str]:
        return list(self.widths)

    @property
    def has_bert(self) -> bool:
        return self.config.use_bert

    @staticmethod
    def _text_encoder(config: ModelConfig, widths: dict[str, int]) -> nn.Module:
        from .text_encoder import BertTextEncoder  # imports transformers: only for a model with a BERT

        if widths.get(TEXT) != config.bert_hidden_size:
            raise ValueError(f"use_bert: the text modality's width must be the BERT's hidden size "
                             f"{config.bert_hidden_size}, found {widths.get(TEXT)}")
        return BertTextEncoder(config)

    def encode_text(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` with BERT tokens replaced by the BERT's output (N, T, H); unchanged without a BERT."""
        if not self.has_bert or not is_token_input(inputs[TEXT]):
            return inputs
        return {**inputs, TEXT: self.text_encoder(inputs[TEXT])}

    def _encoder(self, modality: str) -> CrossModalEncoder:
        c = self.config
        return CrossModalEncoder(
            c.d_model, c.num_heads, c.num_layers, attn_dropout=c.attn_dropout_for(modality),
            relu_dropout=c.relu_dropout, res_dropout=c.res_dropout, embed_dropout=c.embed_dropout,
            positional_encoding=c.positional_encoding,
        )

    def forward(self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None, *,
                align: bool | None = None, need_attention: bool = False,
                prototypes: dict[str, Prototypes] | None = None,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> DecAlignOutput:
        """Run the model.

        Parameters
        ----------
        inputs : modality -> (N, T_m, D_m) features.
        lengths : optional modality -> (N,) valid steps, used when ``use_sequence_mask`` is on.
        align : compute prototypes, transport and the five alignment levels; default: in training only.
        need_attention : also return head-averaged attention weights of every layer.
        prototypes : fixed prototypes (e.g. fitted on the training set) to align against instead of
            fitting a mixture to this batch.
        gather : maps this process's (n, ...) rows to the global batch's rows (distributed training), so
            prototypes, transport, moments and MMD see the whole global batch; per-sample terms stay local.
        """
        self.check_inputs(inputs)
        inputs = self.encode_text(inputs)  # BERT tokens -> (N, T, H)
        projected = {m: self._project(m, x) for m, x in inputs.items()}  # (N, T', d)
        masks = self._step_masks(projected, lengths)  # (N, T') bool or None
        unique = {m: _pointwise(self.unique_encoders[m], x) for m, x in projected.items()}
        common = {m: _pointwise(self.common_encoder, x) for m, x in projected.items()}
        unique_pooled = {m: _masked_mean(x, masks[m]) for m, x in unique.items()}  # (N, d)
        common_pooled = {m: _masked_mean(x, masks[m]) for m, x in common.items()}  # (N, d)
        fused, attention, keys = self._fuse(unique, masks, need_attention)  # (N, d) each
        names = [f"unique:{m}" for m in self.widths] + [f"common:{m}" for m in self.widths]
        branches = torch.cat([fused[m] for m in self.widths] + [common_pooled[m] for m in self.widths], 1)
        prediction = self.head(dropout(branches, self.config.output_dropout, self.training))  # (N, out)
        out = DecAlignOutput(prediction, unique, common, unique_pooled, common_pooled, fused, branches,
                             names, attention, keys)
        if self.training if align is None else align:
            with torch.autocast(out.prediction.device.type, enabled=False):  # alignment maths in float32
                self._align(out, prototypes, gather or _identity)
        return out

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Raise a ValueError naming the modality and what was expected, before any maths runs."""
        if set(inputs) != set(self.widths):
            raise ValueError(f"expected modalities {sorted(self.widths)}, found {sorted(inputs)}")
        sizes = {x.shape[0] if x.dim() else -1 for x in inputs.values()}
        for m, x in inputs.items():
            kernel = 1 if isinstance(self.projections[m], nn.Identity) else self.config.kernel_size(m)
            if m == TEXT and self.has_bert and is_token_input(x):
                self.text_encoder.check_tokens(x, f"modality {m!r}")
                continue
            if x.dim() != 3 or x.shape[2] != self.widths[m] or x.shape[1] < kernel:
                raise ValueError(f"modality {m!r}: expected (N, T>={kernel}, {self.widths[m]}), "
                                 f"found {tuple(x.shape)}")
        if len(sizes) != 1:
            raise ValueError(f"modalities have different numbers of samples: {sorted(sizes)}")

    def _project(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        x = dropout(x, self.config.input_dropout_for(modality), self.training)
        proj = self.projections[modality]
        if isinstance(proj, nn.Identity):
            return x
        if proj.kernel_size[0] == 1:  # a 1-wide convolution is a matmul; skip the transposes
            return _pointwise(proj, x)
        return proj(x.transpose(1, 2)).transpose(1, 2)

    def _step_masks(self, projected, lengths) -> dict[str, torch.Tensor | None]:
        """(N, T') True at valid steps, from per-sample lengths shortened by the projection's kernel."""
        if not (self.config.use_sequence_mask and lengths):
            return {m: None for m in projected}
        masks = {}
        for m, x in projected.items():
            steps = x.shape[1]
            lost = 0 if isinstance(self.projections[m], nn.Identity) else self.config.kernel_size(m) - 1
            valid = (lengths[m].to(x.device) - lost).clamp(1, steps)
            masks[m] = torch.arange(steps, device=x.device) < valid.unsqueeze(1)
        return masks

    def _fuse(self, unique, masks, need_attention):
        """Each modality's transformer over its unique sequence; modalities whose query and key lengths
        agree run as one batched computation (``fusion.encode``)."""
        memory, mask, keys = {}, {}, {}
        for m in self.widths:
            others = [n for n in self.widths if n != m]
            if self.config.cross_modal_attention:
                memory[m] = torch.cat([unique[n] for n in others], dim=1)  # (N, sum T_n, d)
                mask[m] = _key_mask([masks[n] for n in others], unique[m].shape[1], [unique[n] for n in others])
                keys[m] = [(n, unique[n].shape[1]) for n in others]
            else:
                memory[m], mask[m] = None, _self_mask(unique[m], masks[m], self.config.attn_mask)
                keys[m] = [(m, unique[m].shape[1])]
        fused, attention = {}, {}
        for group in _same_shapes(unique, memory):
            stacked_memory = None if memory[group[0]] is None else torch.stack([memory[m] for m in group])
            hidden, weights = encode([self.transformers[m] for m in group], torch.stack([unique[m] for m in group]),
                                     stacked_memory, _stack_masks([mask[m] for m in group], unique[group[0]],
                                                                  stacked_memory), need_attention)
            for i, m in enumerate(group):
                fused[m] = _masked_mean(hidden[i], masks[m])
                attention[m] = [w[i] for w in weights]
        return fused, attention, keys

    def _align(self, out: DecAlignOutput, fixed: dict[str, Prototypes] | None, gather) -> None:
        """The five levels under ``config.objective``: official (means over modalities, ordered pairs and
        pairs, as the official code) or studio (sums); see ``decalign.model.alignment``. With M = 3 the
        official levels are the official ``dec_loss``, ``hete_loss`` (transport + sample-to-prototype)
        and ``homo_loss`` (moments + MMD); other M generalise by the same means."""
        dec = {m: decoupling_loss(out.unique[m].float(), out.common[m].float()) for m in self.modalities}
        self._align_pooled(out, dec, fixed, gather)

    def pooled_alignment(self, unique_pooled: dict[str, torch.Tensor], common_pooled: dict[str, torch.Tensor],
                         decoupling: dict[str, torch.Tensor], prototypes: dict[str, Prototypes]) -> AlignmentLevels:
        """The five levels that ``forward(..., align=True, prototypes=prototypes)`` gives for a batch, from
        its pooled features and its per-modality decoupling values (the only level that needs the
        step-wise features), without running the encoders again: the trainer's final pass computes
        them from one inference pass."""
        any_pooled = next(iter(unique_pooled.values()))
        out = DecAlignOutput(any_pooled.new_zeros(len(any_pooled), self.output_dim), {}, {}, unique_pooled,
                             common_pooled, {}, any_pooled.new_zeros(0), [], {}, {})
        with torch.autocast(any_pooled.device.type, enabled=False):
            self._align_pooled(out, decoupling, prototypes, _identity)
        return out.alignment

    def _align_pooled(self, out: DecAlignOutput, dec: dict[str, torch.Tensor], fixed, gather) -> None:
        c = self.config
        order = self.modalities
        unique = {m: gather(out.unique_pooled[m]).float() for m in order}  # (N_global, d), float32 maths
        out.prototypes = self._prototypes(unique, fixed)
        check_every = 1 if out.prediction.device.type == "cpu" else 0  # a GPU runs the full count
        out.transport = transport_plan(out.prototypes, c, check_every=check_every)
        out.distribution = {m: gather(self.distribution_encoders[m](out.common_pooled[m].float())) for m in order}
        official = c.objective == "official"
        local, moment, mmd = (_official_terms if official else _studio_terms)(c, unique, out)
        combine = _mean if official else sum
        out.alignment = AlignmentLevels(
            decoupling=combine(dec.values()), prototype_transport=out.transport.loss,
            sample_to_prototype=combine(local.values()), moment_matching=combine(moment.values()),
            mmd=combine(mmd.values()), decoupling_per_modality=dec, sample_to_prototype_per_pair=local,
            moment_matching_per_pair=moment, mmd_per_pair=mmd, objective=c.objective,
        )

    def _prototypes(self, unique: dict[str, torch.Tensor], fixed) -> dict[str, Prototypes]:
        """Prototypes per modality: the given fixed ones, or one batched EM over all modalities."""
        if fixed is not None:
            fitted = {}
            for m, x in unique.items():
                given = fixed[m]
                proto = Prototypes(given.means.to(x), given.variances.to(x), given.weights.to(x))
                proto.posteriors = posteriors(x, proto)
                fitted[m] = proto
            return fitted
        stacked = fit_prototypes(torch.stack(list(unique.values())), self.config)  # (M, N, d)
        return {m: Prototypes(stacked.means[i], stacked.variances[i], stacked.weights[i], stacked.posteriors[i])
                for i, m in enumerate(unique)}


def _official_terms(c: ModelConfig, unique, out: DecAlignOutput):
    """Objective ``official``: index-paired local losses (ordered pairs), moment distances and MMD (pairs),
    each level's pairs from one (M, M) matrix (one set of operations instead of one per pair)."""
    order = list(unique)
    local = official_local_loss_matrix([unique[m] for m in order], [out.prototypes[m] for m in order],
                                       reduction=c.hetero_cost_reduction, mahalanobis=c.local_proto_mahalanobis,
                                       var_floor=c.gmm_var_floor)
    z = [out.distribution[m] for m in order]
    pairs = list(itertools.combinations(range(len(order)), 2))
    return (_by_pair(local, order, itertools.permutations(range(len(order)), 2)),
            _by_pair(official_moment_distance_matrix(z), order, pairs),
            _by_pair(official_mmd_matrix(z, c.mmd_bandwidth), order, pairs))


def _by_pair(matrix: torch.Tensor, order: list[str], pairs) -> dict[tuple[str, str], torch.Tensor]:
    return {(order[a], order[b]): matrix[a, b] for a, b in pairs}


def _studio_terms(c: ModelConfig, unique, out: DecAlignOutput):
    """Objective ``studio``: plan-carried local losses, full-covariance moments and MMD with bandwidth^2."""
    order, protos, z = list(unique), out.prototypes, out.distribution
    local = {(a, b): sample_to_prototype_loss(unique[a], protos[a], protos[b], out.transport.pair_plan(a, b, order))
             for a, b in itertools.permutations(order, 2)}
    pairs = list(itertools.combinations(order, 2))
    moment = {(a, b): moment_matching_loss(z[a], z[b]) for a, b in pairs}
    mmd = {(a, b): gaussian_mmd(z[a], z[b], c.mmd_bandwidth) for a, b in pairs}
    return local, moment, mmd


def _mean(values) -> torch.Tensor:
    values = list(values)
    return sum(values) / len(values)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """Apply a kernel-1 Conv1d to (N, T, C) as a matmul."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of (N, T, d), counting only valid steps when a (N, T) mask is given."""
    if mask is None:
        return x.mean(1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _key_mask(masks, query_len: int, memories) -> torch.Tensor | None:
    if all(m is None for m in masks):
        return None
    parts = [torch.ones(mem.shape[:2], dtype=torch.bool, device=mem.device) if m is None else m
             for m, mem in zip(masks, memories)]
    return torch.cat(parts, dim=1).unsqueeze(1).expand(-1, query_len, -1)  # (N, Tq, Tk)


def _same_shapes(unique, memory) -> list[list[str]]:
    """Modalities grouped by (query length, key length), in model order."""
    groups: dict[tuple, list[str]] = {}
    for m, x in unique.items():
        groups.setdefault((x.shape[1], None if memory[m] is None else memory[m].shape[1]), []).append(m)
    return list(groups.values())


def _stack_masks(masks, query: torch.Tensor, memory: torch.Tensor | None) -> torch.Tensor | None:
    """(M, N, Tq, Tk) from per-modality (N or 1, Tq, Tk) masks; None when no modality has one."""
    if all(m is None for m in masks):
        return None
    n, steps = query.shape[:2]
    keys = steps if memory is None else memory.shape[2]
    full = torch.ones(n, steps, keys, dtype=torch.bool, device=query.device)
    return torch.stack([full if m is None else m.expand(n, -1, -1) for m in masks])


def _self_mask(x: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    steps = x.shape[1]
    allowed = None
    if causal:  # official: upper-triangular entries (future steps) are masked
        allowed = torch.ones(steps, steps, dtype=torch.bool, device=x.device).tril().unsqueeze(0)
    if mask is not None:
        keys = mask.unsqueeze(1)  # (N, 1, T)
        allowed = keys if allowed is None else allowed & keys
    return allowed
