"""GPU check (issue 10), the Python half of benchmarks/gpu_check.sh: on a CUDA machine, in about
a minute,

1. every quantizer family (dorefa, wrpn, pact, lsq, twn) forward and backward on CUDA against
   the CPU result: weight quantizers at bits {1, 2, 4, 8} (those the family supports) in each
   output-scale mode it uses, activation quantizers at bits {1, 2, 4, 8}; same inputs, same
   upstream gradient, the quantizer copied from CPU to CUDA;
2. an AMP training run (``fit`` with float16 autocast + GradScaler) of ResNet-20 (batch norm) at
   w4a4 for every family, next to the same run in fp32 on CUDA.

Tolerances. Element-wise tensors (outputs, input gradients) match when
|cuda - cpu| <= 1e-5 + 1e-5 |cpu|, and at most 0.1% of the elements may miss it: a value within
float error of a rounding threshold can land one level apart (CPU and CUDA evaluate tanh,
division and reductions differently), which moves that element by one level, not a little.
Quantizer parameter gradients (LSQ's step, PACT's α, learned scales) are sums over the whole
tensor: relative difference <= 1e-3. AMP passes when every epoch's loss and every weight is
finite; its loss is reported next to the fp32 loss (not asserted: float16 changes the rounding).

    python benchmarks/gpu_check.py [--results-dir benchmarks/results] [--device cuda]

Writes gpu_check-<card>.json and .md under --results-dir. Exit 0: all checks pass; 1: a check
failed (listed); 2: no CUDA device. ``--device cpu`` runs the same code against the CPU itself
(a smoke test of this script on a machine without a GPU; every comparison is then trivial).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.data import ArrayLoader, load_dataset
from lowbit.models import create_model
from lowbit.nn import quantize_, quantizers_with_aux_loss
from lowbit.plan import Plan
from lowbit.quant.base import SCALE_MODES
from lowbit.quant.registry import FAMILIES, QuantizerSpec
from lowbit.train import LossTerm, TrainConfig, fit

RESULTS = Path(__file__).parent / "results"
BITS = (1, 2, 4, 8)
ATOL, RTOL, MISS, PARAM_RTOL = 1e-5, 1e-5, 1e-3, 1e-3


def compare(cpu: torch.Tensor, dev: torch.Tensor) -> dict[str, float]:
    dev = dev.detach().cpu().double()
    cpu = cpu.detach().cpu().double()
    diff = (dev - cpu).abs()
    miss = (diff > ATOL + RTOL * cpu.abs()).double().mean().item() if diff.numel() else 0.0
    return {"max_abs": diff.max().item() if diff.numel() else 0.0, "miss_fraction": miss}


def forward_backward(quantizer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.clone().requires_grad_(True)
    quantizer.zero_grad(set_to_none=True)
    out = quantizer(x)
    out.backward(grad)
    params = {n: p.grad.detach().clone() for n, p in quantizer.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.detach(), params


def quantizer_cases() -> list[tuple[str, str, int, str]]:
    cases = []
    for name, family in FAMILIES.items():
        scales = SCALE_MODES if family.weight.uses_output_scale else ("none",)
        cases += [(name, "weight", b, s) for b in BITS if b in family.weight.supported_bits for s in scales]
        cases += [(name, "act", b, "-") for b in BITS if b in family.act.supported_bits]
    return cases


def check_quantizer(name: str, kind: str, bits: int, scale: str, device: str) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(bits * 100 + len(name))
    spec = QuantizerSpec(name)
    if kind == "weight":
        x = 0.1 * torch.randn(64, 32, 3, 3, generator=gen)
        quantizer = spec.make_weight(bits, x, "layer", scale)
    else:
        x = torch.randn(128, 32, 8, 8, generator=gen)  # both signs: the clip at 0 is exercised
        quantizer = spec.make_act(bits, "layer")
    grad = torch.randn(x.shape, generator=gen)
    on_device = copy.deepcopy(quantizer).to(device)  # before the CPU forward (LSQ's act step init)
    quantizer.train()
    on_device.train()
    out_c, gx_c, gp_c = forward_backward(quantizer, x, grad)
    out_d, gx_d, gp_d = forward_backward(on_device, x.to(device), grad.to(device))
    row: dict[str, Any] = {"family": name, "kind": kind, "bits": bits, "scale": scale,
                           "output": compare(out_c, out_d), "input_grad": compare(gx_c, gx_d), "param_grad_rel": {}}
    ok = all(row[k]["miss_fraction"] <= MISS for k in ("output", "input_grad")) and set(gp_c) == set(gp_d)
    for pname, g in gp_c.items():
        rel = ((gp_d[pname].cpu().double() - g.double()).norm() / g.double().norm().clamp_min(1e-12)).item()
        row["param_grad_rel"][pname] = rel
        ok = ok and rel <= PARAM_RTOL
    row["ok"] = ok
    return row


def check_amp(name: str, device: str, data) -> dict[str, Any]:
    losses, times = {}, {}
    finite = True
    for amp in (True, False):
        torch.manual_seed(0)
        model = create_model("resnet20", in_channels=3, input_size=32)
        quantize_(model, Plan.uniform(4 if name != "twn" else 2, 4), name)
        aux = quantizers_with_aux_loss(model)
        terms = [LossTerm("aux", lambda m: torch.stack([q.aux_loss() for q in aux]).sum())] if aux else []
        loader = ArrayLoader(data.train, batch_size=128, shuffle=True, seed=0, mean=data.mean, std=data.std)
        config = TrainConfig(epochs=2, lr=0.05, device=device, amp=amp)
        start = time.perf_counter()
        history = fit(model, loader, config, loss_terms=terms).history
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times["amp" if amp else "fp32"] = (time.perf_counter() - start) / max(config.epochs * len(loader), 1)
        losses["amp" if amp else "fp32"] = [r["train_loss"] for r in history]
        finite = finite and all(torch.isfinite(torch.tensor(losses["amp" if amp else "fp32"])).tolist()) and all(
            torch.isfinite(t).all().item() for t in model.state_dict().values() if t.is_floating_point())
    return {"family": name, "loss_amp": losses["amp"], "loss_fp32": losses["fp32"],
            "step_ms_amp": 1000 * times["amp"], "step_ms_fp32": 1000 * times["fp32"], "ok": finite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cpu: smoke-test this script without a GPU (comparisons are then trivial)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check.py: no CUDA device visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
              "run it on a machine with an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name() if args.device == "cuda" else "cpu-smoke"
    torch.manual_seed(0)
    start = time.perf_counter()
    quant_rows = [check_quantizer(*case, args.device) for case in quantizer_cases()]
    data = load_dataset("synthetic", seed=0, num_classes=10, in_channels=3, input_size=32, n_train=512, n_test=128)
    amp_rows = [check_amp(name, args.device, data) for name in FAMILIES]
    failed = [f"{r['family']} {r['kind']} {r['bits']}b {r['scale']}" for r in quant_rows if not r["ok"]] + \
             [f"AMP {r['family']}" for r in amp_rows if not r["ok"]]
    meta = {"command": " ".join(["python", *sys.argv]), "device": card, "torch": torch.__version__,
            "cuda": torch.version.cuda, "wall_s": time.perf_counter() - start,
            "tolerances": {"atol": ATOL, "rtol": RTOL, "miss_fraction": MISS, "param_grad_rel": PARAM_RTOL}}
    stem = "gpu_check-" + re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-").lower()
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{stem}.json").write_text(json.dumps(
        {"meta": meta, "quantizers": quant_rows, "amp": amp_rows, "failed": failed}, indent=2) + "\n")
    (args.results_dir / f"{stem}.md").write_text(report(meta, quant_rows, amp_rows, failed))
    print(f"{len(quant_rows)} quantizer cases, {len(amp_rows)} AMP runs on {card}: "
          f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)} -> {args.results_dir / stem}.md")
    return 1 if failed else 0


def report(meta: dict[str, Any], quant_rows: list[dict], amp_rows: list[dict], failed: list[str]) -> str:
    lines = [f"# GPU check on {meta['device']} (torch {meta['torch']}, CUDA {meta['cuda']})", "",
             f"Command: `{meta['command']}`; {meta['wall_s']:.0f} s. Result: "
             f"{'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)}.", "",
             "## Quantizers: CUDA vs CPU", "",
             "| family | kind | bits | scale | output max abs | output miss | grad max abs | grad miss | "
             "param grad rel | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in quant_rows:
        params = ", ".join(f"{k} {v:.1e}" for k, v in r["param_grad_rel"].items()) or "-"
        lines.append(f"| {r['family']} | {r['kind']} | {r['bits']} | {r['scale']} | {r['output']['max_abs']:.1e} | "
                     f"{r['output']['miss_fraction']:.1e} | {r['input_grad']['max_abs']:.1e} | "
                     f"{r['input_grad']['miss_fraction']:.1e} | {params} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", "## AMP training (ResNet-20 w4a4, twn w2a4; 2 epochs of 4 steps, batch 128)", "",
              "| family | loss per epoch, AMP | loss per epoch, fp32 | step ms AMP | step ms fp32 | ok |",
              "|---|---|---|---|---|---|"]
    for r in amp_rows:
        lines.append(f"| {r['family']} | {', '.join(f'{v:.4f}' for v in r['loss_amp'])} | "
                     f"{', '.join(f'{v:.4f}' for v in r['loss_fp32'])} | {r['step_ms_amp']:.1f} | "
                     f"{r['step_ms_fp32']:.1f} | {'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
