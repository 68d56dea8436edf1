"""The ``decalign`` command line end to end: train -> eval -> predict, errors, help, import-official."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from decalign.audit.store import AuditTrail
from decalign.checkpoint import file_sha256, load_card, load_model, model_fingerprint
from decalign.cli import main
from decalign.data import load_dataset, make_synthetic, save_npz
from decalign.inference import run_inference


def test_train_writes_a_run(regression_run, capsys):
    _, run = regression_run
    for name in ("card.json", "best.safetensors", "last.safetensors", "history.json", "status.json"):
        assert (run / name).exists()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert len(json.loads((run / "history.json").read_text())) == 2
    card = load_card(run)
    assert card.metric_convention == "mosi" and card.error == "absolute"
    assert card.baseline["model"] == "ridge" and set(card.baseline["metrics"]) == {"train", "valid", "test"}


def test_train_without_a_config_chooses_from_the_data(tmp_path, capsys):
    data = tmp_path / "d.npz"
    save_npz(make_synthetic(40, 20, 20, widths={"a": 4, "b": 6}, seq_len=2, task="classification",
                            num_classes=3, seed=0), data)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--set", "num_epochs=1",
            "--set", "model.num_layers=1", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no --config: settings chosen from the data (40 training samples): d_model 32, 4 heads" in out
    config = load_card(tmp_path / "run").config
    assert config.train.task_loss == "cross_entropy" and config.train.batch_size == 16  # the rule, then --set
    assert config.train.num_epochs == 1 and config.model.num_layers == 1
    assert "linear baseline" in out and "logistic regression" in out


def test_eval_json_matches_the_card(regression_run, capsys):
    data, run = regression_run
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["samples"] == 30
    card = load_card(run)
    assert report["metrics"]["MAE"] == pytest.approx(card.metrics["test"]["MAE"], rel=1e-6)
    # the baseline trained with the run, compared on the same split (the run's own data)
    assert report["metric_convention"] == "mosi" and report["baseline"] == card.baseline
    comparison = report["baseline_comparison"]
    assert comparison["metric"] == "MAE" and comparison["baseline"] == card.baseline["metrics"]["test"]["MAE"]
    assert comparison["verdict"] == ("beats" if comparison["model"] < comparison["baseline"] else "does not beat")
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--split", "valid"]) == 0
    table = capsys.readouterr().out
    assert "MAE" in table and "Acc-2 (non0)" in table


def test_predict_csv_rows_columns_contributions_and_audit(regression_run, tmp_path, audit_db, capsys):
    data, run = regression_run
    out = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(run), "--data", str(data), "--out", str(out),
                 "--batch-size", "7"]) == 0
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "split", "prediction", "label", "error", "contrib_unique_a",
                                   "contrib_unique_b", "contrib_common_a", "contrib_common_b", "contrib_bias"]
    test = load_dataset(data).splits["test"]
    assert len(frame) == 30 and list(frame["id"]) == list(test.ids) and set(frame["split"]) == {"test"}
    np.testing.assert_allclose(frame["label"], test.labels, rtol=1e-6)
    np.testing.assert_allclose(frame["error"], np.abs(frame["prediction"] - frame["label"]), rtol=1e-5, atol=1e-6)
    assert frame["error"].mean() == pytest.approx(load_card(run).metrics["test"]["MAE"], rel=1e-5)  # one error
    contrib = frame.filter(like="contrib_").sum(axis=1)
    np.testing.assert_allclose(contrib, frame["prediction"], rtol=1e-5, atol=1e-5)
    model, _ = load_model(run)
    expected = run_inference(model, test, task="regression").predictions  # chunking changes nothing
    np.testing.assert_allclose(frame["prediction"], expected, rtol=1e-5, atol=1e-6)
    rows = AuditTrail(audit_db).predictions()
    assert len(rows) == 30 and set(rows["source"]) == {"cli"}
    assert set(rows["checkpoint_fingerprint"]) == {model_fingerprint(run)}
    assert set(rows["input_sha256"]) == {file_sha256(data)}


def test_predict_all_splits_without_audit(regression_run, tmp_path, audit_db):
    data, run = regression_run
    out = tmp_path / "all.csv"
    assert main(["predict", "--checkpoint", str(run), "--data", str(data), "--split", "all",
                 "--out", str(out), "--no-audit"]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == 150 and list(frame["split"].unique()) == ["train", "valid", "test"]
    assert not audit_db.exists() or len(AuditTrail(audit_db).predictions()) == 0


def test_predict_classification_probabilities_and_contributions(classification_run, tmp_path):
    data, run = classification_run
    out = tmp_path / "cls.csv"
    assert main(["predict", "--checkpoint", str(run), "--data", str(data), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    probs = frame[["prob_0", "prob_1", "prob_2"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert np.array_equal(frame["prediction"], probs.argmax(1))
    np.testing.assert_array_equal(frame["error"], (frame["prediction"] != frame["label"]).astype(float))
    np.testing.assert_allclose(frame["p_label"], probs[np.arange(len(frame)), frame["label"]], rtol=1e-5)
    assert 1 - frame["error"].mean() == pytest.approx(load_card(run).metrics["test"]["Acc"])
    model, _ = load_model(run)
    test = load_dataset(data).splits["test"]
    logits = run_inference(model, test, task="classification").outputs
    picked = logits[np.arange(len(frame)), frame["prediction"].to_numpy()]
    np.testing.assert_allclose(frame.filter(like="contrib_").sum(axis=1), picked, rtol=1e-5, atol=1e-5)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("decalign: error: "), err
    return err[0]


def test_missing_data_file_exits_2_with_one_line(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 2 and "nope.npz" in one_error_line(capsys)


def test_bad_set_key_exits_2(regression_run, tmp_path, capsys):
    data, _ = regression_run
    code = main(["train", "--data", str(data), "--set", "model.no_such_key=3", "--out", str(tmp_path / "r")])
    assert code == 2 and "no_such_key" in one_error_line(capsys)


def test_eval_on_width_mismatched_data_exits_2(regression_run, tmp_path, capsys):
    _, run = regression_run
    other = tmp_path / "other.npz"
    save_npz(make_synthetic(20, 10, 10, widths={"a": 5, "b": 6}, seq_len=3, seed=0), other)
    code = main(["eval", "--checkpoint", str(run), "--data", str(other)])
    line = one_error_line(capsys)
    assert code == 2 and "'a' has width 5, expected 4" in line


def test_train_refuses_an_existing_run_and_bad_device(regression_run, capsys):
    data, run = regression_run
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet"]) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--device", "tpu"]) == 2
    assert "unknown device" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["train", "eval", "predict", "audit", "report", "demo", "import-official"])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--" in capsys.readouterr().out


def test_help_is_light():
    # --help of the command and of every subcommand loads neither torch nor pandas.
    code = ("import sys\nfrom decalign.cli import COMMANDS, main\n"
            "for argv in [['--help']] + [[c.replace('_', '-').replace('evaluate', 'eval'), '--help'] for c in COMMANDS]:\n"
            "    try:\n        main(argv)\n    except SystemExit as exc:\n        assert exc.code == 0, argv\n"
            "print([m for m in ('torch', 'pandas', 'numpy') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_every_error_of_the_project_is_one_the_command_line_reports_in_one_line():
    # main() catches ValueError rather than importing each class (decalign.official imports torch)
    from decalign.audit.store import AuditError
    from decalign.checkpoint import CheckpointError
    from decalign.config import ConfigError
    from decalign.data import DataError
    from decalign.official import OfficialImportError

    for error in (AuditError, CheckpointError, ConfigError, DataError, OfficialImportError):
        assert issubclass(error, ValueError), error


def test_the_process_entry_runs_main_then_freezes_what_is_left(monkeypatch):
    import gc
    import tomllib

    from decalign import cli

    calls = []
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 3)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    assert cli.entry() == 3 and calls == ["main", "freeze"]
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["decalign"] == "decalign.cli:entry"
    assert "sys.exit(entry())" in (Path(cli.__file__).parent.parent / "__main__.py").read_text()


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "decalign", "--help"], check=False, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "import-official" in done.stdout


def test_import_official(tmp_path, capsys):
    from tests.reference.official_model import OfficialDecAlign, official_config_dict

    cfg = official_config_dict(dst_feature_dim_nheads=[8, 2], nlevels=1, num_prototypes=3, pde_dim=8,
                               use_bert=False)
    torch.manual_seed(0)
    official = OfficialDecAlign(cfg, feature_dims=(6, 3, 4), output_dim=1).eval()
    torch.save(official.state_dict(), tmp_path / "model.pth")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    args = ["import-official", "--state-dict", str(tmp_path / "model.pth"), "--config", str(tmp_path / "cfg.json"),
            "--out", str(tmp_path / "run")]
    with pytest.warns(UserWarning, match="not used"):
        assert main([*args, "--feature-dims", "6,3,4"]) == 0
    model, card = load_model(tmp_path / "run")
    assert card.widths == {"text": 6, "audio": 3, "vision": 4} and card.source == "imported-official"
    x = [torch.randn(2, 5, w) for w in (6, 3, 4)]
    with torch.no_grad():
        ours = model(dict(zip(card.widths, x))).prediction
        theirs = official(*x)["output_logit"]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert card.metric_convention == "mosi" and card.error == "absolute" and card.baseline is None
    assert main([*args, "--feature-dims", "6,3"]) == 2
    assert "feature-dims" in one_error_line(capsys)


def test_import_official_with_its_data(tmp_path, capsys):
    # With --data the imported run gets what training writes: convention, metrics, baseline, reference.
    from decalign.train.reference import load_reference
    from tests.reference.official_model import OfficialDecAlign, official_config_dict

    cfg = official_config_dict(dst_feature_dim_nheads=[8, 2], nlevels=1, num_prototypes=3, pde_dim=8,
                               use_bert=False)
    torch.manual_seed(0)
    torch.save(OfficialDecAlign(cfg, feature_dims=(6, 3, 4), output_dim=1).eval().state_dict(), tmp_path / "m.pth")
    (tmp_path / "dec_sims_config.json").write_text(json.dumps(cfg))
    data = tmp_path / "train_data.npz"
    save_npz(make_synthetic(60, 30, 30, widths={"text": 6, "audio": 3, "vision": 4}, seq_len=4, seed=2), data)
    args = ["import-official", "--state-dict", str(tmp_path / "m.pth"), "--feature-dims", "6,3,4",
            "--out", str(tmp_path / "run"), "--data", str(data)]
    with pytest.warns(UserWarning, match="not used"):
        assert main([*args, "--config", str(tmp_path / "dec_sims_config.json")]) == 0
    card = load_card(tmp_path / "run")
    assert card.metric_convention == "sims" and card.error == "absolute_clipped"  # named after CH-SIMS
    assert set(card.metrics) == {"train", "valid", "test"} and "Mult_acc_3" in card.metrics["test"]
    assert card.baseline["model"] == "ridge" and card.data_fingerprint == load_dataset(data).fingerprint()
    reference = load_reference(tmp_path / "run")
    assert reference.held_out is not None and reference.thresholds_from == "valid"
    assert "ridge regression" in capsys.readouterr().out
    # a classifier cannot be given a regression convention, and data of another width are refused first
    other = tmp_path / "other.npz"
    save_npz(make_synthetic(20, 10, 10, widths={"text": 5, "audio": 3, "vision": 4}, seq_len=4, seed=2), other)
    bad = ["import-official", "--state-dict", str(tmp_path / "m.pth"), "--feature-dims", "6,3,4", "--config",
           str(tmp_path / "dec_sims_config.json"), "--out", str(tmp_path / "run2"), "--data", str(other)]
    assert main(bad) == 2 and "'text' has width 5, expected 6" in one_error_line(capsys)
    assert not (tmp_path / "run2").exists()
