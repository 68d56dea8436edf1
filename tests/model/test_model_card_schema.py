"""Model cards from users: the parameter count before building, field checks, where a card's data may be."""

from __future__ import annotations

import json

import pytest

from decalign.card_schema import MAX_JSON_DEPTH, CheckpointError, check_card, parameter_count, parse_card_json
from decalign.checkpoint import ASSETS_DIR, ModelCard, card_data_path
from decalign.config import DecAlignConfig, ModelConfig
from decalign.model import DecAlign


@pytest.mark.parametrize("config, widths, outputs", [
    (ModelConfig(), {"text": 768, "audio": 5, "vision": 20}, 1),
    (ModelConfig(d_model=32, num_heads=4, num_layers=2, pde_dim=16, conv_kernel_sizes=(("audio", 3),)),
     {"a": 32, "audio": 7, "c": 9, "d": 1}, 10),
    (ModelConfig(d_model=8, num_heads=2, num_layers=3, pde_dim=3, conv_kernel_size=5), {"x": 8, "y": 8}, 4),
])
def test_parameter_count_is_exactly_the_built_models(config, widths, outputs):
    model = DecAlign(config, widths, outputs)
    assert parameter_count(config, widths, outputs) == sum(v.numel() for v in model.state_dict().values())


def _card(**changes) -> dict:
    config = DecAlignConfig(ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=2, pde_dim=4))
    card = {"config": config.to_dict(), "widths": {"a": 3, "b": 4}, "task": "regression", "output_dim": 1}
    return {**card, **changes}


@pytest.mark.parametrize("changes, named", [
    ({"output_dim": 2}, "output_dim"),  # regression has one output
    ({"task": "ranking"}, "'task'"),
    ({"seq_lens": {"c": 3}}, "'seq_lens' names 'c'"),
    ({"seq_lens": {"a": 0}}, "seq_lens['a']"),
    ({"num_classes": True}, "num_classes"),
    ({"label_range": [0, float("nan")]}, "'label_range'"),
    ({"class_names": ["x" * 201]}, "class_names[0]"),
    ({"metrics": {"test": {"MAE": "low"}}}, "'metrics'"),
    ({"data_source": ["list"]}, "'data_source'"),
    ({"surprise": 1}, "unknown keys ['surprise']"),
    ({"metric_convention": "classification"}, "'metric_convention' must be mosi or sims"),
    ({"metric_convention": "iemocap"}, "'metric_convention'"),
    ({"metric_convention": "mosi", "error": "misclassification"}, "'error' must be absolute"),
    ({"error": "squared"}, "'error' must be absolute or absolute_clipped or misclassification"),
    ({"baseline": {"name": "x"}}, "'baseline' must be an object with 'metrics'"),
    ({"baseline": {"metrics": {"test": {"Acc": "high"}}}}, "baseline: 'metrics'"),
])
def test_every_field_is_checked_with_its_name(changes, named):
    with pytest.raises(CheckpointError, match="card.json: .*" + __import__("re").escape(named)):
        check_card(_card(**changes), "card.json")


def test_recorded_convention_error_and_baseline_load():
    card = ModelCard.from_dict(_card(metric_convention="sims", error="absolute_clipped",
                                     baseline={"model": "ridge", "metrics": {"test": {"MAE": 0.5}}}), "card.json")
    assert (card.metric_convention, card.error, card.baseline["metrics"]["test"]["MAE"]) == ("sims", "absolute_clipped",
                                                                                          0.5)
    assert ModelCard.from_dict(card.to_dict(), "card.json") == card


def test_json_depth_and_size_are_capped():
    deep = json.dumps(_card(extra={"x": json.loads("[" * (MAX_JSON_DEPTH + 2) + "]" * (MAX_JSON_DEPTH + 2))}))
    with pytest.raises(CheckpointError, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        parse_card_json(deep.encode(), "card.json")
    with pytest.raises(CheckpointError, match="nested too deeply"):
        parse_card_json(b"[" * 200_000, "card.json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        parse_card_json(b"\xff\xfe", "card.json")


def test_a_card_names_data_only_in_its_run_folder_or_the_bundled_assets(tmp_path):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "mine.npz").write_bytes(b"x")
    outside = tmp_path / "victim.npz"
    outside.write_bytes(b"x")
    (run / "link.npz").symlink_to(outside)

    def where(source, run_dir=run):
        return card_data_path(ModelCard.from_dict(_card(data_source=source)), run_dir)

    assert where("data/mine.npz") == ((run / "data" / "mine.npz").resolve(), None)
    assert where(str(run / "data" / "mine.npz")) == ((run / "data" / "mine.npz").resolve(), None)
    for hostile in (str(outside), "../victim.npz", "link.npz", "data/../../victim.npz"):
        path, warning = where(hostile)
        assert path is None and "outside the run folder and the bundled assets" in warning, hostile
    assert where(str(outside), None)[0] is None  # an uploaded zip has no run folder at all
    assert where("never-there.npz") == (None, None)  # a name that is simply missing: no warning
    if (ASSETS_DIR / "uci_digits.npz").is_file():
        bundled = (ASSETS_DIR / "uci_digits.npz").resolve()
        assert where("assets/uci_digits.npz", None) == (bundled, None)
        assert where("/some/other/machine/assets/uci_digits.npz", None) == (bundled, None)
