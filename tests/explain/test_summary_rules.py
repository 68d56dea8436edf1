"""The plain-language summary of every demo test sample, read back by rules: no sentence may contradict
another or the numbers computed here independently (from the head's weights, the what-if table and the
training reference)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from decalign.audit.flags import compute_flags
from decalign.checkpoint import load_model
from decalign.data import load_dataset
from decalign.explain import branch_contributions, modality_counterfactuals, plain_summary, prototype_story
from decalign.explain.counterfactual import sample_inputs
from decalign.inference import run_inference
from decalign.model import Prototypes, posteriors
from decalign.train.reference import load_reference, training_plan

ROOT = Path(__file__).resolve().parents[2]
PART = re.compile(r"the (\w+) data ([+-]\d+\.\d+) \((\d+)%(, pushing against \"\d\")?\)")
CLAUSE = re.compile(r"without the (\w+) data (the answer would (?:change|stay)[^;]*)")
WHY = re.compile(r"Why the (\w+) data carries (only )?(\d+)% of the score yet (hardly matters|matters a lot) in the "
                 r"what-if: ([^.]*\.[^W]*)")
EXAMPLE = re.compile(r"(digit-\d+) \(label (\d)\)")


@pytest.fixture(scope="module")
def demo():
    model, card = load_model(ROOT / "assets" / "demo_model")
    split = load_dataset(ROOT / "assets" / "uci_digits.npz").splits["test"]
    reference = load_reference(ROOT / "assets" / "demo_model")
    result = run_inference(model, split, task=card.task, prototypes=reference.prototypes)
    flags = compute_flags(result, reference, card)
    return model, card, split, reference, result, flags


def _parts_by_hand(result, row: int) -> dict[str, float]:
    """Each modality's unique + common term of the predicted class's logit, from the head's weights."""
    k = int(result.outputs[row].argmax())
    h, w = result.branch_inputs[row].astype(np.float64), result.head_weight[k].astype(np.float64)
    d = len(h) // len(result.branch_names)
    parts = {}
    for i, name in enumerate(result.branch_names):
        m = name.split(":", 1)[1]
        parts[m] = parts.get(m, 0.0) + float(h[i * d:(i + 1) * d] @ w[i * d:(i + 1) * d])
    return parts


def _pattern(model, split, row, reference) -> dict[str, int]:
    inputs, lengths = sample_inputs(split, row)
    with torch.inference_mode():
        pooled = model(inputs, lengths or None).unique_pooled
    return {m: int(posteriors(x.double(), _double(reference.prototypes[m]))[0].argmax()) for m, x in pooled.items()}


def _double(p: Prototypes) -> Prototypes:
    return Prototypes(p.means.double(), p.variances.double(), p.weights.double())


@pytest.mark.slow
def test_no_summary_of_a_demo_test_sample_contradicts_itself(demo):
    model, card, split, reference, result, flags = demo
    plan = training_plan(reference, card.config.model)
    train_pattern = {m: posteriors(torch.from_numpy(x).double(), _double(reference.prototypes[m])).argmax(1).numpy()
                     for m, x in reference.train_unique.items()}
    train_row = {str(i): k for k, i in enumerate(reference.train_ids)}
    seen = {"why": 0, "none_same": 0}
    for row in range(len(result)):
        cf = modality_counterfactuals(model, split, row, reference)
        story = prototype_story(model, card, split, row, reference, plan=plan)
        text = plain_summary(card, result, row, branch_contributions(result, row), cf, flags.iloc[row], story)
        _check(text, row, result, cf, story, model, split, reference, train_pattern, train_row, seen,
               card.class_names)
    assert seen["why"] > 0  # the demo does have samples whose share and what-if disagree, and they are explained


