"""Choose the torch device for training, evaluation and prediction from one command-line style string."""

from __future__ import annotations

import torch


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    ``"auto"`` (or None) means the first CUDA device when one is available, else the CPU.

    Raises
    ------
    ValueError
        For an unknown name, or when CUDA (or device N) is asked for but not available here.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        return _cuda(name)
    raise ValueError(f"--device: unknown device {spec!r}; expected auto, cpu, cuda or cuda:N")


def _cuda(name: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine "
                         "(no GPU or a CPU-only torch build); use --device cpu or auto")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name}: not a device name ({exc})") from exc
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device {name}: this machine has {count} CUDA device(s) (0..{count - 1})")
    return device
