"""Figures and tables of the Train and Replay pages: runs, live losses, validation metrics, the replay."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from decalign.loss_names import ALIGNMENT_LEVELS, LOSS_KEYS
from decalign.train.background import RunInfo
from decalign.train.metrics import display_name
from decalign.train.replay import Replay, ReplayEpoch

from .style import PALETTE, by_family, epoch_axis, short_hash

TERMS = LOSS_KEYS
LEVELS = ALIGNMENT_LEVELS


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    seconds = round(seconds)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def progress_text(progress: dict[str, Any] | None, state: str) -> tuple[float, str]:
    """(fraction for st.progress, caption): epoch, batch and time left."""
    if not progress:
        return 0.0, f"{state}: waiting for the first batch…"
    text = (f"{state} · epoch {progress['epoch']}/{progress['total_epochs']} · batch {progress['batch']}/"
            f"{progress['num_batches']} · {format_seconds(progress.get('eta_s'))} left")
    return float(progress.get("fraction", 0.0)), text


def runs_table(runs: list[RunInfo], progress: dict[str, dict[str, Any] | None] | None = None) -> pd.DataFrame:
    """One row per run. ``progress`` (run name -> its progress.json) makes an active run's row say what its
    progress bar says: the epoch in progress and the batch, not only the last finished epoch."""
    rows = []
    for r in runs:
        metric = r.selection_metric
        live = (progress or {}).get(r.name) if r.state in ("starting", "running") else None
        rows.append({"run": r.name, "status": _status_text(r, live), "epochs done": r.epoch,
                     "of": r.num_epochs, "best epoch": r.best_epoch,
                     "best valid": f"{display_name(metric)} {r.best_metrics[metric]:.4f}"
                     if metric in r.best_metrics else "",
                     "test": _test_text(r), "data": (r.data or "").rsplit("/", 1)[-1],
                     "fingerprint": short_hash(r.data_fingerprint),
                     "d": r.config.get("model", {}).get("d_model"), "K": r.config.get("model", {}).get("num_prototypes"),
                     "lr": r.config.get("train", {}).get("learning_rate")})
    return pd.DataFrame(rows)


def _status_text(run: RunInfo, progress: dict[str, Any] | None) -> str:
    if not progress:
        return run.state
    return (f"{run.state} · epoch {progress.get('epoch')}/{progress.get('total_epochs')}, batch "
            f"{progress.get('batch')}/{progress.get('num_batches')}")


def _test_text(run: RunInfo) -> str:
    """The finished run's test metrics, in brief (accuracy or MAE first)."""
    test = run.test_metrics
    shown = [k for k in ("Acc", "WAF1", "MAE", "Corr", "Has0_acc_2", "Mult_acc_2") if k in test][:2]
    return " · ".join(f"{display_name(k)} {test[k]:.4f}" for k in shown)


def batch_loss_figure(progress: dict[str, Any] | None) -> go.Figure:
    """Every loss term and alignment level of the current epoch's batches (two panels)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss terms", "alignment levels"))
    batches = (progress or {}).get("batches") or []
    frame = pd.DataFrame(batches)
    mode = "lines+markers" if len(frame) <= 50 else "lines"  # one batch an epoch is still a visible point
    for col, names in ((1, TERMS), (2, LEVELS)):
        for name in names:
            if name in frame:
                fig.add_trace(go.Scatter(x=frame["batch"], y=frame[name], mode=mode, name=name), row=1, col=col)
    epoch = (progress or {}).get("epoch", "")
    fig.update_layout(title=f"Epoch {epoch}: batch losses", height=320, margin={"t": 60, "b": 30})
    fig.update_xaxes(title_text="batch", tickformat="d", rangemode="tozero")
    return fig


def history_loss_figure(history: list[dict[str, Any]]) -> go.Figure:
    """Training loss terms and alignment levels per epoch (means over the epoch), two panels."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss terms", "alignment levels"))
    epochs = [row["epoch"] for row in history]
    for col, names in ((1, TERMS), (2, LEVELS)):
        for name in names:
            values = [row.get("train", {}).get(name) for row in history]
            if any(v is not None for v in values):
                fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=name), row=1, col=col)
    fig.update_layout(title="Per epoch (training split)", height=320, margin={"t": 60, "b": 30})
    fig.update_yaxes(type="log", row=1, col=2)  # the levels differ by orders of magnitude
    return epoch_axis(fig, epochs)


