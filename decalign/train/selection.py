"""Which validation value picks the best epoch (and early-stops), and which one the scheduler follows.

Official config files name these values as the official trainer's result dictionaries do
(``selection_metric: "Acc_2"``, ``"MOSI"``, ``"WAF1"``). :data:`OFFICIAL_METRICS` is the one table that
maps each official name onto this project's metric keys (``decalign.train.metrics``), per metric family;
any other name goes through :func:`decalign.train.metrics.resolve_metric_name` (short names, dataset
names meaning the validation loss, the exact keys).
"""

from __future__ import annotations

from ..config import DecAlignConfig
from .metrics import metric_direction, resolve_metric_name

F1_ACC = "F1Acc_score"  # the official composite 0.55 * F1 + 0.45 * Acc-2

# official name -> this project's key, for MOSI/MOSEI regression ("mosi"), CH-SIMS regression ("sims")
# and classification. The dataset names (MOSI, MOSEI, SIMS, IEMOCAP) mean the validation loss, "loss".
OFFICIAL_METRICS: dict[str, dict[str, str]] = {
    "mosi": {"Acc_2": "Non0_acc_2", "F1_score": "Non0_F1_score", "MAE": "MAE", "Corr": "Corr",
             "Acc_7": "Mult_acc_7", "F1Acc_score": F1_ACC, "F1_Acc_score": F1_ACC, "F1Acc": F1_ACC},
    "sims": {"Mult_acc_2": "Mult_acc_2", "Mult_acc_3": "Mult_acc_3", "Mult_acc_5": "Mult_acc_5",
             "F1_score": "F1_score", "MAE": "MAE", "Corr": "Corr"},
    "classification": {"WAcc": "Acc", "Acc": "Acc", "WAF1": "WAF1", "F1_score": "WAF1"},
}
DATASET_NAMES = ("MOSI", "MOSEI", "SIMS", "IEMOCAP")


def resolve_selection_metric(name: str, task: str, convention: str = "mosi") -> str:
    """This project's key for a metric name of a config (official or ours); ValueError if unknown."""
    family = "classification" if task == "classification" else convention
    if name in OFFICIAL_METRICS.get(family, {}):
        return OFFICIAL_METRICS[family][name]
    if name.strip().lower() == F1_ACC.lower():
        raise ValueError(f"{F1_ACC} combines F1_score and Acc_2 of MOSI/MOSEI regression; this is {family}")
    return resolve_metric_name(name, task, convention)


def selection_rule(config: DecAlignConfig, task: str, convention: str = "mosi") -> tuple[str, str]:
    """(metric key, "min"|"max") to select and early-stop on; "auto" = MAE (regression) or WAF1."""
    cfg = config.train
    name = cfg.selection_metric
    if name.strip().lower() == "auto":
        name = "MAE" if task == "regression" else "WAF1"
    key = resolve_selection_metric(name, task, convention)
    return key, metric_direction(key) if cfg.selection_mode == "auto" else cfg.selection_mode


def scheduler_rule(config: DecAlignConfig, task: str, convention: str = "mosi") -> tuple[str, str]:
    """(metric key, mode) that ReduceLROnPlateau follows: ``scheduler_metric``, or the selection metric."""
    cfg = config.train
    if cfg.scheduler_metric.strip().lower() == "auto":
        key = selection_rule(config, task, convention)[0]
    else:
        key = resolve_selection_metric(cfg.scheduler_metric, task, convention)
    return key, metric_direction(key) if cfg.scheduler_mode == "auto" else cfg.scheduler_mode


def with_composites(metrics: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    """``metrics`` plus the official composite when one of ``keys`` asks for it."""
    if F1_ACC not in keys:
        return metrics
    return {**metrics, F1_ACC: 0.55 * metrics["Non0_F1_score"] + 0.45 * metrics["Non0_acc_2"]}
