"""The child side of :mod:`decalign.sandbox`: ``python -m decalign._sandbox_worker FOLDER``.

It limits itself before it opens the file, runs one task from :data:`TASKS` on ``FOLDER/request.json``'s
arguments, and writes ``FOLDER/result.json`` (``{"value": ...}`` or ``{"error": {...}}``) with the arrays'
bytes one after another in ``FOLDER/out/arrays.bin`` (or in the spill folder, :func:`_output_folder`). Only
the standard library is imported at the top. Never imports torch.

``python -m decalign._sandbox_worker --standby`` is a spare started ahead of need (``sandbox.keep_spare``):
it imports numpy and the parsers, then waits for one folder on stdin and handles it as above, the limits
set before the file is opened as in a fresh child. Each child handles one file at most.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
from pathlib import Path

# task name -> "module:function"; a function takes the request's args and returns JSON with arrays.
TASKS = {
    "dataset": "decalign.data.untrusted:parse_dataset",
    "checkpoint": "decalign.checkpoint_files:read_checkpoint_files",
    "selftest": "decalign._sandbox_worker:selftest",
}
REFUSALS = ("DataError", "CheckpointError", "ConfigError")  # a parser's own clear refusal of the file
MEMORY_EXIT = 86  # as decalign.sandbox.MEMORY_EXIT (not imported: it imports numpy)
ARRAY_KEY = "$array"
ARRAYS_FILE = "arrays.bin"
ARRAY_ALIGN = 64  # every array starts at a multiple of this in ARRAYS_FILE
STANDBY = "--standby"


def main(folder: str) -> int:
    root = Path(folder)
    request = json.loads((root / "request.json").read_text(encoding="utf-8"))
    _limit_self(request["limits"])
    try:
        value = _task(request["task"])(request["args"])
        result = {"value": _encode(value, _output_folder(root, request.get("spill"), value))}
    except MemoryError:
        result = {"error": {"kind": "memory"}}
    except RecursionError:
        result = {"error": {"kind": "refused", "message": "the content is nested too deeply to be read"}}
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the parent
        result = {"error": _describe(exc)}
    result["peak_rss"] = _peak_rss()
    try:
        (root / "result.json").write_text(json.dumps(result), encoding="utf-8")
    except MemoryError:
        return MEMORY_EXIT
    return 0


def standby() -> int:
    """A spare: the imports first (0.2-0.3 s of a child's start), then one folder from stdin, or none when
    the parent closes the pipe (it exited, or no longer keeps a spare)."""
    for task in TASKS.values():
        importlib.import_module(task.partition(":")[0])
    folder = sys.stdin.readline().strip()
    if not folder:
        return 0
    os.chdir(folder)
    return main(folder)


def _peak_rss() -> int | None:
    """This process's own peak resident memory in bytes (VmHWM starts afresh at exec; ``ru_maxrss``
    would include the parent's image the child was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _limit_self(limits: dict[str, int]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not leave a core file behind
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["output"], limits["output"]))


def _task(name: str):
    module, _, function = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def _describe(exc: Exception) -> dict[str, str]:
    name = type(exc).__name__
    message = " ".join(str(exc).split())
    if name in REFUSALS:
        return {"kind": "refused", "type": name, "message": message}
    return {"kind": "failed", "type": name, "message": f"the parser failed ({name}: {message})"}


def _output_folder(root: Path, spill: dict | None, value) -> Path:
    """``root/out``, or the spill folder's ``out`` when ``root`` is in memory and the arrays would take more
    than the room the parent left there (``spill["room"]`` bytes)."""
    if spill is not None and _array_bytes(value) > spill["room"]:
        return Path(spill["folder"]) / "out"
    return root / "out"


