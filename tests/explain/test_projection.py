import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from decalign.explain.projection import project, project_joint, project_with_points


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=6.0, size=(3, 12))
    return np.concatenate([c + rng.normal(size=(40, 12)) for c in centres])  # (120, 12)


def _same_up_to_sign(a, b):
    signs = np.sign((a * b).sum(0))
    np.testing.assert_allclose(a, b * signs, atol=1e-8)


def test_pca_equals_scikit_learn_and_svd(blobs):
    proj = project(blobs, "pca")
    expected = PCA(n_components=2, svd_solver="full").fit_transform(blobs)
    np.testing.assert_allclose(proj.coords, expected, atol=1e-10)
    centred = blobs - blobs.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    _same_up_to_sign(proj.coords, centred @ vt[:2].T)
    assert (proj.method, proj.fitted_on, proj.note) == ("pca", 120, "")


def test_pca_sampling_path_fits_on_seeded_sample_and_transforms_all(blobs):
    proj = project(blobs, "pca", fit_limit=50, seed=3)
    rows = np.sort(np.random.default_rng(3).choice(120, 50, replace=False))
    expected = PCA(n_components=2, svd_solver="full").fit(blobs[rows]).transform(blobs)
    np.testing.assert_allclose(proj.coords, expected, atol=1e-10)
    assert proj.fitted_on == 50 and "50 of the 120" in proj.note
    # a projection fitted on all rows differs: the sample really was used
    assert not np.allclose(proj.coords, project(blobs, "pca").coords)


