"""Independent re-implementation of the official taco-group/DecAlign model, with or without its BERT.

This file is a test oracle and a speed baseline, not part of the product. It is written from a
written specification of what the official forward computes, and it deliberately keeps the
official shape: parameter names identical to the official ``state_dict`` (``proj_l.weight``,
``trans_a.layers.3.self_attn.in_proj_weight``, ``pde_v.net.3.bias``, ...), per-modality code
written out for text (``l``), audio (``a``) and vision (``v``), EM and Sinkhorn iterations as
plain Python loops. Nothing here is optimised; do not import it from ``decalign/``.

Forward, per modality m in (l, a, v), with x_m of shape (B, T_m, D_m):

    x_m   -> (B, D_m, T_m)                 (text gets dropout p=text_dropout in training)
    p_m   = proj_m(x_m)                     Conv1d(D_m -> d, k_m, no bias); identity when D_m == d
    s_m   = encoder_uni_m(p_m)              Conv1d(d -> d, 1, no bias)      (unique)
    c_m   = encoder_com(p_m)                one Conv1d(d -> d, 1) shared     (common)
    h_m   = mean_t trans_m(s_m, keys/values)  post-norm transformer, nlevels layers
    y     = out_layer(cat[h_l, h_a, h_v, mean_t c_l, mean_t c_a, mean_t c_v])

With ``use_bert`` (and a ``bert_config``), ``text_model.model`` is a ``transformers.BertModel`` (the
library the official encoder uses) and the text input is MMSA's (B, 3, T) integer ``text_bert``:
row 0 the ids; the attention mask is row 1 unless row 2 sums to more (then rows swap roles), judged
over the whole batch; the BERT's last hidden state (B, T, H) is the text features. Float text passes
through unchanged. Without ``use_finetune`` the BERT is frozen and runs without gradients in training.

Cross-modal attention (``use_cross_modal_attention``): queries s_m, keys/values the other
modalities' unique sequences concatenated in time in the order l, a, v, no mask. Otherwise self
attention, with a causal mask when ``attn_mask`` is true.

Losses, as the official objective computes them (each in the plain form of the official code):

    dec_loss  = mean over l, a, v of mean_b cos(s_b, c_b)^2
    hete_loss = <P, C> + lambda_ot * sum P (log max(P, 1e-8) - 1)            (EM, Gaussian cost, Sinkhorn)
              + mean over the 6 ordered pairs (m, n) of mean_b sum_k gamma^m_bk mean_d (x^m_b - mu^n_k)^2
    homo_loss = mean over 3 pairs of [mse(mean) + mse(cov / (B-1)) + mse(skew)] + mean over 3 pairs of MMD^2
    loss      = main + dec_loss_weight dec + alpha hete + beta homo (+ ct_weight SupCon over 7 bins)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "OfficialBertTextEncoder",
    "OfficialDecAlign",
    "OfficialMultiheadAttention",
    "OfficialTransformerEncoder",
    "contrastive_loss",
    "main_loss",
    "official_config_dict",
    "official_total_loss",
]

# Keys every model needs; the rest of the official config concerns training or BERT.
_REQUIRED_KEYS = (
    "dst_feature_dim_nheads", "nlevels", "conv1d_kernel_size_l", "conv1d_kernel_size_a",
    "conv1d_kernel_size_v", "num_prototypes", "gmm_em_iters", "gmm_var_floor", "lambda_ot",
    "ot_num_iters", "use_cross_modal_attention", "pde_dim", "mmd_bandwidth", "attn_dropout",
    "attn_dropout_a", "attn_dropout_v", "relu_dropout", "embed_dropout", "res_dropout",
    "output_dropout", "text_dropout", "attn_mask",
)

_EPS = 1e-9  # same role as the official eps: keeps plain-domain divisions finite


def official_config_dict(**overrides: Any) -> dict[str, Any]:
    """The official MOSI config (``config/dec_mosi_config.json``) as a dict, with overrides.

    Examples
    --------
    >>> official_config_dict(use_cross_modal_attention=False)["use_cross_modal_attention"]
    False
    """
    config: dict[str, Any] = {
        "model_name": "decalign", "use_bert": True, "use_finetune": True, "transformers": "bert",
        "pretrained": "bert-base-uncased", "need_data_aligned": True,
        "dst_feature_dim_nheads": [40, 10], "nlevels": 5,
        "conv1d_kernel_size_l": 1, "conv1d_kernel_size_a": 1, "conv1d_kernel_size_v": 1,
        "num_prototypes": 7, "gmm_em_iters": 5, "gmm_var_floor": 0.0001, "lambda_ot": 0.1,
        "ot_num_iters": 50, "use_cross_modal_attention": True, "pde_dim": 40, "mmd_bandwidth": 1.0,
        "attn_dropout": 0.1, "attn_dropout_a": 0.0, "attn_dropout_v": 0.0, "relu_dropout": 0.1,
        "embed_dropout": 0.25, "res_dropout": 0.1, "output_dropout": 0.0, "text_dropout": 0.0,
        "attn_mask": True, "task_loss": "mse", "loss_contract": "paper", "dec_loss_weight": 1.0,
        "alpha": 0.05, "beta": 0.0, "ct_weight": 0.0, "ct_temperature": 0.1,
        "use_sequence_mask": False, "batch_size": 32, "learning_rate": 0.0002,
        "bert_learning_rate": 0.000025, "weight_decay": 0.005, "num_epochs": 50,
        "early_stop_patience": 10, "scheduler_patience": 5, "patience": 10, "clip": 0.6,
        "selection_metric": "MOSI", "scheduler_metric": "MOSI", "factor": 0.1,
    }
    unknown = set(overrides) - set(config) - {"feature_dims", "output_dim"}
    if unknown:
        raise KeyError(f"official_config_dict: unknown override key(s) {sorted(unknown)}")
    config.update(overrides)
    return config


def _as_namespace(args: Any) -> SimpleNamespace:
    """Accept a dict (parsed JSON) or an argparse-like object; check the keys the model reads."""
    values = dict(args) if isinstance(args, Mapping) else dict(vars(args))
    missing = [key for key in _REQUIRED_KEYS if key not in values]
    if missing:
        raise KeyError(f"official DecAlign config lacks key(s) {missing}")
    return SimpleNamespace(**values)


# --------------------------------------------------------------------------- transformer


class OfficialMultiheadAttention(nn.Module):
    """Multi-head attention with a packed input projection, as in the official code.

    ``in_proj_weight`` is (3d, d): rows [0, d) project the query, [d, 2d) the key, [2d, 3d) the
    value. Inputs are (L, B, d) for the query and (S, B, d) for key and value; S may differ from L.

        A = softmax(Q K^T / sqrt(d / heads) + mask) ,  out = out_proj(A V)
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.attn_dropout = attn_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tgt_len, bsz, d = query.shape
        src_len = key.shape[0]
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:d], b[:d])  # (L, B, d)
        k = F.linear(key, w[d:2 * d], b[d:2 * d])  # (S, B, d)
        v = F.linear(value, w[2 * d:], b[2 * d:])  # (S, B, d)
        # (B*heads, L, hd): batch-major heads, the same layout torch's MHA uses
        q = q.contiguous().view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = k.contiguous().view(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(self.head_dim)  # (B*h, L, S)
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask.unsqueeze(0), float("-inf"))
        weights = F.softmax(scores, dim=-1)
        weights = F.dropout(weights, p=self.attn_dropout, training=self.training)
        attn = torch.bmm(weights, v)  # (B*h, L, hd)
        attn = attn.transpose(0, 1).contiguous().view(tgt_len, bsz, d)
        return self.out_proj(attn), weights


