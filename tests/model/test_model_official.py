"""Importing official taco-group/DecAlign weights: predictions equal the reference's; bad files refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from decalign.checkpoint import load_model
from decalign.official import OfficialImportError, import_official
from tests.reference.official_model import OfficialDecAlign, official_config_dict

CASES = {
    "mosi-default": ({}, (768, 5, 20), 1),
    "self-attention-kernel3-text-skipped": (
        {"use_cross_modal_attention": False, "conv1d_kernel_size_l": 3, "conv1d_kernel_size_a": 3}, (40, 5, 20), 1),
    "d16-heads4-nlevels2": ({"dst_feature_dim_nheads": [16, 4], "nlevels": 2}, (30, 16, 7), 1),
    "six-classes": ({"dst_feature_dim_nheads": [16, 4], "nlevels": 2, "train_mode": "classification"}, (30, 5, 20), 6),
}


def official_files(tmp_path: Path, overrides: dict, dims, output_dim: int, seed: int = 0):
    """Write an official config JSON and a state_dict saved the official way; return paths and model."""
    raw = official_config_dict(**overrides) if "train_mode" not in overrides else _with_mode(overrides)
    torch.manual_seed(seed)
    reference = OfficialDecAlign(raw, feature_dims=dims, output_dim=output_dim).eval()
    with torch.no_grad():  # non-trivial biases and norms, so a mis-mapped key shows
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(raw), encoding="utf-8")
    weights_path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), weights_path)
    return weights_path, config_path, reference


def _with_mode(overrides):
    overrides = dict(overrides)
    mode = overrides.pop("train_mode")
    raw = official_config_dict(**overrides)
    raw["train_mode"] = mode
    return raw


def quiet_import(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return import_official(*args)


@pytest.mark.parametrize("case", list(CASES))
def test_imported_model_predicts_what_the_reference_predicts(tmp_path, case):
    overrides, dims, output_dim = CASES[case]
    weights, config, reference = official_files(tmp_path, overrides, dims, output_dim)
    card = quiet_import(weights, config, list(dims), tmp_path / "run")
    assert card.source == "imported-official" and card.output_dim == output_dim
    assert card.widths == {"text": dims[0], "audio": dims[1], "vision": dims[2]}
    assert card.task == ("regression" if output_dim == 1 else "classification")
    model, loaded = load_model(tmp_path / "run")
    assert not model.training and loaded.widths == card.widths
    g = torch.Generator().manual_seed(1)
    lengths = (6, 8, 5)
    text, audio, vision = (torch.randn(4, t, w, generator=g) for t, w in zip(lengths, dims))
    with torch.no_grad():
        expected = reference(text, audio, vision)["output_logit"]
        ours = model({"text": text, "audio": audio, "vision": vision}).prediction
    assert ours.shape == (4, output_dim)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    if case == "self-attention-kernel3-text-skipped":
        assert isinstance(model.projections["text"], torch.nn.Identity)
        assert card.extra["unused_official_keys"] == ["proj_l.weight"]
    if output_dim > 1:
        assert card.config.train.task_loss == "cross_entropy" and card.num_classes == 6


class Payload:
    """Unpickling this would create a marker file: weights_only loading must never run it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_object_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    _, config, _ = official_files(tmp_path, {}, (20, 5, 7), 1)
    evil = tmp_path / "evil.pth"
    torch.save({"out_layer.weight": torch.zeros(1, 240), "x": Payload(str(marker))}, evil)
    with pytest.raises(OfficialImportError, match="weights_only"):
        quiet_import(evil, config, [20, 5, 7], tmp_path / "run")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_wrong_feature_dims_name_the_key_and_shapes(tmp_path):
    weights, config, _ = official_files(tmp_path, {}, (768, 5, 20), 1)
    with pytest.raises(OfficialImportError, match=r"projections\.audio\.weight.*\(40, 5, 1\).*\(40, 6, 1\)"):
        quiet_import(weights, config, [768, 6, 20], tmp_path / "run")
    with pytest.raises(OfficialImportError, match="three positive widths"):
        quiet_import(weights, config, [768, 5], tmp_path / "run")


def test_width_equal_to_d_does_not_silently_drop_trained_projection(tmp_path):
    # trained with text width 768: claiming text width 40 (= d) would skip proj_l and mispredict
    weights, config, _ = official_files(tmp_path, {}, (768, 5, 20), 1)
    with pytest.raises(OfficialImportError, match=r"proj_l\.weight.*768"):
        quiet_import(weights, config, [40, 5, 20], tmp_path / "run")


def test_state_dict_with_an_incomplete_bert_is_refused(tmp_path):
    weights, config, reference = official_files(tmp_path, {}, (768, 5, 20), 1)
    state = reference.state_dict()
    state["text_model.embeddings.word_embeddings.weight"] = torch.zeros(3, 4)
    torch.save(state, weights)
    with pytest.raises(OfficialImportError, match="BERT"):
        quiet_import(weights, config, [768, 5, 20], tmp_path / "run")


