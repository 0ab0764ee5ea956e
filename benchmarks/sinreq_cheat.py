"""SinReQ cannot cheat (issue 15 part 3): the penalty moved the grid instead of the weights.

    python benchmarks/sinreq_cheat.py [--steps 300] [--seeds 0 1 2] [--timing-rounds 31]

Before the fix the penalty's gradient reached the quantizer's learned parameters (LSQ's step, a
learned output scale) and SinReQ lowered itself by growing them until every weight rounded to 0.
An MLP 64-32-10 on digits (both layers quantized, activations float), SGD lr 0.05 momentum 0.9,
batch 72 (20 steps an epoch), ``--steps`` steps, constant λ; per seed and case:

- ``none``: no SinReQ (the quantizer's own end point);
- ``old``: ``SinReQ(train_quantizer=True, range_penalty=False)``, the behaviour before the fix;
- ``fixed``: ``SinReQ()`` (the defaults: quantizer parameters detached, range term on);
- ``fixed-no-range``: ``SinReQ(range_penalty=False)`` (the detach alone).

Cases: LSQ 3 bits λ=1 (the issue's), WRPN 3 bits ``scale="learned"`` λ=0.1 and λ=1. Reported: the
learned step/scale per layer before and after training (absolute value: the forward pass uses
|s|), the fraction of weights whose fake-quantized value is 0, test accuracy, grid distance.
Then the cost of the fix: SinReQ's forward + backward alone on LeNet-5 (w4; LSQ, DoReFa with a
learned scale, WRPN with a learned scale), median of interleaved rounds: ``before`` is the penalty as
it was computed before the fix (sin2_grid(normalize(w)).mean() through autograd, gradient into the
quantizer), against ``SinReQ()`` (the defaults), ``SinReQ(range_penalty=False)`` and
``SinReQ(train_quantizer=True, range_penalty=False)``.
Writes benchmarks/results/sinreq_cheat.json and sinreq_cheat.md. A benchmark, not a test: one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from lowbit.data import ArrayLoader, load_dataset
from lowbit.models import create_model
from lowbit.nn import is_quantizer_param, quantize_, quantized_layers
from lowbit.plan import Plan
from lowbit.quant.registry import QuantizerSpec
from lowbit.reg.sinreq import SinReQ, grid_distance, sin2_grid
from lowbit.train import TrainConfig, evaluate, fit

RESULTS = Path(__file__).parent / "results"
BATCH, LR = 72, 0.05
CASES = [("lsq", "none", 1.0), ("wrpn", "learned", 0.1), ("wrpn", "learned", 1.0)]  # quantizer, scale mode, λ (3 bits)
VARIANTS = {"none": None, "old": dict(train_quantizer=True, range_penalty=False), "fixed": {},
            "fixed-no-range": dict(range_penalty=False)}


def grid_params(model: nn.Module) -> dict[str, float]:
    """|LSQ step| or |learned scale| per quantized layer."""
    out = {}
    for name, layer in quantized_layers(model).items():
        q = layer.weight_quantizer
        p = getattr(q, "step", None) if hasattr(q, "step") else getattr(q, "scale", None)
        if isinstance(p, torch.Tensor):
            out[name] = float(p.detach().abs())
    return out


@torch.no_grad()
def zero_fraction(model: nn.Module) -> float:
    zeros = total = 0
    for layer in quantized_layers(model).values():
        wq = layer.weight_quantizer(layer.weight)
        zeros += int((wq == 0).sum())
        total += wq.numel()
    return zeros / total


def run_case(data, quantizer: str, scale: str, lam: float, variant: str, steps: int, seed: int) -> dict:
    train = ArrayLoader(data.train, batch_size=BATCH, shuffle=True, seed=seed, mean=data.mean, std=data.std)
    test = ArrayLoader(data.test, batch_size=512, shuffle=False, mean=data.mean, std=data.std)
    epochs = -(-steps // len(train))
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    quantize_(model, Plan.uniform(3, keep_first_last=False), QuantizerSpec(quantizer, scale=scale))
    before = grid_params(model)
    kwargs = VARIANTS[variant]
    terms = [] if kwargs is None else [SinReQ(model, **kwargs).as_loss_term(lam)]
    start = time.perf_counter()
    fit(model, train, TrainConfig(epochs=epochs, lr=LR, schedule="constant"), loss_terms=terms,
        no_decay=is_quantizer_param)
    wall = time.perf_counter() - start
    return {"quantizer": quantizer, "scale": scale, "lambda": lam, "variant": variant, "seed": seed,
            "steps": epochs * len(train), "grid_param_before": before, "grid_param_after": grid_params(model),
            "zero_fraction": zero_fraction(model), "accuracy": evaluate(model, test)[1],
            "grid_distance": grid_distance(model)[0], "wall_s": wall}


def penalty_before_the_fix(model: nn.Module) -> torch.Tensor:
    """SinReQ as computed before the fix (aligned domain, λ 1 per layer)."""
    terms = []
    for layer in quantized_layers(model).values():
        q = layer.weight_quantizer
        if q is not None:
            terms.append(sin2_grid(q.normalize(layer.weight), q.spacing(q.bits), q.offset(q.bits)).mean())
    return torch.stack(terms).sum()


def time_penalty(rounds: int) -> list[dict]:
    rows = []
    x = torch.randn(8, 1, 28, 28)
    for quantizer, scale in (("lsq", "none"), ("dorefa", "learned"), ("wrpn", "learned")):
        torch.manual_seed(0)
        model = create_model("lenet5")
        quantize_(model, Plan.uniform(4), QuantizerSpec(quantizer, scale=scale))
        model(x)  # data-dependent inits
        regs = {"before": penalty_before_the_fix, "fixed (default)": SinReQ(model),
                "range_penalty=False": SinReQ(model, range_penalty=False),
                "train_quantizer=True, range_penalty=False": SinReQ(model, train_quantizer=True, range_penalty=False)}
        times: dict[str, list[float]] = {name: [] for name in regs}
        for _ in range(rounds):
            for name, reg in regs.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    model.zero_grad(set_to_none=True)
                    reg(model).backward()
                times[name].append((time.perf_counter() - t0) / 20)
        base = statistics.median(times["before"])
        for name, values in times.items():
            med = statistics.median(values)
            rows.append({"quantizer": quantizer, "scale": scale, "variant": name, "median_us": 1e6 * med,
                         "ratio": med / base})
            print(f"timing {quantizer:6s} {name:42s} {1e6 * med:7.1f} us  x{med / base:.3f}", flush=True)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for quantizer, scale, lam in CASES:
        for variant in VARIANTS:
            sel = [r for r in rows if (r["quantizer"], r["scale"], r["lambda"], r["variant"])
                   == (quantizer, scale, lam, variant)]
            layers = list(sel[0]["grid_param_after"])

            def mean(key, sel=sel):
                return statistics.mean(r[key] for r in sel)

            def per_layer(key, sel=sel, layers=layers):
                return {n: statistics.mean(r[key][n] for r in sel) for n in layers}

            out.append({"quantizer": quantizer, "scale": scale, "lambda": lam, "variant": variant,
                        "grid_param_before": per_layer("grid_param_before"),
                        "grid_param_after": per_layer("grid_param_after"),
                        "zero_fraction": mean("zero_fraction"), "accuracy": mean("accuracy"),
                        "accuracy_min": min(r["accuracy"] for r in sel), "grid_distance": mean("grid_distance")})
    return out


def render(meta: dict, summary: list[dict], timing: list[dict]) -> str:
    lines = [f"# SinReQ cannot cheat: MLP 64-32-10 on digits, 3 bits, {meta['steps']} steps, "
             f"seeds {meta['seeds']} (means)", "", f"Command: `{meta['command']}`", "",
             "| quantizer | λ | SinReQ | step/scale before → after (per layer) | weights at 0 | accuracy (min) "
             "| grid distance |", "|---|---|---|---|---|---|---|"]
    for r in summary:
        params = ", ".join(f"{r['grid_param_before'][n]:.3f} → {r['grid_param_after'][n]:.3f}"
                           for n in r["grid_param_after"])
        name = r["quantizer"] + (f" ({r['scale']} scale)" if r["scale"] != "none" else "")
        lines.append(f"| {name} | {r['lambda']:g} | {r['variant']} | {params} | {100 * r['zero_fraction']:.1f}% | "
                     f"{100 * r['accuracy']:.1f}% ({100 * r['accuracy_min']:.1f}%) | {r['grid_distance']:.3f} |")
    lines += ["", "`old`: train_quantizer=True, range_penalty=False (before the fix); `fixed`: the defaults; "
              "`fixed-no-range`: the detach alone.", "",
              f"SinReQ forward + backward alone, LeNet-5 w4, median of {meta['timing_rounds']} interleaved rounds "
              "(`before`: the penalty as computed before the fix):", "",
              "| quantizer | variant | median µs | x before |", "|---|---|---|---|"]
    for r in timing:
        lines.append(f"| {r['quantizer']} ({r['scale']} scale) | {r['variant']} | {r['median_us']:.0f} | "
                     f"{r['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timing-rounds", type=int, default=31)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("digits")
    rows = []
    for quantizer, scale, lam in CASES:
        for variant in VARIANTS:
            for seed in args.seeds:
                r = run_case(data, quantizer, scale, lam, variant, args.steps, seed)
                rows.append(r)
                print(f"{quantizer:5s} λ={lam:g} {variant:15s} seed {seed}: "
                      f"{r['grid_param_before']} -> {r['grid_param_after']}, "
                      f"zero {100 * r['zero_fraction']:.1f}%, acc {100 * r['accuracy']:.1f}%, "
                      f"grid {r['grid_distance']:.3f}", flush=True)
    timing = time_penalty(args.timing_rounds)
    summary = summarize(rows)
    meta = {"command": " ".join(["python", *sys.argv]), "threads": 1, "steps": rows[0]["steps"],
            "seeds": args.seeds, "timing_rounds": args.timing_rounds, "batch_size": BATCH, "lr": LR,
            "dataset": "digits", "machine": platform.machine(), "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sinreq_cheat.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows,
                                                           "timing": timing}, indent=2) + "\n")
    (RESULTS / "sinreq_cheat.md").write_text(render(meta, summary, timing))


if __name__ == "__main__":
    main()
