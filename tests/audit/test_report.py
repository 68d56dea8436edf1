import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "explain"))

from explain_fixtures import DIGITS, digits, train_small

from decalign.audit.report import (
    build_report,
    explain_rows,
    make_report,
    reliability_table,
    write_report,
)
from decalign.audit.run import PreparedReference, run_audit
from decalign.audit.store import AuditTrail
from decalign.checkpoint import save_model
from decalign.cli import main
from decalign.data import save_npz
from decalign.inference import run_inference
from decalign.train.reference import build_reference, save_reference

PLOTLY_BUNDLE = re.compile(r"\* plotly\.js v\d")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = digits(120)
    model, card = train_small(ds, steps=40)
    ref = build_reference(model, card, ds.splits["train"], ds.splits["valid"])
    run = tmp_path_factory.mktemp("run")
    save_model(run, model, card)
    save_reference(run, ref)
    data = tmp_path_factory.mktemp("data") / "digits_small.npz"
    save_npz(ds, data)
    yield model, card, ref, ds, run, data
    torch.set_num_threads(threads)


def test_report_is_self_contained_and_complete(setup, tmp_path):
    model, card, ref, ds, _, _ = setup
    split = ds.splits["test"]
    ids = [str(split.ids[0]), str(split.ids[5])]
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    trail.record_review("model-fp", "a" * 64, ids[1], "wrong", "looks like a 7 <b>", reviewer="Ada")
    text = make_report(model, card, ds, "test", data_name="digits", reference=PreparedReference(ref),
                       sample_ids=ids, title="Audit <of> digits", trail=trail, checkpoint_fingerprint="model-fp",
                       input_ids=("a" * 64,))
    assert len(PLOTLY_BUNDLE.findall(text)) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<script[^>]+src=", text)  # nothing loaded from elsewhere
    assert text.count('class="plotly-graph-div"') == 3  # confusion, reliability, drift
    assert "Audit &lt;of&gt; digits" in text  # title escaped
    for sample_id in ids:
        assert f"Sample {sample_id}" in text
    for heading in ("Flagged samples", "Metrics per slice", "Linear baseline", "Reviews", "Drift"):
        assert f"<h2>{heading}</h2>" in text
    assert "precision" in text and "recall" in text  # per-class slices
    assert "looks like a 7 &lt;b&gt;" in text and "Ada" in text and "1 samples reviewed" in text
    assert "after correcting for 6 tests" in text  # the drift sentences
    assert "logistic regression" in text and "typical pattern" in text  # the summaries of the explained samples


def test_report_escapes_untrusted_text(setup):
    model, card, ref, ds, _, _ = setup
    data = type(ds)(**{**ds.__dict__, "splits": {**ds.splits, "test": ds.splits["test"].subset(np.arange(30))}})
    split = data.splits["test"]
    split.ids = split.ids.astype(object)
    split.ids[0] = "<script>alert(1)</script>"
    result = run_inference(model, split, task=card.task, prototypes=ref.prototypes)
    audit = run_audit(model, card, data, "test", data_name="<i>x</i>", reference=PreparedReference(ref),
                      result=result)
    audit.table.loc[0, "any_flag"] = True
    rows = explain_rows(model, card, split, result, ref, ["<script>alert(1)</script>"], audit.flags)
    text = build_report(card, audit, result, rows, title="t")
    assert "<script>alert(1)</script>" not in text and "<i>x</i>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_unknown_sample_id(setup):
    model, card, ref, ds, _, _ = setup
    split = ds.splits["test"]
    result = run_inference(model, split, task=card.task)
    with pytest.raises(ValueError, match="not in this split"):
        explain_rows(model, card, split, result, ref, ["nope"])


def test_reliability_table_by_hand(setup):
    model, card, _, ds, _, _ = setup
    result = run_inference(model, ds.splits["test"], task=card.task)
    table = reliability_table(result, bins=5)
    conf = result.probabilities.max(1)
    top = conf >= 0.8
    row = table[table.bin == 0.9].iloc[0]
    assert row.n == top.sum()
    assert row.accuracy == pytest.approx(np.mean(result.predictions[top] == result.labels[top]))
    assert table.n.sum() == len(result)


def test_cli_report(setup, tmp_path, capsys):
    _, _, _, ds, run, data = setup
    out = tmp_path / "report.html"
    sample = str(ds.splits["test"].ids[2])
    code = main(["report", "--checkpoint", str(run), "--data", str(data), "--samples", sample,
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    text = out.read_text()
    assert f"Sample {sample}" in text and len(PLOTLY_BUNDLE.findall(text)) == 1
    assert "wrote" in capsys.readouterr().out
    bad = main(["report", "--checkpoint", str(run), "--data", str(data), "--samples", "nope", "--out",
                str(tmp_path / "bad.html"), "--device", "cpu"])
    assert bad == 2 and "not in this split" in capsys.readouterr().err
    assert not (tmp_path / "bad.html").exists()


@pytest.mark.browser
def test_report_opens_in_chromium(setup, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is missing")
    model, card, ref, ds, _, _ = setup
    split = ds.splits["test"]
    path = write_report(tmp_path / "report.html",
                        make_report(model, card, ds, "test", data_name=DIGITS.name,
                                    reference=PreparedReference(ref), sample_ids=[str(split.ids[0])]))
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(path.resolve().as_uri())
            sync_api.expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=30_000)
            assert page.locator(".js-plotly-plot").count() == 3
        finally:
            browser.close()
    assert errors == []
