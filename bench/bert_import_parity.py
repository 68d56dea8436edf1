"""Import parity of official use_bert checkpoints, written to bench/results/bert_import_parity.json.

For a small random BERT (width 64, 2 layers) and one of bert-base's shape (30,522 words, width 768, 12
layers, 12 heads), build the independent re-implementation of the official model
(``tests/reference/official_model.py``) with random weights, save its state_dict as the official code
does (``text_model.model.*``), import it with ``decalign import-official`` and compare predictions on the
same MMSA tokens (batch 16, 50 positions, prefix masks). Also times the import and one forward pass.

Run: ``python bench/bert_import_parity.py`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from decalign.checkpoint import load_model
from decalign.official import import_official
from tests.reference.official_model import OfficialDecAlign, official_config_dict

SHAPES = {
    "tiny (64 wide, 2 layers)": {"vocab_size": 40, "hidden_size": 64, "num_hidden_layers": 2,
                                 "num_attention_heads": 1, "intermediate_size": 96, "max_position_embeddings": 64,
                                 "type_vocab_size": 2},
    "bert-base shape (768 wide, 12 layers)": {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
                                              "num_attention_heads": 12, "intermediate_size": 3072,
                                              "max_position_embeddings": 512, "type_vocab_size": 2},
}


def measure(name: str, bert: dict, folder: Path, n: int = 16, steps: int = 50) -> dict:
    raw = official_config_dict()  # the official MOSI architecture (d 40, 10 heads, 5 levels)
    dims = (bert["hidden_size"], 5, 20)
    torch.manual_seed(0)
    reference = OfficialDecAlign(raw, feature_dims=dims, output_dim=1, bert_config=bert).eval()
    (folder / "config.json").write_text(json.dumps(raw))
    torch.save(reference.state_dict(), folder / "model.pth")
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(5, steps + 1, (n,), generator=g)
    mask = (torch.arange(steps)[None] < lengths[:, None]).long()
    text = torch.stack([torch.randint(1, bert["vocab_size"], (n, steps), generator=g) * mask, mask,
                        torch.zeros_like(mask)], dim=1)
    audio, vision = torch.randn(n, steps, 5, generator=g), torch.randn(n, steps, 20, generator=g)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import_official(folder / "model.pth", folder / "config.json", list(dims), folder / "run")
    model, _ = load_model(folder / "run")
    imported = time.perf_counter() - start
    with torch.no_grad():
        expected = reference(text, audio, vision)["output_logit"]
        start = time.perf_counter()
        ours = model({"text": text.transpose(1, 2), "audio": audio, "vision": vision}).prediction
        forward = time.perf_counter() - start
    return {"bert": name, "parameters": sum(p.numel() for p in model.parameters()), "samples": n,
            "max_abs_difference": float((ours - expected).abs().max()),
            "max_abs_prediction": float(expected.abs().max()), "import_and_load_s": round(imported, 2),
            "forward_s": round(forward, 3)}


def main() -> None:
    rows = []
    for name, bert in SHAPES.items():
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(name, bert, Path(tmp)))
        print(json.dumps(rows[-1]))
    out = ROOT / "bench" / "results" / "bert_import_parity.json"
    out.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
