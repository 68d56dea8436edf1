"""AppTest of the Overview, Predict and Sample pages and of the sidebar's model and data pickers."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from browser_utils import ROOT, shown
from streamlit.testing.v1 import AppTest

from decalign.audit import AuditTrail
from decalign.checkpoint import load_card, load_model
from decalign.data import load_dataset
from decalign.inference import run_inference


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def _upload_data(at: AppTest, path) -> AppTest:
    at.radio(key="data_kind").set_value("Upload a file").run()
    at.file_uploader(key="data_upload").set_value((path.name, path.read_bytes(), "application/octet-stream"))
    return at.run()


def test_entry_app_opens_on_overview_with_demo(demo_dir):
    at = _ok(AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=90).run())
    assert [t.value for t in at.title] == ["Overview"]
    assert _charts(at) >= 2  # split sizes and label distribution at least
    assert "bundled demo" in " ".join(c.value for c in at.caption)


def test_overview_shows_card_curves_and_data(page_test, demo_dir):
    at = _ok(page_test("overview").run())
    assert at.title[0].value == "Overview"
    # split sizes + labels + loss / alignment / validation curves from history.json
    assert _charts(at) >= 5
    assert len(at.dataframe) >= 3  # modalities, metrics and baseline tables
    # the linear baseline beside the model, with both test scores in one sentence
    sentence = next(m.value for m in [*at.info, *at.warning] if "linear baseline" in m.value)
    card = load_card(demo_dir)
    acc = card.metrics["test"]["Acc"]
    assert f"DecAlign reaches Acc {acc:.3f}" in sentence and "a logistic regression" in sentence


def test_predict_table_metrics_and_selection(page_test, demo_dir):
    at = _ok(page_test("predict").run())
    model, card = load_model(demo_dir)
    split = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"]
    frame = at.dataframe[0].value
    assert len(frame) == len(split)
    expected = run_inference(model, split, task=card.task).predictions
    np.testing.assert_array_equal(frame["prediction_index"].to_numpy(), expected)
    assert frame["prediction"].tolist() == [card.class_names[k] for k in expected]  # shown by name
    accuracy = next(m for m in at.metric if m.label == "Acc")
    assert float(accuracy.value) == pytest.approx(float(np.mean(expected == split.labels)), abs=1e-4)
    assert _charts(at) == 1
    at.multiselect[0].set_value([card.class_names[3]]).run()
    assert set(_ok(at).dataframe[0].value["label_index"]) == {3}


def test_sample_page_opens_selected_sample(page_test, demo_dir):
    ids = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"].ids
    at = page_test("sample")
    at.session_state["selected_sample"] = str(ids[7])
    _ok(at.run())
    assert at.selectbox(key="sample_id").value == ids[7]
    # pixel image, a heatmap per modality, waterfall, posteriors, transport cells, counterfactuals,
    # an attribution heatmap per modality and an attention heatmap per modality
    assert _charts(at) >= 14
    assert any(m.value.startswith("The model predicts") for m in at.markdown)  # plain-language summary
    at.selectbox(key="sample_id").set_value(str(ids[2])).run()
    assert _ok(at).session_state["selected_sample"] == ids[2]


def test_sample_review_is_recorded_with_history(page_test, tmp_path, monkeypatch):
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(tmp_path / "audit.db"))
    at = _ok(page_test("sample").run())
    assert "No reviews of this sample yet." in [c.value for c in at.caption]
    at.radio(key="sample_review_verdict").set_value("wrong")
    at.text_area(key="sample_review_comment").set_value("looks like a 7")
    at.text_input(key="sample_review_reviewer").set_value("ana")
    at.button[-1].click().run()
    _ok(at)
    history = at.dataframe[-1].value  # the review history is the last table on the page
    assert history[["reviewer", "verdict", "comment"]].values.tolist() == [["ana", "wrong", "looks like a 7"]]
    sample_id = at.selectbox(key="sample_id").value
    reviews = AuditTrail(tmp_path / "audit.db").reviews(sample_id=sample_id)
    assert reviews["verdict"].tolist() == ["wrong"]
    # the form is ready for the next review: no verdict, no comment, the reviewer remembered
    assert at.radio(key="sample_review_verdict").value is None
    assert at.text_area(key="sample_review_comment").value == ""
    assert at.text_input(key="sample_review_reviewer").value == "ana"


def test_untouched_or_anonymous_review_is_refused(page_test, tmp_path, monkeypatch):
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(tmp_path / "audit.db"))
    at = _ok(page_test("sample").run())
    assert at.radio(key="sample_review_verdict").value is None  # no default verdict
    at.button[-1].click().run()  # "Record review" on the untouched form
    assert [shown(e.value) for e in _ok(at).error] == [
        ("Review not recorded: no verdict chosen (correct, wrong or unsure) and no reviewer (a review needs the "
        "reviewer's name).")]
    at.radio(key="sample_review_verdict").set_value("correct")
    at.text_area(key="sample_review_comment").set_value("kept after a refusal")
    at.button[-1].click().run()
    assert "no reviewer" in _ok(at).error[0].value and "no verdict" not in at.error[0].value
    assert at.text_area(key="sample_review_comment").value == "kept after a refusal"  # nothing typed is lost
    assert AuditTrail(tmp_path / "audit.db").count("reviews") == 0


def test_fitting_npz_upload_replaces_the_data(page_test, demo_npz):
    at = _ok(_upload_data(page_test("predict").run(), demo_npz))
    assert not at.error
    assert len(at.dataframe[0].value) == 50
    assert f"Data in use: **{demo_npz.name}** (uploaded)" in shown(at.info[0].value)


def test_mismatched_mmsa_upload_is_refused_and_data_kept(page_test, tav_pickle):
    at = _ok(_upload_data(page_test("predict").run(), tav_pickle))
    message = shown(at.error[0].value)
    assert "does not match the checkpoint" in message and "'text'" in message and "fourier" in message
    assert len(at.dataframe[0].value) == 300  # still the bundled test split


def test_broken_file_shows_error_and_app_keeps_working(page_test, demo_npz, tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a zip archive")
    at = _upload_data(page_test("predict").run(), demo_npz)
    # The file taken in leaves the uploader (Streamlit would deep-copy it on every rerun): a new, empty
    # uploader, and the file in use named under it.
    (uploader,) = [u for u in at.get("file_uploader") if u.key.startswith("data_upload")]
    assert uploader.key == "data_upload_1" and uploader.value is None
    assert f"**{demo_npz.name}** is in use" in shown(" ".join(c.value for c in at.caption))
    uploader.set_value((bad.name, bad.read_bytes(), "application/octet-stream"))
    _ok(at.run())
    assert "broken.npz" in shown(at.error[0].value)
    assert len(at.dataframe[0].value) == 50  # the previous upload stays selected
    (uploader,) = [u for u in at.get("file_uploader") if u.key.startswith("data_upload")]
    assert uploader.key == "data_upload_2" and uploader.value is None  # the refused file is not listed
    assert f"**{demo_npz.name}** is in use" in shown(" ".join(c.value for c in at.caption))


def test_overview_of_a_model_whose_weights_are_broken(page_test, demo_dir, tmp_path, monkeypatch):
    """The Overview draws the card, curves and data before it builds the model; weights that cannot be read
    are then reported at the top of the page, and the baseline, which needs the model's scores, is left out."""
    run = shutil.copytree(demo_dir, tmp_path / "run")
    (run / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:1000])
    monkeypatch.setenv("DECALIGN_DEMO_MODEL", str(run))
    at = _ok(page_test("overview").run())
    (error,) = at.error
    assert "cannot be loaded" in shown(error.value) and "best.safetensors" in shown(error.value)
    headings = [h.value for h in at.subheader]
    assert "Model card" in headings and "Training curves" in headings and "Linear baseline" not in headings
    assert _charts(at) >= 2
    shown_in_order = [node.type for node in _depth_first(at.main) if node.type in ("title", "error", "subheader")]
    assert shown_in_order[:3] == ["title", "error", "subheader"]  # the error right under the page's title


