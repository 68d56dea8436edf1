import numpy as np
import pytest
import torch

from decalign.explain.levels import (
    GROUPS,
    LEVEL_MEANING,
    LEVELS,
    alignment_levels,
    level_totals,
    levels_history,
)


@pytest.fixture(scope="module")
def levels(trained, digits_data):
    model, _ = trained
    return alignment_levels(model, digits_data.splits["test"], batch_size=100, max_samples=200)


def test_levels_cover_every_level_and_only_the_official_transport_can_be_negative(levels, trained):
    model, _ = trained
    assert model.config.objective == "official"
    assert set(levels.level) == set(LEVELS) | set(GROUPS) and set(LEVEL_MEANING) == set(LEVELS)
    assert np.isfinite(levels.value).all() and (levels.samples == 200).all()
    parts = levels[~levels.level.isin(["prototype_transport", *GROUPS])]
    assert (parts.value >= -1e-7).all()  # the transport holds the (negative) entropy term


def test_parts_make_their_level_by_the_objective_rule(levels, trained):
    model, _ = trained
    m = len(model.modalities)
    totals = levels[levels.kind == "total"].set_index("level").value
    for level in LEVELS:
        parts = levels[(levels.level == level) & (levels.kind.isin(["pair", "modality"]))]
        expected_rows = {"decoupling": m, "sample_to_prototype": m * (m - 1)}.get(level, m * (m - 1) // 2)
        assert len(parts) == expected_rows
        if level == "prototype_transport":  # <P_ab, C_ab> per pair plus the entropy term: always a sum
            entropy = levels[(levels.level == level) & (levels.kind == "term")].value.sum()
            assert parts.value.sum() + entropy == pytest.approx(totals[level], rel=1e-5, abs=1e-7)
        else:  # official: the mean over modalities / pairs
            assert parts.value.mean() == pytest.approx(totals[level], rel=1e-5, abs=1e-7)
    groups = levels[levels.kind == "group"].set_index("level").value
    assert groups["heterogeneous"] == pytest.approx(totals["prototype_transport"] + totals["sample_to_prototype"])
    assert groups["homogeneous"] == pytest.approx(totals["moment_matching"] + totals["mmd"])


def test_weighted_alignment_uses_the_run_weights(trained, digits_data):
    model, card = trained
    part = digits_data.splits["test"].subset(np.arange(40))
    frame = alignment_levels(model, part, batch_size=None, weights=card.config.train)
    totals = level_totals(frame)
    w = card.config.train
    assert totals["weighted_alignment"] == pytest.approx(
        w.dec_loss_weight * totals["decoupling"] + w.alpha * totals["heterogeneous"] + w.beta * totals["homogeneous"])
    first = alignment_levels(model, digits_data.splits["test"], batch_size=None, max_samples=40, first=True)
    assert level_totals(first)["mmd"] == pytest.approx(totals["mmd"], rel=1e-6)  # the first 40, as one batch


def test_one_chunk_equals_a_direct_forward_and_chunks_are_size_weighted(trained, digits_data):
    model, _ = trained
    part = digits_data.splits["test"].subset(np.arange(60))
    one = alignment_levels(model, part, batch_size=60)
    model.eval()
    with torch.no_grad():
        out = model({m: torch.from_numpy(x) for m, x in part.features.items()}, align=True)
    direct = out.alignment.as_floats()
    totals = one[one.kind == "total"].set_index("level").value
    for level in LEVELS:
        assert totals[level] == pytest.approx(direct[level], rel=1e-5, abs=1e-7)
    halves = [alignment_levels(model, part.subset(np.arange(a, b)), batch_size=30) for a, b in ((0, 30), (30, 60))]
    two = alignment_levels(model, part, batch_size=30)
    mean = (halves[0].set_index(["level", "scope"]).value + halves[1].set_index(["level", "scope"]).value) / 2
    np.testing.assert_allclose(two.set_index(["level", "scope"]).value.loc[mean.index], mean, rtol=1e-6)
    assert not model.training


def test_fixed_prototypes_are_used(trained, digits_data, reference):
    model, _ = trained
    part = digits_data.splits["test"].subset(np.arange(50))
    fitted = alignment_levels(model, part, batch_size=50)
    fixed = alignment_levels(model, part, batch_size=50, prototypes=reference.prototypes)
    value = lambda df, lvl: float(df[(df.level == lvl) & (df.kind == "total")].value.iloc[0])
    assert value(fitted, "prototype_transport") != pytest.approx(value(fixed, "prototype_transport"))
    assert value(fitted, "decoupling") == pytest.approx(value(fixed, "decoupling"))  # independent of prototypes


def test_history_parsing_is_defensive():
    history = [
        {"epoch": 1, "lr": 0.1, "train": {"total": 3.0, "decoupling": 0.5, "prototype_transport": 2.0, "mmd": 0.1},
         "valid": {"accuracy": 0.5}},
        "garbage",
        {"epoch": 2, "train": {"decoupling": 0.25, "sample_to_prototype": float("nan"), "mmd": True}},
        {"train": {"moment_matching": 1.5}, "valid": {"val_mmd": 0.3}},
    ]
    df = levels_history(history)
    got = {(r.epoch, r.level, r.source): r.value for r in df.itertuples()}
    assert got == {(1, "decoupling", "train"): 0.5, (1, "prototype_transport", "train"): 2.0,
                   (1, "mmd", "train"): 0.1, (2, "decoupling", "train"): 0.25,
                   (4, "moment_matching", "train"): 1.5, (4, "mmd", "valid"): 0.3}
    assert levels_history({"not": "a list"}).empty and levels_history([]).empty
    assert list(levels_history([]).columns) == ["epoch", "level", "source", "value"]
