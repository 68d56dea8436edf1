"""AppTest of the Audit page, and unit tests of its figure and frame builders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from browser_utils import ROOT
from streamlit.testing.v1 import AppTest

from app.figures import audit as fig
from decalign.audit import AuditTrail
from decalign.audit.rows import prediction_rows
from decalign.checkpoint import load_model
from decalign.data import load_dataset
from decalign.inference import run_inference


@pytest.fixture
def audit_db(tmp_path, monkeypatch):
    path = tmp_path / "audit.sqlite3"
    monkeypatch.setenv("DECALIGN_AUDIT_DB", str(path))
    return path


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_audit_page_renders_and_records_once(page_test, demo_dir, audit_db):
    at = _ok(page_test("audit").run())
    assert at.title[0].value == "Audit"
    charts = at.get("plotly_chart")
    assert len(charts) >= 3  # confusion, reliability, drift
    drifted = [m for m in at.metric if m.label == "Drifted from the held-out data?"]
    assert len(drifted) == 1 and drifted[0].value == "no"  # the demo's test split is i.i.d. with validation
    text = " ".join(m.value for m in at.markdown)
    assert "shows no significant drift" in text and "after correcting for 6 tests" in text
    assert "from the validation split stored with the run" in text
    assert any("logistic regression" in i.value for i in at.info)  # the baseline beside the model
    recorded = AuditTrail(audit_db).count(source="dashboard")
    assert recorded > 0
    _ok(at.run())  # a rerun does not record again
    assert AuditTrail(audit_db).count(source="dashboard") == recorded


def test_audit_filters_and_report(page_test, demo_dir, audit_db):
    at = _ok(page_test("audit").run())
    table = at.dataframe[0].value
    flagged = int(table["any_flag"].sum())
    assert 0 < flagged < len(table)  # the demo test split has flagged and unflagged samples
    at.checkbox(key="audit_only_flagged").check()
    _ok(at.run())
    shown = at.dataframe[0].value
    assert len(shown) == flagged and shown["any_flag"].all()
    assert set(shown["id"]) == set(table.loc[table["any_flag"], "id"])
    at.selectbox(key="audit_slice_by").set_value("dominant_modality")
    _ok(at.run())
    at.button(key="audit_prepare_report").click()
    _ok(at.run())
    _, html = at.session_state["audit_report"]
    assert html.startswith("<!DOCTYPE html>") and "Metrics per slice" in html


def test_filter_predictions_by_hand():
    table = pd.DataFrame({"label": [1, 2, 1], "prediction": [1, 1, 2], "error": [0.0, 1.0, 1.0],
                          "dominant_branch": ["unique:a", "common:b", "unique:a"],
                          "flags": ["", "ood_a, low_confidence", "low_confidence"],
                          "any_flag": [False, True, True]})
    assert fig.filter_predictions(table, labels=[1]).index.tolist() == [0, 2]
    assert fig.filter_predictions(table, flags=["ood_a"]).index.tolist() == [1]
    assert fig.filter_predictions(table, error_range=(0.5, 1.0), branches=["unique:a"]).index.tolist() == [2]
    assert fig.filter_predictions(table, only_flagged=True, predictions=[1]).index.tolist() == [1]


def test_audit_rows_and_figures(demo_dir):
    model, card = load_model(demo_dir)
    data = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"].subset(np.arange(40))
    result = run_inference(model, data, task=card.task)
    rows = prediction_rows(result, source="dashboard", checkpoint_fingerprint="m", input_sha256="a" * 64,
                           input_name="digits", split="test")
    assert len(rows) == 40 and rows[0]["sample_id"] == str(data.ids[0])
    assert sum(rows[3]["contributions"].values()) == pytest.approx(result.outputs[3].max(), abs=1e-3)
    assert all(row["flags"] == [] for row in rows)
    flags = pd.DataFrame({"id": result.ids, "ood_pixel": np.arange(40) == 5, "low_confidence": np.arange(40) < 2})
    flags["any_flag"] = flags["ood_pixel"] | flags["low_confidence"]
    flagged = prediction_rows(result, source="cli", checkpoint_fingerprint="m", input_sha256="a" * 64,
                              input_name="digits", split="test", flags=flags)
    assert [r["flags"] for r in flagged[:2]] == [["low_confidence"]] * 2 and flagged[5]["flags"] == ["ood_pixel"]
    assert flagged[6]["flags"] == [] and flagged[6]["contributions"] == rows[6]["contributions"]
    conf = fig.confusion_figure(result)
    assert np.asarray(conf.data[0].z).sum() == 40
    assert len(fig.reliability_figure(result).data) == 2


def test_small_upload_gets_a_calibrated_drift_verdict(page_test, demo_dir, demo_npz, audit_db):
    # 50 demo digits uploaded: tested against the run's stored validation features, the chart's axis is the
    # mean shift in standard deviations (no ratio to a band of width ~0), and i.i.d. data is not drifted.
    at = page_test("audit").run()
    at.radio(key="data_kind").set_value("Upload a file").run()
    at.file_uploader(key="data_upload").set_value((demo_npz.name, demo_npz.read_bytes(), "application/octet-stream"))
    _ok(at.run())
    drifted = next(m for m in at.metric if m.label == "Drifted from the held-out data?")
    assert drifted.value == "no"
    table = next(t.value for t in at.dataframe if "p_corrected" in t.value.columns)
    assert len(table) == 6 and (table["n_current"] == 50).all() and (table["n_reference"] == 300).all()
    assert table["effect"].max() < 0.5 and (table["p_corrected"] >= table["p_value"]).all()
    text = " ".join(m.value for m in at.markdown)
    assert "the validation split stored with the run" in text
