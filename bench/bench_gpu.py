"""GPU benchmark (issue: scale): training step at batch 32 and 512, eval forward, and CPU/GPU loss parity.

Run on a machine with CUDA: ``python bench/bench_gpu.py`` prints the figures and writes
``bench/results/gpu.json``. Without CUDA it says so and exits 0 without writing anything, so it can sit in
the repository of a CPU-only project. MOSI shapes, official MOSI config (dropout off for the parity check).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decalign.config import DecAlignConfig
from decalign.model import DecAlign
from decalign.train.losses import total_loss
from tests.reference.official_model import official_config_dict

WIDTHS = {"text": 768, "audio": 5, "vision": 20}


def batch(n: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, 50, w, generator=gen) for m, w in WIDTHS.items()}
    labels = torch.empty(n).uniform_(-3, 3, generator=gen)
    return {m: x.to(device) for m, x in inputs.items()}, labels.to(device)


def step_ms(model, config, inputs, labels, *, steps: int, amp: bool) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)
    model.train()

    def one_step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(inputs, align=True)
        loss, _ = total_loss(out, labels, config.train, "regression")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
        opt.step()

    for _ in range(5):
        one_step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def eval_ms(model, inputs, steps: int = 50) -> float:
    model.eval()
    with torch.inference_mode():
        for _ in range(5):
            model(inputs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model(inputs)
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def parity(config) -> dict[str, float]:
    """Largest relative difference of every loss term between the CPU and the GPU on the same weights."""
    torch.manual_seed(0)
    cpu_model = DecAlign(config.model, WIDTHS, 1).train()
    gpu_model = DecAlign(config.model, WIDTHS, 1).cuda().train()
    gpu_model.load_state_dict(cpu_model.state_dict())
    results = {}
    for name, model, device in (("cpu", cpu_model, torch.device("cpu")), ("gpu", gpu_model, torch.device("cuda"))):
        inputs, labels = batch(32, device, seed=1)
        _, terms = total_loss(model(inputs, align=True), labels, config.train, "regression")
        results[name] = {k: float(v) for k, v in terms.items()}
    return {k: abs(results["cpu"][k] - results["gpu"][k]) / max(abs(results["cpu"][k]), 1e-8)
            for k in results["cpu"]}


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured")
        return 0
    official = official_config_dict(embed_dropout=0.0, attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0)
    config = DecAlignConfig.from_dict(official)
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity is judged in true float32
    figures = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
               "loss_relative_difference_cpu_vs_gpu": parity(config)}
    for n, steps in ((32, 100), (128, 50), (512, 30)):
        torch.manual_seed(0)
        model = DecAlign(config.model, WIDTHS, 1).to(device)
        inputs, labels = batch(n, device)
        for amp in (False, True):
            ms = step_ms(model, config, inputs, labels, steps=steps, amp=amp)
            key = f"train_step_batch{n}{'_bf16' if amp else '_fp32'}"
            figures[key] = {"ms": round(ms, 3), "samples_per_s": round(n / ms * 1000, 1)}
        figures[f"eval_forward_batch{n}_ms"] = round(eval_ms(model, inputs), 3)
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
