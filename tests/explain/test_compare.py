"""Comparing two models: self-comparison is neutral, flips are found, prototype OT checked against POT."""

from __future__ import annotations

import numpy as np
import ot
import pandas as pd
import pytest
import torch

from decalign.explain.compare import (
    compare_metrics,
    levels_side_by_side,
    match_prototypes,
    prediction_changes,
    slice_differences,
)
from decalign.inference import run_inference
from decalign.model import Prototypes


@pytest.fixture(scope="module")
def pair(trained, digits_data):
    model, card = trained
    split = digits_data.splits["test"]
    result = run_inference(model, split, task=card.task, prototypes=card.prototype_tensors())
    return result, card


def test_self_comparison_has_no_flips_and_no_change(pair):
    result, card = pair
    changes = prediction_changes(result, result)
    assert not changes["changed"].any()
    assert np.allclose(changes["shift"], 0.0)
    metrics = compare_metrics(result, result, card, card)
    assert (metrics["change"] == 0).all() and (metrics["better"] == "same").all()
    slices = slice_differences(result, result, card, card, by="class")
    assert np.allclose(slices["change"].dropna(), 0.0)
    assert slices["n"].sum() == len(result)


def test_flips_are_found_and_ranked(pair):
    result, card = pair
    other = result.subset(np.arange(len(result)))
    other.outputs = result.outputs.copy()
    rows = [0, 5]
    for r in rows:  # move the top logit of two samples to another class
        k = int(result.outputs[r].argmax())
        other.outputs[r, (k + 1) % other.outputs.shape[1]] = result.outputs[r].max() + 10
    changes = prediction_changes(result, other)
    flipped = changes[changes["changed"]]
    assert sorted(flipped["row"]) == rows
    assert list(changes["row"][:2]) == list(flipped["row"])  # flips come first
    expected = 0.5 * np.abs(result.probabilities - other.probabilities).sum(1)
    np.testing.assert_allclose(changes.sort_values("row")["shift"], expected, atol=1e-12)
    metrics = compare_metrics(result, other, card, card).set_index("metric")
    labels = result.labels
    acc_b = float((other.predictions == labels).mean())
    assert metrics.loc["Acc", "B"] == pytest.approx(acc_b)


def test_results_must_match(pair):
    result, _card = pair
    with pytest.raises(ValueError, match="same samples"):
        prediction_changes(result, result.subset(np.arange(10)))


def test_self_matching_is_the_identity(reference):
    protos = reference.prototypes
    matches = match_prototypes(protos, protos)
    for m, match in matches.items():
        k = len(protos[m].weights)
        w = protos[m].weights.double().numpy()
        np.testing.assert_allclose(match.plan, np.diag(w / w.sum()), atol=1e-12)
        assert match.total_cost == pytest.approx(0.0, abs=1e-9)
        table = match.matches()
        assert (table["prototype_A"] == table["prototype_B"]).all() and len(table) == k


def test_matching_against_pot_and_hand_cost():
    rng = np.random.default_rng(0)
    a = Prototypes(torch.tensor(rng.normal(size=(4, 3))), torch.tensor(rng.random((4, 3)) + 0.1),
                   torch.tensor([0.1, 0.2, 0.3, 0.4]))
    b = Prototypes(torch.tensor(rng.normal(size=(5, 3))), torch.tensor(rng.random((5, 3)) + 0.1),
                   torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0]))  # unnormalised on purpose
    match = match_prototypes({"x": a}, {"x": b})["x"]
    ma, va, mb, vb = (t.numpy() for t in (a.means, a.variances, b.means, b.variances))
    cost = ((ma[:, None] - mb[None]) ** 2).sum(-1) + ((np.sqrt(va)[:, None] - np.sqrt(vb)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(match.cost, cost, rtol=1e-12)
    wb = np.array([0.5, 0.5, 1.0, 1.0, 2.0]) / 5.0
    np.testing.assert_allclose(match.plan.sum(1), [0.1, 0.2, 0.3, 0.4], atol=1e-12)
    np.testing.assert_allclose(match.plan.sum(0), wb, atol=1e-12)
    assert match.total_cost == pytest.approx(ot.emd2(np.array([0.1, 0.2, 0.3, 0.4]), wb, cost))


def test_procrustes_mapping_recovers_a_rotated_copy():
    rng = np.random.default_rng(1)
    feats_a = rng.normal(size=(200, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    feats_b = feats_a @ q + 4.0  # model B = model A in a rotated, shifted frame
    means_a = torch.tensor(rng.normal(size=(3, 3)))
    variances = torch.ones(3, 3)  # isotropic: unchanged by a rotation
    proto_a = Prototypes(means_a, variances, torch.ones(3))
    proto_b = Prototypes(means_a @ torch.tensor(q) + 4.0, variances, torch.ones(3))
    raw = match_prototypes({"x": proto_a}, {"x": proto_b})["x"]
    mapped = match_prototypes({"x": proto_a}, {"x": proto_b}, features_a={"x": feats_a},
                              features_b={"x": feats_b})["x"]
    assert mapped.total_cost == pytest.approx(0.0, abs=1e-9)
    assert raw.total_cost > 1.0
    np.testing.assert_allclose(mapped.plan, np.eye(3) / 3, atol=1e-12)


def test_levels_side_by_side():
    a = pd.DataFrame({"level": ["mmd", "mmd"], "scope": ["total", "x – y"], "kind": ["total", "pair"],
                      "value": [1.0, 1.0]})
    b = a.assign(value=[0.5, 1.5])
    merged = levels_side_by_side(a, b)
    assert list(merged["change"]) == [-0.5, 0.5]
