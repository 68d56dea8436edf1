"""Training in its own process, followed through files in the run directory.

``start_training`` launches ``python -m decalign train ... --progress-file --cancel-file --replay`` in a
new session (so stopping the dashboard neither kills nor interrupts it), with stdin closed and its
output in ``train.log``. Everything a dashboard needs is on disk, so a refresh, a second tab or a
restarted server sees the same run::

    request.json   what was asked: data file, device, when; config.json the full configuration
    train.pid      {"pid": ..., "start_ticks": ...} of the training process
    status.json, history.json, progress.json, card.json, best/last.safetensors  (written by the trainer)
    cancel         present = please stop (the process polls it after every batch)
    train.log      the process's stdout and stderr

``run_state`` combines them: ``starting`` (process alive, no status yet), ``running``, ``finished``,
``cancelled``, ``failed``, or ``crashed`` (status says running but the process is gone, e.g. killed).
Cancelled, failed and crashed runs can be resumed from their last finished epoch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..cache import SignatureCache
from ..config import DecAlignConfig
from .progress import CANCEL_FILE, PROGRESS_FILE, read_progress
from .runs import read_history, read_status

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the decalign package
RESUMABLE = ("cancelled", "failed", "crashed")
ACTIVE = ("starting", "running")
_CHILDREN: dict[int, subprocess.Popen] = {}  # processes started here, polled so they do not linger as zombies


def runs_root() -> Path:
    """Where new runs go: ``$DECALIGN_RUNS_DIR``, else ``./runs``."""
    return Path(os.environ.get("DECALIGN_RUNS_DIR") or "runs").expanduser().resolve()


def new_run_dir(name: str = "", root: str | Path | None = None) -> Path:
    """A fresh folder ``<root>/<YYYYmmdd-HHMMSS>[-name]`` (``-2``, ``-3``... appended if taken)."""
    root = Path(root) if root is not None else runs_root()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40]
    base = datetime.now().strftime("%Y%m%d-%H%M%S") + (f"-{slug}" if slug else "")
    for i in range(1, 1000):
        path = root / (base if i == 1 else f"{base}-{i}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{root}: could not create a new run folder named {base}")


def save_upload(run_dir: str | Path, data: bytes, filename: str) -> Path:
    """Store uploaded data in ``run_dir/data/`` under a safe name, so the training process can read it."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(filename).name).lstrip(".") or "data.npz"
    return atomic_write_bytes(Path(run_dir) / "data" / safe, data)


# ------------------------------------------------------------------------------------------ processes


