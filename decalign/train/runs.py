"""The run directory: status, history and the resume state, all without pickle and written atomically.

Layout (``card.json``, ``best.safetensors`` and ``last.safetensors`` come from ``decalign.checkpoint``)::

    status.json    {"status": running|finished|cancelled|failed, "epoch": e, "updated_at": ..., "error": ...}
    history.json   one row per finished epoch (see ``decalign.train.trainer``)
    resume/state.json                 epoch, counters, scheduler state, numpy/python RNG states, file names
    resume/model-e<E>.safetensors     weights at the end of epoch E
    resume/optim-e<E>.safetensors     Adam moments and steps (structure and hyper-parameters in state.json)
    resume/rng-e<E>.safetensors       torch (and CUDA) RNG states as uint8 tensors

Files of epoch E are written before ``state.json`` names them, so a crash at any point leaves a
consistent state: the previous one.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from ..checkpoint import load_card
from ..config import DecAlignConfig

if TYPE_CHECKING:  # torch is imported where resume states are written and read: history readers skip it
    import torch

STATUSES = ("running", "finished", "cancelled", "failed")
HISTORY_FILE = "history.json"
# Config fields that may change when a run is resumed: only how long to train.
RESUMABLE_CHANGES = {("train", "num_epochs")}


class RunError(ValueError):
    """A run directory that cannot be used as asked (resume refused, folder already taken)."""


@dataclass
class ResumeState:
    """Counters of the training loop at the end of a finished epoch."""

    epoch: int
    best_value: float | None
    best_epoch: int | None
    bad_epochs: int


# ------------------------------------------------------------------------------ status and history


def write_status(run_dir: str | Path, status: str, epoch: int, error: str | None = None) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, found {status!r}")
    atomic_write_json(Path(run_dir) / "status.json", {
        "status": status, "epoch": epoch, "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "error": error,
    })


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_history(run_dir: str | Path, history: list[dict[str, Any]]) -> None:
    atomic_write_json(Path(run_dir) / HISTORY_FILE, _encode(history))


def read_history(run_dir: str | Path | None) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/history.json``, one per finished epoch, as ``write_history`` stored them.

    Non-finite numbers come back as floats (JSON holds them as ``{"__float__": "nan"}``). ``[]`` when
    there is no run directory or no history (an imported or uploaded model). Every reader of history
    files goes through here.

    Raises
    ------
    RunError
        When the file is not a JSON list of objects; the message names the file.
    """
    if run_dir is None:
        return []
    path = Path(run_dir) / HISTORY_FILE
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: not a readable history ({exc})") from exc
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        found = type(rows).__name__ if not isinstance(rows, list) else "a list with non-object rows"
        raise RunError(f"{path}: expected a JSON list of one object per epoch, found {found}")
    return _decode(rows)


# ------------------------------------------------------------------------------ resume state


def save_resume(run_dir: str | Path, state: ResumeState, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
    """Write everything needed to continue after ``state.epoch`` exactly (see the module docstring)."""
    from safetensors.torch import save_file

    folder = Path(run_dir) / "resume"
    tag = f"e{state.epoch:04d}"
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_json = _split_optimizer(optimizer.state_dict())
    files = {"model": f"model-{tag}.safetensors", "optim": f"optim-{tag}.safetensors",
             "rng": f"rng-{tag}.safetensors"}
    atomic_write(folder / files["model"], lambda tmp: save_file(weights, tmp))
    atomic_write(folder / files["optim"], lambda tmp: save_file(optim_tensors, tmp))
    atomic_write(folder / files["rng"], lambda tmp: save_file(_torch_rng(), tmp))
    atomic_write_json(folder / "state.json", _encode({
        "format": 1, "epoch": state.epoch, "best_value": state.best_value, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "files": files, "optimizer": optim_json,
        "scheduler": scheduler.state_dict(), "numpy_rng": _numpy_rng(), "python_rng": _python_rng(),
    }))
    for old in folder.glob("*-e*.safetensors"):  # earlier epochs are no longer named by state.json
        if old.name not in files.values():
            old.unlink(missing_ok=True)


def has_resume(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "resume" / "state.json").exists()


def load_resume(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> ResumeState:
    """Restore weights, optimiser, scheduler and every RNG from ``resume/``; return the counters."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / "resume"
    data = _decode(json.loads((folder / "state.json").read_text(encoding="utf-8")))
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(folder / data["files"]["model"])))
    model.to(device)
    optimizer.load_state_dict(_join_optimizer(load_file(str(folder / data["files"]["optim"])), data["optimizer"]))
    scheduler.load_state_dict(data["scheduler"])
    _restore_rng(load_file(str(folder / data["files"]["rng"])), data["numpy_rng"], data["python_rng"])
    return ResumeState(data["epoch"], data["best_value"], data["best_epoch"], data["bad_epochs"])


def check_resumable(run_dir: str | Path, config: DecAlignConfig, fingerprint: str) -> None:
    """Refuse to resume when the data or the configuration differ from the run's card.

    Only ``train.num_epochs`` may change (to train longer). Raises RunError naming what differs.
    """
    card = load_card(run_dir)
    if card.data_fingerprint != fingerprint:
        raise RunError(f"{run_dir}: cannot resume: the data differ from the run's training data "
                       f"(fingerprint {fingerprint[:12]}..., the run was trained on "
                       f"{(card.data_fingerprint or 'unknown')[:12]}...)")
    old, new = card.config.to_dict(), config.to_dict()
    changed = [f"{section}.{key} ({old[section].get(key)!r} -> {new[section][key]!r})"
               for section in new for key in new[section]
               if old[section].get(key) != new[section][key] and (section, key) not in RESUMABLE_CHANGES]
    if changed:
        raise RunError(f"{run_dir}: cannot resume: the configuration differs from the run's: "
                       + ", ".join(changed))


# ------------------------------------------------------------------------------ helpers


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of ``optimizer.state_dict()`` to a flat dict, everything else to JSON-able values."""
    import torch

    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _torch_rng() -> dict[str, torch.Tensor]:
    import torch

    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def _numpy_rng() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    return {**state, "state": {"key": state["state"]["key"].tolist(), "pos": int(state["state"]["pos"])}}


def _python_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _restore_rng(tensors: dict[str, torch.Tensor], numpy_state: dict[str, Any], python_state: list) -> None:
    import torch

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    state = dict(numpy_state)
    state["state"] = {"key": np.asarray(state["state"]["key"], dtype=np.uint32), "pos": state["state"]["pos"]}
    np.random.set_state(state)
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


def _encode(value: Any) -> Any:
    """JSON has no inf/NaN: store them as {"__float__": "inf"} (scheduler states hold inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value