def test_umap_is_deterministic_and_samples_above_fit_limit(blobs):
    a = project(blobs, "umap", seed=1, n_neighbors=10)
    b = project(blobs, "umap", seed=1, n_neighbors=10)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert a.coords.shape == (120, 2) and np.isfinite(a.coords).all() and a.fitted_on == 120
    sampled = project(blobs, "umap", seed=1, fit_limit=60, n_neighbors=10)
    assert sampled.coords.shape == (120, 2) and np.isfinite(sampled.coords).all()
    assert sampled.fitted_on == 60 and "60 of the 120" in sampled.note
    # the three blobs stay apart in the transformed points too: nearest centroid recovers the blob
    groups = np.repeat(np.arange(3), 40)
    centroids = np.stack([sampled.coords[groups == g].mean(0) for g in range(3)])
    nearest = np.argmin(((sampled.coords[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (nearest == groups).mean() > 0.95


def test_umap_falls_back_to_pca_for_tiny_inputs():
    x = np.random.default_rng(0).normal(size=(5, 4))
    proj = project(x, "umap")
    assert proj.method == "pca" and "Too few points" in proj.note
    np.testing.assert_allclose(proj.coords, project(x, "pca").coords)


def test_joint_projection_stacks_modalities_in_order(blobs):
    feats = {"a": blobs[:70], "b": blobs[70:]}
    proj, labels = project_joint(feats, "pca")
    np.testing.assert_allclose(proj.coords, project(blobs, "pca").coords)
    assert list(labels[:70]) == ["a"] * 70 and list(labels[70:]) == ["b"] * 50
    with pytest.raises(ValueError, match="different feature shapes"):
        project_joint({"a": blobs, "b": blobs[:, :5]}, "pca")


def test_points_share_the_samples_projection(blobs):
    means = np.stack([blobs[:40].mean(0), blobs[40:80].mean(0)])
    coords, points = project_with_points(blobs, means)
    np.testing.assert_allclose(coords, project(blobs, "pca").coords)
    # PCA is affine, so the image of a mean is the mean of the images
    np.testing.assert_allclose(points[0], coords[:40].mean(0), atol=1e-10)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "non-empty"), (np.zeros(4), "non-empty"), (np.array([[1.0, np.nan]]), "non-finite"),
])
def test_bad_input_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        project(bad, "pca")
    with pytest.raises(ValueError, match="method"):
        project(np.zeros((3, 3)), "tsne")


def test_worker_computes_in_the_background_and_persists(blobs, tmp_path):
    """The worker answers at once, computes in its child, keeps the result on disk for the next worker."""
    from decalign.explain.projection import ProjectionWorker, Request, projection_key

    request = Request(blobs, "pca", fit_limit=50, seed=3)
    first = ProjectionWorker(tmp_path)
    try:
        assert first.get(request) is None  # queued, not computed in the caller
        assert first.wait(timeout=600) and first.error(request) is None and first.ready(request)
        got = first.get(request)
        np.testing.assert_allclose(got.coords, project(blobs, "pca", fit_limit=50, seed=3).coords)
        assert got.fitted_on == 50 and "random sample" in got.note and first.computed == 1
    finally:
        first.close()
    second = ProjectionWorker(tmp_path)
    again = second.get(request)  # from disk: no child started, nothing computed
    assert again is not None and second.computed == 0 and second.children_started == 0
    np.testing.assert_array_equal(again.coords, got.coords)
    # The key follows the features, the parameters and the computation's version.
    keys = {projection_key(blobs, "pca", fit_limit=50, seed=3), projection_key(blobs, "pca", fit_limit=50, seed=4),
            projection_key(blobs + 1e-3, "pca", fit_limit=50, seed=3), projection_key(blobs, "umap", fit_limit=50, seed=3)}
    assert len(keys) == 4


def test_workers_side_by_side_compute_every_request_once(blobs, tmp_path):
    """Two children share the queue: each result equals the direct computation, none is computed twice."""
    from decalign.explain.projection import ProjectionWorker, Request

    requests = [Request(blobs + shift, "pca", seed=shift) for shift in range(5)]
    worker = ProjectionWorker(tmp_path, workers=2)
    try:
        worker.warm_up()
        assert all(worker.get(r) is None for r in requests)
        assert worker.wait(timeout=600) and worker.pending() == 0
        for shift, request in enumerate(requests):
            np.testing.assert_allclose(worker.get(request).coords, project(blobs + shift, "pca", seed=shift).coords)
        assert worker.computed == 5 and worker.children_started == 2  # both warmed up, so both started
    finally:
        worker.close()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_worker_child_runs_only_on_idle_cores(blobs, tmp_path):
    """The child computing projections is SCHED_IDLE: pages, the browser and training runs go first."""
    from decalign.explain.projection import ProjectionWorker, Request

    worker = ProjectionWorker(tmp_path)
    try:
        worker.get(Request(blobs, "pca"))
        assert worker.wait(timeout=600) and worker.children_started == 1
        child = worker._children[0].proc.pid
        assert os.sched_getscheduler(child) == os.SCHED_IDLE
        assert os.sched_getscheduler(os.getpid()) != os.SCHED_IDLE  # the parent keeps its own policy
    finally:
        worker.close()


def test_worker_recomputes_a_broken_cache_file_and_reports_failures(blobs, tmp_path):
    from decalign.explain.projection import ProjectionWorker, Request

    request = Request(blobs, "pca")
    (tmp_path / f"{request.key}.npz").write_bytes(b"not an npz")
    worker = ProjectionWorker(tmp_path)
    bad = Request(np.full((5, 3), np.nan), "pca")
    try:
        assert worker.get(request) is None and worker.get(bad) is None
        assert worker.wait(timeout=600)
        np.testing.assert_allclose(worker.get(request).coords, project(blobs, "pca").coords)
        assert "non-finite" in worker.error(bad) and worker.get(bad) is None and worker.ready(bad)
    finally:
        worker.close()


def test_umap_on_precomputed_distances_keeps_umap_learns_graph_and_quality(blobs):
    """Our exact-distance fit builds umap-learn's own neighbour graph (to float rounding) and a map as
    trustworthy as umap-learn's default Euclidean path."""
    import umap
    from sklearn.manifold import trustworthiness

    from decalign.explain.projection import _euclidean

    plain = umap.UMAP(n_components=2, n_neighbors=10, random_state=1, n_epochs=200).fit(blobs)
    ours = umap.UMAP(n_components=2, n_neighbors=10, random_state=1, n_epochs=200,
                     metric="precomputed").fit(_euclidean(blobs, blobs))
    assert abs(plain.graph_ - ours.graph_).max() < 1e-4
    coords = project(blobs, "umap", seed=1, n_neighbors=10).coords
    reference = trustworthiness(blobs, plain.embedding_, n_neighbors=10)
    assert trustworthiness(blobs, coords, n_neighbors=10) > reference - 0.02


def test_umap_fits_at_most_its_exact_path_and_transforms_the_rest_in_chunks(monkeypatch):
    from decalign.explain import projection

    monkeypatch.setattr(projection, "UMAP_MAX_FIT", 300)
    monkeypatch.setattr(projection, "TRANSFORM_CHUNK", 250)  # 700 rows left: three chunks
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=8.0, size=(2, 6))
    x = np.concatenate([c + rng.normal(size=(500, 6)) for c in centres])
    proj = project(x, "umap", fit_limit=5000)
    assert proj.fitted_on == 300 and "300 of the 1,000" in proj.note
    groups = np.repeat([0, 1], 500)
    centroids = np.stack([proj.coords[groups == g].mean(0) for g in (0, 1)])
    nearest = np.argmin(((proj.coords[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (nearest == groups).mean() > 0.99


_CACHE_PROBE = """
import json
import numpy as np
from decalign.explain.projection import umap_module
umap_module()
from umap.distances import euclidean  # compiled without cache=True in umap-learn itself
euclidean(np.ones(3), np.zeros(3))
print(json.dumps({"hits": sum(euclidean.stats.cache_hits.values()),
                  "misses": sum(euclidean.stats.cache_misses.values())}))
"""


def test_umap_compiled_functions_are_cached_on_disk_for_the_next_process():
    """The second process loads umap-learn's compiled code from numba's cache instead of compiling it (the
    worker child's 15 s start); without ``umap_module`` the function has no cache: no hits."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    runs = [subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, env=env,
                           timeout=600, check=True) for _ in range(2)]
    second = json.loads(runs[1].stdout.strip().splitlines()[-1])
    assert second == {"hits": 1, "misses": 0}, (second, runs[1].stderr[-2000:])
