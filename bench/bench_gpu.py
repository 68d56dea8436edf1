"""GPU benchmark: training step at batch 32, 128 and 512 (float32, bfloat16, and a CUDA graph of the whole
fixed-shape step), eval forward, and CPU/GPU loss parity.

Run on a machine with CUDA: ``python bench/bench_gpu.py`` prints the figures and writes
``bench/results/gpu.json`` (about a minute on one GPU). Without CUDA it says so and exits 0 without
writing anything, so it can sit in the repository of a CPU-only project. MOSI shapes, official MOSI
config (dropout off for the parity check). Goals (issue 15): at most 12 ms per step at batch 32 and at
least 40,000 samples/s at batch 512. Each part records its error instead of stopping the run, so one
failing variant (e.g. a graph capture) does not lose the other figures.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decalign.config import DecAlignConfig
from decalign.model import DecAlign
from decalign.train.losses import total_loss
from tests.reference.official_model import official_config_dict

WIDTHS = {"text": 768, "audio": 5, "vision": 20}
BATCHES = ((32, 100), (128, 50), (512, 30))  # (batch, timed steps)


def batch(n: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(n, 50, w, generator=gen) for m, w in WIDTHS.items()}
    labels = torch.empty(n).uniform_(-3, 3, generator=gen)
    return {m: x.to(device) for m, x in inputs.items()}, labels.to(device)


def make_step(model, config, inputs, labels, *, amp: bool, capturable: bool = False):
    """One training step as the trainer runs it: forward with alignment, loss, backward, clip, Adam."""
    opt = torch.optim.Adam(model.parameters(), lr=config.train.learning_rate, capturable=capturable)

    def one_step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(inputs, align=True)
        loss, _ = total_loss(out, labels, config.train, "regression")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.clip)
        opt.step()
        return loss

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        return one_step()

    return step, opt, one_step


def timed_ms(fn, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps * 1000


def step_ms(model, config, inputs, labels, *, steps: int, amp: bool) -> float:
    model.train()
    step, _, _ = make_step(model, config, inputs, labels, amp=amp)
    return timed_ms(step, steps)


def graph_step_ms(model, config, inputs, labels, *, steps: int, amp: bool) -> dict:
    """The whole step (forward, alignment, backward, clipping, Adam) captured once as a CUDA graph and
    replayed: no Python and no kernel-launch cost per step. Needs a step without host synchronisation
    (the GPU path runs the transport solver for its full iteration count) and Adam with ``capturable``."""
    model.train()
    _, opt, one_step = make_step(model, config, inputs, labels, amp=amp, capturable=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up allocations and lazy initialisation outside the capture
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            one_step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with torch.cuda.graph(graph):
        static_loss = one_step()  # gradients are overwritten, not accumulated, on every replay
    capture_s = time.perf_counter() - start
    ms = timed_ms(graph.replay, steps)
    return {"ms": round(ms, 3), "samples_per_s": round(inputs["text"].shape[0] / ms * 1000, 1),
            "capture_s": round(capture_s, 2), "last_loss": float(static_loss)}


def eval_ms(model, inputs, steps: int = 50) -> float:
    model.eval()
    with torch.inference_mode():
        return timed_ms(lambda: model(inputs), steps)


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


def attempt(figures: dict, key: str, fn) -> None:
    """figures[key] = fn(), or the error that stopped it."""
    try:
        figures[key] = fn()
    except Exception as exc:  # noqa: BLE001 -- report every variant that could be measured
        figures[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
    print(key, json.dumps(figures[key]), flush=True)


def measure_batch(figures: dict, config, n: int, steps: int, device: torch.device) -> None:
    """Eager and CUDA-graph training steps (float32 and bfloat16) and the eval forward at batch ``n``."""
    inputs, labels = batch(n, device)

    def fresh():
        torch.manual_seed(0)
        return DecAlign(config.model, WIDTHS, 1).to(device)

    def eager(amp: bool) -> dict:
        ms = step_ms(fresh(), config, inputs, labels, steps=steps, amp=amp)
        return {"ms": round(ms, 3), "samples_per_s": round(n / ms * 1000, 1)}

    for amp in (False, True):
        kind = "_bf16" if amp else "_fp32"
        attempt(figures, f"train_step_batch{n}{kind}", lambda: eager(amp))  # noqa: B023 -- called at once
        attempt(figures, f"train_step_batch{n}{kind}_cuda_graph",
                lambda: graph_step_ms(fresh(), config, inputs, labels, steps=steps, amp=amp))  # noqa: B023
    attempt(figures, f"eval_forward_batch{n}_ms", lambda: round(eval_ms(fresh(), inputs), 3))


def main() -> int:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured")
        return 0
    official = official_config_dict(use_bert=False, embed_dropout=0.0, attn_dropout=0.0, relu_dropout=0.0,
                                    res_dropout=0.0)
    no_dropout = DecAlignConfig.from_dict(official)
    config = DecAlignConfig.from_dict(official_config_dict(use_bert=False))  # the MOSI config, dropout on
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # parity is judged in true float32
    figures: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "python": platform.python_version(), "shapes": {"T": 50, "widths": WIDTHS}}
    attempt(figures, "loss_relative_difference_cpu_vs_gpu", lambda: parity(no_dropout))
    for n, steps in BATCHES:
        measure_batch(figures, config, n, steps, device)
    print(json.dumps(figures, indent=2))
    out = ROOT / "bench" / "results" / "gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
