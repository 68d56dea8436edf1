"""Train: pick data and settings, start a run in its own process, follow it live, cancel or resume it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import streamlit as st

from app import charts, loaders, session
from app.figures import train as fig
from app.figures.overview import label_distribution_figure
from decalign.checkpoint import CheckpointError, load_card
from decalign.config import ConfigError, DecAlignConfig
from decalign.data import DataError
from decalign.defaults import data_defaults, describe
from decalign.safe_output import markdown_text
from decalign.train import background as bg
from decalign.train.baseline import card_comparison
from decalign.train.losses import match_task_loss
from decalign.train.metrics import display_name
from decalign.train.trainer import check_trainable

# A live run's page redraws its progress every REFRESH_S and its charts every CHART_REFRESH_S. Both cost the
# server and the browser CPU on the cores the training shares, and every CPU-second they take comes out of
# the training. Measured on 2 cores while a demo run trained, the browser's share: the progress part
# 0.06-0.08 of a core at a 2 s refresh; the three charts 0.17-0.21 at 6 s (each redraw of a changed chart
# costs about 0.3 CPU-s: to Streamlit a changed figure is a new element, and plotly draws it twice); the
# page open and not refreshing 0.02. At these values the browser takes 0.11-0.13 of a core.
REFRESH_S = 3.0
CHART_REFRESH_S = 15.0
DEMO_DATA = loaders.DEMO_DATA
DEMO_CONFIG = loaders.ROOT / "assets" / "demo_config.json"
TRAINING_DATA_KINDS = ("Bundled demo data (UCI digits)", "Upload a file")
CONFIG_KINDS = ("Chosen from the data", "Demo settings", "Library defaults (official MOSI settings)",
                "Upload a config file")
# (section, field, label, kind): the settings the form edits; everything else comes from the base config.
FIELDS = [
    ("model", "num_prototypes", "Prototypes K", int), ("model", "d_model", "Width d", int),
    ("model", "num_heads", "Attention heads", int), ("model", "num_layers", "Layers", int),
    ("train", "dec_loss_weight", "Decoupling weight", float), ("train", "alpha", "Alpha (heterogeneity)", float),
    ("train", "beta", "Beta (homogeneity)", float), ("train", "ct_weight", "Contrastive weight", float),
    ("train", "learning_rate", "Learning rate", float), ("train", "num_epochs", "Epochs", int),
    ("train", "batch_size", "Batch size", int), ("train", "seed", "Seed", int),
]


def render() -> None:
    st.title("Train")
    st.caption(f"Runs are saved in {markdown_text(bg.runs_root())} (set DECALIGN_RUNS_DIR to change it). Training runs in "
               "its own process: refresh the page or open another tab and you see the same run.")
    with st.expander("New run", expanded=session.new_run_open(not bg.list_runs())):
        _new_run()
    runs = bg.list_runs()
    if not runs:
        st.info("No runs yet.")
        return
    active = any(r.state in bg.ACTIVE for r in runs)
    # The table, the chosen run and its progress are drawn from one reading of the runs' files, every
    # REFRESH_S while any run is active: the table and the progress bar never disagree. The charts refresh
    # in a fragment of their own, less often: each redraw of a changed chart costs the server and the
    # browser CPU that the training process on the same cores needs.
    st.fragment(_runs_panel, run_every=REFRESH_S if active else None)(active)
    st.fragment(_charts_panel, run_every=CHART_REFRESH_S if active else None)()


def _runs_panel(was_active: bool) -> None:
    runs = bg.list_runs()
    views = {r.name: bg.live_view(r.path) for r in runs if r.state in bg.ACTIVE}
    if was_active and not views:
        st.rerun()  # the last active run just ended: redraw the page once (no more refreshing)
    st.subheader("Runs")
    st.dataframe(fig.runs_table(runs, {n: v.progress for n, v in views.items()}), hide_index=True,
                 key="train_runs_table")
    names = [r.name for r in runs]
    session.followed_run(names)
    name = st.selectbox("Run to follow", names, key=session.Key.TRAIN_RUN,
                        on_change=session.mark_followed_changed)
    if session.take_followed_changed():
        st.rerun()  # the whole page: the charts' fragment follows the chosen run now, not at its next refresh
    run = next(r for r in runs if r.name == name)
    _progress(run, views.get(name) or bg.live_view(run.path))


def _charts_panel() -> None:
    """The followed run's charts and details, refreshed every CHART_REFRESH_S while a run is active."""
    runs = bg.list_runs()
    if not runs:
        return  # the run folders were removed since the page was drawn: its progress part redraws it
    name = session.followed_run([r.name for r in runs])
    run = next(r for r in runs if r.name == name)
    _charts(bg.live_view(run.path))
    _details(run)  # the run as the list just read it, not read again


# --------------------------------------------------------------------------------------------- new run


