"""Parse untrusted files in a short-lived child process that hands back plain arrays.

An allow-list parser can still be tricked into crashing or exhausting the process it runs in (a numpy
bug, a size field nobody checked). So every file a user hands us is parsed by
``python -m decalign._sandbox_worker`` in a fresh process that first limits its own address space
(``RLIMIT_AS``), CPU time, file size and core dumps; the parent adds a wall-clock deadline and kills
it when that passes. The worker returns JSON plus ``.npy`` files written with ``allow_pickle=False``
into a private folder; the parent reads them back with ``allow_pickle=False`` after checking every
header (numeric, bool and fixed-width string dtypes only), then deletes the folder. Nothing the
child writes is ever unpickled, and whatever happens in the child, the parent gets one line.

Only the standard library and numpy are imported here: the data layer and checkpoint loading use it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIB = 1 << 20
GIB = 1 << 30
BASE_MEMORY = 512 * MIB  # address space Python + numpy need with one BLAS thread (about 100 MiB), and room
MEMORY_FACTOR = 6  # times the input size: the file's bytes, arrays built from them, one float32 copy
BASE_CPU_S = 60.0
CPU_S_PER_GIB = 60.0
WALL_FACTOR = 2.0  # the machine may be busy: wall time allowed = this x CPU time + a start-up margin
WALL_MARGIN_S = 60.0
MEMORY_EXIT = 86  # the worker's exit code after a MemoryError it could not even report
ARRAY_KEY = "$array"  # how the worker's JSON marks an array written beside it
PLAIN_KINDS = "biufcUS"  # bool, integers, floats, complex, fixed-width unicode and byte strings
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")
_SIGNALS = {signal.SIGXCPU: "time", signal.SIGXFSZ: "output"}


class SandboxError(Exception):
    """The child did not hand back a result; ``kind`` says why, ``str()`` is one line for the user.

    kind: ``refused`` (the parser rejected the file; ``error_type`` names its exception class, e.g.
    ``DataError``), ``memory``, ``time``, ``output``, ``crash`` or ``failed`` (an unexpected error).
    """

    def __init__(self, message: str, kind: str, report: SandboxReport, error_type: str = "") -> None:
        super().__init__(message)
        self.kind, self.report, self.error_type = kind, report, error_type


@dataclass(frozen=True)
class Limits:
    """What one child may use. ``for_input`` scales them with the size of what it parses."""

    memory_bytes: int
    cpu_seconds: float
    wall_seconds: float

    @classmethod
    def for_input(cls, size: int) -> Limits:
        cpu = BASE_CPU_S + CPU_S_PER_GIB * size / GIB
        return cls(BASE_MEMORY + MEMORY_FACTOR * max(0, size), cpu, WALL_FACTOR * cpu + WALL_MARGIN_S)

    def describe_memory(self) -> str:
        return f"{self.memory_bytes / MIB:,.0f} MiB"


@dataclass(frozen=True)
class SandboxReport:
    """How the child ran: its own peak resident memory (``VmHWM``, None when it was killed before it
    could say), wall time and exit status."""

    peak_rss_bytes: int | None
    wall_seconds: float
    returncode: int


@dataclass
class SandboxResult:
    value: Any  # the task's JSON value, with numpy arrays where the child wrote them
    report: SandboxReport


def run(task: str, args: dict[str, Any], limits: Limits, *, files: dict[str, bytes] | None = None
        ) -> SandboxResult:
    """Run ``task`` (a name the worker knows) on ``args`` in a child process under ``limits``.

    ``files`` are written into the child's private folder first (name -> bytes; for uploads held in
    memory); a task finds that folder's path in ``args["folder"]``.

    Raises
    ------
    SandboxError
        One line: the parser's own refusal, or "needed more than N MiB of memory", "took longer than
        N s", "crashed (signal 11, SIGSEGV)".
    """
    try:
        folder = Path(tempfile.mkdtemp(prefix="decalign-sandbox-"))
    except OSError as exc:
        raise _not_started(exc) from None
    try:
        try:
            for name, data in (files or {}).items():
                (folder / name).write_bytes(data)
            request = {"task": task, "args": {**args, "folder": str(folder)}, "limits": _limit_values(limits)}
            (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
            report = _spawn(folder, limits)
        except OSError as exc:  # a full temporary folder, no process left to start
            raise _not_started(exc) from None
        value, report = _collect(folder, limits, report)
        return SandboxResult(value, report)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _not_started(exc: OSError) -> SandboxError:
    return SandboxError(f"the parser could not be started ({exc.strerror or exc}; temporary folder "
                        f"{tempfile.gettempdir()})", "failed", SandboxReport(None, 0.0, -1))


def _limit_values(limits: Limits) -> dict[str, int]:
    return {"memory": int(limits.memory_bytes), "cpu": int(limits.cpu_seconds) + 1,
            "output": int(limits.memory_bytes)}


def _spawn(folder: Path, limits: Limits) -> SandboxReport:
    env = {**os.environ, **{name: "1" for name in _THREAD_VARS}, "PYTHONDONTWRITEBYTECODE": "1"}
    package_root = str(Path(__file__).resolve().parents[1])  # the child runs this very copy of decalign
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    start = time.monotonic()
    with open(folder / "worker.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "decalign._sandbox_worker", str(folder)], cwd=folder,
                                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    timed_out = _wait(proc, start + limits.wall_seconds)
    report = SandboxReport(None, time.monotonic() - start, proc.returncode)
    if timed_out:
        raise SandboxError(f"the parser took longer than {limits.wall_seconds:.0f} s and was stopped", "time",
                           report)
    return report


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for the child, killing it at ``deadline``; True if it had to be killed."""
    delay = 0.002
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return True
        time.sleep(delay)
        delay = min(2 * delay, 0.05)
    return False