def valid_metrics_figure(history: list[dict[str, Any]]) -> go.Figure:
    """Validation metrics per epoch (per-class F1 left out): one panel per metric family (loss, scores,
    error, correlation), so no two scales share an axis; the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    keys = [k for k in (history[0].get("valid", {}) if history else {}) if not k.startswith("F1_class_")]
    families = by_family(keys) or {"loss": []}
    fig = make_subplots(rows=1, cols=len(families), subplot_titles=list(families), horizontal_spacing=0.08)
    colour = iter(PALETTE * 3)
    for col, (family, names) in enumerate(families.items(), start=1):
        for key in names:
            values = [row.get("valid", {}).get(key) for row in history]
            fig.add_trace(go.Scatter(x=epochs, y=values, mode="lines+markers", name=display_name(key),
                                     line={"color": next(colour)}), row=1, col=col)
    best = [row["epoch"] for row in history if row.get("improved")]
    for epoch in best[-1:]:
        fig.add_vline(x=epoch, line_dash="dot", annotation_text="best")
    fig.update_layout(title="Validation metrics", height=320, margin={"t": 60, "b": 30})
    return epoch_axis(fig, epochs)


# ------------------------------------------------------------------------------------------- replay


def replay_scatter(epoch: ReplayEpoch, labels: np.ndarray | None) -> go.Figure:
    """Probe samples' unique (circles) and common (crosses) features per modality, prototype means (stars)."""
    fig = go.Figure()
    palette = qualitative.Plotly
    for i, m in enumerate(epoch.unique_xy):
        color = palette[i % len(palette)]  # one colour per modality; the symbol tells the space
        for space, xy, symbol in (("unique", epoch.unique_xy[m], "circle"), ("common", epoch.common_xy[m], "x")):
            hover = None if labels is None else [f"label {v}" for v in labels]
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=f"{space} · {m}", text=hover,
                                     marker={"symbol": symbol, "size": 5, "opacity": 0.55, "color": color},
                                     legendgroup=m))
        p = epoch.prototype_xy[m]
        sizes = 10 + 40 * epoch.weights[m] / max(epoch.weights[m].max(), 1e-12)
        fig.add_trace(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers+text", name=f"prototypes · {m}",
                                 text=[str(k) for k in range(len(p))], textposition="top center",
                                 marker={"symbol": "star", "size": sizes, "color": color,
                                         "line": {"width": 1, "color": "black"}},
                                 legendgroup=m))
    fig.update_layout(title=f"Epoch {epoch.epoch}: probe features and prototypes (PCA, aligned across epochs)",
                      height=520, xaxis_title="PC 1", yaxis_title="PC 2")
    return fig


def plan_heatmap(plan: np.ndarray, a: str, b: str, title: str = "") -> go.Figure:
    fig = go.Figure(go.Heatmap(z=plan, x=[f"{b} {k}" for k in range(plan.shape[1])],
                               y=[f"{a} {k}" for k in range(plan.shape[0])], colorscale="Blues",
                               colorbar={"title": "mass"}))
    fig.update_layout(title=title or f"Transport plan {a} – {b}", height=420, yaxis_autorange="reversed")
    return fig


def replay_curves(summary: pd.DataFrame, current: int | None = None) -> go.Figure:
    """Over epochs: plan entropy (normalised), unique/common separation, decoupling level."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "plan entropy / log(#cells)", "unique vs common separation (silhouette)", "decoupling (squared cosine)"))
    x = summary["epoch"]
    entropy = summary["plan_entropy_normalised"].where(summary["plan_entropy_normalised"].notna(),
                                                       summary["pair_entropy"])
    for col, y in ((1, entropy), (2, summary["separation"]), (3, summary.get("decoupling"))):
        if y is not None:
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", showlegend=False), row=1, col=col)
        if current is not None:
            fig.add_vline(x=current, line_dash="dot", row=1, col=col)
    fig.update_layout(height=300, margin={"t": 50, "b": 30})
    return epoch_axis(fig, x)


def prototype_animation(replay: Replay, modality: str) -> go.Figure:
    """Plotly animation (one frame per epoch) of one modality's prototype means in the aligned frame."""
    def trace(e: ReplayEpoch) -> go.Scatter:
        p = e.prototype_xy[modality]
        return go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers+text", text=[str(k) for k in range(len(p))],
                          textposition="top center", marker={"symbol": "star", "size": 14})

    points = np.concatenate([e.prototype_xy[modality] for e in replay.epochs])
    pad = 0.1 * (points.max(0) - points.min(0) + 1e-9)
    frames = [go.Frame(data=[trace(e)], name=str(e.epoch)) for e in replay.epochs]
    fig = go.Figure(data=[trace(replay.epochs[0])], frames=frames)
    steps = [{"method": "animate", "label": str(e.epoch),
                  "args": [[str(e.epoch)], {"mode": "immediate", "frame": {"duration": 400, "redraw": True}}]}
             for e in replay.epochs]
    fig.update_layout(
        title=f"Prototypes of {modality} over the epochs", height=420,
        xaxis={"range": [points[:, 0].min() - pad[0], points[:, 0].max() + pad[0]], "title": "PC 1"},
        yaxis={"range": [points[:, 1].min() - pad[1], points[:, 1].max() + pad[1]], "title": "PC 2"},
        sliders=[{"steps": steps, "currentvalue": {"prefix": "epoch "}}],
        updatemenus=[{"type": "buttons", "buttons": [{"label": "Play", "method": "animate",
                                                        "args": [None, {"frame": {"duration": 400}}]}]}])
    return fig
