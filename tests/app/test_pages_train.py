"""AppTest of the Train, Replay and Compare pages on two tiny runs (synthetic, two modalities, d=8, 2 epochs)."""

from __future__ import annotations

import json
import shutil
import time
from types import SimpleNamespace

import numpy as np
import pytest
from browser_utils import shown

from decalign.config import DecAlignConfig, ModelConfig, TrainConfig
from decalign.data import MultimodalDataset, load_dataset, make_synthetic, save_npz
from decalign.safe_output import markdown_text
from decalign.train import train
from decalign.train.background import kill_training, list_runs, run_state

CONFIG = DecAlignConfig(ModelConfig(d_model=8, num_heads=2, num_layers=1, num_prototypes=3, pde_dim=8),
                        TrainConfig(task_loss="cross_entropy", batch_size=32, learning_rate=3e-3, num_epochs=2))


FIXTURE_RUNS = ("20260101-000000-seed0", "20260101-000001-seed1")  # named like new_run_dir's folders


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """A runs folder with two finished tiny runs (seeds 0 and 1) on the same npz, set as DECALIGN_RUNS_DIR."""
    root = tmp_path_factory.mktemp("runs")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    save_npz(make_synthetic(96, 48, 48, widths={"a": 5, "b": 4}, seq_len=3, task="classification",
                            num_classes=3, seed=2), path)
    for seed in (0, 1):
        run = root / FIXTURE_RUNS[seed]
        config = CONFIG.override([f"train.seed={seed}"])
        (run / "data").mkdir(parents=True)
        data = run / "data" / path.name  # as the Train page stores an upload: a card names data in its run
        shutil.copyfile(path, data)
        (run / "config.json").write_text(json.dumps(config.to_dict()))
        (run / "request.json").write_text(json.dumps({"data": str(data), "device": "cpu", "replay": True}))
        train(load_dataset(data), config, run, replay=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("DECALIGN_RUNS_DIR", str(root))
    yield root, path
    mp.undo()


def frame(at, *columns: str):
    """The first table on the page with these columns (AppTest does not keep a dataframe's key)."""
    for table in at.dataframe:
        value = table.value
        if set(columns) <= set(value.columns) | set(value.index):
            return value
    raise AssertionError(f"no table with {columns}")


def test_train_page_lists_runs_and_shows_a_finished_run(page_test, runs_dir):
    at = page_test("train").run()
    assert not at.exception
    table = frame(at, "run", "status", "best valid")
    assert list(table["run"]) == sorted(p.name for p in runs_dir[0].iterdir())[::-1]
    assert set(table["status"]) == {"finished"}
    assert any("Finished after epoch 2" in s.value for s in at.success)
    # the linear baseline beside the model, in one sentence with both numbers
    sentences = [m.value for m in [*at.info, *at.warning] if "linear baseline" in m.value]
    assert len(sentences) == 1 and "a logistic regression" in sentences[0] and "test split" in sentences[0]
    assert at.selectbox(key="train_run").value == table["run"][0]
    # the charts' fragment follows the chosen run: its details name that run's folder
    for chosen in (table["run"][0], table["run"].iloc[-1]):
        at.selectbox(key="train_run").set_value(chosen).run()
        details = [m.value for m in at.markdown if m.value.startswith("Data: ")]
        assert len(details) == 1 and details[0].endswith(f"Folder: {markdown_text(runs_dir[0] / chosen)}")
    labels = [n.label for n in at.number_input]
    assert {"Prototypes K", "Width d", "Alpha (heterogeneity)", "Learning rate", "Epochs", "Seed"} <= set(labels)


def test_train_page_shows_config_errors(page_test, runs_dir):
    at = page_test("train").run()
    at.radio(key="train_config_kind").set_value("Upload a config file").run()
    bad = json.dumps({"model": {"d_model": 8, "no_such_field": 1}}).encode()
    at.file_uploader(key="train_config_upload").set_value(("bad.json", bad, "application/json")).run()
    assert not at.exception
    assert any("bad.json" in shown(e.value) and "no_such_field" in shown(e.value) for e in at.error)


def test_train_page_starts_a_run_on_an_upload_and_it_finishes(page_test, runs_dir, tmp_path):
    root, data_path = runs_dir
    at = page_test("train").run()
    at.radio(key="train_data_kind").set_value("Upload a file").run()
    at.file_uploader(key="train_upload").set_value(("tiny.npz", data_path.read_bytes(), "application/octet-stream"))
    at.run()
    assert any("Chosen from 96 training samples" in c.value for c in at.caption)  # the default: from the data
    # The file taken in leaves the uploader (Streamlit would deep-copy it, and the page hash it, every rerun);
    # a file that cannot be read is refused with its name and the one taken stays.
    (uploader,) = [u for u in at.get("file_uploader") if u.key.startswith("train_upload")]
    assert uploader.key == "train_upload_1" and uploader.value is None
    assert any("tiny.npz** is the training data" in shown(c.value) for c in at.caption)
    uploader.set_value(("broken.npz", b"not an archive", "application/octet-stream")).run()
    assert any("broken.npz" in shown(e.value) and "still training on tiny.npz" in shown(e.value) for e in at.error)
    assert [u.key for u in at.get("file_uploader") if u.key.startswith("train_upload")] == ["train_upload_2"]
    assert any("tiny.npz** is the training data" in shown(c.value) for c in at.caption)
    # an evaluation-only file (no train split) is refused before any setting is chosen from it
    evaluation = make_synthetic(0, 0, 12, seed=4)
    save_npz(MultimodalDataset({"test": evaluation.splits["test"]}, evaluation.task), tmp_path / "eval.npz")
    (uploader,) = [u for u in at.get("file_uploader") if u.key.startswith("train_upload")]
    uploader.set_value(("eval.npz", (tmp_path / "eval.npz").read_bytes(), "application/octet-stream")).run()
    assert not at.exception
    assert any("eval.npz" in shown(e.value) and "'train' split has 0 sample(s)" in shown(e.value) for e in at.error)
    assert any("tiny.npz** is the training data" in shown(c.value) for c in at.caption)
    width = lambda: next(w.value for w in at.number_input if w.label == "Width d")
    assert width() == 32  # the rule: fewer than 2,000 training samples
    at.radio(key="train_config_kind").set_value("Library defaults (official MOSI settings)").run()
    assert width() == 40
    settings = {"Prototypes K": 3, "Width d": 8, "Attention heads": 2, "Layers": 1, "Epochs": 1, "Batch size": 32}
    for widget in at.number_input:
        if widget.label in settings:
            widget.set_value(settings[widget.label])
    at.text_input(key="train_name").set_value("from-upload")
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    started = [r for r in list_runs(root) if r.name.endswith("from-upload")]
    assert len(started) == 1
    run = started[0].path
    try:
        assert (run / "data" / "tiny.npz").read_bytes() == data_path.read_bytes()  # saved for the subprocess
        config = json.loads((run / "config.json").read_text())
        assert config["model"]["d_model"] == 8 and config["train"]["num_epochs"] == 1
        deadline = time.monotonic() + 180
        while run_state(run).state in ("starting", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run_state(run).state == "finished", (run / "train.log").read_text()
    finally:
        kill_training(run)
    at.run()
    assert at.selectbox(key="train_run").value == run.name
    assert any("Finished after epoch 1" in s.value for s in at.success)


def test_replay_page_plays_back_the_epochs(page_test, runs_dir):
    root, _ = runs_dir
    at = page_test("replay").run()
    assert not at.exception
    at.selectbox(key="replay_run").set_value(next(p.name for p in root.iterdir() if p.name.endswith("seed0"))).run()
    slider = at.select_slider(key="replay_epoch")
    assert slider.value == 2
    slider.set_value(1).run()
    assert not at.exception
    values = frame(at, "value")
    assert "separation" in values.index and "plan_entropy" in values.index


@pytest.mark.usefixtures("runs_dir")
def test_compare_page_two_runs(page_test):
    at = page_test("compare").run()
    assert not at.exception
    names = [f"run {name}" for name in reversed(FIXTURE_RUNS)]  # the fixture's runs by name, not by date
    at.selectbox(key="compare_A").set_value(names[0])
    at.selectbox(key="compare_B").set_value(names[1]).run()
    assert not at.exception
    metrics = frame(at, "name", "A", "B", "better")
    assert {"A", "B", "change", "better"} <= set(metrics.columns)
    changes = frame(at, "prediction_A", "shift")
    assert len(changes) == 48 and changes["changed"].iloc[0] == changes["changed"].max()
    matches = frame(at, "prototype_A", "mass")
    assert np.isclose(matches["mass"].sum(), 1.0)


def test_compare_page_model_with_itself(page_test, runs_dir):
    root, _ = runs_dir
    at = page_test("compare").run()
    name = next(f"run {p.name}" for p in root.iterdir() if p.name.endswith("seed0"))
    at.selectbox(key="compare_A").set_value(name)
    at.selectbox(key="compare_B").set_value(name).run()
    assert not at.exception
    assert not frame(at, "prediction_A", "shift")["changed"].any()
    table = frame(at, "prototype_A", "mass")
    assert (table["prototype_A"] == table["prototype_B"]).all()


def test_a_live_runs_progress_and_charts_refresh_in_fragments_of_their_own(monkeypatch):
    """While a run is active the progress refreshes every REFRESH_S and the charts, whose redraws cost the
    training's cores most, in a fragment of their own every CHART_REFRESH_S; once none is, neither refreshes."""
    from app.views import train as view

    registered = []

    def fragment(body, run_every=None):
        registered.append((body.__name__, run_every))
        return lambda *args: None

    monkeypatch.setattr(view.st, "fragment", fragment)
    monkeypatch.setattr(view, "_new_run", lambda: None)
    for state, cadence in (("running", (view.REFRESH_S, view.CHART_REFRESH_S)), ("finished", (None, None))):
        registered.clear()
        monkeypatch.setattr(view.bg, "list_runs", lambda state=state: [SimpleNamespace(state=state)])
        view.render()
        assert registered == [("_runs_panel", cadence[0]), ("_charts_panel", cadence[1])]
    assert view.CHART_REFRESH_S > view.REFRESH_S
    monkeypatch.setattr(view.bg, "list_runs", list)
    view._charts_panel()  # the run folders removed while the page refreshes: nothing to draw, no error


def test_compare_opens_on_two_models_that_take_the_same_inputs(runs_dir):
    """B is the first other model with A's task and inputs: the bundled digits model, listed between the two
    fixture runs (two modalities a and b), is passed over; without a comparable model B is the next one, and the
    page says why they cannot be compared."""
    from app.loaders import demo_model_dir
    from app.views.compare import default_pair

    root, _ = runs_dir
    newer, older = (root / name for name in reversed(FIXTURE_RUNS))
    demo = demo_model_dir()
    assert default_pair({"newer": newer, "demo": demo, "older": older}) == (0, 2)
    assert default_pair({"newer": newer, "again": newer, "older": older}) == (0, 2)  # the same weights: passed over
    assert default_pair({"newer": newer, "demo": demo}) == (0, 1)
    assert default_pair({"demo": demo, "newer": newer, "older": older}) == (0, 1)
    assert default_pair({"newer": newer}) == (0, 0)
    assert default_pair({}) == (0, 0)
