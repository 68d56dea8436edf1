"""Parse untrusted files in a short-lived child process that hands back plain arrays.

An allow-list parser can still be tricked into crashing or exhausting the process it runs in (a numpy
bug, a size field nobody checked). So every file a user hands us is parsed by
``python -m decalign._sandbox_worker`` in a fresh process that first limits its own address space
(``RLIMIT_AS``), CPU time, file size and core dumps; the parent adds a wall-clock deadline and kills
it when that passes. The worker returns JSON plus the arrays' raw bytes in one file of a private
folder (a large array that lies in a file the parent gave it in memory, in that file: an upload's features
are not written twice); the parent reads each array back after checking its dtype (numeric, bool and
fixed-width string only), shape and place in that file, then deletes the folder. Nothing the child writes is ever
unpickled, and whatever happens in the child, the parent gets one line.

A long-lived process (the dashboard) may keep one child started ahead (:func:`keep_spare`): its Python
and numpy start-up, 0.2-0.3 s a file, is then paid while nothing waits. It still handles one file only.

Only the standard library and numpy are imported here: the data layer and checkpoint loading use it.
"""

from __future__ import annotations

import atexit
import json
import math
import mmap
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .memory import available_memory

MIB = 1 << 20
GIB = 1 << 30
BASE_MEMORY = 512 * MIB  # address space Python + numpy need with one BLAS thread (about 100 MiB), and room
MEMORY_FACTOR = 6  # times the input size: the file's bytes, arrays built from them, one float32 copy
BASE_CPU_S = 60.0
CPU_S_PER_GIB = 60.0
WALL_FACTOR = 2.0  # the machine may be busy: wall time allowed = this x CPU time + a start-up margin
WALL_MARGIN_S = 60.0
MEMORY_EXIT = 86  # the worker's exit code after a MemoryError it could not even report
ARRAY_KEY = "$array"  # how the worker's JSON marks an array: [offset, dtype, shape] in ARRAYS_FILE
ARRAYS_FILE = "arrays.bin"
MAX_DIMS = 32  # numpy's own limit on an array's rank
MAX_EXTENT = 1 << 62  # an axis longer than this overflows numpy's index type, even in an empty array
PLAIN_KINDS = "biufcUS"  # bool, integers, floats, complex, fixed-width unicode and byte strings
# Where a child's folder goes when there is room: a memory file system. The hand-back of a MOSI-sized
# pickle (349 MB of arrays) took 3.2-4.1 s to write on this machine's /tmp (a virtual disk), 0.2 s here.
MEMORY_ROOT: Path | None = Path("/dev/shm")
# Arrays from a folder in memory this large are mapped, not copied (see _decode). Each mapping holds a file
# descriptor (Python's mmap keeps a duplicate), so smaller ones, cheap to copy, are not: at most one
# descriptor per 16 MiB of arrays kept.
MAP_MIN_BYTES = 16 << 20
FOLDER_PREFIX = "decalign-sandbox-"  # then the parent's pid: a folder whose process is gone is stale
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
    in_place_bytes: int = 0  # of the arrays, handed back where they lay in the given files (not written again)


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
    given = sum(len(data) for data in (files or {}).values())
    folders: list[Path] = []
    try:
        try:
            folder, spill = _make_folders(given, folders)
            for name, data in (files or {}).items():
                (folder / name).write_bytes(data)
            in_place = sorted(files or {}) if spill is not None else []  # in memory: may be handed back from
            request = {"task": task, "args": {**args, "folder": str(folder)}, "limits": _limit_values(limits),
                       "spill": spill, "in_place": {"files": in_place, "min_bytes": MAP_MIN_BYTES}}
            (folder / "request.json").write_text(json.dumps(request), encoding="utf-8")
            report = _spawn(folder, limits)
        except OSError as exc:  # a full temporary folder, no process left to start
            raise _not_started(exc) from None
        value, report = _collect(folder, limits, report, spill, in_place)
        return SandboxResult(value, report)
    finally:
        for made in folders:
            shutil.rmtree(made, ignore_errors=True)


