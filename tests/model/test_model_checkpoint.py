"""safetensors + JSON-card checkpoints: exact round trips, zips, and clear errors on bad files."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from decalign.atomic import atomic_write
from decalign.checkpoint import (
    CheckpointError,
    ModelCard,
    load_card,
    load_model,
    load_model_zip,
    model_fingerprint,
    save_model,
)
from decalign.config import DecAlignConfig
from decalign.model import DecAlign, fit_gmm
from tests.model.helpers import random_inputs, small_config


def trained_like(widths, output_dim=1, **config):
    torch.manual_seed(0)
    model = DecAlign(small_config(**config), widths, output_dim)
    with torch.no_grad():  # move every parameter off its initial value
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def card_for(model: DecAlign, **fields) -> ModelCard:
    base = {"config": DecAlignConfig(model=model.config), "widths": dict(model.widths),
                "task": "regression" if model.output_dim == 1 else "classification", "output_dim": model.output_dim}
    base.update(fields)
    return ModelCard(**base)


def zip_dir(run_dir: Path, folder: str = "") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in run_dir.iterdir():
            archive.write(path, f"{folder}{path.name}")
    return buffer.getvalue()


def test_round_trip_preserves_predictions_and_card_exactly(tmp_path, widths):
    model = trained_like(widths, output_dim=3, conv_kernel_sizes=(("audio", 2),), positional_encoding=True)
    x = random_inputs(widths, batch=4)
    card = card_for(model, num_classes=3, class_names=["a", "b", "c"], metrics={"test": {"acc": 0.5}},
                    seed=3, best_epoch=7, extra={"note": "x"})
    protos = {m: fit_gmm(p.detach(), 3) for m, p in model(x).unique_pooled.items()}
    card.set_prototypes(protos)
    save_model(tmp_path, model, card)
    loaded, loaded_card = load_model(tmp_path)
    assert not loaded.training
    assert torch.equal(loaded(x).prediction, model(x).prediction)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded_card.config == card.config and loaded_card.widths == card.widths
    assert loaded_card.class_names == ["a", "b", "c"] and loaded_card.metrics == {"test": {"acc": 0.5}}
    assert list(loaded_card.widths) == list(widths)  # modality order is the fusion order
    restored = loaded_card.prototype_tensors()
    for m, p in protos.items():
        torch.testing.assert_close(restored[m].means, p.means.detach())
        torch.testing.assert_close(restored[m].weights, p.weights.detach())
    # loading the weights file directly also works, and a second tag is separate
    assert torch.equal(load_model(tmp_path / "best.safetensors")[0](x).prediction, model(x).prediction)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path, tag="last")


@pytest.mark.parametrize("folder", ["", "run-17/"])
def test_load_from_a_zip_of_the_run_directory(tmp_path, widths, folder):
    model = trained_like(widths)
    save_model(tmp_path / "run", model, card_for(model))
    data = zip_dir(tmp_path / "run", folder)
    x = random_inputs(widths)
    loaded, _card = load_model_zip(data, "upload.zip")
    assert torch.equal(loaded(x).prediction, model(x).prediction)
    (tmp_path / "upload.zip").write_bytes(data)
    assert torch.equal(load_model(tmp_path / "upload.zip")[0](x).prediction, model(x).prediction)


def test_zip_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a zip"):
        load_model_zip(b"plain bytes", "x.zip")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match="no card.json"):
        load_model_zip(buffer.getvalue(), "empty.zip")


def test_truncated_weights_are_a_checkpoint_error(tmp_path, widths):
    model = trained_like(widths)
    path = save_model(tmp_path, model, card_for(model))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="best.safetensors"):
        load_model(tmp_path)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(tmp_path)


def test_card_with_wrong_widths_names_the_key(tmp_path, widths):
    model = trained_like(widths)
    save_model(tmp_path, model, card_for(model))
    card = json.loads((tmp_path / "card.json").read_text())
    card["widths"]["audio"] = 6
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"projections\.audio\.weight.*\(8, 5, 1\).*\(8, 6, 1\)"):
        load_model(tmp_path)
    card["widths"]["audio"] = 8  # = d: no projection in the card's model
    (tmp_path / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"projections\.audio\.weight"):
        load_model(tmp_path)


def test_bad_cards(tmp_path, widths):
    with pytest.raises(CheckpointError, match="no card.json"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_card(tmp_path)
    model = trained_like(widths)
    data = card_for(model).to_dict()
    data["config"]["model"]["d_modle"] = 3
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="d_modle"):
        load_card(tmp_path)
    data = card_for(model).to_dict()
    data["widths"] = {"text": 3}
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="at least two modalities"):
        load_card(tmp_path)


def test_non_finite_metrics_are_stored_as_null(tmp_path, widths):
    model = trained_like(widths)
    save_model(tmp_path, model, card_for(model, metrics={"valid": {"corr": float("nan"), "mae": 0.5}}))
    assert load_card(tmp_path).metrics == {"valid": {"corr": None, "mae": 0.5}}


def test_atomic_writes_leave_no_temporary_files(tmp_path, widths):
    model = trained_like(widths)
    card = card_for(model)
    save_model(tmp_path, model, card, tag="last", write_card=False)
    save_model(tmp_path, model, card)
    save_model(tmp_path, model, card)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "card.json", "last.safetensors"]
    before = model_fingerprint(tmp_path)
    # a write that fails half-way keeps the old file and removes its temporary file
    def half_then_fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "best.safetensors", half_then_fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors", "card.json", "last.safetensors"]
    assert model_fingerprint(tmp_path) == before
    assert len(before) == 64 and model_fingerprint(tmp_path, tag="last") != before


def test_float32_weights_of_a_mapped_file_are_views_of_it_and_other_floats_are_widened(tmp_path):
    """In the sandbox's child the weights file is mapped: float32 tensors are views of it, not read and copied
    (float16 and float64 become float32 copies, as before); every tensor equals the one read without a mapping."""
    import mmap

    import numpy as np
    from safetensors.numpy import save_file

    from decalign.checkpoint_files import read_safetensors
    from decalign.sandbox import mapped_view

    tensors = {"f32": np.arange(12, dtype=np.float32).reshape(3, 4), "f16": np.linspace(-1, 1, 5).astype(np.float16),
               "f64": np.arange(3.0).reshape(1, 3), "empty": np.zeros((0, 2), dtype=np.float32)}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    with open(path, "rb") as handle:
        read = read_safetensors(handle, path.stat().st_size, "w", 100)
        handle.seek(0)
        mapped = read_safetensors(handle, path.stat().st_size, "w", 100, view=mapped_view(handle))

    def of_the_file(array) -> bool:
        while isinstance(array.base, np.ndarray):
            array = array.base
        return isinstance(array.base, memoryview) and isinstance(array.base.obj, mmap.mmap)

    for name, tensor in tensors.items():
        assert read[name].dtype == mapped[name].dtype == np.float32 and mapped[name].shape == tensor.shape, name
        np.testing.assert_array_equal(mapped[name], read[name])
        np.testing.assert_array_equal(mapped[name], tensor.astype(np.float32))
    assert of_the_file(mapped["f32"]) and not of_the_file(mapped["f16"]) and not of_the_file(mapped["f64"])
    assert not of_the_file(read["f32"])
