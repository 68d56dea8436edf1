"""BERT text encoders: official use_bert checkpoints import with the official predictions; cards, data and
training handle the BERT; bad checkpoints, cards and tokens are refused with one clear line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from decalign.card_schema import CheckpointError, check_card, parameter_count
from decalign.checkpoint import load_model
from decalign.cli import main
from decalign.config import ConfigError, DecAlignConfig
from decalign.data import DataError, bert_view, load_dataset, make_synthetic, save_npz, write_mmsa_pickle
from decalign.data.tokens import token_positions
from decalign.official import OfficialImportError, import_official
from tests.reference.official_model import OfficialDecAlign, official_config_dict

BERT = {"vocab_size": 40, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1,
        "intermediate_size": 96, "max_position_embeddings": 24, "type_vocab_size": 2}
DIMS = (64, 5, 7)  # the text width of a BERT model is the BERT's hidden size
SMALL = {"dst_feature_dim_nheads": [16, 4], "nlevels": 2, "pde_dim": 16, "num_prototypes": 4}


def official_bert_files(tmp_path: Path, prefix: str = "", seed: int = 0, **overrides):
    """An official use_bert config and state_dict (``text_model.model.*`` keys, as the official code saves)."""
    raw = official_config_dict(**{**SMALL, **overrides})
    torch.manual_seed(seed)
    reference = OfficialDecAlign(raw, feature_dims=DIMS, output_dim=1, bert_config=BERT).eval()
    with torch.no_grad():  # non-trivial weights, so a mis-mapped key shows
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {prefix + k: v for k, v in reference.state_dict().items()}
    config_path, weights_path = tmp_path / "dec_mosi_config.json", tmp_path / "model.pth"
    config_path.write_text(json.dumps(raw), encoding="utf-8")
    torch.save(state, weights_path)
    return weights_path, config_path, reference


def tokens(n: int = 6, steps: int = 10, seed: int = 1, order: str = "mask-second") -> torch.Tensor:
    """(n, 3, steps) MMSA tokens with prefix masks of different lengths; ``order`` names the mask's row."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, steps + 1, (n,), generator=g)
    mask = (torch.arange(steps)[None] < lengths[:, None]).long()
    ids = torch.randint(1, BERT["vocab_size"], (n, steps), generator=g) * mask
    rows = [ids, mask, torch.zeros_like(mask)] if order == "mask-second" else [ids, torch.zeros_like(mask), mask]
    return torch.stack(rows, dim=1)


def side_inputs(n: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, DIMS[1], generator=g), torch.randn(n, 10, DIMS[2], generator=g)


