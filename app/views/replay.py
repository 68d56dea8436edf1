"""Replay: how alignment formed during training, epoch by epoch, on a fixed probe batch."""

from __future__ import annotations

import itertools
from pathlib import Path

import streamlit as st

from app import charts, session
from app.figures import train as fig
from app.loaders import demo_model_dir
from decalign.safe_output import markdown_text
from decalign.train import background as bg
from decalign.train.replay import REPLAY_DIR, Replay, ReplayError, has_replay, load_replay
from decalign.train.runs import read_history


@st.cache_resource(max_entries=4, show_spinner="Reading the replay…")
def _replay(path: str, stamp: float) -> Replay:
    return load_replay(path)


def _choices() -> dict[str, Path]:
    runs = {r.name: r.path for r in bg.list_runs() if has_replay(r.path)}
    demo = demo_model_dir()
    return {**runs, **({"bundled demo": demo} if has_replay(demo) else {})}


def render() -> None:
    st.title("Replay training")
    st.caption("How alignment formed, epoch by epoch.")
    choices = _choices()
    if not choices:
        st.info("No run with a replay yet: runs started on the Train page record one (decalign train --replay). "
                "Meanwhile, the bundled demo's history shows each loss term and alignment level per epoch.")
        history = read_history(demo_model_dir())
        if history:
            charts.show(fig.history_loss_figure(history), key="replay_history")
        return
    name = st.selectbox("Run", list(choices), key="replay_run",
                        on_change=session.restart_replay)
    path = choices[name]
    try:
        replay = _replay(str(path), (path / REPLAY_DIR / "index.json").stat().st_mtime)
    except ReplayError as exc:
        st.error(markdown_text(exc))
        return
    st.caption(f"{len(replay.probe_ids)} fixed validation samples, recorded after every epoch. Each frame is a PCA "
               "of that epoch's pooled unique and common features, rotated onto the previous frame (orthogonal "
               "Procrustes) so the picture does not jump. Prototype numbers are per epoch (EM on the probe), "
               "so a number may change meaning between epochs.")
    epochs = replay.epoch_numbers
    epoch = st.select_slider("Epoch", epochs, value=epochs[-1], key=session.Key.REPLAY_EPOCH)
    frame = replay.at(epoch)
    summary = replay.summary()
    charts.show(fig.replay_curves(summary, epoch), key="replay_curves")
    st.caption("Entropy falling = the plan sharpens onto fewer prototype tuples; separation rising = unique and "
               "common features of a modality move apart; decoupling falling = their cosine similarity shrinks.")
    left, right = st.columns([3, 2])
    charts.show_in(left, fig.replay_scatter(frame, replay.labels), key="replay_scatter")
    with right:
        pairs = list(itertools.combinations(replay.modalities, 2))
        a, b = st.selectbox("Modality pair", pairs, format_func=" – ".join, key="replay_pair")
        charts.show(fig.plan_heatmap(frame.pair_plans[(a, b)], a, b, f"Epoch {epoch}: plan {a} – {b}"),
                    key="replay_plan")
        st.dataframe(summary.set_index("epoch").loc[[epoch]].T.rename(columns={epoch: "value"}),
                     key="replay_values")
    modality = st.selectbox("Animate the prototypes of", replay.modalities, key="replay_modality")
    charts.show(fig.prototype_animation(replay, modality), key="replay_animation")
