"""The child side of :mod:`decalign.sandbox`: ``python -m decalign._sandbox_worker FOLDER``.

It limits itself before it opens the file, runs one task from :data:`TASKS` on ``FOLDER/request.json``'s
arguments, and writes ``FOLDER/result.json`` (``{"value": ...}`` or ``{"error": {...}}``) with the arrays'
bytes one after another in ``FOLDER/out/arrays.bin`` (or in the spill folder, :func:`_output_folder`). Only
the standard library is imported at the top. Never imports torch. Large arrays that are views of a file the
parent gave it in memory (an upload's stored npz members, an MMSA pickle's arrays) are handed back from that file instead
(:func:`_in_place_plan`).

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
MOVE_WINDOW = 16 << 20  # bytes of an array moved in place per mapping (_move_in_place)
STANDBY = "--standby"


def main(folder: str) -> int:
    root = Path(folder)
    request = json.loads((root / "request.json").read_text(encoding="utf-8"))
    _limit_self(request["limits"])
    try:
        value = _task(request["task"])(request["args"])
        plan = _in_place_plan(value, root, request.get("in_place"))
        result = {"value": _encode(value, _output_folder(root, request.get("spill"), value, plan), plan, root),
                  "in_place_bytes": sum(spot[3] for spot in plan.values())}
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


def _output_folder(root: Path, spill: dict | None, value, plan: dict) -> Path:
    """``root/out``, or the spill folder's ``out`` when ``root`` is in memory and the arrays would take more
    than the room the parent left there (``spill["room"]`` bytes)."""
    written = sum(a.nbytes + ARRAY_ALIGN for a in _arrays(value) if id(a) not in plan)
    if spill is not None and written > spill["room"]:
        return Path(spill["folder"]) / "out"
    return root / "out"


def _arrays(item) -> list:
    """Every numpy array in ``item`` (nested dicts, lists and tuples), in :func:`_encode`'s order."""
    import numpy as np

    if isinstance(item, np.ndarray):
        return [item]
    if isinstance(item, dict):
        return [a for v in item.values() for a in _arrays(v)]
    if isinstance(item, (list, tuple)):
        return [a for v in item for a in _arrays(v)]
    return []


# ------------------------------------------------------------------ arrays handed back where they lie
# A large array the task returns as a view of a file the parent gave this child in memory (an npz upload's
# stored member or an MMSA pickle's array payload, mapped by the reader) is not written again: it is moved down,
# in that file, to the 64-byte boundary before it (into bytes parsed already: the member's headers, the opcodes
# before the payload), and handed back as a reference into the file. Writing a 1,000-sample MOSI upload's 154 MB of text features into new pages took the child 0.07-0.09 s
# alone and 0.36 s of CPU in a server whose browser was drawing; the move takes 0.015 s, in pages that exist.


def _in_place_plan(value, root: Path, offer: dict | None) -> dict[int, tuple[str, int, int, int]]:
    """id(array) -> (file name, the array's offset in that file, the offset it is moved to, its bytes) for
    the arrays to hand back where they lie. ``offer``: ``{"files": names the parent gave and lets this child
    rewrite, "min_bytes": the smallest array worth it}``, or None.

    Taken: C-contiguous arrays of at least ``min_bytes`` wholly inside a mapping of a given file, whose bytes
    and the gap below them down to the boundary share nothing with another taken array; and only in a file
    these arrays fill at least half of (the parent's mapping of the arrays keeps the whole file in memory)."""
    if not offer or not offer.get("files"):
        return {}
    maps = _file_mappings(root, offer["files"])
    spots = [(id(a), spot) for a in _arrays(value) if a.nbytes >= offer["min_bytes"] and a.flags.c_contiguous
             for spot in [_spot(a, maps)] if spot is not None]
    plan, end, counted = {}, {}, {}
    for key, (name, offset, nbytes) in sorted(spots, key=lambda s: (s[1][0], s[1][1])):
        target = offset - offset % ARRAY_ALIGN
        if target >= end.get(name, 0):  # an array met twice starts below its own end: taken once
            plan[key], end[name] = (name, offset, target, nbytes), offset + nbytes
            counted[name] = counted.get(name, 0) + nbytes
    full = {name for name in counted if 2 * counted[name] >= (root / name).stat().st_size}
    return {key: spot for key, spot in plan.items() if spot[0] in full} if _movable(root, full) else {}


