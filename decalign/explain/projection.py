"""2-D projections of pooled features (UMAP or PCA) for the embedding and prototype views.

Large inputs are handled the way a user would by hand: fit the projection on a seeded random sample of
``fit_limit`` rows, then map every other row through the fitted projection (``transform``). The
``Projection.note`` says when that happened, so the page can tell the user.

UMAP takes seconds to minutes, so a dashboard never waits for it: :class:`ProjectionWorker` computes
projections one at a time in a low-priority background thread and keeps every result on disk
(``$DECALIGN_CACHE_DIR``, default ``~/.cache/decalign-studio``, under ``projections/``), keyed by a hash
of the features themselves (so of the model and the data that produced them), the parameters and
``PROJECTION_VERSION``; a restarted server or a second user reads the result back instead of
recomputing it. The page shows PCA (instant) until the UMAP result is there.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import subprocess
import sys
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..cache import cache_root
from ..maps import fit_pca

METHODS = ("umap", "pca")
# Below this many rows UMAP's neighbour graph is meaningless; PCA is used instead (and the note says so).
MIN_UMAP_ROWS = 8
UMAP_EPOCHS = 200
# UMAP is fitted on precomputed distances (``_euclidean``); umap-learn only transforms new rows onto such a
# fit while it took its exact (below 4,096 rows) path, so larger inputs are fitted on a sample this size.
UMAP_MAX_FIT = 4000
TRANSFORM_CHUNK = 2000  # rows transformed at once: a (2,000, 4,000) float32 distance matrix is 32 MB
PROJECTION_VERSION = 2  # bump when a projection's computation changes: older cached results are then ignored
BACKGROUND_NICE = 10  # the worker's niceness where SCHED_IDLE is missing (``_lower_priority``)
MAX_WORKERS = 3  # child processes computing projections side by side (each holds numba's compiled UMAP)
# Half the cores at most: on 2 cores two children computing UMAP made two sessions opening a page at once
# wait 11-12 s instead of 5-7 s (bench_dashboard, quiet machine), though each child ran at niceness 10.
CORES_PER_WORKER = 2
WARM_UP = "warm-up-"  # queue key of a child's warm-up, followed by its index
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass
class Projection:
    """Coordinates of N rows in 2-D and how they were obtained."""

    coords: np.ndarray  # (N, 2) float64
    method: str  # "umap" | "pca" (the method actually used)
    fitted_on: int  # rows the projection was fitted on; the rest were transformed
    note: str  # plain sentence for the user; "" when nothing worth saying happened


def project(features: np.ndarray, method: str = "umap", *, seed: int = 0, fit_limit: int = 5000,
            n_neighbors: int = 15) -> Projection:
    """Project ``features`` (N, d) to 2-D.

    PCA: the two leading principal axes, ``coords = (X - mean) V[:, :2]`` with ``V`` from the SVD of the
    centred fitted rows (scikit-learn's ``PCA``). UMAP: umap-learn's ``UMAP(n_components=2)`` with
    ``random_state=seed`` (deterministic, single-threaded), on exact Euclidean distances.

    Parameters
    ----------
    features : (N, d) finite values.
    method : "umap" or "pca".
    seed : seeds UMAP and the choice of the fitted sample.
    fit_limit : above this many rows (for UMAP at most ``UMAP_MAX_FIT``), fit on that many rows drawn without
        replacement by ``np.random.default_rng(seed)`` and transform all the others.
    n_neighbors : UMAP's neighbourhood size (capped at N - 1).

    Returns
    -------
    Projection with (N, 2) coordinates.
    """
    x = _check(features, method, fit_limit)
    if method == "umap":
        fit_limit = min(fit_limit, UMAP_MAX_FIT)
    n = x.shape[0]
    fit_rows = np.sort(np.random.default_rng(seed).choice(n, fit_limit, replace=False)) if n > fit_limit else None
    note = "" if fit_rows is None else (
        f"{method.upper()} was fitted on a random sample of {fit_limit:,} of the {n:,} points (seed {seed}); "
        "the other points were placed with the fitted projection.")
    if method == "umap" and (n if fit_rows is None else fit_limit) < MIN_UMAP_ROWS:
        method, note = "pca", f"Too few points for UMAP ({n}); PCA is shown instead."
    coords = _pca(x, fit_rows) if method == "pca" else _umap(x, fit_rows, seed, n_neighbors)
    return Projection(coords, method, n if fit_rows is None else fit_limit, note)


def project_joint(features_by_modality: dict[str, np.ndarray], method: str = "umap", *, seed: int = 0,
                  fit_limit: int = 5000, n_neighbors: int = 15) -> tuple[Projection, np.ndarray]:
    """One projection shared by several modalities: stack their rows, project once.

    Parameters
    ----------
    features_by_modality : modality -> (N_m, d), the same d for all (e.g. the common features).

    Returns
    -------
    The Projection of the stacked (sum N_m, d) rows, in the order of the dict, and the (sum N_m,) array of
    modality names telling which modality each row came from.
    """
    if not features_by_modality:
        raise ValueError("project_joint needs at least one modality")
    stacked, labels = stack_modalities(features_by_modality)
    proj = project(stacked, method, seed=seed, fit_limit=fit_limit, n_neighbors=n_neighbors)
    return proj, labels


def stack_modalities(features_by_modality: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The rows :func:`project_joint` projects: every modality's rows stacked in dict order, and the
    (sum N_m,) modality name of each row."""
    widths = {m: np.asarray(x).shape[1:] for m, x in features_by_modality.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"project_joint: modalities have different feature shapes {widths}")
    stacked = np.concatenate([np.asarray(x) for x in features_by_modality.values()])
    labels = np.concatenate([np.full(len(x), m, dtype=object) for m, x in features_by_modality.items()])
    return stacked, labels


def project_with_points(features: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA fitted on ``features`` (N, d); returns its (N, 2) coordinates and those of ``points`` (P, d).

    Used to draw prototype means in the same plane as the samples: the means are placed with the
    projection fitted on the samples, not fitted together with them.
    """
    x = _check(features, "pca", 1)
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != x.shape[1]:
        raise ValueError(f"points must be (P, {x.shape[1]}), found {pts.shape}")
    pca = fit_pca(x)
    return _pad(pca.transform(x)), _pad(pca.transform(pts))


def _check(features: np.ndarray, method: str, fit_limit: int) -> np.ndarray:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, found {method!r}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (N, d) array, found shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"features contain {int((~np.isfinite(x)).sum())} non-finite values")
    if fit_limit < 1:
        raise ValueError(f"fit_limit must be at least 1, found {fit_limit}")
    return x


def _pca(x: np.ndarray, fit_rows: np.ndarray | None) -> np.ndarray:
    pca = fit_pca(x if fit_rows is None else x[fit_rows])
    return _pad(pca.transform(x))


def _umap(x: np.ndarray, fit_rows: np.ndarray | None, seed: int, n_neighbors: int) -> np.ndarray:
    fitted = x if fit_rows is None else x[fit_rows]
    reducer = umap_reducer(fitted, seed, n_neighbors)
    if fit_rows is None:
        return reducer.embedding_.astype(np.float64)
    coords = np.empty((x.shape[0], 2))
    coords[fit_rows] = reducer.embedding_
    rest = np.setdiff1d(np.arange(x.shape[0]), fit_rows)
    coords[rest] = umap_transform(reducer, x[rest], fitted)
    return coords


def umap_reducer(rows: np.ndarray, seed: int, n_neighbors: int, *, n_epochs: int = UMAP_EPOCHS,
                 init: str | np.ndarray = "spectral"):
    """umap-learn's ``UMAP`` fitted on the exact distances of ``rows`` (seeded, so single-threaded).

    200 optimisation epochs by default, as umap-learn itself uses above 10,000 rows; its 500 for smaller
    data cost 25% more time here for maps that look the same at dashboard size. ``init``: umap-learn's
    initial layout (an array: the coordinates of a stored map, with ``n_epochs=0`` to keep them)."""
    umap = umap_module()
    reducer = umap.UMAP(n_components=2, n_neighbors=max(2, min(n_neighbors, len(rows) - 1)), random_state=seed,
                        transform_seed=seed, n_epochs=n_epochs, init=init, metric="precomputed")
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": determinism is what we want
        warnings.simplefilter("ignore", UserWarning)
        reducer.fit(_euclidean(rows, rows))
    return reducer


@cache
def umap_module():
    """umap-learn, imported on first use (numba's start costs seconds; PCA users should not pay it), with
    numba's on-disk cache turned on for its compiled functions and pynndescent's.

    umap-learn declares about 250 numba functions without ``cache=True``, so every new process compiled them
    again: 15 s of CPU in each server's worker child at start, holding one of two cores through the first
    pages. Cached, a new process loads them in 0.1 s. numba keys the cache on each function's source file
    and signature, so an upgrade of umap-learn compiles again; a function numba cannot cache compiles as
    before.
    """
    import umap
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if module is None or name.partition(".")[0] not in ("umap", "pynndescent"):
            continue
        for function in list(vars(module).values()):
            if isinstance(function, CPUDispatcher) and isinstance(function._cache, NullCache):
                try:
                    function.enable_caching()
                except Exception:  # noqa: BLE001, S112 - not cacheable (e.g. no source file): compiled as before
                    continue
    return umap


def umap_transform(reducer, x: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    """(len(x), 2): ``x`` placed by umap-learn's ``transform`` on ``reducer`` (fitted on ``fitted``), a
    chunk at a time to bound the (chunk, fitted) distance matrix."""
    coords = np.empty((len(x), 2))
    with warnings.catch_warnings():  # umap-learn warns that transform assumes precomputed distances: it does
        warnings.simplefilter("ignore", UserWarning)
        for start in range(0, len(x), TRANSFORM_CHUNK):
            chunk = slice(start, start + TRANSFORM_CHUNK)
            coords[chunk] = reducer.transform(_euclidean(x[chunk], fitted))
    return coords


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) Euclidean distances, float32 as umap-learn keeps them.

    umap-learn's own small-data path hands its numba metric to scikit-learn as a Python callable, called
    once per pair (1,000 rows: 0.5 million calls); one BLAS product gives the same exact distances, and
    the fitted neighbour graph equals umap-learn's to float rounding (tests/explain/test_projection.py).
    """
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(a, b, metric="euclidean").astype(np.float32)


def warm_up_umap() -> None:
    """Run UMAP once on a few random points, fitting some and transforming the rest, so numba compiles
    both paths before a user waits."""
    _umap(np.random.default_rng(0).normal(size=(64, 4)), np.arange(48), 0, 5)


def _pad(coords: np.ndarray) -> np.ndarray:
    """Always two columns: a single sample or a 1-wide feature gives fewer principal axes."""
    out = np.zeros((coords.shape[0], 2))
    out[:, : coords.shape[1]] = coords
    return out


# ------------------------------------------------------------------------------ persisted, in the background


def projection_key(features: np.ndarray, method: str, *, seed: int = 0, fit_limit: int = 5000,
                   n_neighbors: int = 15, reference: np.ndarray | None = None) -> str:
    """sha256 of the features (shape, dtype, bytes), the parameters and ``PROJECTION_VERSION``, and of the
    training rows of the map the features are placed on (``reference``), if any."""
    digest = hashlib.sha256(json.dumps([PROJECTION_VERSION, method, seed, fit_limit, n_neighbors,
                                        reference is not None]).encode())
    for x in (features, reference):
        if x is not None:
            x = np.ascontiguousarray(x)
            digest.update(json.dumps([list(x.shape), x.dtype.str]).encode())
            digest.update(memoryview(x).cast("B"))
    return digest.hexdigest()


def load_cached(folder: Path, key: str, n: int) -> Projection | None:
    """The projection stored under ``key``; None when absent or unreadable (it is then recomputed)."""
    path = folder / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            coords, meta = stored["coords"], json.loads(str(stored["meta"]))
        proj = Projection(np.asarray(coords, dtype=np.float64), str(meta["method"]), int(meta["fitted_on"]),
                          str(meta["note"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return proj if proj.coords.shape == (n, 2) and np.isfinite(proj.coords).all() else None


def save_cached(folder: Path, key: str, proj: Projection) -> None:
    meta = json.dumps({"method": proj.method, "fitted_on": proj.fitted_on, "note": proj.note})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, coords=proj.coords, meta=np.array(meta))

    atomic_write(folder / f"{key}.npz", write)


@dataclass(frozen=True, eq=False)
class Request:
    """One projection to compute: the features and :func:`project`'s parameters; with ``reference`` (the
    training rows of the space, UMAP only) the features are placed on the training map instead
    (``decalign.explain.maps.umap_onto``)."""

    features: np.ndarray
    method: str
    seed: int = 0
    fit_limit: int = 5000
    n_neighbors: int = 15
    reference: np.ndarray | None = None

    @cached_property
    def key(self) -> str:
        return projection_key(self.features, self.method, seed=self.seed, fit_limit=self.fit_limit,
                              n_neighbors=self.n_neighbors, reference=self.reference)


class ProjectionWorker:
    """Computes :func:`project` results in the background, keeps them on disk and in memory, and never
    blocks the caller.

    ``get`` answers at once: the result when it is known (memory, then disk), else None after queueing the
    request (once). Up to ``workers`` threads each hand requests to their own child process, started once
    and kept (numba compiles UMAP there once): the server's own threads never wait for the GIL behind UMAP.
    UMAP with a seed runs on one thread, so the Embeddings page's seven views are computed side by side,
    one child per two cores (at most ``MAX_WORKERS``; one on a 2-core machine). The children run only on idle cores
    (SCHED_IDLE, see ``_lower_priority``) with one numba and one BLAS thread each, so pages, the browser
    and a training process on the same machine keep their cores. A failure is kept as the request's error (``error(request)``) rather than
    retried forever.
    """

    def __init__(self, folder: str | Path | None = None, *, memory_entries: int = 128, nice: int = BACKGROUND_NICE,
                 workers: int | None = None):
        self.folder = Path(folder) if folder is not None else cache_root() / "projections"
        self.nice, self.memory_entries = nice, memory_entries
        cores = os.cpu_count() or 1
        self.workers = max(1, workers if workers is not None else min(MAX_WORKERS, cores // CORES_PER_WORKER))
        self._done: OrderedDict[str, Projection] = OrderedDict()
        self._errors: dict[str, str] = {}
        self._queue: OrderedDict[str, Request | None] = OrderedDict()
        self._taken: set[str] = set()  # queued keys a thread is computing
        self._lock, self._wake = threading.Lock(), threading.Condition()
        self._threads: list[threading.Thread | None] = [None] * self.workers
        self._children: list[_Child | None] = [None] * self.workers
        self.computed = 0  # projections really computed here (not read back), for tests and benchmarks

    def get(self, request: Request) -> Projection | None:
        """The finished projection of ``request``, or None (then it is computed in the background)."""
        key = request.key
        found = self._known(key, len(request.features))
        if found is None and key not in self._errors:
            with self._wake:
                self._queue.setdefault(key, request)
                self._start()
                self._wake.notify_all()
        return found

    def error(self, request: Request) -> str | None:
        return self._errors.get(request.key)

    def ready(self, request: Request) -> bool:
        """Whether ``get`` would answer with a result (or the request failed): nothing left to wait for."""
        with self._lock:
            if request.key in self._done:
                return True
        return request.key in self._errors or self._known(request.key, len(request.features)) is not None

    def pending(self) -> int:
        """Requests queued or being computed."""
        with self._wake:
            return len(self._queue)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (tests, benchmarks, warm-up scripts); False on timeout."""
        with self._wake:
            return self._wake.wait_for(lambda: not self._queue, timeout)

    def warm_up(self) -> None:
        """Queue a tiny UMAP for every child so numba compiles it (seconds) in the background, before a
        user asks."""
        with self._wake:
            for index in range(self.workers):
                self._queue.setdefault(f"{WARM_UP}{index}", None)
            self._start()
            self._wake.notify_all()

    def _known(self, key: str, n: int) -> Projection | None:
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
        found = load_cached(self.folder, key, n)
        if found is not None:
            self._remember(key, found)
        return found

    def _remember(self, key: str, proj: Projection) -> None:
        with self._lock:
            self._done[key] = proj
            while len(self._done) > self.memory_entries:
                self._done.popitem(last=False)

    def _start(self) -> None:
        """Every thread alive (called holding ``_wake``); an idle one waits, its child starts on demand."""
        for index, thread in enumerate(self._threads):
            if thread is None or not thread.is_alive():
                self._threads[index] = threading.Thread(target=self._run, args=(index,),
                                                        name=f"projection-worker-{index}", daemon=True)
                self._threads[index].start()

    def _next(self, index: int) -> str | None:
        """The first queued key no other thread has taken (a warm-up only for its own child)."""
        for key in self._queue:
            if key not in self._taken and (not key.startswith(WARM_UP) or key == f"{WARM_UP}{index}"):
                return key
        return None

    def _run(self, index: int) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._next(index) is not None)
                key = self._next(index)
                self._taken.add(key)
                request = self._queue[key]
            try:
                self._compute(index, key, request)
            finally:
                with self._wake:
                    self._taken.discard(key)
                    self._queue.pop(key, None)
                    self._wake.notify_all()

    def _compute(self, index: int, key: str, request: Request | None) -> None:
        try:
            if request is None:
                self._child(index).ask({"warm_up": True})
                return
            if self._known(key, len(request.features)) is not None:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            arrays = {"features": request.features, "reference": request.reference}
            paths = {name: self.folder / f".{key}.{name}.npy" for name, x in arrays.items() if x is not None}
            for name, path in paths.items():
                np.save(path, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            try:
                self._child(index).ask({"key": key, **{name: str(p) for name, p in paths.items()},
                                        "method": request.method, "seed": request.seed,
                                        "fit_limit": request.fit_limit, "n_neighbors": request.n_neighbors})
            finally:
                for path in paths.values():
                    path.unlink(missing_ok=True)
            proj = load_cached(self.folder, key, len(request.features))
            if proj is None:
                raise RuntimeError("the projection worker wrote no readable result")
            with self._lock:
                self.computed += 1
            self._remember(key, proj)
        except Exception as exc:  # noqa: BLE001 - reported to the page through error(); the thread lives on
            self._errors[key] = f"{type(exc).__name__}: {exc}"

    def _child(self, index: int) -> _Child:
        child = self._children[index]
        if child is None or not child.alive():
            child = self._children[index] = _Child(self.folder, self.nice)
            atexit.register(child.close)  # its stdin closes with this process anyway; this waits for it
        return child

    @property
    def children_started(self) -> int:
        """Child processes started so far (tests: a result read from disk starts none)."""
        return sum(child is not None for child in self._children)

    def close(self) -> None:
        """Stop the child processes (tests; a server's children also end with the server: stdin closes)."""
        for index, child in enumerate(self._children):
            if child is not None:
                child.close()
                self._children[index] = None


class _Child:
    """``python -m decalign.explain.projection FOLDER``: reads one JSON request a line on stdin, writes the
    result into the cache folder, answers one JSON line on stdout. Features travel as ``.npy`` files."""

    def __init__(self, folder: Path, nice: int):
        env = {**os.environ, **{v: "1" for v in _THREAD_VARS}}
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "decalign.explain.projection", str(folder), str(nice)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, text=True, bufsize=1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the projection worker stopped (exit status {self.proc.wait()})")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(answer["error"])

    def close(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)  # a projection still running is not worth waiting for
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve(folder: Path, nice: int) -> None:
    """The child's loop (see :class:`_Child`)."""
    _lower_priority(nice)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request.get("warm_up"):
                warm_up_umap()
            else:
                save_cached(folder, request["key"], _answer(folder, request))
            answer = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - one line back to the parent, the loop goes on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _answer(folder: Path, request: dict) -> Projection:
    """The projection a child was asked for: fitted to the features, or placed on a training map."""
    features = np.load(request["features"], allow_pickle=False)
    if "reference" in request:
        from .maps import umap_onto  # the maps build on this module

        return umap_onto(np.load(request["reference"], allow_pickle=False), features, folder,
                         seed=request["seed"], n_neighbors=request["n_neighbors"])
    return project(features, request["method"], seed=request["seed"], fit_limit=request["fit_limit"],
                   n_neighbors=request["n_neighbors"])


def _lower_priority(nice: int) -> None:
    """In the worker child: a lower scheduling priority (its thread counts come from the environment).

    Linux's SCHED_IDLE first: the child then runs only on a core nothing else wants, and a waking page or
    browser thread is placed on its core as on an idle one. At niceness 10 it still took about a tenth of a
    shared core, enough to push warm pages past 2 s while it computed UMAP views. Elsewhere, ``nice``."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(max(0, nice - os.nice(0)))
    except (AttributeError, OSError):
        pass


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]))
