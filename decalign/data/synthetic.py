"""MMSA-shaped synthetic data with a planted cross-modal signal, for tests, demos and benchmarks.

Every sample n has one latent score per modality, ``s_m[n] ~ N(0, 1)``. Each time step of modality m is
that score along a fixed random unit direction ``w_m`` plus unit Gaussian noise::

    x_m[n, t, :] = signal * s_m[n] * w_m + eps,      eps ~ N(0, I_D)

The label depends on every modality and on an interaction of the first two, so no single modality
suffices and fusion helps::

    z[n] = (sum_m s_m[n] + s_0[n] * s_1[n]) / sqrt(M + 1)       (Var z = 1)
    regression:      y = 3 tanh(z)                              (in (-3, 3), like MOSI)
    classification:  y = number of standard-normal quantiles q_{k/C}, k = 1..C-1, below z  (about balanced)
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from .dataset import LoadReport, MultimodalDataset, Split
from .mmsa import write_mmsa_pickle

__all__ = ["make_synthetic", "write_mmsa_pickle"]

DEFAULT_WIDTHS = {"text": 768, "audio": 5, "vision": 20}  # MOSI's BERT, COVAREP-reduced and Facet widths


def make_synthetic(
    n_train: int = 200,
    n_valid: int = 50,
    n_test: int = 50,
    *,
    widths: dict[str, int] | None = None,
    seq_len: int | dict[str, int] = 50,
    task: str = "regression",
    num_classes: int = 3,
    seed: int = 0,
    signal: float = 1.0,
    variable_lengths: bool = False,
    text_bert_vocab: int = 0,
) -> MultimodalDataset:
    """Generate a dataset whose labels a multimodal model can learn (see the module docstring).

    Parameters
    ----------
    n_train, n_valid, n_test
        Samples per split (a split with 0 samples is left out).
    widths
        Modality name -> feature width D; at least two modalities. Defaults to MOSI's widths.
    seq_len
        Time steps T, for all modalities or per modality.
    task
        ``"regression"`` (labels in (-3, 3)) or ``"classification"`` (``num_classes`` roughly balanced classes).
    seed
        Everything (directions, scores, noise) follows from it.
    signal
        Length of the planted vector relative to unit per-coordinate noise; 0 gives pure noise.
    variable_lengths
        If true, each sample keeps a random number of leading steps (at least half of T) and the rest
        is zero padding, like MMSA's unaligned files; ``Split.lengths`` records them.
    text_bert_vocab
        If positive, every split also gets MMSA ``text_bert`` tokens ``(N, 3, T_text)`` over a vocabulary of
        this size (rows input_ids, attention_mask, segment_ids; at least half the positions valid); the
        first token encodes the text modality's planted score, so a BERT model can learn from it. Drawn
        from a generator of its own: the features are those of the same call without tokens.
    """
    widths = dict(DEFAULT_WIDTHS if widths is None else widths)
    if len(widths) < 2 or min(widths.values()) < 1:
        raise ValueError(f"widths must name at least two modalities of width >= 1, found {widths}")
    if task not in ("regression", "classification") or (task == "classification" and num_classes < 2):
        raise ValueError(
            f"task must be 'regression' or 'classification' with num_classes >= 2, found {task!r}"
        )
    steps = {m: seq_len if isinstance(seq_len, int) else seq_len[m] for m in widths}
    rng = np.random.default_rng(seed)
    directions = {m: _unit(rng.standard_normal(d)) for m, d in widths.items()}
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    splits = {
        name: _split(name, n, rng, directions, steps, signal, task, num_classes, variable_lengths)
        for name, n in sizes.items()
        if n > 0
    }
    if text_bert_vocab > 0:
        token_rng = np.random.default_rng([seed, 7])
        first = next(iter(directions))
        for part in splits.values():
            part.text_bert = _tokens(part.features[first] @ directions[first], text_bert_vocab, token_rng)
    return MultimodalDataset(
        splits=splits,
        task=task,
        num_classes=num_classes if task == "classification" else None,
        report=LoadReport(source=f"synthetic(seed={seed}, signal={signal})"),
    )


def _tokens(projection: np.ndarray, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """(N, 3, T) tokens: id 1 + a bucket of the sample's mean projection first, random ids after it,
    a prefix attention mask, zero segment ids."""
    if vocab < 3:
        raise ValueError(f"text_bert_vocab must be at least 3, found {vocab}")
    n, steps = projection.shape
    score = projection.mean(1) * np.sqrt(steps)  # about N(0, 1 + signal^2 * steps)
    rank = np.argsort(np.argsort(score)) / max(n - 1, 1)
    ids = rng.integers(1, vocab, size=(n, steps))
    ids[:, 0] = 1 + np.minimum((rank * (vocab - 1)).astype(np.int64), vocab - 2)
    lengths = rng.integers((steps + 1) // 2, steps + 1, size=n)
    mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.int64)
    return np.stack([ids * mask, mask, np.zeros_like(mask)], axis=1).astype(np.int64)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _split(
    name: str,
    n: int,
    rng: np.random.Generator,
    directions: dict[str, np.ndarray],
    steps: dict[str, int],
    signal: float,
    task: str,
    num_classes: int,
    variable_lengths: bool,
) -> Split:
    scores = rng.standard_normal((n, len(directions)))  # s_m[n]
    features, lengths = {}, {}
    for j, (m, w) in enumerate(directions.items()):
        x = signal * scores[:, j, None, None] * w + rng.standard_normal((n, steps[m], len(w)))  # (N, T, D)
        if variable_lengths:
            lengths[m] = rng.integers((steps[m] + 1) // 2, steps[m] + 1, size=n).astype(np.int64)
            x[np.arange(steps[m])[None, :] >= lengths[m][:, None]] = 0.0  # zero padding after the valid steps
        features[m] = np.ascontiguousarray(x, dtype=np.float32)
    z = (scores.sum(axis=1) + scores[:, 0] * scores[:, 1]) / np.sqrt(scores.shape[1] + 1)
    return Split(
        features=features,
        labels=_labels(z, task, num_classes),
        ids=np.array([f"synth_{name}$_${i:05d}" for i in range(n)], dtype=str),
        raw_text=np.array([f"synthetic {name} sample {i}" for i in range(n)], dtype=str),
        lengths=lengths,
    )


def _labels(z: np.ndarray, task: str, num_classes: int) -> np.ndarray:
    if task == "regression":
        return (3.0 * np.tanh(z)).astype(np.float32)
    cuts = [NormalDist().inv_cdf(k / num_classes) for k in range(1, num_classes)]
    return np.searchsorted(np.asarray(cuts), z).astype(np.int64)