def start_training(run_dir: str | Path, data_path: str | Path, config: DecAlignConfig, *, device: str = "cpu",
                   resume: bool = False, replay: bool = True) -> int:
    """Launch training of ``config`` on ``data_path`` into ``run_dir`` in a new process; returns its pid.

    Refused (RuntimeError) while a process of this run is alive. With ``resume`` the run continues after
    its last finished epoch; ``config`` may then differ from the run's only in ``train.num_epochs``.
    """
    run_dir = Path(run_dir).resolve()
    if run_state(run_dir).state in ACTIVE:
        raise RuntimeError(f"{run_dir}: a training process is already running for this run")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", config.to_dict())
    atomic_write_json(run_dir / "request.json", {
        "data": str(Path(data_path).resolve()), "device": device, "replay": replay,
        "requested_at": datetime.now(UTC).isoformat(timespec="seconds"), "resume": resume})
    (run_dir / CANCEL_FILE).unlink(missing_ok=True)
    (run_dir / PROGRESS_FILE).unlink(missing_ok=True)
    (run_dir / "train.pid").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "decalign", "train", "--data", str(Path(data_path).resolve()),
           "--config", str(run_dir / "config.json"), "--out", str(run_dir), "--device", device, "--quiet",
           "--progress-file", str(run_dir / PROGRESS_FILE), "--cancel-file", str(run_dir / CANCEL_FILE),
           "--share-cpu"]  # the browser and the server's pages run on the same cores
    cmd += ["--replay"] * replay + ["--resume"] * resume
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(run_dir / "train.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    _CHILDREN[proc.pid] = proc
    atomic_write_json(run_dir / "train.pid", {"pid": proc.pid, "start_ticks": _start_ticks(proc.pid)})
    return proc.pid


def training_alive() -> bool:
    """Whether a training process started by this process is still running (polling reaps finished ones)."""
    return any(proc.poll() is None for proc in list(_CHILDREN.values()))


def resume_training(run_dir: str | Path, num_epochs: int | None = None) -> int:
    """Continue a cancelled, failed or crashed run with its own data, device and configuration."""
    run_dir = Path(run_dir)
    request = json.loads((run_dir / "request.json").read_text(encoding="utf-8"))
    config = DecAlignConfig.from_json(run_dir / "config.json")
    if num_epochs is not None:
        config = config.override([f"train.num_epochs={int(num_epochs)}"])
    return start_training(run_dir, request["data"], config, device=request.get("device", "cpu"), resume=True,
                          replay=bool(request.get("replay", True)))


def cancel_training(run_dir: str | Path) -> None:
    """Ask the run's process to stop after its current batch (it keeps ``best``, status ``cancelled``)."""
    atomic_write_text(Path(run_dir) / CANCEL_FILE, datetime.now(UTC).isoformat(timespec="seconds") + "\n")


def kill_training(run_dir: str | Path, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the run's process group (the process leads its own session); False if none lives."""
    pid = _live_pid(Path(run_dir))
    if pid is None:
        return False
    os.killpg(pid, sig)
    return True


def wait_training(run_dir: str | Path, timeout: float | None = None) -> int | None:
    """Wait for a process started here to end; its exit code (None if it was not started here)."""
    pid = _read_pid(Path(run_dir))
    proc = _CHILDREN.get(pid[0]) if pid else None
    return None if proc is None else proc.wait(timeout)


def _read_pid(run_dir: Path) -> tuple[int, int | None] | None:
    try:
        data = json.loads((run_dir / "train.pid").read_text(encoding="utf-8"))
        return int(data["pid"]), data.get("start_ticks")
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start_ticks: int | None) -> bool:
    """Whether ``pid`` still runs the same process (not a zombie, not a reused pid)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel directly
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(fields[19]) == int(start_ticks)


def _live_pid(run_dir: Path) -> int | None:
    found = _read_pid(run_dir)
    return found[0] if found and _alive(*found) else None


# ------------------------------------------------------------------------------------------ run state


@dataclass(frozen=True)
class RunState:
    """Where a run stands, from its files and the process table (see the module docstring)."""

    state: str  # empty | starting | running | finished | cancelled | failed | crashed
    alive: bool  # its training process is running
    epoch: int  # last finished epoch
    error: str | None  # the failure, or the tail of train.log for a crash
    cancel_requested: bool
    resumable: bool


def run_state(run_dir: str | Path) -> RunState:
    """The run's :class:`RunState`."""
    run_dir = Path(run_dir)
    status = read_status(run_dir) if (run_dir / "status.json").exists() else None
    alive = _live_pid(run_dir) is not None
    written = status["status"] if status else None
    if alive:  # a terminal status of an earlier attempt stays until the resumed process writes its own
        state = "running" if written else "starting"
    elif written == "running":
        state = "crashed"
    elif written is None:
        state = "failed" if _read_pid(run_dir) else "empty"  # "empty": never launched from here
    else:
        state = written
    error = status.get("error") if status else None
    if state in ("crashed", "failed") and not error:
        error = _log_tail(run_dir)
    return RunState(state, alive, status["epoch"] if status else 0, error, (run_dir / CANCEL_FILE).exists(),
                    state in RESUMABLE and (run_dir / "card.json").exists())


def _log_tail(run_dir: Path, lines: int = 5) -> str | None:
    path = run_dir / "train.log"
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return "\n".join(text[-lines:]) or None


@dataclass
class RunInfo:
    """One run of the runs folder, as the dashboard lists it."""

    name: str
    path: Path
    state: str
    epoch: int
    num_epochs: int | None
    data: str | None
    data_fingerprint: str | None
    best_epoch: int | None
    best_metrics: dict[str, float]
    selection_metric: str | None
    config: dict[str, Any]
    has_model: bool
    test_metrics: dict[str, float] = field(default_factory=dict)  # on the card once the run has finished


_CARD_SUMMARIES = SignatureCache(kept=4096)


@dataclass(frozen=True)
class _CardSummary:
    """What the runs list shows of a run's card."""

    data_fingerprint: str | None
    best_epoch: int | None
    valid: dict[str, float]
    test: dict[str, float]
    selection_metric: str | None


def _card_summary(card_path: Path) -> _CardSummary:
    from ..checkpoint import load_card

    card = load_card(card_path.parent)
    return _CardSummary(card.data_fingerprint, card.best_epoch, card.metrics.get("valid", {}),
                        card.metrics.get("test", {}), card.extra.get("selection_metric"))


def run_info(run_dir: str | Path) -> RunInfo:
    from ..checkpoint import CheckpointError

    run_dir = Path(run_dir)
    state = run_state(run_dir)
    config = _read_json(run_dir / "config.json") or {}
    request = _read_json(run_dir / "request.json") or {}
    card = None
    if (run_dir / "card.json").exists():
        try:  # a card is parsed once while unchanged: the runs list reads every run's at each live refresh
            card = _CARD_SUMMARIES.get(run_dir / "card.json", _card_summary)
        except (CheckpointError, FileNotFoundError):  # FileNotFoundError: removed since the check
            card = None
    return RunInfo(
        name=run_dir.name, path=run_dir, state=state.state, epoch=state.epoch,
        num_epochs=config.get("train", {}).get("num_epochs"), data=request.get("data"),
        data_fingerprint=card.data_fingerprint if card else None, best_epoch=card.best_epoch if card else None,
        best_metrics=dict(card.valid) if card else {}, selection_metric=card.selection_metric if card else None,
        config=config, has_model=(run_dir / "best.safetensors").exists() and card is not None,
        test_metrics=dict(card.test) if card else {})


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """Every run folder under ``root`` (default ``runs_root()``), newest first."""
    root = Path(root) if root is not None else runs_root()
    if not root.is_dir():
        return []
    folders = [p for p in root.iterdir() if p.is_dir() and any(
        (p / f).exists() for f in ("request.json", "card.json", "status.json"))]
    return [run_info(p) for p in sorted(folders, key=lambda p: p.name, reverse=True)]


@dataclass(frozen=True)
class LiveView:
    """What a progress panel shows, read once: the state, ``progress.json`` and the history rows."""

    state: RunState
    progress: dict[str, Any] | None
    history: list[dict[str, Any]]


def live_view(run_dir: str | Path) -> LiveView:
    run_dir = Path(run_dir)
    return LiveView(run_state(run_dir), read_progress(run_dir), read_history(run_dir))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
