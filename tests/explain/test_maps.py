"""Projection maps fitted on the training samples (decalign.explain.maps), checked against scikit-learn
and umap-learn directly."""

from dataclasses import replace

import numpy as np
import pytest
from sklearn.decomposition import PCA

from decalign.checkpoint import CheckpointError
from decalign.explain import maps
from decalign.explain.maps import place_on, umap_onto
from decalign.inference import run_inference
from decalign.maps import JOINT, PcaMap, fit_pca_maps, space_rows
from decalign.train.reference import load_reference, save_reference, with_maps


def _blobs(seed: int, per: int = 60, width: int = 10):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(scale=8.0, size=(3, width))  # the same blobs for every seed
    return np.concatenate([c + rng.normal(size=(per, width)) for c in centres]), np.repeat(np.arange(3), per)


def test_pca_map_places_new_rows_as_scikit_learn_transforms_them():
    train, _ = _blobs(1)
    new, _ = _blobs(2, per=7)
    placed = place_on(PcaMap.fit(train), new)
    np.testing.assert_allclose(placed.coords, PCA(n_components=2, svd_solver="full").fit(train).transform(new),
                               atol=1e-10)
    assert (placed.method, placed.fitted_on, placed.note) == ("pca", len(train), maps.MAP_NOTE)
    with pytest.raises(ValueError, match="width 10"):
        PcaMap.fit(train).place(new[:, :4])
    one_wide = PcaMap.fit(train[:, :1])  # a single principal axis: the second coordinate is 0
    assert one_wide.axes.shape == (2, 1) and not one_wide.place(new[:, :1])[:, 1].any()


def test_spaces_are_named_as_the_embeddings_page_names_them():
    unique = {"a": np.eye(4, 3), "b": -np.eye(4, 3)}
    common = {"a": np.arange(8.0).reshape(4, 2), "b": -np.arange(8.0).reshape(4, 2)}
    rows = space_rows(unique, common)
    assert sorted(rows) == sorted(["unique:a", "unique:b", "common:a", "common:b", JOINT])
    np.testing.assert_array_equal(rows[JOINT], np.concatenate([common["a"], common["b"]]))
    fitted = fit_pca_maps(unique, common)
    np.testing.assert_allclose(fitted[JOINT].mean, rows[JOINT].mean(0))
    assert fitted["common:b"].fitted_on == 4 and fitted[JOINT].fitted_on == 8


def test_umap_onto_places_rows_on_one_stored_map(tmp_path, monkeypatch):
    train, _ = _blobs(1)
    new, groups = _blobs(2, per=20)
    fits = []
    real_umap = maps._umap
    monkeypatch.setattr(maps, "_umap", lambda *a: fits.append(1) or real_umap(*a))
    maps._REBUILT.clear()
    first = umap_onto(train, new, tmp_path, n_neighbors=10)
    assert first.method == "umap" and first.fitted_on == len(train) and np.isfinite(first.coords).all()
    # each blob's new rows land beside the same blob's training rows on the map
    train_map = umap_onto(train, train, tmp_path, n_neighbors=10).coords
    centroids = np.stack([train_map[np.repeat(np.arange(3), 60) == g].mean(0) for g in range(3)])
    nearest = np.argmin(((first.coords[:, None] - centroids[None]) ** 2).sum(-1), 1)
    assert (nearest == groups).mean() > 0.95
    assert len(fits) == 1 and len(list((tmp_path / "maps").glob("*.npz"))) == 1
    maps._REBUILT.clear()  # another process: the map is read back and rebuilt, not fitted again
    again = umap_onto(train, new, tmp_path, n_neighbors=10)
    assert len(fits) == 1
    np.testing.assert_allclose(again.coords, first.coords)


def test_reference_stores_maps_fitted_on_the_training_features(reference, trained, digits_data, tmp_path):
    model, card = trained
    kept = digits_data.splits["train"]
    result = run_inference(model, kept, task=card.task)  # independent: the model's own inference
    for m in model.modalities:
        np.testing.assert_allclose(reference.train_distribution[m], result.distribution[m], atol=1e-5)
        expected = PCA(n_components=2, svd_solver="full").fit(result.unique_pooled[m].astype(np.float64))
        np.testing.assert_allclose(np.abs(reference.maps[f"unique:{m}"].axes), np.abs(expected.components_),
                                   atol=1e-4)
    save_reference(tmp_path, reference)
    loaded = load_reference(tmp_path)
    assert sorted(loaded.maps) == sorted(reference.maps)
    for space, pca_map in reference.maps.items():
        np.testing.assert_array_equal(loaded.maps[space].axes, pca_map.axes)
        assert loaded.maps[space].fitted_on == pca_map.fitted_on
    assert with_maps(loaded, model) is loaded  # nothing to add


def test_a_reference_without_maps_gets_them_from_the_model(reference, trained):
    model, _ = trained
    old = replace(reference, maps={}, train_distribution=None)  # written before maps were stored
    upgraded = with_maps(old, model)
    for m in model.modalities:
        np.testing.assert_allclose(upgraded.train_distribution[m], reference.train_distribution[m], atol=1e-5)
    for space, pca_map in reference.maps.items():
        np.testing.assert_allclose(np.abs(upgraded.maps[space].axes), np.abs(pca_map.axes), atol=1e-4)
    # stored features without maps: the maps are fitted on them, the features kept as they are
    refitted = with_maps(replace(reference, maps={}), model)
    assert refitted is not None and refitted.train_distribution is reference.train_distribution
    for space, pca_map in reference.maps.items():
        np.testing.assert_allclose(refitted.maps[space].axes, pca_map.axes)


def test_maps_that_do_not_fit_the_model_are_refused(reference, trained, tmp_path):
    model, _ = trained
    m = model.modalities[0]
    wrong = replace(reference, train_common={**reference.train_common, m: reference.train_common[m][:, :3]})
    with pytest.raises(CheckpointError, match="train_common has widths"):
        with_maps(wrong, model)
    narrow = PcaMap(np.zeros(3), np.zeros((2, 3)), 5)
    with pytest.raises(CheckpointError, match=f"map 'unique:{m}' has width 3"):
        with_maps(replace(reference, maps={**reference.maps, f"unique:{m}": narrow}), model)
    save_reference(tmp_path, reference)
    import json

    meta = json.loads((tmp_path / "reference.json").read_text())
    meta["maps"][f"unique:{m}"] = -1
    (tmp_path / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="positive count"):
        load_reference(tmp_path)


def test_a_reference_with_non_finite_training_features_is_refused(reference, tmp_path):
    from safetensors.numpy import load_file, save_file

    save_reference(tmp_path, reference)
    arrays = load_file(str(tmp_path / "reference.safetensors"))
    m = reference.modalities[0]
    arrays[f"train_unique/{m}"][3, 1] = np.nan
    save_file(arrays, str(tmp_path / "reference.safetensors"))
    with pytest.raises(CheckpointError, match=f"train_unique/{m} holds 1 non-finite"):
        load_reference(tmp_path)