def test_config_whose_nlevels_does_not_match_the_weights(tmp_path):
    weights, _, _ = official_files(tmp_path, {"nlevels": 2}, (30, 5, 20), 1)
    config = tmp_path / "other.json"
    config.write_text(json.dumps(official_config_dict(nlevels=3)), encoding="utf-8")
    with pytest.raises(OfficialImportError, match="2 transformer layers.*nlevels is 3"):
        quiet_import(weights, config, [30, 5, 20], tmp_path / "run")


def test_config_whose_width_does_not_match_the_head(tmp_path):
    weights, _, _ = official_files(tmp_path, {"dst_feature_dim_nheads": [16, 4], "nlevels": 2}, (30, 5, 20), 1)
    config = tmp_path / "other.json"
    config.write_text(json.dumps(official_config_dict(nlevels=2)), encoding="utf-8")
    with pytest.raises(OfficialImportError, match="out_layer.weight has 96 inputs"):
        quiet_import(weights, config, [30, 5, 20], tmp_path / "run")


def test_not_a_state_dict(tmp_path):
    _, config, _ = official_files(tmp_path, {}, (20, 5, 7), 1)
    bad = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], bad)
    with pytest.raises(OfficialImportError, match="dict of tensors"):
        quiet_import(bad, config, [20, 5, 7], tmp_path / "run")
    with pytest.raises(OfficialImportError, match="not found"):
        quiet_import(tmp_path / "missing.pth", config, [20, 5, 7], tmp_path / "run")


def test_wrapper_prefixes_are_stripped():
    from decalign.official import _strip_wrappers

    inner = {"proj_l.weight": torch.zeros(1), "out_layer.bias": torch.zeros(1)}
    for prefix in ("module.", "Model.", "module.Model."):
        assert _strip_wrappers({prefix + k: v for k, v in inner.items()}).keys() == inner.keys()
    assert _strip_wrappers(inner).keys() == inner.keys()
    assert _strip_wrappers({"out_layer.weight": torch.zeros(1)}).keys() == {"out_layer.weight"}


@pytest.mark.parametrize("overrides", [{}, {"use_cross_modal_attention": False, "nlevels": 3}],
                         ids=["cross-modal", "self-attention"])
def test_training_forward_and_gradients_equal_the_reference_without_dropout(overrides):
    """The hand-written attention backward and the batched encoders train the official function."""
    from decalign.config import DecAlignConfig
    from decalign.model import DecAlign
    from decalign.official import convert_state_dict

    no_dropout = {k: 0.0 for k in ("attn_dropout", "attn_dropout_a", "attn_dropout_v", "relu_dropout",
                                   "embed_dropout", "res_dropout")}
    raw = official_config_dict(dst_feature_dim_nheads=[16, 4], use_bert=False, **no_dropout, **{"nlevels": 2} | overrides)
    dims = (30, 5, 20)
    torch.manual_seed(0)
    reference = OfficialDecAlign(raw, feature_dims=dims, output_dim=1).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = DecAlignConfig.from_dict(raw)
    widths = {"text": 30, "audio": 5, "vision": 20}
    model = DecAlign(config.model, widths, 1).train()
    state, _ = convert_state_dict(reference.state_dict(), widths, 16)
    model.load_state_dict(state)
    g = torch.Generator().manual_seed(2)
    inputs = {m: torch.randn(6, 7, w, generator=g) for m, w in widths.items()}
    expected = reference(inputs["text"], inputs["audio"], inputs["vision"])["output_logit"]
    ours = model(inputs, align=False).prediction
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(6, 1, generator=g)
    ours_by_name = dict(model.named_parameters())
    pairs = []  # (official name, official parameter, our parameter)
    for name, param in reference.named_parameters():
        renamed = convert_state_dict({name: param.detach()}, widths, 16)[0]
        if renamed:
            pairs.append((name, param, ours_by_name[next(iter(renamed))]))
    ref_grads = torch.autograd.grad(expected, [p for _, p, _ in pairs], upstream, allow_unused=True)
    our_grads = torch.autograd.grad(ours, [p for _, _, p in pairs], upstream, allow_unused=True)
    assert len(pairs) == len(ours_by_name)  # every parameter maps (the pde_* ones get no gradient here)
    for (name, _, _), a, b in zip(pairs, our_grads, ref_grads):
        if b is None:  # not on the prediction's path
            assert a is None or not a.abs().sum(), name
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_eval_forward_at_mosi_shapes_equals_the_reference(tmp_path):
    """MOSI shapes and config (batch 32, T 50, d 40, 10 heads, 5 layers): the batched encoders and the
    attention in cache-sized blocks give the official prediction to 1e-5."""
    weights, config, reference = official_files(tmp_path, {}, (768, 5, 20), 1)
    quiet_import(weights, config, [768, 5, 20], tmp_path / "run")
    model, _ = load_model(tmp_path / "run")
    g = torch.Generator().manual_seed(3)
    text, audio, vision = (torch.randn(32, 50, w, generator=g) for w in (768, 5, 20))
    with torch.no_grad():
        expected = reference(text, audio, vision)["output_logit"]
        ours = model({"text": text, "audio": audio, "vision": vision}).prediction
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
