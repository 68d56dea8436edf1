"""A plain-language account of one prediction, built from templates (no language model).

Written for a reader who knows nothing of the model's internals. Two kinds of number appear, and every
sentence says which it is:

* **shares of the score**: the head is linear, so the score of the predicted answer (its logit, or the
  predicted value) is exactly one part per input plus a constant. An input's part is its modality-specific
  plus its shared branch term; its share is ``|part| / sum of |parts|``.
* **what-if changes**: how the probability of the answer (or the value) changes when one input is
  replaced by the average training input (``modality_counterfactuals``).

They answer different questions and can disagree: an input can carry a large part of the score and still
hardly matter in the what-if. When they disagree the summary says why, from the numbers (:func:`_why`): the
part barely changes without the input (it also reads the other inputs, or the average input gives a
similar part), the other parts make up for it, the other answers' scores move alike, or the probability
is saturated. "Typical" training examples are those of the same learned pattern *and* the same answer;
when the pattern holds none, the sentence says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..checkpoint import ModelCard
from ..inference import InferenceResult
from .story import PrototypeStory

NEUTRAL_FRACTION = 1 / 6  # |value| below this share of the half-range reads as neutral (0.5 on MOSI's [-3, 3])
STRONG_FRACTION = 2 / 3
HARDLY_PROBABILITY = 0.02  # a what-if that keeps the answer and moves its probability less than this: hardly matters
HARDLY_VALUE = 0.05  # regression: a move under this share of the label range hardly matters
LARGE_SHARE = 0.2  # a part this large that hardly matters needs a reason
SMALL_SHARE = 0.1  # a part this small that matters a lot needs a reason
A_LOT_PROBABILITY = 0.2  # classification: the answer changes, or its probability moves this much
A_LOT_VALUE = 0.2  # regression: share of the label range
SATURATED = 0.95  # a probability this high, with a lead of SATURATED_LEAD in score, hardly moves
SATURATED_LEAD = 3.0


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


def percent(p: float) -> str:
    """A probability for reading: "99.9%", "52%", "more than 99.9%", "less than 0.1%"."""
    if p > 0.999:
        return "more than 99.9%"
    if p < 0.001:
        return "less than 0.1%"
    return f"{100 * p:.1f}%" if p > 0.99 or p < 0.01 else f"{100 * p:.0f}%"


def modality_shares(contributions_df: pd.DataFrame) -> pd.DataFrame:
    """modality, part (its unique plus shared branch term), share (``|part| / sum |parts|``), largest first."""
    branches = contributions_df[contributions_df.part != "bias"]
    parts = branches.groupby("modality", sort=False).contribution.sum()
    total = parts.abs().sum()
    share = parts.abs() / total if total > 0 else parts * 0.0
    frame = pd.DataFrame({"modality": parts.index, "part": parts.to_numpy(), "share": share.to_numpy()})
    return frame.sort_values("share", ascending=False, kind="stable").reset_index(drop=True)


def plain_summary(card: ModelCard, result: InferenceResult, row: int, contributions_df: pd.DataFrame,
                  counterfactuals_df: pd.DataFrame | None = None, flags_row: pd.Series | dict | None = None,
                  story: PrototypeStory | None = None) -> str:
    """Short paragraphs: the prediction, how its score splits, how sure and typical, the what-ifs, why the
    two disagree where they do, and look-alike training examples (module docstring)."""
    shares = modality_shares(contributions_df)
    parts = [_prediction(card, result, row), _score(card, result, row, contributions_df, shares),
             _confidence(result, row, flags_row), _typicality(flags_row)]
    drops = None if counterfactuals_df is None else counterfactuals_df[counterfactuals_df.change == "drop"]
    if drops is not None and len(drops):
        parts += [_what_if(card, result, drops), _reconcile(card, result, row, shares, drops)]
    if story is not None and len(story.nearest):
        parts.append(_lookalikes(card, result, story, shares))
    return "\n\n".join(p for p in parts if p)


# ------------------------------------------------------------------------------------------- paragraphs


def _answer(card: ModelCard, result: InferenceResult, value) -> str:
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
        text = (f"The model predicts {_answer(card, result, pred)} with probability {percent(probs[pred])} "
                f"(next most likely: {_answer(card, result, second)}, {percent(probs[second])}).")
    if result.labels is not None:
        label = result.labels[row]
        if result.task == "regression":
            text += f" The recorded answer is {float(label):.2f} (off by {abs(float(pred) - float(label)):.2f})."
        else:
            verdict = "correct" if int(label) == int(pred) else "wrong"
            text += f" The recorded answer is {_answer(card, result, label)}, so this prediction is {verdict}."
    return text


def _score(card, result, row, contributions_df: pd.DataFrame, shares: pd.DataFrame) -> str:
    bias = float(contributions_df.loc[contributions_df.part == "bias", "contribution"].sum())
    if result.task == "regression":
        head = (f"How the prediction splits (shares of the predicted value, not of a probability): "
                f"{float(result.outputs[row, 0]):.2f} is the exact sum of one part per input and a constant of "
                f"{bias:+.2f}.")
        against = "pulling it down"
    else:
        answer = _answer(card, result, result.predictions[row])
        score = float(result.outputs[row, int(result.predictions[row])])
        head = (f"How the score splits (shares of the model's score, not of the probability): the score (logit) "
                f"for {answer} is {score:.2f}, the exact sum of one part per input and a constant of {bias:+.2f}.")
        against = f"pushing against {answer}"
    if shares.share.sum() == 0:
        return head + " Every input's part is zero."
    items = [f"the {r.modality} data {r.part:+.2f} ({r.share:.0%}{', ' + against if r.part < 0 else ''})"
             for r in shares.itertuples()]
    listed = ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]
    return f"{head} By size: {listed}. Each input's part adds its modality-specific and its shared part."


def _flag(flags_row, name: str) -> bool:
    return bool(flags_row is not None and name in flags_row and flags_row[name])


def _confidence(result, row, flags_row) -> str:
    low = _flag(flags_row, "low_confidence")
    if result.task == "regression":
        return ("The value is close to the middle of the scale, so the model is unsure which side it is on."
                if low else "")
    probs = np.sort(result.probabilities[row])[::-1]
    margin = probs[0] - (probs[1] if len(probs) > 1 else 0.0)
    level = "not very sure" if low else ("fairly sure" if probs[0] < 0.9 else "very sure")
    return (f"The model is {level}: the winning answer leads the runner-up by {100 * margin:.0f} percentage "
            "points of probability.")


def _typicality(flags_row) -> str:
    if flags_row is None:
        return ""
    unusual = [k.removeprefix("ood_") for k, v in dict(flags_row).items() if k.startswith("ood_") and bool(v)]
    sentences = []
    if unusual:
        sentences.append(f"The {' and '.join(unusual)} input{'s look' if len(unusual) > 1 else ' looks'} unusual: "
                         "further from every typical pattern the model learned than 99% of held-out "
                         "examples, so treat this prediction with care.")
    else:
        sentences.append("Every input looks like the examples the model was trained on.")
    if _flag(flags_row, "decoupling_failure"):
        sentences.append("The modality-specific and shared parts look unusually alike here, so the split "
                         "between them is less trustworthy.")
    if _flag(flags_row, "disagreement"):
        sentences.append("Different parts of the input pull in opposite directions.")
    return " ".join(sentences)


# ------------------------------------------------------------------------------------------ what-ifs


def _range_width(card: ModelCard) -> float:
    return float(card.label_range[1] - card.label_range[0]) if card.label_range else 1.0


def hardly_matters(card: ModelCard, result: InferenceResult, drop) -> bool:
    """Replacing the input keeps the answer and moves its probability under 2 points (the value under 5% of
    the label range)."""
    if result.task == "regression":
        return abs(drop.delta) < HARDLY_VALUE * _range_width(card)
    return drop.prediction_after == drop.prediction_before and abs(drop.delta) < HARDLY_PROBABILITY


def matters_a_lot(card: ModelCard, result: InferenceResult, drop) -> bool:
    """Replacing the input changes the answer or moves its probability by 20 points (the value by 20% of
    the label range)."""
    if result.task == "regression":
        return abs(drop.delta) >= A_LOT_VALUE * _range_width(card)
    return drop.prediction_after != drop.prediction_before or abs(drop.delta) >= A_LOT_PROBABILITY


def _what_if(card, result, drops: pd.DataFrame) -> str:
    ordered = drops.iloc[np.argsort(-drops.delta.abs().to_numpy(), kind="stable")]
    clauses = [_what_if_clause(card, result, r) for r in ordered.itertuples()]
    what = "the value" if result.task == "regression" else "the probability of the answer"
    return (f"What if one input were replaced by an average training input (this measures how {what} changes, "
            f"not a share of the {_whole(result)}): " + "; ".join(clauses) + ".")


def _whole(result: InferenceResult) -> str:
    """What the shares are shares of: the score (classification) or the prediction (regression)."""
    return "prediction" if result.task == "regression" else "score"


def _what_if_clause(card, result, r) -> str:
    hardly = hardly_matters(card, result, r)
    tail = f", so the {r.modality} data hardly matters on its own" if hardly else ""
    if result.task == "regression":
        return (f"without the {r.modality} data the prediction would move from {r.prediction_before:.2f} to "
                f"{r.prediction_after:.2f}{tail}")
    before, after = float(r.probability_before), float(r.probability_before + r.delta)
    answer = _answer(card, result, r.prediction_before)
    if r.prediction_after != r.prediction_before:
        return (f"without the {r.modality} data the answer would change from {answer} to "
                f"{_answer(card, result, r.prediction_after)} (the probability of {answer} would go from "
                f"{percent(before)} to {percent(after)})")
    if percent(before) == percent(after):
        move = f"would stay {_at(before)} ({_points(r.delta)})"
    else:
        move = f"would {'rise' if r.delta > 0 else 'fall'} from {percent(before)} to {percent(after)} ({_points(r.delta)})"
    return f"without the {r.modality} data the answer would stay {answer}, its probability {move}{tail}"


def _at(p: float) -> str:
    text = percent(p)
    return text if text.startswith(("more", "less")) else f"at {text}"


def _points(delta: float) -> str:
    return "less than 0.1 points" if abs(100 * delta) < 0.05 else f"{100 * delta:+.1f} points"


def _reconcile(card, result, row, shares: pd.DataFrame, drops: pd.DataFrame) -> str:
    """One "why" sentence for every input whose share and what-if disagree (module docstring)."""
    by_modality = {r.modality: r for r in drops.itertuples()}
    sentences = []
    for s in shares.itertuples():
        drop = by_modality.get(s.modality)
        if drop is None:
            continue
        whole = _whole(result)
        if s.share >= LARGE_SHARE and hardly_matters(card, result, drop):
            sentences.append(f"Why the {s.modality} data carries {s.share:.0%} of the {whole} yet hardly matters "
                             f"in the what-if: {_why(card, result, row, drop)[1]}")
        elif s.share < SMALL_SHARE and matters_a_lot(card, result, drop):
            sentences.append(f"Why the {s.modality} data carries only {s.share:.0%} of the {whole} yet matters a "
                             f"lot in the what-if: {_why_much(card, drop)}")
    return " ".join(sentences)


def _why(card: ModelCard, result: InferenceResult, row: int, drop) -> tuple[str, str]:
    """(kind, sentence): why a large part hardly matters, from the what-if's numbers.

    The score barely moves (``|change| <= 0.25 |part|``): either the input's own part barely changes
    ("kept") or the other parts make up for its change ("compensated"). The score moves: the other answers'
    scores move alike ("shifted"), or the answer's lead stays large and the probability saturated
    ("saturated": a probability of at least 95% and a lead of at least 3 after the change); otherwise the
    changes are small ("small"; for regression, small against the label range).
    """
    own = drop.part_after - drop.part_before
    score = drop.score_after - drop.score_before
    size = abs(drop.part_before)
    if abs(score) <= 0.25 * size:
        if abs(own) <= 0.25 * size:
            via = ("that part also depends on the other inputs, which stay as they are (cross-modal attention)"
                   if card.config.model.cross_modal_attention else
                   "the average training input gives a similar part")
            return "kept", (f"its part of the {_whole(result)} changes little without it ({drop.part_before:+.2f} "
                            f"becomes {drop.part_after:+.2f}), because {via}.")
        return "compensated", (f"its own part changes by {own:+.2f}, but the other inputs' parts change by "
                               f"{score - own:+.2f} and make up for it, so the {_whole(result)} changes by only "
                               f"{score:+.2f}.")
    if result.task == "regression":
        return "small", (f"its part changes by {own:+.2f}, which moves the value by {score:+.2f}: small against "
                         f"the label range of {_range_width(card):g}.")
    margin_before = _margin(result.outputs[row], int(drop.prediction_before))
    if abs(drop.margin_after - margin_before) < 0.5 * abs(score):
        return "shifted", (f"the score of the answer changes by {score:+.2f}, but the other answers' scores move "
                           f"about as much (its lead changes only from {margin_before:.2f} to "
                           f"{drop.margin_after:.2f}), and the probability depends only on these differences.")
    if drop.probability_before >= SATURATED and drop.margin_after >= SATURATED_LEAD:
        return "saturated", (f"the score of the answer changes by {score:+.2f}, but it still leads the runner-up by "
                             f"{drop.margin_after:.2f} (from {margin_before:.2f}); with a lead that large the "
                             f"probability, {percent(drop.probability_before)}, is saturated and hardly moves.")
    return "small", (f"the score of the answer changes by only {score:+.2f} and its lead over the runner-up by "
                     f"{drop.margin_after - margin_before:+.2f}, too little to move the probability much.")


def _why_much(card: ModelCard, drop) -> str:
    own = drop.part_after - drop.part_before
    others = (drop.score_after - drop.score_before) - own
    if abs(others) > abs(own):
        via = " (they read it through cross-modal attention)" if card.config.model.cross_modal_attention else ""
        return (f"without it the other inputs' parts change by {others:+.2f}{via}, more than its own part "
                f"({own:+.2f}).")
    return (f"the average training input in its place gives a part of {drop.part_after:+.2f} instead of "
            f"{drop.part_before:+.2f}.")


def _margin(logits: np.ndarray, k: int) -> float:
    return float(logits[k] - np.delete(logits, k).max())


# ----------------------------------------------------------------------------------------- look-alikes


def _lookalikes(card, result, story: PrototypeStory, shares: pd.DataFrame) -> str:
    modality = shares.modality.iloc[0]
    near = story.nearest[story.nearest.modality == modality]
    if near.empty:
        near, modality = story.nearest, story.nearest.modality.iloc[0]
        near = near[near.modality == modality]
    answer = _answer(card, result, story.prediction)
    if result.task == "regression":
        answer = f"a similar score (within {story.answer_tolerance:.2f} of {answer})" if story.answer_tolerance \
            else f"a score like {answer}"
    else:
        answer = f"the answer {answer}"
    head = f"In its {modality} data this example follows a typical pattern the model learned."
    matching = near[near.same_prototype & near.same_answer].head(3)
    if len(matching):
        return (f"{head} Training examples of that pattern with {answer}: "
                + ", ".join(_example(r) for r in matching.itertuples()) + ".")
    others = near[near.same_prototype].head(3)
    if near["label"].isna().all():
        return f"{head} Training examples of that pattern: " + ", ".join(_example(r) for r in others.itertuples()) \
            + " (their answers are not known)."
    if others.empty:
        return f"{head} No training example of that pattern is close enough to show."
    return (f"{head} None of the training examples of that pattern has {answer}; the nearest are "
            + ", ".join(_example(r) for r in others.itertuples()) + ".")


def _example(r) -> str:
    text = r.train_id
    if r.raw_text:
        text += f' ("{r.raw_text[:60]}")'
    if r.label is not None and not (isinstance(r.label, float) and np.isnan(r.label)):
        text += f" (label {r.label:.2f})" if isinstance(r.label, float) else f" (label {r.label})"
    return text
