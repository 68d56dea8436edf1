"""Issue 13, point 7: every bad input, bad path or failing disk ends in one line and exit code 2."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

from decalign.checkpoint import load_card
from decalign.cli import main
from decalign.data import MultimodalDataset, Split, make_synthetic, save_npz

MODEL = {"d_model": 8, "num_heads": 2, "num_layers": 1, "num_prototypes": 3, "pde_dim": 8}  # tiny and quick
SMALL = [f"model.{k}={v}" for k, v in MODEL.items()] + ["num_epochs=1", "batch_size=16"]
SETS = [arg for item in SMALL for arg in ("--set", item)]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("decalign: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("out, says", [("", "--out: expected a file name, found an empty string"),
                                       ("{data}/x.csv", "is a file, not a folder"),
                                       (".", "is a folder; expected a file name")])
def test_predict_out_paths(regression_run, out, says, capsys):
    data, run = regression_run
    code = main(["predict", "--checkpoint", str(run), "--data", str(data), "--out", out.format(data=data),
                 "--no-audit"])
    assert code == 2 and says in _one_line(capsys)


def test_train_out_below_a_file(regression_run, capsys):
    data, _ = regression_run
    assert main(["train", "--data", str(data), "--out", f"{data}/run", *SETS]) == 2
    assert "is a file, not a folder" in _one_line(capsys)


def test_unwritable_audit_trail(regression_run, tmp_path, monkeypatch, capsys):
    data, run = regression_run
    (tmp_path / "blocker").write_text("a file where the trail's folder should be")
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(tmp_path / "blocker" / "audit.sqlite3"))
    assert main(["predict", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "p.csv")]) == 2
    assert "set DECALIGN_AUDIT_DB to a writable file" in _one_line(capsys)
    assert not (tmp_path / "p.csv").exists()


def test_integer_labels_train_with_cross_entropy_by_default(tmp_path, capsys):
    data = tmp_path / "classes.npz"
    save_npz(make_synthetic(48, 16, 16, widths={"a": 4, "b": 3}, seq_len=2, task="classification",
                            num_classes=3, seed=4), data)
    args = ["train", "--data", str(data), "--quiet", *SETS]
    assert main([*args, "--out", str(tmp_path / "run")]) == 0  # no config: the settings chosen from the data
    assert capsys.readouterr().err == ""
    assert load_card(tmp_path / "run").config.train.task_loss == "cross_entropy"
    (tmp_path / "config.json").write_text('{"model": {"d_model": 8, "num_heads": 2}}')  # a config without a loss
    assert main([*args, "--out", str(tmp_path / "run1"), "--config", str(tmp_path / "config.json")]) == 0
    assert "task_loss mse -> cross_entropy for classification data" in capsys.readouterr().err
    assert load_card(tmp_path / "run1").config.train.task_loss == "cross_entropy"
    assert main([*args, "--out", str(tmp_path / "run2"), "--set", "task_loss=l1"]) == 2  # chosen, and wrong
    assert "task_loss l1 does not fit classification data; use cross_entropy" in _one_line(capsys)


def test_one_sample_is_refused_before_training_naming_the_file(tmp_path, capsys):
    rng = np.random.default_rng(0)

    def split(n):
        return Split({"a": rng.standard_normal((n, 2, 3)).astype(np.float32),
                      "b": rng.standard_normal((n, 2, 2)).astype(np.float32)},
                     rng.standard_normal(n).astype(np.float32), np.array([f"s{i}" for i in range(n)]))

    data = tmp_path / "one.npz"
    save_npz(MultimodalDataset({"train": split(1), "valid": split(3), "test": split(3)}, "regression"), data)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet", *SETS]) == 2
    assert f"{data}: the 'train' split has 1 sample(s); training needs at least 2" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
from decalign.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "report"])
def test_a_full_disk_is_one_line(command, regression_run, tmp_path):
    data, run = regression_run
    out = tmp_path / ("run" if command == "train" else "report.html")
    args = (["train", "--data", str(data), "--out", str(out), "--quiet", *SETS]
            if command == "train" else ["report", "--checkpoint", str(run), "--data", str(data), "--out", str(out)])
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, "20000", *args], capture_output=True, text=True,
                          timeout=600, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("decalign: error")]
    assert len(lines) == 1 and "File too large" in lines[0] and "Traceback" not in proc.stderr
    assert str(out) in lines[0]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))  # the failed write left nothing


def test_formula_ids_and_markup_text_are_written_inert(tmp_path, capsys):
    hostile = ["=HYPERLINK(\"http://x\")", "@SUM(1+1)", "+cmd|' /C calc'!A0", "a\r=1+1", "-2+3",
               "<img src=http://127.0.0.1:9/x>"]
    dataset = make_synthetic(24, 6, 6, widths={"a": 4, "b": 3}, seq_len=2, seed=5)
    test = dataset.splits["test"]
    dataset.splits["test"] = Split(test.features, test.labels, np.array(hostile), np.array(hostile))
    data = tmp_path / "hostile.npz"
    save_npz(dataset, data)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--quiet", *SETS]) == 0
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(run), "--data", str(data), "--out", str(out), "--no-audit"]) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["id"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'@SUM(1+1)", "'+cmd|' /C calc'!A0",
                                       "a\r=1+1", "'-2+3", "<img src=http://127.0.0.1:9/x>"]
    assert all(float(r["prediction"]) == pytest.approx(float(r["prediction"])) for r in rows)
    report = tmp_path / "r.html"
    assert main(["report", "--checkpoint", str(run), "--data", str(data), "--out", str(report),
                 "--samples", "<img src=http://127.0.0.1:9/x>"]) == 0
    html = report.read_text(encoding="utf-8")
    assert "<img src=http" not in html and "&lt;img src=http://127.0.0.1:9/x&gt;" in html
