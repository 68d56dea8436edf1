"""A plain-language account of one prediction, built from templates (no language model).

Written for a reader who knows nothing of the model's internals: "modality-specific part" and "shared
part" are explained in words, and prototypes are called "typical patterns the model learned".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from .story import PrototypeStory

NEUTRAL_FRACTION = 1 / 6  # |value| below this share of the half-range reads as neutral (0.5 on MOSI's [-3, 3])
STRONG_FRACTION = 2 / 3


def describe_branch(branch: str) -> str:
    """ "unique:pixel" -> "the pixel data's modality-specific part (what only the pixel data shows)"."""
    part, modality = branch.split(":", 1)
    if part == "unique":
        return f"the {modality} data's modality-specific part (what only the {modality} data shows)"
    return f"the {modality} data's shared part (what it has in common with the other inputs)"


def class_name(card: ModelCard, index: int) -> str:
    names = card.class_names or []
    return names[index] if 0 <= index < len(names) else str(index)


def sentiment_word(value: float, label_range: list[float] | None) -> str | None:
    """negative / neutral / positive (with "strongly") for a label range symmetric around 0, else None."""
    if not label_range or not label_range[0] < 0 < label_range[1]:
        return None
    half = (label_range[1] - label_range[0]) / 2
    if abs(value) < NEUTRAL_FRACTION * half:
        return "neutral"
    word = "positive" if value > 0 else "negative"
    return f"strongly {word}" if abs(value) > STRONG_FRACTION * half else word


def plain_summary(card: ModelCard, result: InferenceResult, row: int, contributions_df: pd.DataFrame,
                  counterfactuals_df: pd.DataFrame | None = None, flags_row: pd.Series | dict | None = None,
                  story: PrototypeStory | None = None) -> str:
    """A few short paragraphs: the prediction, what carried it, how sure and typical, what-ifs, look-alikes."""
    parts = [_prediction(card, result, row), _drivers(contributions_df), _confidence(card, result, row, flags_row)]
    parts.append(_typicality(flags_row))
    if counterfactuals_df is not None and len(counterfactuals_df):
        parts.append(_what_if(card, result, counterfactuals_df))
    if story is not None and len(story.nearest):
        parts.append(_lookalikes(story, contributions_df))
    return "\n\n".join(p for p in parts if p)


def _value(card: ModelCard, result: InferenceResult, value) -> str:
    if result.task == "regression":
        return f"{float(value):.2f}"
    return f'"{class_name(card, int(value))}"'


def _prediction(card, result, row) -> str:
    pred = result.predictions[row]
    if result.task == "regression":
        text = f"The model predicts {float(pred):.2f}"
        if card.label_range:
            text += f" on a scale from {card.label_range[0]:g} to {card.label_range[1]:g}"
        word = sentiment_word(float(pred), card.label_range)
        text += f", which reads as {word}." if word else "."
    else:
        probs = result.probabilities[row]
        second = int(np.argsort(-probs)[1]) if len(probs) > 1 else int(pred)
        text = (f"The model predicts {_value(card, result, pred)} with probability {probs[pred]:.0%} "
                f"(next most likely: {_value(card, result, second)}, {probs[second]:.0%}).")
    if result.labels is not None:
        label = result.labels[row]
        if result.task == "regression":
            text += f" The recorded answer is {float(label):.2f} (off by {abs(float(pred) - float(label)):.2f})."
        else:
            verdict = "correct" if int(label) == int(pred) else "wrong"
            text += f" The recorded answer is {_value(card, result, label)}, so this prediction is {verdict}."
    return text


def _drivers(contributions_df: pd.DataFrame) -> str:
    branches = contributions_df[contributions_df.part != "bias"]
    total = branches.contribution.abs().sum()
    if total <= 0:
        return "No part of the input moved the prediction away from the model's starting value."
    share = branches.contribution.abs() / total
    order = np.argsort(-share.to_numpy())[:2]
    phrases = []
    for i in order:
        row = branches.iloc[i]
        direction = "" if row.contribution >= 0 else ", pushing against it"
        phrases.append(f"{describe_branch(row.branch)}: {share.iloc[i]:.0%} of the total effect{direction}")
    text = f"Most of this came from {phrases[0]}."
    return text + (f" Next came {phrases[1]}." if len(phrases) > 1 else "")


def _flag(flags_row, name: str) -> bool:
    return bool(flags_row is not None and name in flags_row and flags_row[name])


def _confidence(card, result, row, flags_row) -> str:
    low = _flag(flags_row, "low_confidence")
    if result.task == "regression":
        return ("The value is close to the middle of the scale, so the model is unsure which side it is on."
                if low else "")
    probs = np.sort(result.probabilities[row])[::-1]
    margin = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
    level = "not very sure" if low else ("fairly sure" if probs[0] < 0.9 else "very sure")
    return f"The model is {level}: the winning answer leads the runner-up by {100 * margin:.0f} percentage points of probability."


def _typicality(flags_row) -> str:
    if flags_row is None:
        return ""
    unusual = [k.removeprefix("ood_") for k, v in dict(flags_row).items() if k.startswith("ood_") and bool(v)]
    sentences = []
    if unusual:
        sentences.append(f"The {' and '.join(unusual)} input{'s look' if len(unusual) > 1 else ' looks'} unusual: "
                         "further from every typical pattern the model learned than 99% of the training "
                         "examples, so treat this prediction with care.")
    else:
        sentences.append("Every input looks like the examples the model was trained on.")
    if _flag(flags_row, "decoupling_failure"):
        sentences.append("The modality-specific and shared parts look unusually alike here, so the split "
                         "between them is less trustworthy.")
    if _flag(flags_row, "disagreement"):
        sentences.append("Different parts of the input pull in opposite directions.")
    return " ".join(sentences)


def _what_if(card, result, cf: pd.DataFrame) -> str:
    drops = cf[cf.change == "drop"]
    if drops.empty:
        return ""
    top = drops.iloc[int(np.argmax(drops.delta.abs().to_numpy()))]
    m = top.modality
    if result.task == "regression":
        text = (f"Without the {m} data (replaced by an average training input) the prediction would move "
                f"from {top.prediction_before:.2f} to {top.prediction_after:.2f}.")
    elif top.prediction_after != top.prediction_before:
        text = (f"Without the {m} data (replaced by an average training input) the answer would change from "
                f"{_value(card, result, top.prediction_before)} to {_value(card, result, top.prediction_after)}.")
    else:
        text = (f"Without the {m} data (replaced by an average training input) the answer would stay "
                f"{_value(card, result, top.prediction_before)}, its probability changing by {top.delta:+.0%}.")
    small = drops[(drops.modality != m) & (drops.delta.abs() < 0.05 * max(abs(top.delta), 1e-12) + 1e-3)]
    if len(small):
        text += f" Removing the {' or '.join(small.modality)} data would hardly matter."
    return text


def _lookalikes(story: PrototypeStory, contributions_df: pd.DataFrame) -> str:
    branches = contributions_df[contributions_df.part != "bias"]
    modality = branches.iloc[int(np.argmax(branches.contribution.abs().to_numpy()))].modality
    near = story.nearest[story.nearest.modality == modality].head(3)
    if near.empty:
        near = story.nearest.head(3)
        modality = near.modality.iloc[0]
    examples = ", ".join(_example(r) for r in near.itertuples())
    return (f"In its {modality} data this example follows a typical pattern the model learned from training "
            f"examples such as {examples}.")


def _example(r) -> str:
    text = r.train_id
    if r.raw_text:
        text += f' ("{r.raw_text[:60]}")'
    if r.label is not None:
        text += f" (label {r.label:.2f})" if isinstance(r.label, float) else f" (label {r.label})"
    return text