def _check(text, row, result, cf, story, model, split, reference, train_pattern, train_row, seen, names):
    where = f"sample {result.ids[row]}:\n{text}"
    pred, probs = int(result.predictions[row]), result.probabilities[row]
    named = names[pred] if names else str(pred)  # the summary names classes by the card's names
    # 1. the prediction and the verdict
    assert f'predicts "{named}" with probability' in text, where
    verdict = "correct" if int(result.labels[row]) == pred else "wrong"
    assert f"so this prediction is {verdict}." in text, where
    # 2. the score's parts: values, shares and signs as the head's weights give them
    parts = _parts_by_hand(result, row)
    total = sum(abs(v) for v in parts.values())
    found = {m: (float(v), int(s), bool(a)) for m, v, s, a in PART.findall(text)}
    assert set(found) == set(parts), where
    for m, (value, share, against) in found.items():
        assert value == pytest.approx(parts[m], abs=0.006), where
        assert abs(share - 100 * abs(parts[m]) / total) <= 0.5 + 1e-9, where
        assert against == (parts[m] < 0), where
    assert f"the score (logit) for \"{named}\" is {result.outputs[row, pred]:.2f}" in text, where
    # 3. confidence words follow the probability
    if "very sure" in text and "not very sure" not in text:
        assert probs.max() >= 0.9, where
    if "fairly sure" in text:
        assert probs.max() < 0.9, where
    # 4. what-ifs: a changed answer is never called "hardly matters", a kept one never "would change"
    drops = cf[cf.change == "drop"].set_index("modality")
    clauses = dict(CLAUSE.findall(text))
    assert set(clauses) == set(parts), where
    for m, clause in clauses.items():
        r = drops.loc[m]
        changed = r.prediction_after != r.prediction_before
        assert ("would change" in clause) == changed, where
        hardly = not changed and abs(r.delta) < 0.02
        assert ("hardly matters" in clause) == hardly, where
    # 5. every disagreement between a share and a what-if is explained, and only those
    whys = {m: (kind, reason) for m, _, _, kind, reason in WHY.findall(text)}
    for m, (value, share, _) in found.items():
        r = drops.loc[m]
        hardly = r.prediction_after == r.prediction_before and abs(r.delta) < 0.02
        a_lot = r.prediction_after != r.prediction_before or abs(r.delta) >= 0.2
        share_now = abs(parts[m]) / total
        needs = (share_now >= 0.2 and hardly) or (share_now < 0.1 and a_lot)
        assert (m in whys) == needs, where
        if m in whys:
            seen["why"] += 1
            _check_reason(whys[m][1], r, result.outputs[row], pred, where)
    # 6. look-alikes: the same learned pattern, and the same answer unless the sentence says otherwise
    sentence = text.split("\n\n")[-1]
    assert "follows a typical pattern" in sentence, where
    modality = re.search(r"In its (\w+) data", sentence).group(1)
    pattern = _pattern(model, split, row, reference)[modality]
    cited = EXAMPLE.findall(sentence)
    assert cited, where
    for train_id, label in cited:
        assert train_pattern[modality][train_row[train_id]] == pattern, where
        if "None of the training examples" in sentence:
            assert int(label) != pred, where
        else:
            assert f'with the answer "{named}"' in sentence and int(label) == pred, where
    seen["none_same"] += "None of the training examples" in sentence


def _check_reason(reason: str, r, logits, pred: int, where: str) -> None:
    """The reason given is true of the what-if's numbers."""
    own, score, size = r.part_after - r.part_before, r.score_after - r.score_before, abs(r.part_before)
    margin_before = logits[pred] - np.delete(logits, pred).max()
    if "changes little without it" in reason:
        assert abs(score) <= 0.25 * size and abs(own) <= 0.25 * size, where
    elif "make up for it" in reason:
        assert abs(score) <= 0.25 * size < abs(own), where
    elif "move about as much" in reason:
        assert abs(r.margin_after - margin_before) < 0.5 * abs(score), where
    elif "saturated" in reason:
        assert r.probability_before >= 0.95 and r.margin_after >= 3.0, where
    elif "too little to move the probability" in reason:
        assert abs(r.delta) < 0.02, where
    else:  # a part too small for its effect: its change and the others' are named with their numbers
        assert "other inputs' parts change by" in reason or "gives a part of" in reason, where
