"""``decalign demo`` trains the demo model and its no-alignment twin from the same data and seed."""

from __future__ import annotations

import json

from decalign.cli import main
from decalign.config import DecAlignConfig
from decalign.data import make_synthetic, save_npz
from decalign.train.ablation import ALIGNMENT_WEIGHTS, alignment_off


def test_demo_writes_the_model_and_its_twin(tmp_path, capsys):
    data = tmp_path / "small.npz"
    save_npz(make_synthetic(80, 30, 30, widths={"a": 4, "b": 3}, seq_len=2, task="classification", num_classes=3,
                            seed=2, signal=2.0), data)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"model": {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3,
                                            "pde_dim": 8},
                                  "train": {"batch_size": 32, "seed": 3, "alpha": 0.05, "beta": 0.05,
                                            "dec_loss_weight": 1.0, "task_loss": "cross_entropy"}}))
    out = tmp_path / "demo_model"
    assert main(["demo", "--out", str(out), "--epochs", "2", "--data", str(data), "--config", str(config),
                 "--quiet"]) == 0
    twin = tmp_path / "demo_model_noalign"
    cards = {p: json.loads((p / "card.json").read_text()) for p in (out, twin)}
    main_train, twin_train = (cards[p]["config"]["train"] for p in (out, twin))
    assert [twin_train[w] for w in ALIGNMENT_WEIGHTS] == [0, 0, 0, 0] and main_train["alpha"] == 0.05
    assert {k: v for k, v in main_train.items() if k not in ALIGNMENT_WEIGHTS} == \
        {k: v for k, v in twin_train.items() if k not in ALIGNMENT_WEIGHTS}  # same seed and settings
    assert cards[out]["data_fingerprint"] == cards[twin]["data_fingerprint"]
    assert cards[out]["config"]["model"] == cards[twin]["config"]["model"]
    for path in (out, twin):
        assert (path / "reference.json").is_file() and not (path / "last.safetensors").exists()
        assert len(json.loads((path / "history.json").read_text())) == 2  # levels recorded for both
    assert cards[out]["data_source"] == str(data)  # a file outside assets/ keeps its name
    assert "no-alignment twin written to" in capsys.readouterr().out
    assert alignment_off(DecAlignConfig.from_dict(cards[twin]["config"]))
    assert not alignment_off(DecAlignConfig.from_dict(cards[out]["config"]))


def test_the_bundled_demo_names_its_data_as_any_clone_finds_it():
    from decalign.cli.demo import ASSETS, DEMO_DATA, DEMO_MODEL, _portable_source, twin_dir

    assert _portable_source(DEMO_DATA) == "assets/uci_digits.npz"
    assert _portable_source(ASSETS.parent / "elsewhere" / "x.npz") == str(ASSETS.parent / "elsewhere" / "x.npz")
    for folder in (DEMO_MODEL, twin_dir(DEMO_MODEL)):  # never the path of the machine the demo was built on
        assert json.loads((folder / "card.json").read_text())["data_source"] == "assets/uci_digits.npz"