def _array_bytes(item) -> int:
    """What :func:`_encode` writes for ``item``'s arrays, at most (each array's bytes and its alignment)."""
    import numpy as np

    if isinstance(item, np.ndarray):
        return item.nbytes + ARRAY_ALIGN
    if isinstance(item, dict):
        return sum(map(_array_bytes, item.values()))
    if isinstance(item, (list, tuple)):
        return sum(map(_array_bytes, item))
    return 0


def _encode(value, out: Path):
    """JSON-ready copy of ``value`` with every numpy array's bytes appended to ``out/arrays.bin`` and the
    array replaced by ``{"$array": [offset, dtype, shape]}`` (C order; one file, not a file per array: the
    parent reads a model's hundreds of weights in one pass)."""
    import numpy as np

    arrays = None

    def encode(item):
        nonlocal arrays
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise ValueError("Object arrays cannot be handed back (allow_pickle=False)")
            if arrays is None:
                out.mkdir(exist_ok=True)
                arrays = open(out / ARRAYS_FILE, "wb")  # noqa: SIM115 - closed below, after every array
            offset = -arrays.tell() % ARRAY_ALIGN + arrays.tell()
            arrays.seek(offset)
            arrays.write(np.ascontiguousarray(item).data)
            return {ARRAY_KEY: [offset, item.dtype.str, list(item.shape)]}
        if isinstance(item, dict):
            if ARRAY_KEY in item:
                raise ValueError(f"the key {ARRAY_KEY!r} is reserved")
            return {str(k): encode(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [encode(v) for v in item]
        if isinstance(item, np.generic):
            return item.item()
        if item is None or isinstance(item, (str, int, float, bool)):
            return item
        raise TypeError(f"cannot hand back a {type(item).__name__}")

    try:
        return encode(value)
    finally:
        if arrays is not None:
            arrays.close()


def selftest(args: dict):
    """For the sandbox's own tests: behave as ``args["mode"]`` says."""
    import numpy as np

    mode = args["mode"]
    if mode == "arrays":
        return {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array(["a", "bc"]), "n": 2}
    if mode == "kinds":  # every plain kind, ranks 0 to 3, empty and Fortran-ordered arrays, in lists
        grid = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
        return {"f32": np.linspace(-1, 1, 7, dtype=np.float32), "i64": np.array(-3), "fortran": np.asfortranarray(grid),
                "flags": np.array([True, False, True]), "empty": np.zeros((0, 5), dtype=np.int16),
                "words": [np.array(["α", "longer text"]), np.array([b"ab", b"c"])], "c": np.array([1 + 2j]),
                "u8": np.arange(3, dtype=np.uint8)}
    if mode == "large":  # arrays past a page, at offsets that are not page multiples, and a small one
        return {"small": np.arange(5, dtype=np.int16), "a": np.arange(300_000, dtype=np.float64),
                "b": -np.arange(3 * 100_001, dtype=np.float32).reshape(3, 100_001),
                "c": np.arange((1 << 20) + 3, dtype=np.int64).astype(np.uint8)}
    if mode == "pid":
        return {"pid": os.getpid()}
    if mode == "allocate":
        return {"big": np.ones(args["bytes"], dtype=np.uint8).sum()}
    if mode == "segfault":
        import ctypes

        ctypes.string_at(0)
    if mode == "spin":
        while True:
            pass
    if mode == "sleep":
        import time

        time.sleep(args["seconds"])
    if mode == "modules":
        for task in TASKS.values():  # what the tasks import
            importlib.import_module(task.partition(":")[0])
        return {"heavy": sorted(m for m in ("torch", "pandas", "streamlit", "scipy") if m in sys.modules)}
    if mode == "hugepage":  # numpy's transparent-huge-page advice for large arrays (off in a child)
        from numpy._core import multiarray

        return {"madvise": bool(multiarray._get_madvise_hugepage())}
    if mode == "object":
        return {"x": np.array([object()], dtype=object)}
    raise ValueError(f"unknown mode {mode!r}")


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.exit(standby() if sys.argv[1] == STANDBY else main(sys.argv[1]))
