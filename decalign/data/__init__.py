"""Data layer: read MMSA pickles and npz archives safely, validate them, and batch them for torch.

Start with :func:`load_dataset`; everything it returns is a :class:`MultimodalDataset`.
``Batch`` and ``iterate_batches`` import torch, so they load on first use: the sandboxed parser
(:mod:`decalign.sandbox`) imports this package and must not pay for torch.
"""

from .dataset import SPLITS, DataError, LoadReport, MultimodalDataset, Split
from .loading import DEFAULT_MAX_BYTES, check_compatible, load_dataset, load_dataset_bytes
from .mmsa import write_mmsa_pickle
from .npz import save_npz
from .synthetic import make_synthetic
from .tokens import bert_view, token_rows

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SPLITS",
    "Batch",
    "DataError",
    "LoadReport",
    "MultimodalDataset",
    "Split",
    "bert_view",
    "check_compatible",
    "iterate_batches",
    "load_dataset",
    "load_dataset_bytes",
    "make_synthetic",
    "save_npz",
    "token_rows",
    "write_mmsa_pickle",
]


def __getattr__(name: str):
    if name in ("Batch", "iterate_batches"):
        from . import torch_batches

        return getattr(torch_batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
