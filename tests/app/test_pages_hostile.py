"""Hostile uploads in the dashboard (AppTest): one error box and the previous choice kept; a card's data
outside its run folder is never shown; untrusted text reaches the page escaped."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from browser_utils import ROOT, shown

from decalign.data import MultimodalDataset, Split, load_dataset, save_npz
from decalign.safe_output import markdown_text

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.hostile.corpus import all_cases, data_source_case, model_card, model_weights, model_zip

CASES = {case.name: case for case in all_cases()}
DEMO_DATA = ROOT / "assets" / "uci_digits.npz"


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    return at


def _upload(at, key: str, kind_key: str, kind: str, name: str, data: bytes):
    at.radio(key=kind_key).set_value(kind).run()
    at.file_uploader(key=key).set_value((name, data, "application/octet-stream"))
    return _ok(at.run())


@pytest.mark.parametrize("name", ["object-dtype-id", "shared-lists-500", "bytearray8-3gib", "npz-header-1e12"])
def test_hostile_data_upload_is_one_error_and_the_data_is_kept(page_test, name):
    case = CASES[name]
    at = _upload(page_test("predict").run(), "data_upload", "data_kind", "Upload a file", case.filename,
                 case.make())
    assert len(at.error) == 1
    message = shown(at.error[0].value)
    assert message.startswith(case.filename) and "\n" not in message and "Traceback" not in message
    assert len(at.dataframe[0].value) == 300  # still the bundled test split


@pytest.mark.parametrize("name", ["card-num-layers-1e6", "weights-declared-1-9gib", "zip-bad-crc"])
def test_hostile_model_zip_is_one_error_and_the_demo_is_kept(page_test, name):
    case = CASES[name]
    at = _upload(page_test("overview").run(), "model_zip", "model_kind", "Upload a zip", case.filename, case.make())
    assert len(at.error) == 1 and shown(at.error[0].value).startswith(case.filename)
    assert "bundled demo" in " ".join(shown(c.value) for c in at.caption)


def test_a_card_naming_data_outside_its_run_is_never_read(page_test, tmp_path):
    victim = tmp_path / "victim.npz"
    digits = subset(load_dataset(DEMO_DATA), 8)
    for split in digits.splits.values():
        split.ids[:] = [f"SECRET-{i}" for i in range(len(split))]
    save_npz(digits, victim)
    for source in (str(victim), f"../../../../../../../{str(victim).lstrip('/')}"):
        at = _upload(page_test("predict").run(), "model_zip", "model_kind", "Upload a zip", "victim.zip",
                     data_source_case(source)())
        warnings = " ".join(shown(w.value) for w in at.warning)
        assert "outside the run folder and the bundled assets, so it was not read" in warnings
        assert not any("SECRET" in str(table.value) for table in at.dataframe)


def test_untrusted_text_is_escaped_on_the_pages(page_test, tmp_path):
    markup = "![t](http://127.0.0.1:9/x.png) <img src=http://127.0.0.1:9/y> **bold**"
    digits = subset(load_dataset(DEMO_DATA), 6)
    for name, part in list(digits.splits.items()):
        digits.splits[name] = Split(part.features, part.labels, part.ids, np.array([markup] * len(part)))
    path = tmp_path / "markup.npz"
    save_npz(digits, path)
    at = _upload(page_test("sample").run(), "data_upload", "data_kind", "Upload a file", "![u](http:x).npz",
                 path.read_bytes())
    assert f"> {markdown_text(markup)}" in [m.value for m in at.markdown]
    assert f"Data in use: **{markdown_text('![u](http:x).npz')}** (uploaded)" in at.info[0].value
    card = model_card(source="![s](http://127.0.0.1:9/s.png)", class_names=["<b>x</b>"] * 10,
                      widths=digits.widths, seq_lens={m: 1 for m in digits.widths}, task="classification",
                      output_dim=10, num_classes=10)  # the demo's inputs: the bundled digits are its data
    at = _upload(page_test("overview").run(), "model_zip", "model_kind", "Upload a zip", "card.zip",
                 model_zip(card, model_weights(card)))
    assert any(markdown_text("![s](http://127.0.0.1:9/s.png)") in m.value for m in at.markdown)


def subset(dataset: MultimodalDataset, n: int) -> MultimodalDataset:
    """The first ``n`` samples of every split."""
    return MultimodalDataset({s: p.subset(np.arange(min(n, len(p)))) for s, p in dataset.splits.items()},
                             dataset.task, dataset.num_classes)


def test_a_run_whose_reference_does_not_fit_its_model_is_used_without_it(page_test, tmp_path):
    """A broken training reference is one warning naming the problem; the run's pages still work."""
    import json
    import shutil

    from app.session import Key

    run = tmp_path / "run"
    shutil.copytree(ROOT / "assets" / "demo_model", run)
    meta = json.loads((run / "reference.json").read_text())
    meta["maps"]["unique:pixel"] = 0  # a map fitted on no rows
    (run / "reference.json").write_text(json.dumps(meta))
    at = page_test("embeddings").run()
    at.radio(key="model_kind").set_value("Checkpoint directory").run()
    at.text_input(key=Key.MODEL_DIR).set_value(str(run)).run()
    at = _ok(at.button(key="model_dir_load").click().run())
    warnings = " ".join(shown(w.value) for w in at.warning)
    assert "training reference" in warnings and "positive count of rows" in warnings
    assert len(at.get("plotly_chart")) == 7  # the Embeddings page, its projections fitted to the data shown
