import numpy as np
import pytest
import torch

from decalign.explain.levels import LEVEL_MEANING, LEVELS, alignment_levels, levels_history


@pytest.fixture(scope="module")
def levels(trained, digits_data):
    model, _ = trained
    return alignment_levels(model, digits_data.splits["test"], batch_size=100, max_samples=200)


def test_levels_are_non_negative_and_cover_every_level(levels):
    assert set(levels.level) == set(LEVELS) and set(LEVEL_MEANING) == set(LEVELS)
    assert (levels.value >= -1e-9).all() and np.isfinite(levels.value).all()
    assert (levels.samples == 200).all()


def test_per_pair_rows_sum_to_the_totals(levels, trained):
    model, _ = trained
    m = len(model.modalities)
    totals = levels[levels.kind == "total"].set_index("level").value
    for level in LEVELS:
        parts = levels[(levels.level == level) & (levels.kind != "total")]
        expected_rows = {"decoupling": m, "sample_to_prototype": m * (m - 1)}.get(level, m * (m - 1) // 2)
        assert len(parts) == expected_rows
        assert parts.value.sum() == pytest.approx(totals[level], rel=1e-5, abs=1e-7)


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