def quiet_import(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_official(*args)


@pytest.mark.parametrize("prefix", ["", "module.", "Model."])
@pytest.mark.parametrize("order", ["mask-second", "mask-third"])
def test_imported_bert_checkpoint_predicts_as_the_official_model(tmp_path, prefix, order):
    weights, config, reference = official_bert_files(tmp_path, prefix)
    card = quiet_import(weights, config, list(DIMS), tmp_path / "run")
    model, loaded = load_model(tmp_path / "run")
    assert loaded.has_bert and loaded.widths["text"] == 64
    m = loaded.config.model
    assert (m.bert_vocab_size, m.bert_hidden_size, m.bert_num_layers, m.bert_num_heads) == (40, 64, 2, 1)
    assert (m.bert_intermediate_size, m.bert_max_positions, m.bert_type_vocab_size) == (96, 24, 2)
    assert card.config == loaded.config
    text = tokens(order=order)
    audio, vision = side_inputs()
    with torch.no_grad():
        expected = reference(text, audio, vision)["output_logit"]
        ours = model({"text": text.transpose(1, 2), "audio": audio, "vision": vision}).prediction
    assert float(expected.abs().max()) > 1e-3  # a real output, not a zero that anything would match
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_imported_bert_checkpoint_levels_equal_the_official_losses(tmp_path):
    weights, config, reference = official_bert_files(tmp_path)
    quiet_import(weights, config, list(DIMS), tmp_path / "run")
    model, _ = load_model(tmp_path / "run")
    text, (audio, vision) = tokens(n=12), side_inputs(12)
    with torch.no_grad():
        expected = reference(text, audio, vision)
        out = model({"text": text.transpose(1, 2), "audio": audio, "vision": vision}, align=True)
    assert float(out.alignment.decoupling) == pytest.approx(float(expected["dec_loss"]), rel=1e-4)
    assert float(out.alignment.homogeneity) == pytest.approx(float(expected["homo_loss"]), rel=1e-4)
    assert float(out.alignment.heterogeneity) == pytest.approx(float(expected["hete_loss"]), rel=1e-4)


def test_imported_bert_model_runs_on_an_mmsa_pickle_like_the_official_loader(tmp_path):
    """End to end: the pickle's text_bert rows reach the BERT as the official loader hands them over."""
    weights, config, reference = official_bert_files(tmp_path)
    quiet_import(weights, config, list(DIMS), tmp_path / "run")
    data = make_synthetic(6, 4, 4, widths={"text": 12, "audio": DIMS[1], "vision": DIMS[2]}, seq_len=10,
                          text_bert_vocab=BERT["vocab_size"])
    write_mmsa_pickle(data, tmp_path / "d.pkl")
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "d.pkl"),
                 "--split", "test", "--out", str(out), "--no-audit"]) == 0
    predicted = np.loadtxt(out, delimiter=",", skiprows=1, usecols=2)
    test = data.splits["test"]
    with torch.no_grad():
        expected = reference(torch.from_numpy(test.text_bert), torch.from_numpy(test.features["audio"]),
                             torch.from_numpy(test.features["vision"]))["output_logit"][:, 0].numpy()
    np.testing.assert_allclose(predicted, expected, atol=1e-4)


@pytest.mark.parametrize("damage,match", [
    ("layer", "encoder.layer.1.attention.self.query.weight has shape"),
    ("positions", "position_embeddings.weight is missing"),
    ("gap", "expected layers 0..L-1"),
])
def test_inconsistent_bert_tensors_are_refused_in_one_line(tmp_path, damage, match):
    weights, config, _ = official_bert_files(tmp_path)
    state = torch.load(weights, weights_only=True)
    if damage == "layer":
        state["text_model.model.encoder.layer.1.attention.self.query.weight"] = torch.zeros(64, 32)
    elif damage == "positions":
        del state["text_model.model.embeddings.position_embeddings.weight"]
    else:
        for key in [k for k in state if ".encoder.layer.0." in k]:
            state[key.replace(".layer.0.", ".layer.5.")] = state.pop(key)
    torch.save(state, weights)
    with pytest.raises(OfficialImportError, match=match) as err:
        quiet_import(weights, config, list(DIMS), tmp_path / "run")
    assert "\n" not in str(err.value) and str(weights) in str(err.value)
    assert not (tmp_path / "run" / "card.json").exists()


def test_text_width_other_than_the_bert_width_is_refused(tmp_path):
    weights, config, _ = official_bert_files(tmp_path)
    with pytest.raises(OfficialImportError, match="hidden size is 64, --feature-dims gives text width 768"):
        quiet_import(weights, config, [768, DIMS[1], DIMS[2]], tmp_path / "run")


def test_card_records_the_bert_and_hostile_bert_cards_are_refused(tmp_path):
    weights, config, _ = official_bert_files(tmp_path)
    quiet_import(weights, config, list(DIMS), tmp_path / "run")
    data = json.loads((tmp_path / "run" / "card.json").read_text())
    model, card = load_model(tmp_path / "run")
    assert parameter_count(card.config.model, card.widths, 1) == sum(v.numel() for v in model.state_dict().values())
    for key, value, match in (("bert_vocab_size", 10**9, "bert_vocab_size must be in"),
                              ("bert_hidden_size", 0, "shape is incomplete"),
                              ("bert_num_heads", 3, "multiple of bert_num_heads"),
                              ("bert_hidden_act", "exec", "bert_hidden_act must be one of")):
        hostile = json.loads(json.dumps(data))
        hostile["config"]["model"][key] = value
        with pytest.raises(CheckpointError, match=match):
            check_card(hostile, "card.json")
    huge = json.loads(json.dumps(data))
    huge["config"]["model"].update(bert_vocab_size=1 << 20, bert_hidden_size=4096, bert_num_heads=64)
    huge["widths"]["text"] = 4096
    with pytest.raises(CheckpointError, match="parameters, more than"):
        check_card(huge, "card.json")
    unknown = json.loads(json.dumps(data))
    unknown["config"]["model"].update({f: 0 for f in ("bert_vocab_size", "bert_hidden_size", "bert_num_layers",
                                                         "bert_num_heads", "bert_intermediate_size",
                                                         "bert_max_positions", "bert_type_vocab_size")})
    with pytest.raises(CheckpointError, match="BERT's shape .* is not recorded"):
        check_card(unknown, "card.json")