class OfficialTransformerEncoderLayer(nn.Module):
    """Post-norm layer: x = LN(x + Attn(x, k, v)); x = LN(x + fc2(relu(fc1(x))))."""

    def __init__(self, d: int, heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float) -> None:
        super().__init__()
        self.self_attn = OfficialMultiheadAttention(d, heads, attn_dropout)
        self.attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.relu_dropout = relu_dropout
        self.res_dropout = res_dropout

    def forward(self, x: torch.Tensor, x_k: torch.Tensor, x_v: torch.Tensor,
                attn_mask: torch.Tensor | None) -> torch.Tensor:
        residual = x
        x, _ = self.self_attn(query=x, key=x_k, value=x_v, attn_mask=attn_mask)
        x = F.dropout(x, p=self.res_dropout, training=self.training)
        x = self.attn_layer_norm(residual + x)
        residual = x
        x = F.dropout(F.relu(self.fc1(x)), p=self.relu_dropout, training=self.training)
        x = F.dropout(self.fc2(x), p=self.res_dropout, training=self.training)
        return self.final_layer_norm(residual + x)


class OfficialTransformerEncoder(nn.Module):
    """Stack of post-norm layers on sqrt(d)-scaled inputs; no positional encoding, no final norm.

    ``causal`` adds the mask triu(ones(T, T), 1) (True = masked) when attending to itself.
    """

    def __init__(self, d: int, heads: int, layers: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, embed_dropout: float, causal: bool) -> None:
        super().__init__()
        self.embed_scale = math.sqrt(d)
        self.embed_dropout = embed_dropout
        self.causal = causal
        self.layers = nn.ModuleList(
            OfficialTransformerEncoderLayer(d, heads, attn_dropout, relu_dropout, res_dropout)
            for _ in range(layers)
        )

    def forward(self, x_in: torch.Tensor, x_in_k: torch.Tensor | None = None,
                x_in_v: torch.Tensor | None = None) -> torch.Tensor:
        x = F.dropout(self.embed_scale * x_in, p=self.embed_dropout, training=self.training)
        mask = None
        cross = x_in_k is not None and x_in_v is not None
        if cross:  # keys and values: the embedded memory in every layer, each with its own dropout mask
            x_k = F.dropout(self.embed_scale * x_in_k, p=self.embed_dropout, training=self.training)
            x_v = F.dropout(self.embed_scale * x_in_v, p=self.embed_dropout, training=self.training)
        elif self.causal:
            t = x.shape[0]
            mask = torch.triu(torch.ones(t, t, device=x.device), diagonal=1).bool()
        for layer in self.layers:  # self-attention: each layer attends to its own input
            x = layer(x, x_k, x_v, mask) if cross else layer(x, x, x, mask)
        return x  # (T, B, d)