def _make_folders(given: int, made: list[Path]) -> tuple[Path, dict[str, Any] | None]:
    """The child's private folder (appended to ``made``) and, when it is in :data:`MEMORY_ROOT`, the spill
    the child writes its arrays to instead if they would not fit there: ``{"folder": a private folder in the
    temporary folder, "room": bytes}``.

    The memory root is used when half of the room it and the machine's available memory have left holds
    the ``given`` files; the arrays may take the rest of that half. (Sizing the folder for all the child may
    write, its output limit, sent every npz over 40 MB to the temporary folder: an npz's limits allow for
    unpacking to 4 GiB. On this machine's /tmp, a virtual disk, a 151 MB npz then took 1.3-1.4 s to hand
    back, its arrays read back into memory instead of mapped.)"""
    budget = _memory_budget()
    if budget > given:
        _sweep_stale(MEMORY_ROOT)
        try:
            made.append(Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", dir=MEMORY_ROOT)))
            made.append(Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")))
            return made[0], {"folder": str(made[1]), "room": budget - given}
        except OSError:
            pass
    made.append(Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")))
    return made[-1], None


def _memory_budget() -> int:
    """Half of what both :data:`MEMORY_ROOT` and the machine's available memory have left (its files take
    memory that cannot be paged out, where a disk's page cache could); 0 when it is not to be used: none
    here, or a temporary folder chosen (``TMPDIR``, ``TEMP`` or ``TMP`` set)."""
    if MEMORY_ROOT is None or _temp_folder_chosen() or not os.access(MEMORY_ROOT, os.W_OK | os.X_OK):
        return 0
    return min(_free_bytes(MEMORY_ROOT), available_memory()) // 2


def _temp_folder_chosen() -> bool:
    # Not ``tempfile.tempdir``: the first mkdtemp sets it whether or not anybody chose it.
    return any(os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP"))


def _free_bytes(root: Path) -> int:
    try:
        return shutil.disk_usage(root).free
    except OSError:  # no such folder here
        return 0


_swept: set[Path] = set()


def _sweep_stale(root: Path) -> None:
    """Once per process and root: delete sandbox folders whose process is gone (killed before its
    ``finally``). In a memory-backed root they would hold their bytes of RAM until the machine restarts."""
    if root in _swept:
        return
    _swept.add(root)
    try:
        for path in root.glob(f"{FOLDER_PREFIX}*"):
            owner = path.name[len(FOLDER_PREFIX):].partition("-")[0]
            if owner.isdigit() and not _alive(int(owner)) and path.lstat().st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)
    except OSError:  # a folder gone in between, a root we may not list: nothing to sweep
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _not_started(exc: OSError) -> SandboxError:
    return SandboxError(f"the parser could not be started ({exc.strerror or exc}; temporary folder "
                        f"{tempfile.gettempdir()})", "failed", SandboxReport(None, 0.0, -1))


def _limit_values(limits: Limits) -> dict[str, int]:
    return {"memory": int(limits.memory_bytes), "cpu": int(limits.cpu_seconds) + 1,
            "output": int(limits.memory_bytes)}


def _spawn(folder: Path, limits: Limits) -> SandboxReport:
    start = time.monotonic()
    proc = _hand_to_spare(folder)
    if proc is None:
        with open(folder / "worker.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", WORKER, str(folder)], cwd=folder, env=_child_env(),
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    timed_out = _wait(proc, start + limits.wall_seconds)
    report = SandboxReport(None, time.monotonic() - start, proc.returncode)
    if timed_out:
        raise SandboxError(f"the parser took longer than {limits.wall_seconds:.0f} s and was stopped", "time",
                           report)
    return report


def _child_env() -> dict[str, str]:
    env = {**os.environ, **{name: "1" for name in _THREAD_VARS}, "PYTHONDONTWRITEBYTECODE": "1",
           "NUMPY_MADVISE_HUGEPAGE": "0"}
    # numpy asks for transparent huge pages for arrays of 4 MiB and more. A child touches each page once, and
    # the kernel's work for huge pages made its time erratic: a 151 MB npz took 0.86-0.88 s median to read
    # in the sandbox (up to 1.6 s, the extra all system time in the child) with them, 0.64-0.74 s (up to
    # 0.9 s) without, in interleaved runs; a 349 MB MMSA pickle's child took the same time either way.
    package_root = str(Path(__file__).resolve().parents[1])  # the child runs this very copy of decalign
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    return env


def _wait(proc: subprocess.Popen, deadline: float) -> bool:
    """Wait for the child, killing it at ``deadline``; True if it had to be killed. A pidfd wakes this
    the moment the child exits (polling with sleeps added up to 50 ms a file)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    try:
        delay = 0.002
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                return True
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(delay, left))
                delay = min(2 * delay, 0.05)
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


# ------------------------------------------------------------------------------ a child started ahead

WORKER = "decalign._sandbox_worker"
_spare_lock = threading.Lock()
_spare: subprocess.Popen | None = None
_keeping_spare = False


def keep_spare(keep: bool = True) -> None:
    """Keep one child started ahead for the next :func:`run` of this process (or stop keeping one).

    For a long-lived process that parses files while a user waits (the dashboard). A one-shot command
    gains nothing from it: its spare would only be started to be thrown away.
    """
    global _keeping_spare
    with _spare_lock:
        _keeping_spare = keep
        if keep and _spare is None:
            _start_spare()
        elif not keep:
            _drop_spare()


def _start_spare() -> None:
    """(Holding ``_spare_lock``.) A child that imports what parsing needs, then waits for its folder."""
    global _spare
    try:
        _spare = subprocess.Popen([sys.executable, "-m", WORKER, "--standby"], env=_child_env(),
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        _spare = None  # no process to start now: the next run starts its own child, as without a spare


def _drop_spare() -> None:
    """(Holding ``_spare_lock``.) Let the spare go: an empty stdin makes it exit."""
    global _spare
    if _spare is not None:
        try:
            _spare.stdin.close()
            _spare.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            _spare.kill()
        _spare = None


def _hand_to_spare(folder: Path) -> subprocess.Popen | None:
    """The spare, given ``folder`` (a new spare is started at once, for the next file); None when there is
    none alive, and the caller starts a child of its own."""
    global _spare
    with _spare_lock:
        proc, _spare = _spare, None
        if _keeping_spare:
            _start_spare()
    if proc is None or proc.poll() is not None:
        return None
    try:
        proc.stdin.write(f"{folder}\n".encode())
        proc.stdin.close()
    except OSError:  # it died in between
        proc.kill()
        proc.wait()
        return None
    return proc


atexit.register(keep_spare, False)


def _collect(folder: Path, limits: Limits, report: SandboxReport, spill: dict[str, Any] | None,
             in_place: list[str]) -> tuple[Any, SandboxReport]:
    manifest = _read_manifest(folder / "result.json")
    code = report.returncode
    peak = manifest.get("peak_rss") if manifest is not None else None
    moved = manifest.get("in_place_bytes") if manifest is not None else None
    report = SandboxReport(peak if isinstance(peak, int) else None, report.wall_seconds, code,
                           moved if _whole(moved) else 0)
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
    if spill is not None and not out.is_dir():
        out = Path(spill["folder"]) / "out"
    total = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else 0
    if total > limits.memory_bytes:
        raise SandboxError(f"the parser handed back {total:,} bytes, more than its limit", "output", report)
    try:
        given = {name: folder / name for name in in_place}
        return _decode(manifest["value"], out, mapped=out.parent.parent == MEMORY_ROOT, given=given), report
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


def _decode(value: Any, out: Path, mapped: bool = False, given: dict[str, Path] | None = None) -> Any:
    """Replace every ``{"$array": [offset, dtype, shape]}`` by that array, read from ``out/arrays.bin``
    after its dtype, shape and place are checked (:func:`_array_place`); ``{"$array": [offset, dtype, shape,
    name]}`` likewise from ``given[name]``, a file the parent gave the child in memory (the child's
    :func:`decalign._sandbox_worker._in_place_plan`).

    ``mapped`` (the file is in memory, :data:`MEMORY_ROOT`): an array of at least :data:`MAP_MIN_BYTES` is
    a private copy-on-write mapping of its own bytes in the file instead of a copy: the same pages, never
    touched twice. Each has its own mapping, so an array kept alone does not keep the others' memory; but one
    from a given file (in memory) keeps the whole of that file, which is why the child hands back from there
    only arrays that fill at least half of it."""
    refs: list[tuple[Any, Any, Any]] = []  # (reference, its parent container, its key there)
    stack = [(value, None, None)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, dict) and set(item) == {ARRAY_KEY}:
            refs.append((item[ARRAY_KEY], parent, key))
        elif isinstance(item, dict):
            stack.extend((v, item, k) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, item, i) for i, v in enumerate(item))
    top = value
    for path, in_memory, file_refs in _by_file(refs, out / ARRAYS_FILE, mapped, given or {}):
        for array, parent, key in _read_arrays(path, in_memory, file_refs):
            if parent is None:
                top = array
            else:
                parent[key] = array
    return top


def _by_file(refs: list, arrays_file: Path, mapped: bool, given: dict[str, Path]) -> list:
    """[(file, whether it is in memory, [(reference without the name, parent, key)])], one entry a file read."""
    groups: dict[str | None, list] = {}
    for ref, parent, key in refs:
        name = ref[3] if isinstance(ref, list) and len(ref) == 4 else None
        if name is not None and (not isinstance(name, str) or name not in given):
            raise ValueError(f"bad array reference {str(ref)[:80]!r}: not a file given to the parser")
        groups.setdefault(name, []).append((ref if name is None else ref[:3], parent, key))
    return [(arrays_file if name is None else given[name], mapped if name is None else True, found)
            for name, found in groups.items()]


def _read_arrays(path: Path, mapped: bool, refs: list) -> list:
    """[(array, parent, key)] for ``refs`` into the file ``path``, each checked first."""
    size = path.stat().st_size
    places = [_array_place(ref, size, path.name) for ref, _, _ in refs]
    _check_apart(places, path.name)
    got = []
    with open(path, "rb") as handle:
        for (offset, dtype, shape, nbytes), (_, parent, key) in zip(places, refs):
            if mapped and nbytes >= MAP_MIN_BYTES and offset % dtype.alignment == 0:
                array = _mapped_array(handle, offset, dtype, shape, nbytes)
            else:
                array = np.empty(shape, dtype=dtype)
                if nbytes:
                    handle.seek(offset)
                    if handle.readinto(array.reshape(-1).view(np.uint8)) != nbytes:
                        raise ValueError(f"{path.name}: an array ends past the file's end")
            got.append((array, parent, key))
    return got


def _mapped_array(handle, offset: int, dtype: np.dtype, shape: tuple[int, ...], nbytes: int) -> np.ndarray:
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page
    view = mmap.mmap(handle.fileno(), offset + nbytes - start, access=mmap.ACCESS_COPY, offset=start)
    return np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=offset - start).reshape(shape)


def _array_place(ref: Any, size: int, file: str) -> tuple[int, np.dtype, tuple[int, ...], int]:
    """(offset, dtype, shape, bytes) of an array reference, checked against the ``size`` of its ``file``."""
    if not (isinstance(ref, list) and len(ref) == 3 and isinstance(ref[1], str) and isinstance(ref[2], list)):
        raise ValueError(f"bad array reference {str(ref)[:80]!r}")
    offset, name, shape = ref
    if not _whole(offset) or len(name) > 16 or len(shape) > MAX_DIMS or not all(map(_whole, shape)) \
            or max(shape, default=0) >= MAX_EXTENT:
        raise ValueError(f"bad array reference {str(ref)[:80]!r}")
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise ValueError(f"bad array dtype {name!r}") from None
    if not is_plain_dtype(dtype):
        raise ValueError(f"dtype {dtype} is not a plain numeric, bool or fixed-width string type")
    nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
    if nbytes and offset + nbytes > size:
        raise ValueError(f"{file}: an array of {nbytes:,} bytes at {offset:,} ends past the file's "
                         f"{size:,} bytes")
    return offset, dtype, tuple(shape), nbytes


def _whole(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_apart(places: list[tuple[int, np.dtype, tuple[int, ...], int]], file: str) -> None:
    """No two arrays share bytes (each is read into its own memory anyway; overlap means a broken child)."""
    end = 0
    for offset, _, _, nbytes in sorted(places, key=lambda p: p[0]):
        if nbytes and offset < end:
            raise ValueError(f"{file}: two arrays overlap at byte {offset:,}")
        end = max(end, offset + nbytes)


def is_plain_dtype(dtype: np.dtype) -> bool:
    """Numeric, bool or fixed-width string, with no fields, sub-arrays or metadata: safe to share."""
    return (dtype.kind in PLAIN_KINDS and dtype.names is None and dtype.subdtype is None
            and not dtype.hasobject and dtype.metadata is None and dtype.itemsize > 0)


def mapped_view(file: BinaryIO) -> memoryview | None:
    """The whole file mapped read-only, None when it has no descriptor (bytes in memory) or is empty.

    For the sandbox's child only: a file truncated while mapped stops the process that maps it (SIGBUS), which
    the parent then reports as the parser's crash."""
    try:
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
    except (AttributeError, OSError, ValueError):
        return None


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
