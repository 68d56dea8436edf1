"""Every official config file loads and trains, with what it asks of the data, its loop keys and its names."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from decalign.checkpoint import load_card
from decalign.cli import main
from decalign.config import ConfigError, DecAlignConfig
from decalign.data import DataError, load_dataset, make_synthetic, save_npz
from decalign.train.metrics import compute_metrics
from decalign.train.selection import (
    OFFICIAL_METRICS,
    resolve_selection_metric,
    scheduler_rule,
    selection_rule,
)

CONFIGS = Path(__file__).resolve().parents[1] / "reference" / "official_configs"
FILES = ("dec_config.json", "dec_mosi_config.json", "dec_mosei_config.json", "dec_sims_config.json",
         "iemocap_decalign_config.json")
WIDTHS = {"text": 12, "audio": 5, "vision": 7}


def load(name: str) -> tuple[DecAlignConfig, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = DecAlignConfig.from_json(CONFIGS / name)
    return config, [str(w.message) for w in caught]


def raw(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", FILES)
def test_every_official_file_loads_with_official_values_and_names_what_it_ignores(name):
    config, messages = load(name)
    data = raw(name)
    model, train = config.model, config.train
    assert model.objective == "official"
    assert [model.d_model, model.num_heads] == data["dst_feature_dim_nheads"]
    assert model.num_layers == data["nlevels"] and model.num_prototypes == data["num_prototypes"]
    assert model.kernel_size("audio") == data["conv1d_kernel_size_a"] and model.pde_dim == data["pde_dim"]
    assert model.input_dropout_for("text") == data["text_dropout"]
    # patience stands in for the early-stopping and scheduler patience the file leaves out
    assert train.early_stop_patience == data.get("early_stop_patience", data["patience"])
    assert train.scheduler_patience == data.get("scheduler_patience", data["patience"])
    assert train.binary_task_weight == data.get("binary_task_weight", 0.0)
    assert model.use_bert == data["use_bert"] and not model.bert_shape_known  # the shape comes with `pretrained`
    assert train.bert_learning_rate == (data.get("bert_learning_rate") or 0.0)
    unused = messages[0]
    assert "use_bert" not in unused and "pretrained" not in unused
    for key in ("model_name", "need_data_aligned"):
        assert key in unused
    if "when" in data:
        assert "when" in unused  # official, read by nothing
    standardized = data.get("need_feature_standardized", False)
    assert config.data.standardize_modalities == (tuple(data["feature_standardize_modalities"]) if standardized else ())
    if standardized:
        assert list(config.data.clip_percentiles) == data["feature_clip_percentiles"]


def test_keys_left_out_take_the_official_defaults():
    config, _ = load("dec_config.json")  # no selection metric, no early-stop or scheduler patience
    train = config.train
    assert (train.early_stop_patience, train.scheduler_patience) == (20, 20)
    assert train.selection_metric == "loss" and selection_rule(config, "regression") == ("loss", "min")
    assert scheduler_rule(config, "regression") == ("loss", "min")
    minimal = DecAlignConfig.from_dict({"alpha": 0.2, "model_name": "decalign"}, "minimal.json")
    assert minimal.train.task_loss == "l1"  # the official default 'mae'
    assert (minimal.model.num_prototypes, minimal.model.d_model, minimal.model.pde_dim) == (8, 40, 40)
    assert (minimal.train.beta, minimal.train.batch_size, minimal.train.clip) == (0.1, 24, 0.8)


def test_unknown_keys_stay_errors_and_unsupported_official_values_are_refused():
    with pytest.raises(ConfigError, match="'need_feature_standardised'"):
        DecAlignConfig.from_dict({**raw("dec_sims_config.json"), "need_feature_standardised": True}, "typo.json")
    with pytest.raises(ConfigError, match="active_modalities"):
        DecAlignConfig.from_dict({"active_modalities": ["text", "audio"]}, "ablation.json")
    with pytest.raises(ConfigError, match="iemocap_protocol"):
        DecAlignConfig.from_dict({"iemocap_protocol": "paper_count"}, "p.json")
    with pytest.raises(ConfigError, match="feature_clip_percentiles"):
        DecAlignConfig.from_dict({"feature_clip_percentiles": [99.0, 1.0]}, "p.json")


@pytest.mark.parametrize("family,name,key", [(f, n, k) for f, names in OFFICIAL_METRICS.items()
                                             for n, k in names.items()])
def test_official_metric_names_map_onto_the_official_values(family, name, key):
    """Each official name selects the value the official trainer computes under that name."""
    rng = np.random.default_rng(0)
    task = "classification" if family == "classification" else "regression"
    if task == "classification":
        labels, scores = rng.integers(0, 6, 200), rng.normal(size=(200, 6))
        ours = compute_metrics(task, scores, labels, num_classes=6)
        official = _official_classification(scores, labels)
    else:
        span = 1.0 if family == "sims" else 3.0
        labels = np.round(rng.uniform(-span, span, 200), 1)
        preds = labels + rng.normal(0, 0.5 * span, 200)
        ours = compute_metrics(task, preds, labels, convention=family)
        official = _official_sims(preds, labels) if family == "sims" else _official_mosi(preds, labels)
    resolved = resolve_selection_metric(name, task, family)
    assert resolved == key
    value = 0.55 * ours["Non0_F1_score"] + 0.45 * ours["Non0_acc_2"] if key == "F1Acc_score" else ours[key]
    assert value == pytest.approx(official[name], abs=1e-9)
    for dataset in ("MOSI", "MOSEI", "SIMS", "IEMOCAP"):
        assert resolve_selection_metric(dataset, task, "mosi" if family == "classification" else family) == "loss"


def _official_mosi(preds, labels) -> dict:
    """The official MOSI/MOSEI regression metrics, written from their definitions (non-zero Acc-2)."""
    from sklearn.metrics import accuracy_score, f1_score

    nonzero = labels != 0
    acc2 = accuracy_score(labels[nonzero] > 0, preds[nonzero] > 0)
    f1 = f1_score(labels[nonzero] > 0, preds[nonzero] > 0, average="weighted")
    return {"Acc_2": acc2, "F1_score": f1, "MAE": np.mean(np.abs(preds - labels)),
            "Corr": np.corrcoef(preds, labels)[0, 1],
            "Acc_7": np.mean(np.round(np.clip(preds, -3, 3)) == np.round(np.clip(labels, -3, 3))),
            "F1Acc_score": 0.55 * f1 + 0.45 * acc2, "F1_Acc_score": 0.55 * f1 + 0.45 * acc2,
            "F1Acc": 0.55 * f1 + 0.45 * acc2}


def _official_sims(preds, labels) -> dict:
    from sklearn.metrics import f1_score

    p, y = np.clip(preds, -1, 1), np.clip(labels, -1, 1)

    def bucket(v, edges):
        out = np.zeros_like(v)
        for i in range(len(edges) - 1):
            out[(v > edges[i]) & (v <= edges[i + 1])] = i
        return out

    two, three, five = [-1.01, 0.0, 1.01], [-1.01, -0.1, 0.1, 1.01], [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    return {"Mult_acc_2": np.mean(bucket(p, two) == bucket(y, two)),
            "Mult_acc_3": np.mean(bucket(p, three) == bucket(y, three)),
            "Mult_acc_5": np.mean(bucket(p, five) == bucket(y, five)),
            "F1_score": f1_score(bucket(y, two), bucket(p, two), average="weighted"),
            "MAE": np.mean(np.abs(p - y)), "Corr": np.corrcoef(p, y)[0, 1]}


def _official_classification(scores, labels) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    pred = scores.argmax(1)
    waf1 = f1_score(labels, pred, labels=np.arange(6), average="weighted", zero_division=0)
    return {"WAcc": accuracy_score(labels, pred), "Acc": accuracy_score(labels, pred), "WAF1": waf1,
            "F1_score": waf1}


# ----------------------------------------------------------------------------- training


def official_standardize(train: np.ndarray, splits: list[np.ndarray], percentiles) -> list[np.ndarray]:
    """The official loader's transform: percentiles, clip, mean and std over samples and steps on train."""
    low, high = np.percentile(train, percentiles, axis=(0, 1), keepdims=True)
    clipped = np.clip(train, low, high)
    mean, std = clipped.mean(axis=(0, 1), keepdims=True), clipped.std(axis=(0, 1), keepdims=True)
    stats = [v.astype(np.float32) for v in (low, high, mean, np.maximum(std, 1e-6))]
    return [np.nan_to_num((np.clip(x, stats[0], stats[1]) - stats[2]) / stats[3]).astype(np.float32) for x in splits]


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, tiny_bert_dir):
    folder = tmp_path_factory.mktemp("official_data")
    (folder / "bert").symlink_to(tiny_bert_dir)  # the official MOSI, MOSEI and SIMS configs set use_bert
    regression = make_synthetic(60, 24, 24, widths=WIDTHS, seq_len=8, seed=2, signal=2.0, text_bert_vocab=40)
    for split in regression.splits.values():  # audio far from unit scale, with outliers: standardising matters
        split.features["audio"] = split.features["audio"] * 40.0 + 7.0
        split.features["audio"][::9, 0, 0] = 1e4
    save_npz(regression, folder / "mosi_like.npz")
    save_npz(regression, folder / "sims_like.npz")  # the name picks CH-SIMS metrics
    save_npz(make_synthetic(72, 24, 24, widths=WIDTHS, seq_len=8, task="classification", num_classes=6, seed=3,
                            signal=2.0), folder / "iemocap_like.npz")
    save_npz(make_synthetic(40, 10, 10, widths={"a": 4, "b": 5, "c": 3}, seq_len=8, seed=4), folder / "other.npz")
    return folder


