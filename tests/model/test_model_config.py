"""DecAlignConfig: official config files, overrides, round trips and validation."""

from __future__ import annotations

import json
import warnings

import pytest

from decalign.config import ConfigError, DecAlignConfig, ModelConfig, TrainConfig
from tests.reference.official_model import official_config_dict


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_official_config_file_maps_onto_fields(tmp_path):
    raw = official_config_dict(dst_feature_dim_nheads=[30, 6], nlevels=3, num_prototypes=9,
                               conv1d_kernel_size_a=3, attn_dropout_v=0.2, text_dropout=0.15,
                               use_cross_modal_attention=False, task_loss="SmoothL1", ot_num_iters=70)
    path = write_json(tmp_path / "dec_mosi_config.json", raw)
    with pytest.warns(UserWarning, match="not used") as record:
        config = DecAlignConfig.from_json(path)
    model, train = config.model, config.train
    assert (model.d_model, model.num_heads, model.num_layers, model.num_prototypes) == (30, 6, 3, 9)
    assert model.kernel_size("audio") == 3 and model.kernel_size("text") == 1
    assert model.attn_dropout_for("vision") == 0.2 and model.attn_dropout_for("audio") == 0.0
    assert model.attn_dropout_for("text") == 0.1  # attn_dropout, the text modality's own key
    assert model.input_dropout_for("text") == 0.15 and model.input_dropout_for("audio") == 0.0
    assert model.cross_modal_attention is False and model.ot_num_iters == 70
    assert (model.gmm_em_iters, model.gmm_var_floor, model.lambda_ot, model.pde_dim) == (5, 1e-4, 0.1, 40)
    assert train.task_loss == "smooth_l1"
    assert (train.alpha, train.beta, train.learning_rate, train.clip, train.batch_size) == (0.05, 0.0, 2e-4, 0.6, 32)
    assert train.selection_metric == "MOSI"
    message = str(record[0].message)
    for key in ("use_bert", "use_finetune", "transformers", "pretrained", "bert_learning_rate"):
        assert key not in message  # the BERT keys configure the BERT text encoder
    assert model.use_bert and model.use_finetune and model.pretrained == "bert-base-uncased"
    assert train.bert_learning_rate == 2.5e-5
    assert "model_name" in message


def test_official_classification_mode_defaults_to_cross_entropy(tmp_path):
    raw = official_config_dict(use_bert=False)
    del raw["task_loss"]
    raw["train_mode"] = "classification"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = DecAlignConfig.from_json(write_json(tmp_path / "c.json", raw))
    assert config.train.task_loss == "cross_entropy"


def test_unknown_official_key_is_an_error_naming_it(tmp_path):
    raw = official_config_dict()
    raw["num_protoypes"] = 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="'num_protoypes'"):
            DecAlignConfig.from_json(write_json(tmp_path / "typo.json", raw))


def test_own_format_unknown_key_and_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="'d_modle'"):
        DecAlignConfig.from_dict({"model": {"d_modle": 8}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        DecAlignConfig.from_json(write_text(tmp_path / "bad.json", "{"))
    with pytest.raises(ConfigError, match="not found"):
        DecAlignConfig.from_json(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="JSON object"):
        DecAlignConfig.from_json(write_text(tmp_path / "list.json", "[1]"))


def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_override_sets_qualified_and_bare_keys():
    config = DecAlignConfig().override(["train.learning_rate=0.01", "num_prototypes=3",
                                        "cross_modal_attention=false", "conv_kernel_sizes=[[\"audio\", 3]]"])
    assert config.train.learning_rate == 0.01 and config.model.num_prototypes == 3
    assert config.model.cross_modal_attention is False
    assert config.model.kernel_size("audio") == 3
    assert DecAlignConfig().model.num_prototypes == 7  # the original is untouched (frozen)


@pytest.mark.parametrize("assignment,match", [
    ("train.learning_rat=0.1", "learning_rat"),
    ("nonsense=1", "nonsense"),
    ("model.batch_size=3", "model.batch_size"),
    ("num_prototypes", "key=value"),
    ("num_prototypes=2.5", "whole number"),
    ("num_heads=3", "multiple of num_heads"),
    ("task_loss=hinge", "task_loss"),
])
def test_bad_override_is_an_error(assignment, match):
    with pytest.raises(ConfigError, match=match):
        DecAlignConfig().override([assignment])


def test_round_trip_through_dict_and_json():
    config = DecAlignConfig(
        ModelConfig(d_model=12, num_heads=3, conv_kernel_sizes=(("audio", 3), ("vision", 5)),
                    attn_dropouts=(("audio", 0.2),), input_dropouts=(("text", 0.1),), positional_encoding=True),
        TrainConfig(task_loss="l1", alpha=0.3, seed=7),
    )
    data = config.to_dict()
    assert DecAlignConfig.from_dict(data) == config
    assert DecAlignConfig.from_dict(json.loads(json.dumps(data))) == config
    assert DecAlignConfig.from_dict(DecAlignConfig().to_dict()) == DecAlignConfig()


@pytest.mark.parametrize("model", [
    {"d_model": 30, "num_heads": 4},
    {"num_layers": 0},
    {"lambda_ot": 0.0},
    {"conv_kernel_size": 0},
    {"positional_encoding": 1},
    {"d_model": "big"},
])
def test_invalid_values_are_errors(model):
    with pytest.raises(ConfigError):
        DecAlignConfig.from_dict({"model": model})


def test_model_construction_validates_its_config():
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        ModelConfig(d_model=30, num_heads=4).validate()


def test_objective_defaults_to_official_and_old_cards_load_as_studio(tmp_path):
    from decalign.checkpoint import ModelCard, load_card, save_card

    assert DecAlignConfig().model.objective == "official"
    assert DecAlignConfig.from_dict({"model": {"d_model": 8, "num_heads": 2}}).model.objective == "official"
    card = ModelCard(config=DecAlignConfig(), widths={"a": 3, "b": 4}, task="regression", output_dim=1)
    data = card.to_dict()
    del data["config"]["model"]["objective"]  # a card written before the setting existed
    assert ModelCard.from_dict(data).config.model.objective == "studio"
    save_card(tmp_path, card)
    assert load_card(tmp_path).config.model.objective == "official"
    with pytest.raises(ConfigError, match="objective must be official or studio"):
        DecAlignConfig.from_dict({"model": {"objective": "paper"}})


def test_data_section_round_trips_and_overrides():
    config = DecAlignConfig().override(['data.standardize_modalities=["audio", "vision"]',
                                        "clip_percentiles=[1, 99]", 'time_average_modalities=["audio"]'])
    assert config.data.standardize_modalities == ("audio", "vision")
    assert config.data.clip_percentiles == (1.0, 99.0) and config.data.time_average_modalities == ("audio",)
    assert DecAlignConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad, match in (('standardize_modalities="audio"', "list of modality names"),
                       ("clip_percentiles=[50, 50]", "0 <= low < high <= 100"),
                       ('standardize_modalities=["a", "a"]', "distinct")):
        with pytest.raises(ConfigError, match=match):
            DecAlignConfig().override([bad])
