"""Data layer: read MMSA pickles and npz archives safely, validate them, and batch them for torch.

Start with :func:`load_dataset`; everything it returns is a :class:`MultimodalDataset`.
"""

from .dataset import SPLITS, DataError, LoadReport, MultimodalDataset, Split
from .loading import DEFAULT_MAX_BYTES, check_compatible, load_dataset, load_dataset_bytes
from .mmsa import write_mmsa_pickle
from .npz import save_npz
from .synthetic import make_synthetic
from .torch_batches import Batch, iterate_batches

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SPLITS",
    "Batch",
    "DataError",
    "LoadReport",
    "MultimodalDataset",
    "Split",
    "check_compatible",
    "iterate_batches",
    "load_dataset",
    "load_dataset_bytes",
    "make_synthetic",
    "save_npz",
    "write_mmsa_pickle",
]