def test_bert_model_needs_text_bert_and_ids_inside_its_vocabulary(tmp_path):
    weights, config, _ = official_bert_files(tmp_path)
    quiet_import(weights, config, list(DIMS), tmp_path / "run")
    widths = {"text": 12, "audio": DIMS[1], "vision": DIMS[2]}
    save_npz(make_synthetic(8, 4, 4, widths=widths, seq_len=10), tmp_path / "plain.npz")
    code = main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path / "plain.npz")])
    assert code != 0
    too_many = make_synthetic(8, 4, 4, widths=widths, seq_len=10, text_bert_vocab=BERT["vocab_size"] + 200)
    save_npz(too_many, tmp_path / "vocab.npz")
    _, card = load_model(tmp_path / "run")
    with pytest.raises(DataError, match=r"vocab.npz: split 'train': text_bert: token id \d+ is outside the BERT's "
                                        r"vocabulary size 40"):
        card.prepare(load_dataset(tmp_path / "vocab.npz"))
    with pytest.raises(DataError, match="plain.npz: split 'train' has no field 'text_bert'"):
        card.prepare(load_dataset(tmp_path / "plain.npz"))


def test_text_bert_survives_both_file_formats_and_the_view_infers_the_mask_row(tmp_path):
    data = make_synthetic(10, 4, 4, widths={"text": 6, "audio": 3, "vision": 4}, seq_len=7, text_bert_vocab=30)
    swapped = data.splits["train"].text_bert[:, [0, 2, 1]]  # an older loader's [ids, segments, mask] order
    data.splits["train"].text_bert = swapped
    write_mmsa_pickle(data, tmp_path / "d.pkl")
    save_npz(data, tmp_path / "d.npz")
    for name in ("d.pkl", "d.npz"):
        loaded = load_dataset(tmp_path / name)
        for split, part in data.splits.items():
            np.testing.assert_array_equal(loaded.splits[split].text_bert, part.text_bert)
        view = bert_view(loaded).splits["train"]
        mask = swapped[:, 2]
        np.testing.assert_array_equal(view.lengths["text"], mask.sum(1))
        table = token_positions(view.features["text"][0])
        assert list(table["position"]) == list(np.flatnonzero(mask[0]))
        assert list(table["token id"]) == list(swapped[0, 0][mask[0] == 1])