def _file_mappings(root: Path, names: list[str]) -> list[tuple[int, int, int, str]]:
    """(start, end, file offset, name) of this process's mappings of the given files."""
    paths = {os.path.realpath(root / name): name for name in names if name == Path(name).name}
    found = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) == 6 and fields[5] in paths:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                found.append((start, end, int(fields[2], 16), paths[fields[5]]))
    return found


def _spot(array, maps) -> tuple[str, int, int] | None:
    """(file name, offset, bytes) of an array that lies wholly inside one of ``maps``, else None."""
    address, nbytes = array.__array_interface__["data"][0], array.nbytes
    for start, end, file_offset, name in maps:
        if start <= address and address + nbytes <= end:
            return name, address - start + file_offset, nbytes
    return None


def _movable(root: Path, names: set[str]) -> bool:
    """Whether a window of each file can be mapped for writing (address space left, a writable file). Checked
    before any move is planned: a move that failed half-way would leave its array neither here nor there."""
    import mmap

    try:
        for name in names:
            with open(root / name, "r+b") as handle:
                mmap.mmap(handle.fileno(), min(MOVE_WINDOW, os.fstat(handle.fileno()).st_size)).close()
    except (OSError, ValueError, MemoryError):
        return False
    return True


def _move_in_place(root: Path, plan: dict) -> None:
    """Move every planned array down to its boundary, a window at a time: while a window moves, its pages are
    mapped twice (the reader's mapping and the window), and the child's peak resident memory counts them twice."""
    import mmap

    for name, offset, target, nbytes in plan.values():
        with open(root / name, "r+b") as handle:
            for done in range(0, nbytes if target != offset else 0, MOVE_WINDOW):
                n = min(MOVE_WINDOW, nbytes - done)
                start = target + done - (target + done) % mmap.ALLOCATIONGRANULARITY
                with mmap.mmap(handle.fileno(), offset + done + n - start, offset=start) as window:
                    window.move(target + done - start, offset + done - start, n)


def _encode(value, out: Path, plan: dict, root: Path):
    """JSON-ready copy of ``value`` with every numpy array's bytes appended to ``out/arrays.bin`` and the
    array replaced by ``{"$array": [offset, dtype, shape]}`` (C order; one file, not a file per array: the
    parent reads a model's hundreds of weights in one pass); an array in ``plan`` (:func:`_in_place_plan`)
    by ``{"$array": [offset, dtype, shape, file name]}`` instead, and moved there once every copy is written
    (the first time it is met; a second time, it is copied)."""
    import numpy as np

    arrays, placed = None, set()

    def encode(item):
        nonlocal arrays
        if isinstance(item, np.ndarray):
            if item.dtype.hasobject:
                raise ValueError("Object arrays cannot be handed back (allow_pickle=False)")
            if id(item) in plan and id(item) not in placed:  # an array met twice is copied the second time
                placed.add(id(item))
                name, _, target, _ = plan[id(item)]
                return {ARRAY_KEY: [target, item.dtype.str, list(item.shape), name]}
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
        encoded = encode(value)
    finally:
        if arrays is not None:
            arrays.close()
    _move_in_place(root, plan)  # after every copy: a move may overwrite the end of an array copied
    return encoded


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
    if mode == "views":  # views of a file mapped read-only (as the npz reader maps an upload): {name: [start,
        # bytes, dtype]}; the names in args["twice"] again in a list (the same array object a second time)
        import mmap

        path = Path(args["folder"]) / args["file"] if "file" in args else Path(args["path"])
        with open(path, "rb") as handle:
            whole = np.frombuffer(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)
        views = {name: whole[start:start + nbytes].view(dtype) for name, (start, nbytes, dtype) in args["views"].items()}
        return {**views, "twice": [views[name] for name in args.get("twice", [])]}
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
