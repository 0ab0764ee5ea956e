"""Training-step overhead (BENCHMARKS.md section 1): median step time of QAT with each quantizer,
of QAT + SinReQ and of a WaveQ step (float forward + sinusoid with learned β, α + bit pressure),
as ratios to float training, measured interleaved in one run.

    python benchmarks/step_overhead.py [--rounds 7] [--steps 3] [--threads 1] [--device cpu|cuda]

LeNet-5 at batch 256 on 28x28x1 and ResNet-20 at batch 128 on 32x32x3, random data, w4a4 (the
bitwidth does not change the arithmetic). Each round times every variant for ``--steps`` steps in
turn (A B C ... A B C ...), so drift on this shared machine hits all variants alike.
Writes benchmarks/results/step_overhead.json and step_overhead.md (on CUDA:
step_overhead-cuda-<card>.json/.md, fp32, timed between torch.cuda.synchronize() calls; the
folder can be changed with --results-dir). Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lowbit.models import create_model
from lowbit.nn import quantize_, quantizer_aux_loss
from lowbit.plan import Plan
from lowbit.reg.sinreq import SinReQ
from lowbit.reg.waveq import WaveQ, WaveQConfig

RESULTS = Path(__file__).parent / "results"
VARIANTS = [("float", None, False), ("dorefa", "dorefa", False), ("wrpn", "wrpn", False), ("pact", "pact", False),
            ("lsq", "lsq", False), ("twn", "twn", False), ("dorefa+sinreq", "dorefa", True),
            ("wrpn+sinreq", "wrpn", True), ("lsq+sinreq", "lsq", True), ("waveq", None, "waveq")]
SETUPS = [("lenet5", 256, (1, 28, 28)), ("resnet20", 128, (3, 32, 32))]


def make_step(model_name: str, shape: tuple[int, ...], batch: int, quantizer: str | None, reg_kind: bool | str,
              device: str = "cpu"):
    torch.manual_seed(0)
    model = create_model(model_name, in_channels=shape[0], input_size=shape[1])
    if quantizer is not None:
        quantize_(model, Plan.uniform(4, 4), quantizer)
    model.to(device)
    reg = SinReQ(model) if reg_kind is True else None
    if reg_kind == "waveq":
        waveq = WaveQ(model, WaveQConfig())
        model = waveq.wrap()
        reg = lambda m: waveq.penalty() + waveq.bit_pressure()  # noqa: E731
    aux = quantizer == "pact"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, *shape, device=device), torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        if reg is not None:
            loss = loss + 0.01 * reg(model)
        if aux:
            loss = loss + quantizer_aux_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (LSQ/PACT data-dependent init, allocator)
    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("step_overhead.py: --device cuda asked for, but torch sees no CUDA device")
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    table = []
    for model_name, batch, shape in SETUPS:
        steps = {name: make_step(model_name, shape, batch, q, reg, args.device) for name, q, reg in VARIANTS}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                sync()
                times[name].append((time.perf_counter() - t0) / args.steps)
        medians = {name: statistics.median(v) for name, v in times.items()}
        for name, med in medians.items():
            base = medians[name.split("+")[0]] if "+" in name else medians["float"]
            table.append({"model": model_name, "batch": batch, "variant": name, "median_step_ms": 1000 * med,
                          "ratio_to_float": med / medians["float"],
                          "ratio_to_base_quantizer": med / base if "+" in name else None})
            print(f"{model_name:9s} {name:15s} {1000 * med:8.1f} ms  x{med / medians['float']:.2f}", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "threads": args.threads, "rounds": args.rounds,
            "steps_per_round": args.steps, "machine": platform.machine(), "torch": torch.__version__,
            "device": "cpu" if args.device == "cpu" else torch.cuda.get_device_name()}
    where = f"{args.threads} thread(s)" if args.device == "cpu" else f"{meta['device']}, fp32"
    stem = "step_overhead" if args.device == "cpu" else \
        "step_overhead-cuda-" + re.sub(r"[^A-Za-z0-9]+", "-", meta["device"]).strip("-").lower()
    results = args.results_dir
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=2) + "\n")
    lines = [f"# Training-step time, {args.device.upper()}, {where}, median of {args.rounds} interleaved rounds", "",
             f"Command: `{meta['command']}`", "",
             "| model | batch | variant | median step ms | x float | x its quantizer |", "|---|---|---|---|---|---|"]
    for r in table:
        extra = f"{r['ratio_to_base_quantizer']:.3f}" if r["ratio_to_base_quantizer"] else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median_step_ms']:.1f} | "
                     f"{r['ratio_to_float']:.2f} | {extra} |")
    (results / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