def _depth_first(node):
    """The elements of an AppTest block in the order the page shows them."""
    children = getattr(node, "children", None)
    if not children:
        yield node
        return
    for key in sorted(children):
        yield from _depth_first(children[key])


def test_bad_model_zip_keeps_the_demo(page_test, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("run/card.json", "{not json")
    at = page_test("overview").run()
    at.radio(key="model_kind").set_value("Upload a zip").run()
    at.file_uploader(key="model_zip").set_value(("bad.zip", buffer.getvalue(), "application/zip")).run()
    _ok(at)
    assert "not valid JSON" in shown(at.error[0].value)
    assert "bundled demo" in " ".join(c.value for c in at.caption)


def test_checkpoint_directory_then_fitting_mmsa_upload(page_test, tav_run, tav_pickle, tav_dataset):
    at = page_test("predict").run()
    at.radio(key="model_kind").set_value("Checkpoint directory").run()
    at.text_input(key="model_dir").set_value(str(tav_run)).run()
    at.button(key="model_dir_load").click().run()
    # the digits data does not fit a text/audio/vision model, and it has no bundled data
    assert "no bundled data" in _ok(at).warning[0].value
    _ok(_upload_data(at, tav_pickle))
    assert not at.error
    assert len(at.dataframe[0].value) == len(tav_dataset.splits["test"])
    assert _charts(at) == 1


def test_opening_a_run_folder_removes_temp_files_of_killed_writes(page_test, tav_run, tmp_path):
    run = tmp_path / "copied_run"
    shutil.copytree(tav_run, run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = [run / f".card.json.{gone.pid}-0badf00d.tmp", run / "resume" / f".state.json.{gone.pid}-0badf00d.tmp"]
    live = run / f".best.safetensors.{os.getpid()}-12345678.tmp"  # a writer still at work keeps its file
    for path in [*stale, live]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a write")
    at = page_test("overview").run()
    at.radio(key="model_kind").set_value("Checkpoint directory").run()
    at.text_input(key="model_dir").set_value(str(run)).run()
    _ok(at.button(key="model_dir_load").click().run())
    assert not any(p.exists() for p in stale) and live.exists()
