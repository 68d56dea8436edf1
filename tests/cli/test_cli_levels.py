"""``decalign levels``: with imported official weights, the official dec/hete/homo losses of the same batch."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from decalign.cli import main
from tests.reference.official_model import OfficialDecAlign

CONFIG = Path(__file__).resolve().parents[1] / "reference" / "official_configs" / "dec_mosi_config.json"
DIMS = (24, 5, 7)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(oracle, run directory, raw config) of the official MOSI config with random official weights."""
    folder = tmp_path_factory.mktemp("levels")
    raw = json.loads(CONFIG.read_text(encoding="utf-8"))
    torch.manual_seed(0)
    reference = OfficialDecAlign(raw, feature_dims=DIMS).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(reference.state_dict(), folder / "model.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the official file's BERT keys
        code = main(["import-official", "--state-dict", str(folder / "model.pth"), "--config", str(CONFIG),
                     "--feature-dims", ",".join(map(str, DIMS)), "--out", str(folder / "run")])
    assert code == 0
    return reference, folder / "run", raw


def write_data(path: Path, scale: float, n: int = 60) -> list[torch.Tensor]:
    g = np.random.default_rng(4)
    x = [(scale * g.standard_normal((n, 10, w))).astype(np.float32) for w in DIMS]
    np.savez(path, **{f"test/{m}": v for m, v in zip(("text", "audio", "vision"), x)},
             **{"test/labels": g.uniform(-3, 3, n).astype(np.float32)})
    return [torch.from_numpy(v) for v in x]


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_levels_equal_the_official_losses_of_the_same_batch(imported, tmp_path, capsys, scale):
    reference, run, raw = imported
    x = write_data(tmp_path / "data.npz", scale)
    assert main(["levels", "--checkpoint", str(run), "--data", str(tmp_path / "data.npz"), "--max-samples", "40",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 40 and report["objective"] == "official" and report["split"] == "test"
    with torch.no_grad():
        expected = reference(*(v[:40] for v in x))  # the first 40 samples, eval mode
    levels = report["levels"]
    for ours, theirs in (("decoupling", "dec_loss"), ("heterogeneous", "hete_loss"), ("homogeneous", "homo_loss"),
                         ("prototype_transport", "ot_loss"), ("sample_to_prototype", "local_loss"),
                         ("moment_matching", "sem_loss"), ("mmd", "mmd_loss")):
        assert levels[ours] == pytest.approx(float(expected[theirs]), rel=1e-4), ours
    weighted = (raw["dec_loss_weight"] * float(expected["dec_loss"]) + raw["alpha"] * float(expected["hete_loss"])
                + raw["beta"] * float(expected["homo_loss"]))
    assert levels["weighted_alignment"] == pytest.approx(weighted, rel=1e-4)
    assert report["weights"] == {"dec_loss_weight": 1.0, "alpha": 0.05, "beta": 0.07}


def test_levels_text_output_default_size_and_errors(imported, tmp_path, capsys):
    _, run, raw = imported
    write_data(tmp_path / "data.npz", 1.0)
    assert main(["levels", "--checkpoint", str(run), "--data", str(tmp_path / "data.npz")]) == 0
    text = capsys.readouterr().out
    assert f"first {raw['batch_size']} samples as one batch, objective official" in text
    for name in ("decoupling", "prototype_transport", "heterogeneous", "homogeneous", "weighted_alignment"):
        assert name in text
    assert main(["levels", "--checkpoint", str(run), "--data", str(tmp_path / "data.npz"), "--max-samples", "1"]) == 2
    assert "--max-samples must be at least 2" in capsys.readouterr().err
    assert main(["levels", "--checkpoint", str(run), "--data", str(tmp_path / "data.npz"), "--split", "train"]) == 2
    assert "no split 'train'" in capsys.readouterr().err