def _new_run() -> None:
    data = _pick_data()
    base = _pick_config(data[3] if data is not None else None)
    if base is None or data is None:
        return
    config_id = hashlib.sha256(json.dumps(base.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    with st.form("train_form"):
        st.markdown("**Settings** (the rest comes from the configuration chosen above)")
        cols = st.columns(4)
        values = {}
        for i, (section, name, label, kind) in enumerate(FIELDS):
            current = getattr(getattr(base, section), name)
            widget_key = f"train_{name}_{config_id}"  # new defaults when the base config changes
            with cols[i % 4]:
                if kind is int:
                    values[(section, name)] = st.number_input(label, value=int(current), step=1, key=widget_key)
                else:
                    values[(section, name)] = st.number_input(label, value=float(current), format="%g",
                                                              key=widget_key)
        run_name = st.text_input("Run name (optional)", key="train_name")
        submitted = st.form_submit_button("Start training", type="primary")
    if submitted:
        _start(data, base, values, run_name)
    if session.train_error():
        st.error(markdown_text(session.train_error()))


def _pick_data() -> tuple | None:
    """(bytes, file name, task, dataset) of the checked upload, (None, demo name, task, dataset) for the demo;
    None: no data yet."""
    kind = st.radio("Data", TRAINING_DATA_KINDS, key="train_data_kind", horizontal=True)
    if kind == TRAINING_DATA_KINDS[0]:
        dataset = loaders.dataset_from_path(DEMO_DATA)[0]
        _glance(dataset, DEMO_DATA.name)
        return None, DEMO_DATA.name, dataset.task, dataset
    key = session.uploader_key("train_upload", session.Key.TRAIN_UPLOAD_GEN)
    upload = st.file_uploader("MMSA pickle (.pkl) or .npz with train and valid splits",
                              type=["pkl", "pickle", "npz"], key=key)
    if upload is not None:
        _take_upload(upload)
    if session.error(session.Key.TRAIN_UPLOAD_ERROR):
        st.error(markdown_text(session.error(session.Key.TRAIN_UPLOAD_ERROR)))
    taken = session.train_upload()
    if taken is None:
        return None
    name, digest, data = taken
    dataset = loaders.dataset_from_bytes(digest, data, name)  # read when it was taken: cached
    st.caption(f"**{markdown_text(name)}** is the training data. Drop another file above to replace it.")
    _glance(dataset, name)
    return data, name, dataset.task, dataset


def _take_upload(upload) -> None:
    """Read a dropped file (the uploader's value); keep it as the training data when it reads, else say why
    (the previous one stays). Either way the uploader is emptied (``session.empty_uploader_and_rerun``): this
    page also hashed a file left in it again on every rerun."""
    data, name = upload.getvalue(), upload.name
    digest = hashlib.sha256(data).hexdigest()
    try:
        check_trainable(loaders.dataset_from_bytes(digest, data, name))
    except (DataError, ValueError) as exc:
        kept = session.train_upload()
        session.set_error(session.Key.TRAIN_UPLOAD_ERROR,
                          f"{exc} (not used{f': still training on {kept[0]}' if kept else ''})")
    else:
        session.set_train_upload(name, digest, data)
        session.clear_error(session.Key.TRAIN_UPLOAD_ERROR)
    session.empty_uploader_and_rerun(session.Key.TRAIN_UPLOAD_GEN, upload)


def _glance(dataset, name: str) -> None:
    modalities = ", ".join(f"{m} {t}×{d}" for m, (t, d) in dataset.modalities.items())
    st.caption(f"{markdown_text(name)}: {dataset.task}, modalities {markdown_text(modalities)}, splits "
               + ", ".join(f"{s} {len(p)}" for s, p in dataset.splits.items()))
    for warning in dataset.report.warnings:
        st.warning(markdown_text(f"Small data: {warning}."))
    charts.show(label_distribution_figure(dataset, dataset.class_names), key="train_data_labels")


def _pick_config(dataset) -> DecAlignConfig | None:
    kind = st.radio("Start from", CONFIG_KINDS, key="train_config_kind", horizontal=True)
    if kind == CONFIG_KINDS[0]:
        if dataset is None:
            st.info("Pick the data first: the settings are chosen from its number of samples.")
            return None
        config = data_defaults(dataset)
        st.caption(f"Chosen from {len(dataset.splits['train']):,} training samples by the documented rule "
                   f"(README, 'Settings chosen from the data'): {describe(config)}.")
        return config
    if kind == CONFIG_KINDS[1]:
        return DecAlignConfig.from_json(DEMO_CONFIG)
    if kind == CONFIG_KINDS[2]:
        return DecAlignConfig()
    upload = st.file_uploader("Configuration (this project's JSON or an official DecAlign config)", type=["json"],
                              key="train_config_upload")
    if upload is None:
        st.info("Upload a JSON configuration, or start from the demo settings or the defaults.")
        return None
    try:
        return DecAlignConfig.from_dict(json.loads(upload.getvalue().decode("utf-8")), source=upload.name)
    except (ConfigError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        st.error(f"{markdown_text(upload.name)}: {markdown_text(exc)}")
        return None


def _start(data: tuple, base: DecAlignConfig, values: dict, run_name: str) -> None:
    session.set_train_error(None)
    content, filename, task, _ = data
    try:
        config = base.override([f"{s}.{n}={v}" for (s, n), v in values.items()])
    except ConfigError as exc:
        session.set_train_error(f"Settings refused: {exc}")
        return
    config, note = match_task_loss(config, task)
    run_dir = bg.new_run_dir(run_name)
    path = DEMO_DATA if content is None else bg.save_upload(run_dir, content, filename)
    bg.start_training(run_dir, path, config)
    session.follow_run(run_dir.name)
    st.toast(markdown_text(f"Started run {run_dir.name}" + (f" ({note})" if note else "")))


# ------------------------------------------------------------------------------------------- live view


def _progress(run: bg.RunInfo, view: bg.LiveView) -> None:
    state = view.state
    fraction, text = fig.progress_text(view.progress, state.state)
    st.progress(fraction, text=text)
    _controls(run.path, state)
    if state.state == "finished":
        _test_metrics(run)


def _charts(view: bg.LiveView) -> None:
    progress, history = view.progress, view.history
    if view.state.state in bg.ACTIVE and progress and progress.get("batches"):
        st.caption(f"While the run trains, the progress bar is updated every {REFRESH_S:g} s and the charts "
                   f"every {CHART_REFRESH_S:g} s.")
        charts.show(fig.batch_loss_figure(progress), key="train_batch_losses")
    if history:
        left, right = st.columns(2)
        charts.show_in(left, fig.history_loss_figure(history), key="train_epoch_losses")
        charts.show_in(right, fig.valid_metrics_figure(history), key="train_valid_metrics")


def _test_metrics(run: bg.RunInfo) -> None:
    """The finished run's metrics on the test split (the best epoch's weights), as the card records them."""
    shown = {k: v for k, v in run.test_metrics.items() if not k.startswith("F1_class_")}
    if not shown:
        st.caption("The data has no labelled test split: no test metrics.")
        return
    st.markdown(f"**Test metrics** (best epoch {run.best_epoch})")
    for column, (key, value) in zip(st.columns(len(shown)), shown.items()):
        column.metric(display_name(key), f"{value:.4f}")


def _controls(run_dir: Path, state: bg.RunState) -> None:
    name = state.state
    if name in bg.ACTIVE:
        if state.cancel_requested:
            st.info("Cancelling after the current batch…")
        elif st.button("Cancel", key="train_cancel"):
            bg.cancel_training(run_dir)
            st.rerun(scope="fragment")
    elif name == "finished":
        st.success(f"Finished after epoch {state.epoch}. Open it on the Compare or Replay page, or pick it "
                   "as 'Training run' in the sidebar to explore it on every page.")
        _baseline(run_dir)
    elif name in bg.RESUMABLE:
        message = {"cancelled": "Cancelled", "failed": "Failed", "crashed": "Crashed (the process is gone)"}[name]
        error = f" {markdown_text(state.error)}" if state.error else ""
        st.warning(f"{message} after epoch {state.epoch}.{error}")
        if state.resumable and st.button("Resume", key="train_resume"):
            try:
                bg.resume_training(run_dir)
            except (RuntimeError, ConfigError, OSError) as exc:
                st.error(f"Cannot resume: {markdown_text(exc)}")
                return
            st.rerun()  # full rerun: the fragment now refreshes every second


def _baseline(run_dir: Path) -> None:
    try:
        comparison = card_comparison(load_card(run_dir))
    except CheckpointError as exc:
        st.warning(f"The run's card cannot be read: {markdown_text(exc)}")
        return
    if comparison is not None:
        (st.info if comparison["verdict"] == "beats" else st.warning)(comparison["sentence"])


def _details(run: bg.RunInfo) -> None:
    with st.expander("Run details: configuration, data, log"):
        st.markdown(f"Data: {markdown_text(run.data)}  \nFingerprint: {markdown_text(run.data_fingerprint)}  \n"
                    f"Folder: {markdown_text(run.path)}")
        st.code(json.dumps(run.config, indent=2), language="json")
        log = run.path / "train.log"
        if log.exists():
            st.code(log.read_text(encoding="utf-8", errors="replace")[-3000:] or "(empty)", language="text")


def _card_note(run_dir: Path) -> str | None:
    """The run card's note on how the number of prototypes was fitted to the data, if any."""
    if not (run_dir / "card.json").is_file():
        return None
    try:
        return load_card(run_dir).extra.get("prototype_note")
    except (CheckpointError, OSError):
        return None