def test_training_without_a_local_bert_stops_with_one_line(tmp_path, capsys):
    data = make_synthetic(12, 4, 4, widths={"text": 6, "audio": 3, "vision": 4}, seq_len=6, text_bert_vocab=30)
    save_npz(data, tmp_path / "d.npz")
    config = tmp_path / "dec_mosi_config.json"
    config.write_text(json.dumps(official_config_dict(**SMALL)))
    (tmp_path / "empty").mkdir()
    for extra, needle in (([], "pretrained 'bert-base-uncased': not a local folder"),
                          (["--set", f"pretrained={tmp_path / 'empty'}"], "no config.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(["train", "--data", str(tmp_path / "d.npz"), "--config", str(config), *extra,
                         "--out", str(tmp_path / "run"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code != 0 and needle in err and len(err.splitlines()) == 1
        assert not (tmp_path / "run" / "card.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("finetune", [True, False])
def test_training_starts_from_the_local_bert_with_the_official_groups(tmp_path, tiny_bert_dir, finetune):
    from transformers import BertModel

    from decalign.train.trainer import Trainer

    pretrained = BertModel.from_pretrained(str(tiny_bert_dir), local_files_only=True).state_dict()
    data = make_synthetic(24, 8, 8, widths={"text": 6, "audio": 3, "vision": 4}, seq_len=8, text_bert_vocab=40)
    raw = official_config_dict(**SMALL, use_finetune=finetune, num_epochs=1, batch_size=8,
                               pretrained=str(tiny_bert_dir), bert_learning_rate=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = DecAlignConfig.from_dict(raw, "official")
    trainer = Trainer(data, config, tmp_path / "run")
    result = trainer.fit()
    groups = trainer.optimizer.param_groups
    bert = {id(p) for p in trainer.model.text_encoder.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, config.train.learning_rate]
    assert {id(p) for p in groups[0]["params"]} == bert and not bert & {id(p) for p in groups[1]["params"]}
    model, card = load_model(result.run_dir, tag="last")
    trained = model.text_encoder.bert.state_dict()
    changed = [k for k in pretrained if not torch.equal(pretrained[k], trained[k])]
    if finetune:
        assert changed  # fine-tuned from the folder's weights
    else:  # frozen exactly: every tensor is the folder's
        assert changed == [] and not any(p.requires_grad for p in trainer.model.text_encoder.parameters())
    assert card.widths["text"] == 64 and card.config.model.bert_vocab_size == 40


def test_integrated_gradients_attribute_the_bert_text_per_token(tmp_path):
    from decalign.explain.attributions import integrated_gradients

    weights, config, _ = official_bert_files(tmp_path)
    quiet_import(weights, config, list(DIMS), tmp_path / "run")
    model, card = load_model(tmp_path / "run")
    data = make_synthetic(6, 3, 3, widths={"text": 12, "audio": DIMS[1], "vision": DIMS[2]}, seq_len=10,
                          text_bert_vocab=BERT["vocab_size"])
    split = card.prepare(data).splits["test"]
    ig = integrated_gradients(model, split, 0, steps=32)
    assert ig.attributions["text"].shape == (10, 64)  # per token position, over the BERT's output
    assert abs(ig.completeness_gap) < 0.05 * abs(ig.output - ig.baseline_output) + 1e-6


def test_config_refuses_a_non_bert_text_encoder(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(official_config_dict(transformers="roberta")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="transformers 'roberta': only 'bert'"):
            DecAlignConfig.from_json(path)


def test_transformers_is_imported_only_for_a_model_with_a_bert():
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from decalign.cli import main\n"
            "from decalign import official, checkpoint\n"
            "from decalign.model import DecAlign\n"
            "from decalign.config import ModelConfig\n"
            "DecAlign(ModelConfig(d_model=8, num_heads=2, num_layers=1, pde_dim=8), {'a': 3, 'b': 4})\n"
            "print('transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600)
    assert out.stdout.strip() == "False"


def test_import_with_its_data_evaluates_the_bert_model_on_the_tokens(tmp_path):
    weights, config, reference = official_bert_files(tmp_path)
    data = make_synthetic(12, 6, 6, widths={"text": 12, "audio": DIMS[1], "vision": DIMS[2]}, seq_len=10,
                          text_bert_vocab=BERT["vocab_size"])
    write_mmsa_pickle(data, tmp_path / "d.pkl")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["import-official", "--state-dict", str(weights), "--config", str(config), "--feature-dims",
                     ",".join(map(str, DIMS)), "--data", str(tmp_path / "d.pkl"), "--out", str(tmp_path / "run")]) == 0
    _, card = load_model(tmp_path / "run")
    test = data.splits["test"]
    with torch.no_grad():
        expected = reference(torch.from_numpy(test.text_bert), torch.from_numpy(test.features["audio"]),
                             torch.from_numpy(test.features["vision"]))["output_logit"][:, 0].numpy()
    assert card.metrics["test"]["MAE"] == pytest.approx(float(np.abs(expected - test.labels).mean()), rel=1e-4)
    assert card.baseline["features"] == DIMS[1] + DIMS[2]  # the token ids are not baseline features