def train_official(name: str, data: Path, out: Path, *extra: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["train", "--data", str(data), "--config", str(CONFIGS / name), "--set", "num_epochs=1",
                     "--set", f"pretrained={data.parent / 'bert'}", *extra, "--out", str(out), "--quiet", "--device", "cpu"])


@pytest.mark.slow
@pytest.mark.parametrize("name,data", [("dec_config.json", "mosi_like.npz"), ("dec_mosi_config.json", "mosi_like.npz"),
                                       ("dec_mosei_config.json", "mosi_like.npz"),
                                       ("dec_sims_config.json", "sims_like.npz"),
                                       ("iemocap_decalign_config.json", "iemocap_like.npz")])
def test_every_official_file_trains(name, data, data_files, tmp_path, capsys):
    assert train_official(name, data_files / data, tmp_path / "run") == 0
    capsys.readouterr()
    card = load_card(tmp_path / "run")
    config = card.config
    assert config.model.objective == "official"
    selection = {"dec_config.json": "loss", "dec_mosi_config.json": "loss", "dec_mosei_config.json": "Non0_acc_2",
                 "dec_sims_config.json": "F1_score", "iemocap_decalign_config.json": "WAF1"}[name]
    assert card.extra["selection_metric"] == selection == card.extra["scheduler_metric"]
    assert np.isfinite(card.metrics["test"]["loss"])
    # eval applies the run's input transform and reproduces the card's test metrics
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(data_files / data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["loss"] == pytest.approx(card.metrics["test"]["loss"], rel=1e-5)
    standardized = raw(name).get("need_feature_standardized", False)
    assert (card.feature_transform() is not None) == standardized


def test_standardisation_is_the_official_transform_fitted_on_train_only(data_files, tmp_path):
    assert train_official("dec_sims_config.json", data_files / "sims_like.npz", tmp_path / "run") == 0
    card = load_card(tmp_path / "run")
    raw_data = load_dataset(data_files / "sims_like.npz")
    prepared = card.prepare(raw_data)
    percentiles = raw("dec_sims_config.json")["feature_clip_percentiles"]
    for m in ("audio", "vision"):
        splits = [raw_data.splits[s].features[m] for s in ("train", "valid", "test")]
        expected = official_standardize(splits[0], splits, percentiles)
        for s, want in zip(("train", "valid", "test"), expected):
            np.testing.assert_allclose(prepared.splits[s].features[m], want, rtol=1e-5, atol=1e-5)
    # the SIMS config sets use_bert: the model reads the text_bert tokens, untransformed, time on axis 1
    tokens = raw_data.splits["test"].text_bert.transpose(0, 2, 1)
    np.testing.assert_array_equal(prepared.splits["test"].features["text"], tokens)
    assert np.abs(prepared.splits["train"].features["audio"]).max() < 10  # the 1e4 outliers were clipped
    assert card.extra["feature_transform"]["clip_percentiles"] == percentiles


def test_need_normalized_averages_audio_and_vision_over_time(data_files, tmp_path):
    config = {**raw("dec_mosi_config.json"), "need_normalized": True, "num_epochs": 1}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["train", "--data", str(data_files / "mosi_like.npz"), "--config", str(tmp_path / "cfg.json"),
                     "--set", f"pretrained={data_files / 'bert'}", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    card = load_card(tmp_path / "run")
    assert card.seq_lens == {"text": 8, "audio": 1, "vision": 1}
    data = load_dataset(data_files / "mosi_like.npz")
    prepared = card.prepare(data)
    np.testing.assert_allclose(prepared.splits["valid"].features["vision"][:, 0],
                               data.splits["valid"].features["vision"].mean(1), rtol=1e-6)


def test_a_config_naming_modalities_the_data_lack_is_an_error_naming_them(data_files, tmp_path, capsys):
    assert train_official("dec_sims_config.json", data_files / "other.npz", tmp_path / "run") == 2
    error = capsys.readouterr().err
    assert "'audio', 'vision'" in error and "a, b, c" in error
    with pytest.raises(DataError, match="standardize_modalities names 'audio'"):
        from decalign.data.transform import fit_feature_transform

        fit_feature_transform(load("dec_sims_config.json")[0].data,
                              load_dataset(data_files / "other.npz").splits["train"], "other.npz")