class OfficialPDE(nn.Module):
    """Distribution encoder: net = Linear(d, d), ReLU, Dropout, Linear(d, pde_dim).

    The dropout rate is not fixed by the specification; ``output_dropout`` is used (0.0 on MOSI).
    """

    def __init__(self, d: int, pde_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, pde_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# --------------------------------------------------------------------------- losses
#
# Written from the official objective's behaviour, in its plain (not stabilised) form: E[x^2] - mu^2
# variances, the plain-domain kernel exp(-C / reg) floored at 1e-30, "+ 1e-8" in the Sinkhorn
# denominators, v1 + v2 - 2 sqrt(v1 v2 + 1e-8). One function per official step, per-modality calls
# written out in the model below.


def decoupling_loss(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """mean_b cos(s_b, c_b)^2 over flattened (d*T) unique and common features."""
    cos = F.cosine_similarity(s.reshape(s.shape[0], -1), c.reshape(c.shape[0], -1), dim=1)
    return (cos ** 2).mean()


def gmm_init(x: torch.Tensor, k: int, var_floor: float):
    """Means at samples round(linspace(0, B-1, k)) (the batch repeated when B < k), every variance the
    biased batch variance clamped at the floor, uniform weights."""
    b, d = x.shape
    if b >= k:
        mu = x[torch.linspace(0, b - 1, steps=k).round().long()]
    else:
        mu = x.repeat(math.ceil(k / b), 1)[:k]
    var = x.var(dim=0, unbiased=False).clamp_min(var_floor).unsqueeze(0).expand(k, d).clone()
    return torch.full((k,), 1.0 / k, dtype=x.dtype), mu, var


def gmm_log_prob(x, pi, mu, var) -> torch.Tensor:
    """(B, K): log max(pi_k, 1e-8) - 1/2 [sum_d (x - mu)^2 / var + sum_d log var + d log 2 pi]."""
    maha = ((x[:, None, :] - mu[None]) ** 2 / var[None]).sum(dim=2)
    log_det = var.log().sum(dim=1)[None]
    return pi.clamp_min(1e-8).log()[None] - 0.5 * (maha + log_det + x.shape[1] * math.log(2 * math.pi))


def gmm_em(x: torch.Tensor, k: int, iters: int, var_floor: float):
    """Diagonal GMM fitted to x (B, d) by ``iters`` EM steps; returns (mu, var, pi, posteriors).

    M-step: N_k = max(sum_b gamma_bk, 1e-6), pi_k = N_k / B, mu_k = sum_b gamma_bk x_b / N_k,
    var_k = max(sum_b gamma_bk x_b^2 / N_k - mu_k^2, floor); posteriors recomputed at the end.
    """
    pi, mu, var = gmm_init(x, k, var_floor)
    for _ in range(iters):
        gamma = F.softmax(gmm_log_prob(x, pi, mu, var), dim=1)
        nk = gamma.sum(dim=0).clamp_min(1e-6)
        pi = nk / x.shape[0]
        mu = gamma.t() @ x / nk[:, None]
        var = (gamma.t() @ (x ** 2) / nk[:, None] - mu ** 2).clamp_min(var_floor)
    return mu, var, pi, F.softmax(gmm_log_prob(x, pi, mu, var), dim=1)


def gaussian_cost(mu1, var1, mu2, var2, reduction: str = "mean") -> torch.Tensor:
    """(K1, K2): R_d (mu1 - mu2)^2 + R_d (var1 + var2 - 2 sqrt(var1 var2 + 1e-8)), R_d a mean (or sum)."""
    reduce = torch.sum if reduction == "sum" else torch.mean
    mean_part = reduce((mu1[:, None, :] - mu2[None]) ** 2, dim=2)
    cov_part = var1[:, None, :] + var2[None] - 2.0 * torch.sqrt(var1[:, None, :] * var2[None] + 1e-8)
    return mean_part + reduce(cov_part, dim=2)


def bures_diag_cost(mu1, var1, mu2, var2) -> torch.Tensor:
    """C_ij = ||mu1_i - mu2_j||^2 + ||sqrt(var1_i) - sqrt(var2_j)||^2, shape (K, K) (a check against POT)."""
    mean_term = ((mu1[:, None, :] - mu2[None, :, :]) ** 2).sum(dim=2)
    cov_term = ((var1.sqrt()[:, None, :] - var2.sqrt()[None, :, :]) ** 2).sum(dim=2)
    return mean_term + cov_term


def multi_marginal_sinkhorn(cost, nu_l, nu_a, nu_v, reg: float, num_iters: int) -> torch.Tensor:
    """Plain-domain three-marginal Sinkhorn, fixed ``num_iters`` sweeps; returns the (K, K, K) plan.

    G = max(exp(-C / max(reg, 1e-6)), 1e-30); P_ijk = u_i v_j w_k G_ijk; each sweep sets u, v, w in turn,
    e.g. u = nu_l / (sum_jk G v_j w_k + 1e-8).
    """
    kern = torch.exp(-cost / max(reg, 1e-6)).clamp_min(1e-30)
    k = cost.shape[0]
    u, v, w = cost.new_ones(k), cost.new_ones(k), cost.new_ones(k)
    for _ in range(num_iters):
        u = nu_l / ((kern * v.view(1, k, 1) * w.view(1, 1, k)).sum(dim=(1, 2)) + 1e-8)
        v = nu_a / ((kern * u.view(k, 1, 1) * w.view(1, 1, k)).sum(dim=(0, 2)) + 1e-8)
        w = nu_v / ((kern * u.view(k, 1, 1) * v.view(1, k, 1)).sum(dim=(0, 1)) + 1e-8)
    return u.view(k, 1, 1) * v.view(1, k, 1) * w.view(1, 1, k) * kern


def transport_loss(plan, cost, reg: float) -> torch.Tensor:
    """<P, C> + reg * sum P (log max(P, 1e-8) - 1)."""
    return (plan * cost).sum() + reg * (plan * (plan.clamp_min(1e-8).log() - 1.0)).sum()


def local_loss(feat, gamma, other_mu, other_var=None, reduction: str = "mean", var_floor: float = 1e-4):
    """mean_b sum_k gamma_bk R_d (feat_b - other_mu_k)^2 (divided by max(other_var_k, floor) if given)."""
    diff2 = (feat[:, None, :] - other_mu[None]) ** 2  # (B, K, d)
    if other_var is not None:
        diff2 = diff2 / other_var[None].clamp_min(var_floor)
    dist = diff2.sum(dim=2) if reduction == "sum" else diff2.mean(dim=2)
    return (gamma * dist).sum(dim=1).mean()


def distribution_stats(z: torch.Tensor):
    """Mean, covariance / max(B - 1, 1), skewness E[(z-mu)^3] / max(E[(z-mu)^2], 1e-6)^1.5."""
    mu = z.mean(dim=0)
    centred = z - mu
    cov = centred.t() @ centred / max(z.shape[0] - 1, 1)
    var = (centred ** 2).mean(dim=0).clamp_min(1e-6)
    return mu, cov, (centred ** 3).mean(dim=0) / var ** 1.5


def stats_distance(p, q) -> torch.Tensor:
    """Sum over (mean, covariance, skewness) of the mean squared difference of their elements."""
    return sum(((x - y) ** 2).mean() for x, y in zip(p, q))


def gaussian_mmd(x, y, bandwidth: float) -> torch.Tensor:
    """Biased MMD^2 with k(a, b) = exp(-||a - b||^2 / (2 bandwidth)) (bandwidth, not its square)."""
    def kernel(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.t()
        return torch.exp(-sq.clamp_min(0) / (2 * bandwidth))
    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


# --------------------------------------------------------------------------- BERT


class OfficialBertTextEncoder(nn.Module):
    """The official ``BertTextEncoder``, its ``BertModel`` built from a config dict instead of downloaded."""

    def __init__(self, bert_config: dict[str, Any], use_finetune: bool = True) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.use_finetune = use_finetune
        self.model = BertModel(BertConfig(**bert_config))
        if not use_finetune:
            for param in self.model.parameters():
                param.requires_grad = False

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.dim() != 3 or text.shape[1] != 3 or text.is_floating_point():
            return text  # already-encoded features
        input_ids = text[:, 0, :].long()
        first, second = text[:, 1, :].long(), text[:, 2, :].long()
        if second.sum() == 0 or first.sum() >= second.sum():
            attention_mask, token_type_ids = first, second
        else:
            attention_mask, token_type_ids = second, first
        with torch.set_grad_enabled(self.use_finetune and self.training):
            out = self.model(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
            return out.last_hidden_state


# --------------------------------------------------------------------------- model


class OfficialDecAlign(nn.Module):
    """The official DecAlign (text features given, no BERT), for oracle tests and benchmarks.

    Parameters
    ----------
    args : dict or namespace
        An official config (see ``official_config_dict``). ``use_bert`` counts only with a ``bert_config``;
        without one the text input is taken as already-encoded features (B, T, D_text).
    feature_dims : (D_text, D_audio, D_vision), optional
        Defaults to ``args.feature_dims``. With a BERT, D_text is its hidden size.
    output_dim : int, optional
        1 for regression, C for classification; defaults to ``args.output_dim`` or 1.
    bert_config : ``transformers.BertConfig`` keyword arguments of the text BERT (``use_bert`` true).
    """

    def __init__(self, args: Any, feature_dims: tuple[int, int, int] | None = None,
                 output_dim: int | None = None, bert_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        a = _as_namespace(args)
        self.args = a
        self.use_bert = bool(a.use_bert) and bert_config is not None if hasattr(a, "use_bert") else False
        if self.use_bert:
            self.text_model = OfficialBertTextEncoder(bert_config, getattr(a, "use_finetune", True))
        dims = feature_dims if feature_dims is not None else getattr(a, "feature_dims", None)
        if dims is None or len(dims) != 3:
            raise ValueError(f"feature_dims must be (D_text, D_audio, D_vision), found {dims!r}")
        self.orig_d_l, self.orig_d_a, self.orig_d_v = (int(x) for x in dims)
        d, heads = a.dst_feature_dim_nheads
        self.d = d
        out = output_dim if output_dim is not None else getattr(a, "output_dim", 1)

        self.proj_l = nn.Conv1d(self.orig_d_l, d, a.conv1d_kernel_size_l, padding=0, bias=False)
        self.proj_a = nn.Conv1d(self.orig_d_a, d, a.conv1d_kernel_size_a, padding=0, bias=False)
        self.proj_v = nn.Conv1d(self.orig_d_v, d, a.conv1d_kernel_size_v, padding=0, bias=False)
        self.encoder_uni_l = nn.Conv1d(d, d, kernel_size=1, padding=0, bias=False)
        self.encoder_uni_a = nn.Conv1d(d, d, kernel_size=1, padding=0, bias=False)
        self.encoder_uni_v = nn.Conv1d(d, d, kernel_size=1, padding=0, bias=False)
        self.encoder_com = nn.Conv1d(d, d, kernel_size=1, padding=0, bias=False)

        causal = bool(a.attn_mask) and not a.use_cross_modal_attention
        common = {"relu_dropout": a.relu_dropout, "res_dropout": a.res_dropout,
                      "embed_dropout": a.embed_dropout, "causal": causal}
        self.trans_l = OfficialTransformerEncoder(d, heads, a.nlevels, a.attn_dropout, **common)
        self.trans_a = OfficialTransformerEncoder(d, heads, a.nlevels, a.attn_dropout_a, **common)
        self.trans_v = OfficialTransformerEncoder(d, heads, a.nlevels, a.attn_dropout_v, **common)

        self.out_layer = nn.Linear(6 * d, out)
        self.pde_l = OfficialPDE(d, a.pde_dim, a.output_dropout)
        self.pde_a = OfficialPDE(d, a.pde_dim, a.output_dropout)
        self.pde_v = OfficialPDE(d, a.pde_dim, a.output_dropout)

    # -- fusion
    def _fuse(self, s_l, s_a, s_v):
        """Transformer outputs (T_m, B, d) from unique features (B, d, T_m)."""
        q_l, q_a, q_v = s_l.permute(2, 0, 1), s_a.permute(2, 0, 1), s_v.permute(2, 0, 1)
        if not self.args.use_cross_modal_attention:
            return self.trans_l(q_l), self.trans_a(q_a), self.trans_v(q_v)
        kv_l = torch.cat([q_a, q_v], dim=0)  # others, in the order l, a, v
        kv_a = torch.cat([q_l, q_v], dim=0)
        kv_v = torch.cat([q_l, q_a], dim=0)
        return self.trans_l(q_l, kv_l, kv_l), self.trans_a(q_a, kv_a, kv_a), self.trans_v(q_v, kv_v, kv_v)

    # -- losses
    def _hetero_loss(self, s_l, s_a, s_v) -> dict[str, torch.Tensor]:
        """hete_loss = transport loss + mean of the six index-paired local losses."""
        a = self.args
        red = getattr(a, "hetero_cost_reduction", "mean")
        maha = getattr(a, "local_proto_mahalanobis", False)
        x_l, x_a, x_v = s_l.mean(dim=2), s_a.mean(dim=2), s_v.mean(dim=2)  # (B, d)
        mu_l, var_l, _, g_l = gmm_em(x_l, a.num_prototypes, a.gmm_em_iters, a.gmm_var_floor)
        mu_a, var_a, _, g_a = gmm_em(x_a, a.num_prototypes, a.gmm_em_iters, a.gmm_var_floor)
        mu_v, var_v, _, g_v = gmm_em(x_v, a.num_prototypes, a.gmm_em_iters, a.gmm_var_floor)
        nu_l, nu_a, nu_v = g_l.mean(0), g_a.mean(0), g_v.mean(0)
        nu_l, nu_a, nu_v = (nu / nu.sum().clamp_min(1e-8) for nu in (nu_l, nu_a, nu_v))
        cost_la = gaussian_cost(mu_l, var_l, mu_a, var_a, red)
        cost_lv = gaussian_cost(mu_l, var_l, mu_v, var_v, red)
        cost_av = gaussian_cost(mu_a, var_a, mu_v, var_v, red)
        # C[i, j, k] = cost_la[i, j] + cost_lv[i, k] + cost_av[j, k]
        cost = cost_la[:, :, None] + cost_lv[:, None, :] + cost_av[None, :, :]
        plan = multi_marginal_sinkhorn(cost, nu_l, nu_a, nu_v, a.lambda_ot, a.ot_num_iters)
        ot = transport_loss(plan, cost, a.lambda_ot)
        fl = a.gmm_var_floor

        def local(x, g, mu, var):
            return local_loss(x, g, mu, var if maha else None, red, fl)

        parts = [local(x_l, g_l, mu_a, var_a), local(x_l, g_l, mu_v, var_v), local(x_a, g_a, mu_l, var_l),
                 local(x_a, g_a, mu_v, var_v), local(x_v, g_v, mu_l, var_l), local(x_v, g_v, mu_a, var_a)]
        local_mean = torch.stack(parts).mean()
        return {"hete_loss": ot + local_mean, "ot_loss": ot, "local_loss": local_mean, "transport_plan": plan,
                "plan_cost": (plan * cost).sum(), "posteriors": (g_l, g_a, g_v), "means": (mu_l, mu_a, mu_v),
                "variances": (var_l, var_a, var_v)}

    def _homo_loss(self, cp_l, cp_a, cp_v) -> dict[str, torch.Tensor]:
        """homo_loss = mean over the three pairs of the moment distance + mean over them of MMD."""
        z_l, z_a, z_v = self.pde_l(cp_l), self.pde_a(cp_a), self.pde_v(cp_v)
        st_l, st_a, st_v = distribution_stats(z_l), distribution_stats(z_a), distribution_stats(z_v)
        sem = (stats_distance(st_l, st_a) + stats_distance(st_l, st_v) + stats_distance(st_a, st_v)) / 3.0
        bw = self.args.mmd_bandwidth
        mmd = (gaussian_mmd(z_l, z_a, bw) + gaussian_mmd(z_l, z_v, bw) + gaussian_mmd(z_a, z_v, bw)) / 3.0
        return {"homo_loss": sem + mmd, "sem_loss": sem, "mmd_loss": mmd, "z_common": (z_l, z_a, z_v)}

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor) -> dict[str, Any]:
        """Inputs (B, T_m, D_m) (text: (B, 3, T) tokens with a BERT); returns ``output_logit`` (B, out) and
        the three alignment losses."""
        if self.use_bert:
            text = self.text_model(text)
        x_l = F.dropout(text.transpose(1, 2), p=self.args.text_dropout, training=self.training)
        x_a, x_v = audio.transpose(1, 2), vision.transpose(1, 2)
        p_l = x_l if self.orig_d_l == self.d else self.proj_l(x_l)  # (B, d, T_l)
        p_a = x_a if self.orig_d_a == self.d else self.proj_a(x_a)
        p_v = x_v if self.orig_d_v == self.d else self.proj_v(x_v)
        s_l, s_a, s_v = self.encoder_uni_l(p_l), self.encoder_uni_a(p_a), self.encoder_uni_v(p_v)
        c_l, c_a, c_v = self.encoder_com(p_l), self.encoder_com(p_a), self.encoder_com(p_v)

        t_l, t_a, t_v = self._fuse(s_l, s_a, s_v)
        h_l, h_a, h_v = t_l.mean(dim=0), t_a.mean(dim=0), t_v.mean(dim=0)  # (B, d)
        cp_l, cp_a, cp_v = c_l.mean(dim=2), c_a.mean(dim=2), c_v.mean(dim=2)  # (B, d)
        final = torch.cat([h_l, h_a, h_v, cp_l, cp_a, cp_v], dim=1)  # (B, 6d)
        final = F.dropout(final, p=self.args.output_dropout, training=self.training)
        output = self.out_layer(final)

        dec = torch.stack([decoupling_loss(s_l, c_l), decoupling_loss(s_a, c_a), decoupling_loss(s_v, c_v)]).mean()
        return {
            "output_logit": output, "dec_loss": dec, **self._hetero_loss(s_l, s_a, s_v),
            **self._homo_loss(cp_l, cp_a, cp_v), "final_rep": final,
            "s_l": s_l, "s_a": s_a, "s_v": s_v, "c_l": c_l, "c_a": c_a, "c_v": c_v,
        }


def main_loss(logits: torch.Tensor, labels: torch.Tensor, args: Any) -> torch.Tensor:
    """The task loss: cross-entropy for several outputs; else ``task_loss`` (mse, smooth_l1/huber, else L1,
    the default) plus ``binary_task_weight`` * BCE-with-logits(prediction, y > 0) over the nonzero labels."""
    a = args if not isinstance(args, Mapping) else SimpleNamespace(**args)
    if logits.shape[1] > 1:
        return F.cross_entropy(logits, labels.reshape(-1).long())
    pred, y = logits.reshape(-1), labels.reshape(-1).to(logits.dtype)
    kind = str(getattr(a, "task_loss", "mae")).lower()
    if kind == "mse":
        loss = F.mse_loss(pred, y)
    elif kind in ("smooth_l1", "huber"):
        loss = F.smooth_l1_loss(pred, y, beta=getattr(a, "smooth_l1_beta", 1.0))
    else:
        loss = F.l1_loss(pred, y)
    weight = getattr(a, "binary_task_weight", 0.0) or 0.0
    nonzero = y != 0
    if weight <= 0 or not bool(nonzero.any()):
        return loss
    return loss + weight * F.binary_cross_entropy_with_logits(pred[nonzero], (y[nonzero] > 0).to(pred.dtype))


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float,
                     classification: bool) -> torch.Tensor:
    """SupCon over the head input: positives share a class, or for regression the bin round(clip(y, -3, 3));
    logits cos / tau with each row's maximum subtracted, the denominator clamped at 1e-8."""
    labels = labels.reshape(-1)
    groups = labels.long() if classification else torch.round(labels.clamp(-3.0, 3.0)).long() + 3
    z = F.normalize(features, dim=1)
    logits = z @ z.t() / temperature
    n = labels.shape[0]
    not_self = ~torch.eye(n, dtype=torch.bool)
    positive = (groups[None, :] == groups[:, None]) & not_self
    rows = positive.sum(dim=1) > 0
    if not bool(rows.any()):
        return logits.new_tensor(0.0)
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    denominator = (torch.exp(logits) * not_self.float()).sum(dim=1, keepdim=True).clamp_min(1e-8)
    log_prob = logits - torch.log(denominator)
    mean_positive = (positive.float() * log_prob).sum(dim=1) / positive.sum(dim=1).clamp_min(1)
    return -mean_positive[rows].mean()


def official_total_loss(out: dict[str, Any], labels: torch.Tensor, args: Any) -> torch.Tensor:
    """main + dec_loss_weight * dec + alpha * hete + beta * homo (+ ct_weight * contrastive when > 0)."""
    a = args if not isinstance(args, Mapping) else SimpleNamespace(**args)
    logits = out["output_logit"]
    total = (main_loss(logits, labels, a) + a.dec_loss_weight * out["dec_loss"] + a.alpha * out["hete_loss"]
             + a.beta * out["homo_loss"])
    if getattr(a, "ct_weight", 0.0) > 0:
        total = total + a.ct_weight * contrastive_loss(out["final_rep"], labels, a.ct_temperature,
                                                       logits.shape[1] > 1)
    return total
