"""How far this project's alignment terms are from the official ones: before (objective studio) and after
(objective official, the default), term by term and in gradient size.

Setting (as in issue 10): the official MOSI config (tests/reference/official_configs/dec_mosi_config.json),
official-shaped weights (random, perturbed, the same in both models: no trained official weights ship
here), imported with ``decalign.official.import_official``; one batch of 40 MOSI-shaped samples
(text 768, audio 5, vision 20, T = 50) in eval mode, at input scales 1 and 3 (and 10, where the official
kernel form breaks down). The reference is the independent re-implementation of the official code
(tests/reference/official_model.py).

For each objective: dec_loss, hete_loss (transport + sample-to-prototype) and homo_loss (moments + MMD)
and their parts, the relative gap to the official value, and the gradient of ``alpha * hete_loss``
(``beta * homo_loss``) with respect to the unique (common) features as a norm ratio to the official
gradient and as a relative difference.

Run ``python bench/objective_gap.py``; writes bench/results/objective_gap.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_train_epoch import machine, write_result
from decalign.checkpoint import load_model
from decalign.model import DecAlign
from decalign.official import import_official
from tests.reference.official_model import OfficialDecAlign

CONFIG = ROOT / "tests" / "reference" / "official_configs" / "dec_mosi_config.json"
DIMS, ORDER = (768, 5, 20), ("text", "audio", "vision")
BATCH, STEPS, SCALES = 40, 50, (1.0, 3.0, 10.0)
TERMS = {"dec_loss": "decoupling", "ot_loss": "prototype_transport", "local_loss": "sample_to_prototype",
         "sem_loss": "moment_matching", "mmd_loss": "mmd"}


def models() -> tuple[OfficialDecAlign, DecAlign, DecAlign, dict]:
    raw = json.loads(CONFIG.read_text(encoding="utf-8"))
    torch.manual_seed(0)
    reference = OfficialDecAlign(raw, feature_dims=DIMS).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(reference.state_dict(), Path(folder) / "model.pth")
        import_official(Path(folder) / "model.pth", CONFIG, list(DIMS), Path(folder) / "run")
        official, card = load_model(Path(folder) / "run")
    studio = DecAlign(replace(card.config.model, objective="studio"), card.widths, card.output_dim).eval()
    studio.load_state_dict(official.state_dict())
    return reference, official, studio, raw


def measure(reference, ours, raw, scale: float) -> dict:
    g = torch.Generator().manual_seed(1)
    x = [scale * torch.randn(BATCH, STEPS, w, generator=g) for w in DIMS]
    theirs = reference(*x)
    out = ours(dict(zip(ORDER, x)), align=True)
    lv = out.alignment
    values = {"dec_loss": lv.decoupling, "hete_loss": lv.heterogeneity, "homo_loss": lv.homogeneity,
              **{k: getattr(lv, v) for k, v in TERMS.items()}}
    row = {key: {"official": float(theirs[key].detach()), "ours": float(v.detach()),
                 "relative_gap": abs(float(v.detach()) - float(theirs[key].detach())) / abs(float(theirs[key].detach()))}
           for key, v in values.items()}
    unique_t = [theirs[f"s_{m}"] for m in "lav"]
    common_t = [theirs[f"c_{m}"] for m in "lav"]
    for name, weight, mine, ref, feats_o, feats_m in (
            ("heterogeneous", raw["alpha"], lv.heterogeneity, theirs["hete_loss"], unique_t,
             [out.unique[m] for m in ORDER]),
            ("homogeneous", raw["beta"], lv.homogeneity, theirs["homo_loss"], common_t,
             [out.common[m] for m in ORDER])):
        want = torch.cat([t.transpose(1, 2).reshape(-1) for t in
                          torch.autograd.grad(weight * ref, feats_o, retain_graph=True)])
        got = torch.cat([t.reshape(-1) for t in torch.autograd.grad(weight * mine, feats_m, retain_graph=True)])
        row[f"gradient_{name}"] = {"norm_ratio": float(got.norm() / want.norm()),
                                   "relative_difference": float((got - want).norm() / want.norm())}
    row["plan_marginal_error"] = {"official": _marginal_error(theirs), "ours": float(out.transport.marginal_error)}
    return row


def _marginal_error(theirs) -> float:
    plan = theirs["transport_plan"].detach()
    targets = [p.mean(0) / p.mean(0).sum() for p in theirs["posteriors"]]
    sums = [plan.sum((1, 2)), plan.sum((0, 2)), plan.sum((0, 1))]
    return float(max((s - t).abs().sum() for s, t in zip(sums, targets)))


def main() -> None:
    torch.set_num_threads(2)
    reference, official, studio, raw = models()
    result = {"machine": machine(), "config": CONFIG.name, "batch": BATCH, "seq_len": STEPS, "widths": DIMS,
              "alpha": raw["alpha"], "beta": raw["beta"], "before_studio": {}, "after_official": {}}
    for scale in SCALES:
        result["before_studio"][str(scale)] = measure(reference, studio, raw, scale)
        result["after_official"][str(scale)] = measure(reference, official, raw, scale)
    path = write_result("objective_gap.json", result)
    for label in ("before_studio", "after_official"):
        print(f"\n{label} (official MOSI config, batch {BATCH}, eval mode)")
        print(f"{'term':<24}" + "".join(f"{'scale ' + str(s):>40}" for s in SCALES))
        for key in ("dec_loss", "hete_loss", "homo_loss", *TERMS.keys() - {"dec_loss"}):
            cells = []
            for s in SCALES:
                r = result[label][str(s)][key]
                cells.append(f"{r['ours']:>11.5g} vs {r['official']:>10.5g} ({r['relative_gap']:.1e})")
            print(f"{key:<24}" + "".join(f"{c:>40}" for c in cells))
        for name in ("heterogeneous", "homogeneous"):
            cells = [result[label][str(s)][f"gradient_{name}"] for s in SCALES]
            print(f"{'grad ' + name:<24}" + "".join(
                f"{'x' + format(c['norm_ratio'], '.3g') + ', diff ' + format(c['relative_difference'], '.1e'):>40}"
                for c in cells))
        errors = [result[label][str(s)]["plan_marginal_error"] for s in SCALES]
        print(f"{'plan marginal error':<24}" + "".join(f"{'ours ' + format(e['ours'], '.1e') + ', official ' + format(e['official'], '.1e'):>40}" for e in errors))
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