def _collect(folder: Path, limits: Limits, report: SandboxReport) -> tuple[Any, SandboxReport]:
    manifest = _read_manifest(folder / "result.json")
    code = report.returncode
    peak = manifest.get("peak_rss") if manifest is not None else None
    report = SandboxReport(peak if isinstance(peak, int) else None, report.wall_seconds, code)
    if manifest is not None and "error" in manifest:
        error = manifest["error"]
        kind = error.get("kind", "failed")
        message = str(error.get("message", ""))
        if kind == "memory":
            message = f"the parser needed more than {limits.describe_memory()} of memory and was stopped"
        raise SandboxError(message, kind, report, str(error.get("type", "")))
    if code < 0:
        raise _signal_error(-code, limits, report)
    if code == MEMORY_EXIT:
        raise SandboxError(f"the parser needed more than {limits.describe_memory()} of memory and was stopped",
                           "memory", report)
    if code != 0 or manifest is None or "value" not in manifest:
        raise SandboxError(f"the parser failed (exit status {code}) without a result", "failed", report)
    out = folder / "out"
    total = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else 0
    if total > limits.memory_bytes:
        raise SandboxError(f"the parser handed back {total:,} bytes, more than its limit", "output", report)
    try:
        return _decode(manifest["value"], out), report
    except (OSError, ValueError) as exc:
        raise SandboxError(f"the parser handed back an unreadable result ({exc})", "failed", report) from None


def _signal_error(number: int, limits: Limits, report: SandboxReport) -> SandboxError:
    kind = _SIGNALS.get(number, "crash")
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = "unknown signal"
    if kind == "time":
        return SandboxError(f"the parser used more than {limits.cpu_seconds:.0f} s of CPU time and was stopped",
                            kind, report)
    if kind == "output":
        return SandboxError(f"the parser tried to write more than {limits.describe_memory()} and was stopped",
                            kind, report)
    return SandboxError(f"the parser crashed (signal {number}, {name}); nothing from the file was used",
                        kind, report)


def _read_manifest(path: Path) -> dict | None:
    try:
        if path.stat().st_size > 256 * MIB:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- arrays back in the parent


def _decode(value: Any, out: Path) -> Any:
    """Replace every ``{"$array": name}`` by the array read from ``out/name`` (checked first)."""
    stack = [(value, None, None)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, dict) and set(item) == {ARRAY_KEY}:
            parent[key] = read_plain_npy(out / _array_name(item[ARRAY_KEY]))
        elif isinstance(item, dict):
            stack.extend((v, item, k) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, item, i) for i, v in enumerate(item))
    if isinstance(value, dict) and set(value) == {ARRAY_KEY}:
        return read_plain_npy(out / _array_name(value[ARRAY_KEY]))
    return value


def _array_name(name: Any) -> str:
    if not isinstance(name, str) or not name.startswith("a") or not name.endswith(".npy") \
            or not name[1:-4].isdigit():
        raise ValueError(f"bad array reference {name!r}")
    return name


def is_plain_dtype(dtype: np.dtype) -> bool:
    """Numeric, bool or fixed-width string, with no fields, sub-arrays or metadata: safe to share."""
    return (dtype.kind in PLAIN_KINDS and dtype.names is None and dtype.subdtype is None
            and not dtype.hasobject and dtype.metadata is None and dtype.itemsize > 0)


def read_npy_header(handle, *, plain: bool = True) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` stream at ``handle`` (left after the header).

    Raises ValueError for a broken header and, with ``plain``, for a dtype that is not plain.
    """
    from numpy.lib import format as npy_format

    version = npy_format.read_magic(handle)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(handle)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = npy_format.read_array_header_2_0(handle)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if plain and not is_plain_dtype(dtype):
        raise ValueError(f"dtype {dtype} is not a plain numeric, bool or fixed-width string type")
    return tuple(shape), bool(fortran), dtype


def read_plain_npy(path: Path) -> np.ndarray:
    """An ``.npy`` file the worker wrote, read without pickle after checking its header and size."""
    with open(path, "rb") as handle:
        shape, _, dtype = read_npy_header(handle)
        expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path.name}: size does not match its header")
    return np.load(path, allow_pickle=False)
